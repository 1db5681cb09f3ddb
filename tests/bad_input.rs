//! Issue 7: the bad-input matrix. Every case runs the real `bt-cli pretrain` against an existing
//! run folder (a real checkpointed run) and must fail with a clear message naming the culprit, a
//! non-zero exit, no panic, and the run folder byte-for-byte unchanged.
#[path = "reliability_util.rs"]
mod util;

use bt_e2e::{bt_cli, text};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use util::*;

/// A real run folder stopped at step 4 (one checkpoint), built once and copied per case.
fn victim_template() -> &'static Path {
    static V: OnceLock<PathBuf> = OnceLock::new();
    V.get_or_init(|| {
        let dir = private_scratch("bt-bad-input-victim");
        ok(&output(pretrain_cmd(&dir, &["--set", "run.max_steps=4"])), "victim run");
        assert_eq!(checkpoints(&dir).len(), 1);
        dir
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A copy of the victim run under `tmp`.
fn victim(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    copy_dir(victim_template(), &d);
    d
}

/// Runs `cmd`, expects failure naming every needle, and the folder `guard` unchanged.
fn refused(mut cmd: Command, guard: &Path, needles: &[&str]) {
    let before = snapshot(guard);
    cmd.env("OMP_NUM_THREADS", "1");
    let o = cmd.output().expect("spawn bt-cli");
    let t = text(&o);
    assert!(!o.status.success(), "should fail: {cmd:?}\n{t}");
    assert!(!t.contains("panicked"), "panicked: {cmd:?}\n{t}");
    for n in needles {
        assert!(t.contains(n), "message lacks `{n}`: {cmd:?}\n{t}");
    }
    assert!(snapshot(guard) == before, "{cmd:?} changed {}", guard.display());
}

/// `bt-cli pretrain --preset demo` (small model) with `args`, into `out`.
fn pretrain(out: &Path, args: &[&str]) -> Command {
    let mut c = bt_cli();
    c.arg("pretrain").args(["--preset", "demo"]);
    c.args(["--set", "model.width=2", "--set", "model.projector=[16, 16]", "--set", "data.batch_size=16"]);
    c.args(args).arg("--out").arg(out);
    c
}

const RECORD: usize = 3073;

/// A small CIFAR-10 binary folder: 4 records per train file, 4 test records, labels 0..9.
fn fake_cifar(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let file = |seed: usize, n: usize| -> Vec<u8> {
        let mut v = Vec::with_capacity(n * RECORD);
        for r in 0..n {
            v.push(((seed + r) % 10) as u8);
            v.extend((0..RECORD - 1).map(|i| ((i * 7 + r * 13 + seed) % 251) as u8));
        }
        v
    };
    for k in 1..=5 {
        std::fs::write(dir.join(format!("data_batch_{k}.bin")), file(k, 4)).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), file(9, 4)).unwrap();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    std::fs::write(dir.join("batches.meta.txt"), names.join("\n") + "\n\n").unwrap();
}

#[test]
fn damaged_or_foreign_cifar_folders_are_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("cifar");
    fake_cifar(&base);
    // Control: the undamaged folder is accepted (one step).
    let ctl = tmp.path().join("control");
    ok(
        &output(pretrain(&ctl, &["--data", base.to_str().unwrap(), "--set", "run.max_steps=1"])),
        "control run on the fake CIFAR",
    );

    let out = victim(tmp.path(), "victim");
    type Damage = fn(&Path);
    let cases: Vec<(&str, Damage, Vec<&str>)> = vec![
        (
            "truncated",
            |d| {
                let p = d.join("data_batch_3.bin");
                let b = std::fs::read(&p).unwrap();
                std::fs::write(&p, &b[..b.len() - 100]).unwrap();
            },
            vec!["data_batch_3.bin", "has 12192 bytes", "3073-byte record"],
        ),
        (
            "oversized",
            |d| {
                let p = d.join("test_batch.bin");
                let mut b = std::fs::read(&p).unwrap();
                b.extend([0u8; 5]);
                std::fs::write(&p, b).unwrap();
            },
            vec!["test_batch.bin", "has 12297 bytes"],
        ),
        (
            "label >= 10",
            |d| {
                let p = d.join("data_batch_2.bin");
                let mut b = std::fs::read(&p).unwrap();
                b[RECORD] = 10;
                std::fs::write(&p, b).unwrap();
            },
            vec!["data_batch_2.bin", "record 1", "label 10", "0..=9"],
        ),
        (
            "missing train file",
            |d| std::fs::remove_file(d.join("data_batch_4.bin")).unwrap(),
            vec!["data_batch_4.bin", "missing"],
        ),
        (
            "missing class names",
            |d| std::fs::remove_file(d.join("batches.meta.txt")).unwrap(),
            vec!["batches.meta.txt"],
        ),
        (
            "not CIFAR at all: a folder of files, one a broken PNG (detected as an image folder)",
            |d| {
                for e in std::fs::read_dir(d).unwrap().flatten() {
                    std::fs::remove_file(e.path()).unwrap();
                }
                std::fs::write(d.join("photo.png"), b"\x89PNG\r\n\x1a\n....").unwrap();
                std::fs::write(d.join("notes.txt"), b"hello").unwrap();
            },
            vec!["photo.png", "skip_bad_images"],
        ),
        (
            "a foreign file under a CIFAR name",
            |d| std::fs::write(d.join("data_batch_1.bin"), vec![0u8; 1000]).unwrap(),
            vec!["data_batch_1.bin", "has 1000 bytes"],
        ),
    ];
    for (i, (what, damage, needles)) in cases.into_iter().enumerate() {
        let d = tmp.path().join(format!("cifar-{i}"));
        copy_dir(&base, &d);
        damage(&d);
        eprintln!("case: {what}");
        refused(pretrain(&out, &["--data", d.to_str().unwrap()]), &out, &needles);
    }
}

