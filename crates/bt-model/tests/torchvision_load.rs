//! A cifar-resnet18 encoder checkpoint loads into torchvision's (and timm's) resnet18 with the
//! CIFAR stem, and a resnet50 one into their plain resnet50 (`fc` removed), `strict=True`, and
//! gives the same features (eval and train mode) and the same BN buffer updates, to 1e-5. Runs
//! `scripts/check_torchvision_load.py`, which executes the snippet of docs/CHECKPOINTS.md, with
//! the Python named by `BT_PYTHON`.
use bt_config::{Arch, ModelConfig};
use bt_model::BarlowTwins;
use std::path::Path;
use std::process::Command;
use tch::{nn, Device, Kind, Tensor};

/// Saves the encoder of `arch` (width 64) before and after one train-mode forward of an
/// `4 x 3 x side x side` input and runs the Python check with `--arch py_arch --stem stem`.
fn check(arch: Arch, py_arch: &str, stem: &str, side: i64) {
    let python = std::env::var("BT_PYTHON").unwrap_or_else(|_| {
        panic!(
            "BT_PYTHON is not set. This test runs scripts/check_torchvision_load.py with the \
             project's Python (torch, torchvision, timm): run it via `cargo xtask test`, or set \
             BT_PYTHON=.venv/bin/python"
        )
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The script runs torch with one thread: so do we, so that reductions (BN statistics over
    // a few rows, ill-conditioned in train mode) add in the same order. With 2 threads here the
    // resnet50 train-mode features differ by ~3e-5 relative; with 1 they are bit-identical.
    tch::set_num_threads(1);
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig { arch, projector: vec![32, 32], ..ModelConfig::default() };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    let opts = (Kind::Float, Device::Cpu);
    // Non-trivial BN statistics, so eval-mode features exercise running_mean/var.
    tch::no_grad(|| {
        for _ in 0..3 {
            let _ = m.encode(&Tensor::rand([8, 3, side, side], opts), true);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (before, after, io) =
        (dir.path().join("enc.safetensors"), dir.path().join("enc2.safetensors"), dir.path().join("io.safetensors"));
    m.save_encoder(&before).unwrap();
    let x = Tensor::rand([4, 3, side, side], opts);
    let h_eval = tch::no_grad(|| m.encode(&x, false));
    let h_train = tch::no_grad(|| m.encode(&x, true));
    m.save_encoder(&after).unwrap();
    Tensor::write_safetensors(&[("x", &x), ("h_eval", &h_eval), ("h_train", &h_train)], &io).unwrap();

    let out = Command::new(&python)
        .arg(root.join("scripts/check_torchvision_load.py"))
        .arg("--before")
        .arg(&before)
        .arg("--after")
        .arg(&after)
        .arg("--io")
        .arg(&io)
        .args(["--arch", py_arch, "--stem", stem])
        .output()
        .unwrap_or_else(|e| panic!("cannot run BT_PYTHON={python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "check_torchvision_load.py failed\nstdout: {stdout}\nstderr: {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("{report}");
}

#[test]
fn cifar_resnet18_encoder_loads_into_torchvision_and_timm() {
    check(Arch::CifarResnet18, "resnet18", "cifar", 32);
}

#[test]
fn resnet50_encoder_loads_into_torchvision_and_timm_resnet50() {
    // 64 px keeps a 2x2 map at layer4 (train-mode BN needs more than one value per channel).
    check(Arch::Resnet50, "resnet50", "imagenet", 64);
}
