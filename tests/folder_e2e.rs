//! End-to-end: `bt-cli` on folders of real image files made by the test (PNG and JPEG, two
//! classes, sizes that are not 32): pretrain, kNN evaluation, embeddings with their file list,
//! the ImageNet presets at reduced settings, and the bad-input cases (broken files, empty
//! folders, one-class evaluation folders, an image size larger than every image).
use bt_e2e::{bt_cli, text};
use std::path::{Path, PathBuf};
use std::process::Output;

/// `n` images per class in `dir/<class>/`, alternating PNG and JPEG, `w x h` pixels: class 0
/// horizontal stripes, class 1 vertical, colours and phases varying per image.
fn write_folder(dir: &Path, classes: &[&str], n: usize, w: u32, h: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (c, name) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let t = if c == 0 { y } else { x } + i as u32;
                let on = (t / 4).is_multiple_of(2);
                let base = [(40 * i) as u8, (90 + 20 * c) as u8, (200 - 15 * i) as u8];
                if on {
                    image::Rgb(base)
                } else {
                    image::Rgb([255 - base[0], 255 - base[1], 255 - base[2]])
                }
            });
            let p = dir.join(name).join(format!("img{i:02}.{}", if i % 2 == 0 { "png" } else { "jpg" }));
            img.save(&p).unwrap();
            files.push(p);
        }
    }
    files
}