#[test]
fn config_errors_are_refused_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let out = victim(tmp.path(), "victim");
    let syn = ["--synthetic"];
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // Type errors.
        (vec!["--set", "optim.lr=abc"], vec!["optim.lr", "abc", "number"]),
        (vec!["--set", "run.max_steps=many"], vec!["run.max_steps", "integer"]),
        (vec!["--set", "run.on_nonfinite=ignore"], vec!["run.on_nonfinite", "skip"]),
        // Unknown keys, with the valid ones listed.
        (vec!["--set", "run.max_stepz=3"], vec!["run.max_stepz", "max_steps"]),
        (vec!["--set", "nosuch.key=1"], vec!["nosuch.key"]),
        // Out of range.
        (vec!["--set", "optim.lr=-1"], vec!["optim.lr", "out of range"]),
        (vec!["--set", "augment.view_a.flip_prob=2"], vec!["augment.view_a.flip_prob"]),
        (vec!["--set", "run.spike_factor=0.5"], vec!["run.spike_factor"]),
        (vec!["--set", "data.batch_size=0"], vec!["data.batch_size"]),
        // Batch larger than the dataset.
        (vec!["--set", "data.synthetic_train=8"], vec!["data.batch_size", "larger than the training set"]),
        // Malformed override.
        (vec!["--set", "optim.lr"], vec!["optim.lr", "key=value"]),
        // A layout libtorch's CPU kernels crash on (see StepSettings::for_run).
        (
            vec!["--device", "cpu", "--set", "model.width=4", "--set", "run.channels_last=true"],
            vec!["run.channels_last", "model.width = 4"],
        ),
    ];
    for (args, needles) in cases {
        let mut a: Vec<&str> = syn.to_vec();
        a.extend(args);
        refused(pretrain(&out, &a), &out, &needles);
    }
    // A config file with a type error and one with an unknown key.
    let f = tmp.path().join("bad.toml");
    std::fs::write(&f, "[data]\nbatch_size = \"big\"\n").unwrap();
    refused(pretrain(&out, &["--synthetic", "--config", f.to_str().unwrap()]), &out, &["data.batch_size", "big"]);
    std::fs::write(&f, "[run]\nmax_step = 3\n").unwrap();
    refused(pretrain(&out, &["--synthetic", "--config", f.to_str().unwrap()]), &out, &["run.max_step", "max_steps"]);
}

#[test]
fn a_cuda_device_that_is_not_there_is_refused() {
    let info = output({
        let mut c = bt_cli();
        c.arg("info");
        c
    });
    let tmp = tempfile::tempdir().unwrap();
    let out = victim(tmp.path(), "victim");
    // No machine has a 100th GPU: this part runs everywhere (it returned early on a CUDA
    // machine before, counted as passed).
    refused(pretrain(&out, &["--synthetic", "--set", "run.device=cuda:99"]), &out, &["cuda:99"]);
    if !text(&info).contains("cuda available: true") {
        let mut c = pretrain(&out, &["--synthetic"]);
        c.args(["--device", "cuda"]);
        refused(c, &out, &["cuda", "not available", "--device cpu"]);
        refused(pretrain(&out, &["--synthetic", "--set", "run.device=cuda:1"]), &out, &["cuda:1"]);
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[test]
fn an_unwritable_output_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Under a regular file: no one can create it, root included.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = file.join("run");
    refused(pretrain(&out, &["--synthetic"]), tmp.path(), &["a-file/run", "cannot create run folder"]);
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        let ro = tmp.path().join("read-only");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        refused(pretrain(&ro.join("run"), &["--synthetic"]), tmp.path(), &["read-only/run"]);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        // Root writes through permission bits (this case was skipped as root before, silently):
        // sysfs refuses every mkdir, root's included.
        let out = Path::new("/sys/bt-run");
        refused(pretrain(out, &["--synthetic"]), tmp.path(), &["/sys/bt-run", "cannot create run folder"]);
    }
}

#[test]
fn a_write_error_while_checkpointing_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = victim(tmp.path(), "victim");
    let old = checkpoints(&run);
    let old_bytes = std::fs::read(&old[0]).unwrap();
    // Resume (step 4 -> 8); the epoch-2 checkpoint write fails after 1000 bytes (a full disk).
    let mut c = pretrain_cmd(&run, &[]);
    c.env("BT_FAULT_CHECKPOINT_WRITE", "after_bytes:1000");
    let o = output(c);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("epoch-0002.safetensors") && t.contains("injected write failure"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert_eq!(checkpoints(&run), old, "no new checkpoint may appear");
    assert_eq!(std::fs::read(&old[0]).unwrap(), old_bytes, "the previous checkpoint changed");
    let names: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "temporary file left: {names:?}");
    // And the run continues from it once the disk is fine again.
    let log = ok(&output(pretrain_cmd(&run, &[])), "resume after the write error");
    assert!(log.contains("resuming from") && log.contains("epoch-0001.safetensors"), "{log}");
}
