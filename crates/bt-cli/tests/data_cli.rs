//! End-to-end: `bt-cli preview-augment` and `bt-cli bench data`, good and bad inputs.
use std::process::Command;

fn bt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bt-cli"))
}

#[test]
fn preview_augment_synthetic_writes_a_png() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grid.png");
    let o = bt().args(["preview-augment", "--synthetic", "--n", "3", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR: width and height, big-endian, at bytes 16..24: 3 tiles of 128 + gaps, 3 rows.
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((w, h), (3 * 128 + 16, 3 * 132 + 4));
}

#[test]
fn bench_data_synthetic_ends_with_key_value() {
    let o = bt()
        .args(["bench", "data", "--synthetic", "--threads", "2", "--batches", "3", "--preset", "demo"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let last = out.lines().last().unwrap();
    let v: f64 = last.strip_prefix("pairs_per_s=").expect(last).parse().unwrap();
    assert!(v > 0.0);
}

#[test]
fn bad_inputs_exit_non_zero_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("g.png");
    // Missing folder.
    let o =
        bt().args(["preview-augment", "--data"]).arg(tmp.path().join("nope")).arg("--out").arg(&out).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("CIFAR-10 not found") && err.contains("nope") && err.contains("fetch-cifar"), "{err}");
    // A label >= 10 in a written dataset.
    let dir = tmp.path().join("cifar");
    let train = bt_data::synthetic::generate(20, 0, bt_data::synthetic::Split::Train);
    let test = bt_data::synthetic::generate(10, 0, bt_data::synthetic::Split::Test);
    bt_data::write_cifar_binary(&dir, &train, &test, &bt_data::synthetic::CLASS_NAMES).unwrap();
    let p = dir.join("data_batch_1.bin");
    let mut raw = std::fs::read(&p).unwrap();
    raw[3073] = 200;
    std::fs::write(&p, raw).unwrap();
    let o = bt().args(["bench", "data", "--batches", "1", "--data"]).arg(&dir).output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("data_batch_1.bin") && err.contains("record 1") && err.contains("offset 3073"), "{err}");
    // A truncated file.
    let t = dir.join("test_batch.bin");
    std::fs::write(&t, vec![0u8; 3073 * 2 + 5]).unwrap();
    let o = bt().args(["preview-augment", "--data"]).arg(&dir).arg("--out").arg(&out).output().unwrap();
    assert!(!o.status.success());
    // Neither source given: the config's data.dir (data/cifar-10-batches-bin, absent here).
    let o = bt().args(["preview-augment", "--out"]).arg(&out).current_dir(tmp.path()).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("data/cifar-10-batches-bin"));
}