/// A tiny ImageNet-stem ResNet-18 run over `data` at 32 px.
fn small(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut c = bt_cli();
    c.args(["pretrain", "--preset", "imagenet100-resnet18", "--device", "cpu", "--data"]).arg(data);
    c.args(["--set", "data.image_size=32", "--set", "model.width=4", "--set", "model.projector=[32, 32]"]);
    c.args(["--set", "data.batch_size=8", "--set", "data.workers=2", "--set", "run.epochs=2"]);
    c.args(extra).arg("--out").arg(out);
    c.env("OMP_NUM_THREADS", "1").output().expect("spawn bt-cli")
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pretrain_evaluate_and_embed_an_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val, run) = (tmp.path().join("train"), tmp.path().join("val"), tmp.path().join("run"));
    let files = write_folder(&train, &["horizontal", "vertical"], 12, 48, 40);
    write_folder(&val, &["horizontal", "vertical"], 6, 40, 56);
    let o = small(&train, &run, &["--test-data", val.to_str().unwrap(), "--set", "run.knn_every=1"]);
    assert!(o.status.success(), "{}", text(&o));
    for f in ["config.toml", "model.safetensors", "encoder.safetensors", "augment.png", "loss.png", "report.md"] {
        assert!(run.join(f).is_file(), "{f} missing:\n{}", text(&o));
    }
    let m = metrics(&run);
    let epochs: Vec<_> = m.iter().filter(|r| r["kind"] == "epoch").collect();
    assert_eq!(epochs.len(), 2, "{m:?}");
    assert_eq!(epochs[1]["skipped_images"], 0);
    let knn: Vec<_> = m.iter().filter(|r| r["kind"] == "knn").collect();
    assert_eq!(knn.len(), 3, "the kNN monitor ran on the labeled val folder at the start and each epoch");
    assert_eq!(knn[0]["epoch"], 0, "the random-init baseline comes first: {knn:?}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("image folder") && report.contains("32 px"), "{report}");

    let o = bt_cli().args(["eval", "knn", "--run"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("eval_knn.json")).unwrap()).unwrap();
    assert_eq!((v["n_train"].as_i64(), v["n_test"].as_i64()), (Some(24), Some(12)), "{v}");

    // Embeddings of the (labeled) training folder: rows in source order, with their files.
    let out = tmp.path().join("emb/train.npy");
    let o = bt_cli().args(["embed", "--run"]).arg(&run).args(["--split", "train", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let listed: Vec<String> =
        std::fs::read_to_string(tmp.path().join("emb/train.files.txt")).unwrap().lines().map(String::from).collect();
    assert_eq!(listed.len(), files.len());
    let mut want: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    want.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, want, "the file list names every image once");
    let npy = std::fs::read(&out).unwrap();
    let header = String::from_utf8_lossy(&npy[..128]).to_string();
    assert!(header.contains(&format!("'shape': ({}, 32)", files.len())), "width 4: 32 features; {header}");
    // The labels follow the rows: a file under `vertical/` has label 1.
    let labels = std::fs::read(tmp.path().join("emb/train.labels.npy")).unwrap();
    let off = labels.len() - 8 * files.len();
    for (i, f) in listed.iter().enumerate() {
        let l = i64::from_le_bytes(labels[off + 8 * i..off + 8 * i + 8].try_into().unwrap());
        assert_eq!(l, if f.contains("/vertical/") { 1 } else { 0 }, "{f}");
    }
}

#[test]
fn embed_an_unlabeled_tree_writes_vectors_and_the_file_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (photos, run) = (tmp.path().join("photos"), tmp.path().join("run"));
    // An unlabeled tree: files at two depths, no class folders.
    write_folder(&photos.join("2024/trip"), &["a"], 5, 36, 36);
    write_folder(&photos, &["b"], 5, 50, 34);
    std::fs::rename(photos.join("b"), photos.join("2023")).unwrap();
    let o = small(&photos, &run, &["--set", "run.epochs=1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = tmp.path().join("all.npy");
    // No --split: an unlabeled folder has no test split, so every image is embedded.
    let o = bt_cli().args(["embed", "--run"]).arg(&run).args(["--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let listed = std::fs::read_to_string(tmp.path().join("all.files.txt")).unwrap();
    assert_eq!(listed.lines().count(), 10, "{listed}");
    assert!(listed.lines().all(|l| l.starts_with(photos.to_str().unwrap()) && Path::new(l).is_file()), "{listed}");
    // Unlabeled rows carry label -1; evaluation on them is refused with a clear message.
    let o = bt_cli().args(["eval", "knn", "--run"]).arg(&run).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("labeled evaluation split") || text(&o).contains("has no label"), "{}", text(&o));
}

#[test]
fn broken_files_fail_naming_them_or_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    write_folder(&train, &["x", "y"], 8, 40, 40);
    std::fs::write(train.join("x/not-an-image.jpg"), b"this is a text file, not a JPEG").unwrap();
    let good = std::fs::read(train.join("y/img00.png")).unwrap();
    std::fs::write(train.join("y/truncated.png"), &good[..good.len() / 3]).unwrap();
    let o = small(&train, &tmp.path().join("strict"), &[]);
    assert!(!o.status.success(), "a broken file must stop the run before a step:\n{}", text(&o));
    let t = text(&o);
    assert!(t.contains("not-an-image.jpg") || t.contains("truncated.png"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert!(!tmp.path().join("strict/checkpoints").read_dir().is_ok_and(|mut d| d.next().is_some()));

    let run = tmp.path().join("lenient");
    let o = small(&train, &run, &["--set", "data.skip_bad_images=true", "--set", "run.epochs=1"]);
    assert!(o.status.success(), "{}", text(&o));
    let m = metrics(&run);
    let ep = m.iter().find(|r| r["kind"] == "epoch").expect("an epoch record");
    assert_eq!(ep["skipped_images"], 2, "{ep}");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("2 unreadable image(s) skipped"), "{report}");
}

#[test]
fn folder_mistakes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |o: Output, needles: &[&str]| {
        let t = text(&o);
        assert!(!o.status.success(), "should fail:\n{t}");
        assert!(!t.contains("panicked"), "{t}");
        for n in needles {
            assert!(t.contains(n), "message lacks `{n}`:\n{t}");
        }
    };
    // An empty folder.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(empty.join("sub")).unwrap();
    check(small(&empty, &tmp.path().join("r1"), &[]), &["empty"]);
    // A labeled evaluation folder with a single class.
    let train = tmp.path().join("train");
    write_folder(&train, &["a", "b"], 8, 40, 40);
    let one = tmp.path().join("one");
    write_folder(&one, &["only"], 4, 40, 40);
    check(
        small(&train, &tmp.path().join("r2"), &["--test-data", one.to_str().unwrap()]),
        &["data.test_dir", "at least 2 class"],
    );
    // image_size larger than every image.
    check(small(&train, &tmp.path().join("r3"), &["--set", "data.image_size=300"]), &["data.image_size"]);
}

#[test]
fn the_official_resnet50_preset_runs_two_steps_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    write_folder(&train, &["a", "b"], 8, 80, 72);
    let run = tmp.path().join("r50");
    let mut c = bt_cli();
    c.args(["pretrain", "--preset", "imagenet-resnet50", "--device", "cpu", "--data"]).arg(&train);
    c.args(["--set", "data.image_size=64", "--set", "data.batch_size=8", "--set", "run.max_steps=2"]);
    c.arg("--out").arg(&run);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("run.max_steps = 2"), "{}", text(&o));
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    for k in ["arch = \"resnet50\"", "projector = [8192, 8192, 8192]", "sync_bn = \"all\"", "lambda = 0.0051"] {
        assert!(cfg.contains(k), "{k} in\n{cfg}");
    }
    let ck: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().collect();
    assert_eq!(ck.len(), 1, "the stop at step 2 wrote one checkpoint");

    let o = bt_cli().args(["model-summary", "--preset", "imagenet-resnet50", "--size", "224"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("23,508,032"), "the encoder's trainable parameters equal torchvision's resnet50:\n{t}");
    assert!(t.contains("layer4.2.conv3") && t.contains("maxpool"), "{t}");
}

/// Runs `c` to the end with stdout/stderr in files; returns (exit code, output, peak RSS in MiB)
/// from `wait4`'s resource usage of that one child.
#[allow(clippy::zombie_processes, reason = "wait4 below reaps the child (Child::wait has no rusage)")]
fn run_measured(mut c: std::process::Command, dir: &Path) -> (Option<i32>, String, u64) {
    let (out, err) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    c.stdout(std::fs::File::create(&out).unwrap()).stderr(std::fs::File::create(&err).unwrap());
    let child = c.spawn().expect("spawn bt-cli");
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child's pid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let text = format!(
        "exit {code:?} (wait status {status})\n--- stdout\n{}\n--- stderr\n{}",
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap()
    );
    (code, text, ru.ru_maxrss as u64 / 1024)
}

#[test]
fn a_decompression_bomb_among_good_images_is_named_or_skipped_with_bounded_memory() {
    // The case: a 60000 x 60000 PNG (a few hundred KB) among 200 good images aborted
    // `pretrain` with an allocation failure (exit 134, no file named), with or without
    // skip_bad_images. Decoding it would take 3.6 GB (8-bit gray) and 10.8 GB (RGB); the limit
    // below is far under that and far over the run's own need (libtorch and a width-4 model).
    const PEAK_MIB: u64 = 1536;
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train");
    let mut n = 0;
    for dir in ["a", "b"] {
        std::fs::create_dir_all(train.join(dir)).unwrap();
        for i in 0..100 {
            let img = image::RgbImage::from_fn(36, 36, |x, y| image::Rgb([(x * 7 + i) as u8, (y * 5) as u8, i as u8]));
            img.save(train.join(dir).join(format!("{i:03}.png"))).unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 200);
    bt_testkit::write_png_bomb(&train.join("a/zz-bomb.png"), 60_000, 60_000).unwrap();
    let cmd = |out: &Path, extra: &[&str]| {
        let mut c = bt_cli();
        c.args(["pretrain", "--preset", "imagenet100-resnet18", "--device", "cpu", "--data"]).arg(&train);
        c.args(["--set", "data.image_size=32", "--set", "model.width=4", "--set", "model.projector=[32, 32]"]);
        c.args(["--set", "data.batch_size=8", "--set", "data.workers=2", "--set", "run.max_steps=2"]);
        c.args(extra).arg("--out").arg(out);
        c.env("OMP_NUM_THREADS", "1");
        c
    };
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (code, t, peak) = run_measured(cmd(&tmp.path().join("strict"), &[]), &logs);
    assert_eq!(code, Some(1), "refused with an error, not an abort:\n{t}");
    assert!(t.contains("zz-bomb.png") && t.contains("60000x60000") && t.contains("decompression bomb"), "{t}");
    assert!(peak < PEAK_MIB, "peak RSS {peak} MiB:\n{t}");

    let run = tmp.path().join("lenient");
    let (code, t, peak) = run_measured(cmd(&run, &["--set", "data.skip_bad_images=true"]), &logs);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("1 unreadable image(s) skipped") && t.contains("zz-bomb.png"), "warned, naming it:\n{t}");
    assert!(peak < PEAK_MIB, "peak RSS {peak} MiB:\n{t}");
    assert!(t.contains("200 images") && t.contains("1 unreadable skipped"), "counted:\n{t}");
    eprintln!("peak RSS with the bomb skipped: {peak} MiB");
}

/// The tensors of a safetensors file: name -> (shape, raw bytes), read by hand (8-byte header
/// length, JSON header of dtype/shape/offsets, data).
fn safetensors(path: &Path) -> std::collections::HashMap<String, (Vec<u64>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = std::collections::HashMap::new();
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        let o = v["data_offsets"].as_array().unwrap();
        let (a, b) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        out.insert(name.clone(), (shape, data[a..b].to_vec()));
    }
    out
}

/// The two protocols of facebookresearch/barlowtwins `evaluate.py` on an image folder: the
/// official linear evaluation (frozen encoder, augmented images) and semi-supervised
/// fine-tuning on a SimCLR-format file list and on a class-balanced percent; the fine-tuned
/// network is written beside the result, loads again as published weights, and the run's own
/// weights are untouched.
#[test]
fn official_and_finetune_protocols_on_an_image_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val, run) = (tmp.path().join("train"), tmp.path().join("val"), tmp.path().join("run"));
    // Class folders and file names as in ImageNet (`n01/n01_3.png`), which SimCLR's lists name.
    for f in write_folder(&train, &["n01", "n02"], 16, 48, 40) {
        let class = f.parent().unwrap().file_name().unwrap().to_str().unwrap().to_string();
        let name = f.file_name().unwrap().to_str().unwrap().replace("img", &format!("{class}_"));
        std::fs::rename(&f, f.with_file_name(name)).unwrap();
    }
    write_folder(&val, &["n01", "n02"], 8, 40, 56);
    let o = small(&train, &run, &["--test-data", val.to_str().unwrap(), "--set", "run.epochs=1"]);
    assert!(o.status.success(), "{}", text(&o));
    let encoder_before = std::fs::read(run.join("encoder.safetensors")).unwrap();
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join(name)).unwrap()).unwrap()
    };

    let o = bt_cli()
        .args(["eval", "linear", "--run"])
        .arg(&run)
        .args(["--protocol", "official", "--set", "eval.official_epochs=2", "--set", "eval.official_batch_size=8"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let v = read("eval_linear_official.json");
    assert_eq!((v["n_train"].as_u64(), v["n_test"].as_u64()), (Some(32), Some(16)), "{v}");
    assert_eq!(v["history"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["test_transform"], "Resize(37) + CenterCrop(32)", "32 x 256/224 = 36.6: {v}");
    assert!(run.join("eval_linear_official_confusion.png").is_file());

    // SimCLR's format (class = the part before `_`) and a `class/file` line; 2 + 1 + 1 images.
    let list = tmp.path().join("2images.txt");
    std::fs::write(&list, "n01_00.png\nn01_03.jpg\n\nn02/n02_04.png\nn02_07.jpg\n").unwrap();
    let finetune = |extra: &[&str]| {
        let mut c = bt_cli();
        c.args(["eval", "linear", "--run"]).arg(&run).args(["--protocol", "finetune"]);
        c.args(["--set", "eval.finetune_epochs=2", "--set", "eval.finetune_batch_size=4"]).args(extra);
        c.output().unwrap()
    };
    let o = finetune(&["--train-files", list.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let v = read("eval_linear_finetune_list.json");
    assert_eq!(v["n_train"].as_u64(), Some(4), "the listed images only: {v}");
    assert_eq!(v["protocol"], "finetune");
    assert_eq!(v["history"].as_array().unwrap().len(), 2, "{v}");
    let tuned = run.join("eval_linear_finetune_list.safetensors");
    assert_eq!(v["finetuned_weights"], tuned.display().to_string());
    let t = safetensors(&tuned);
    assert_eq!(t["fc.weight"].0, [2, 32], "a 2-class head on 32 features");
    assert!(t.contains_key("conv1.weight") && t.contains_key("layer4.1.bn2.running_var"), "torchvision names");
    let before = safetensors(&run.join("encoder.safetensors"));
    assert_eq!(t.len(), before.len() + 2, "the encoder's tensors and fc.weight, fc.bias");
    assert_eq!(t["conv1.weight"].0, before["conv1.weight"].0);
    assert_ne!(t["conv1.weight"].1, before["conv1.weight"].1, "fine-tuning trains the encoder");
    assert_eq!(
        std::fs::read(run.join("encoder.safetensors")).unwrap(),
        encoder_before,
        "the run's weights are untouched"
    );

    // The fine-tuned network is published weights for every other command (its fc is skipped).
    let o = bt_cli()
        .args(["eval", "knn", "--preset", "imagenet100-resnet18", "--device", "cpu", "--weights"])
        .arg(&tuned)
        .args(["--set", "data.image_size=32", "--set", "model.width=4", "--set", "model.projector=[32, 32]"])
        .arg("--data")
        .arg(&train)
        .arg("--test-data")
        .arg(&val)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));

    // A class-balanced half: 8 images of each class.
    let o = finetune(&["--train-percent", "50"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = read("eval_linear_finetune_50pct.json");
    assert_eq!((v["n_train"].as_u64(), v["train_percent"].as_f64()), (Some(16), Some(50.0)), "{v}");

    // A list line naming no image: the list, the line and the text in the error, nothing written.
    std::fs::write(&list, "n01_00.png\nn03_1.png\n").unwrap();
    let o = finetune(&["--train-files", list.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = text(&o);
    assert!(err.contains("2images.txt line 2: `n03_1.png`: no image n03/n03_1.png"), "{err}");
    let o = finetune(&["--train-percent", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("eval.finetune_train_percent"), "{}", text(&o));
}

/// Ctrl-C during the official protocol, as a terminal sends it (a real SIGINT to a real
/// process): `bt-cli` finishes the batch in flight, says which file keeps the finished epochs
/// and how to continue, and exits 130. Other settings are then refused with the key named and
/// the file kept; the same command resumes after the last finished epoch and ends with the
/// result of an uninterrupted run, then removes the file.
#[test]
fn ctrl_c_during_the_official_protocol_keeps_its_epochs_and_the_same_command_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, val, run) = (tmp.path().join("train"), tmp.path().join("val"), tmp.path().join("run"));
    write_folder(&train, &["a", "b"], 12, 40, 36);
    write_folder(&val, &["a", "b"], 4, 36, 40);
    let o = small(&train, &run, &["--test-data", val.to_str().unwrap(), "--set", "run.epochs=1"]);
    assert!(o.status.success(), "{}", text(&o));
    // Long enough that the signal lands mid-run: 200 epochs of 6 batches.
    let official = |extra: &[&str]| {
        let mut c = bt_cli();
        c.args(["eval", "linear", "--run"]).arg(&run).args(["--protocol", "official"]);
        c.args(["--set", "eval.official_epochs=200", "--set", "eval.official_batch_size=4"]).args(extra);
        c.env("OMP_NUM_THREADS", "1");
        c
    };
    let state = run.join("eval_linear_official.state.safetensors");
    let result = run.join("eval_linear_official.json");
    let mut child = official(&[]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !state.exists() && t0.elapsed().as_secs() < 300 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if !state.exists() {
        let _ = child.kill();
        panic!("no resume file after the first epoch:\n{}", text(&child.wait_with_output().unwrap()));
    }
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let o = child.wait_with_output().unwrap();
    let err = text(&o);
    assert_eq!(o.status.code(), Some(130), "exit 130 after Ctrl-C:\n{err}");
    let line = err.lines().find(|l| l.starts_with("interrupted by SIGINT")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("of 200;") && line.contains("eval_linear_official.state.safetensors holds epoch"), "{line}");
    let kept: usize = line.rsplit("holds epoch ").next().unwrap().trim_end_matches('.').parse().unwrap();
    assert!((1..200).contains(&kept), "{line}");
    assert!(err.contains("Resume with:\n  bt-cli eval linear --run"), "{err}");
    assert!(!result.exists(), "no result from a stopped evaluation");

    // Another learning rate: refused, the key named, the file left as it was.
    let before = std::fs::read(&state).unwrap();
    let o = official(&["--set", "eval.official_lr=0.05"]).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("eval.official_lr") && text(&o).contains("--fresh"), "{}", text(&o));
    assert_eq!(std::fs::read(&state).unwrap(), before);

    // The same command resumes; the file is removed once the result is written.
    let o = official(&[]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(&format!("({kept} epochs done)")), "{}", text(&o));
    assert!(!state.exists(), "the resume file is removed with the result written");
    let resumed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    // Uninterrupted (no resume file now), for comparison.
    let o = official(&[]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("resuming"), "{}", text(&o));
    let whole: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(whole["history"].as_array().map(Vec::len), Some(200));
    for k in ["history", "best_top1", "best_top5", "test_top1", "confusion"] {
        assert_eq!(resumed[k], whole[k], "`{k}`: resumed vs uninterrupted");
    }
}
