//! `bt_train::export`: the TorchScript export loads in libtorch from Rust (`tch::CModule`) and in
//! Python (`torch.jit.load`), the ONNX export runs in onnxruntime, and all give our encoder's
//! eval-mode features (TorchScript within 1e-5: same kernels; ONNX within 1e-4: onnxruntime's
//! kernels), for a batch size and an image size other than the traced ones. The Python side is
//! `scripts/check_export.py`, run with `BT_PYTHON` (torch, onnx, onnxruntime).
use bt_config::{Arch, Config, DatasetKind};
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1.0);
    assert!(diff <= tol * scale, "{what}: max |diff| {diff} > {tol} x {scale}");
}

#[test]
fn torchscript_and_onnx_exports_match_our_encoder() {
    let python = std::env::var("BT_PYTHON").unwrap_or_else(|_| {
        panic!(
            "BT_PYTHON is not set. This test runs scripts/check_export.py with the project's Python \
             (torch, onnx, onnxruntime): run it via `cargo xtask test`, or set BT_PYTHON=.venv/bin/python"
        )
    });
    tch::set_num_threads(1);
    tch::manual_seed(26);
    let mut cfg = Config::default();
    cfg.model.arch = Arch::Resnet18;
    cfg.model.projector = vec![16];
    cfg.data.dataset = DatasetKind::ImageFolder;
    cfg.data.image_size = 64;
    let (_vs, model) = bt_train::setup::build_model(&cfg, Device::Cpu).unwrap();
    let enc = model.encoder();
    // Non-trivial running statistics, so the export must carry the eval-mode batch norm.
    tch::no_grad(|| {
        for _ in 0..2 {
            let _ = enc.forward(&Tensor::randn([8, 3, 64, 64], (Kind::Float, Device::Cpu)), true);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (pt, onnx) = (dir.path().join("enc.pt"), dir.path().join("enc.onnx"));
    let weights = Path::new("test-weights");
    let files = bt_train::export::torchscript(&cfg, enc, weights, &pt).unwrap();
    assert!(files[1].ends_with("enc.pt.json") && files[1].is_file());
    let side: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[1]).unwrap()).unwrap();
    assert_eq!(side["input"]["mean"][0], 0.485, "{side}");
    bt_train::export::onnx(&cfg, enc, weights, &onnx, Path::new(&python)).unwrap();

    // Batch 3 at 80 px: the trace (batch 1, 64 px) must not have fixed either.
    let x = Tensor::randn([3, 3, 80, 80], (Kind::Float, Device::Cpu));
    let h = tch::no_grad(|| enc.forward(&x, false));
    let mut m = tch::CModule::load(&pt).unwrap();
    m.set_eval();
    let got = tch::no_grad(|| m.forward_ts(&[&x])).unwrap();
    assert_close(&got, &h, 1e-5, "TorchScript in tch");

    let io = dir.path().join("io.safetensors");
    Tensor::write_safetensors(&[("x", &x), ("h", &h)], &io).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(&python)
        .arg(root.join("scripts/check_export.py"))
        .arg("--io")
        .arg(&io)
        .arg("--torchscript")
        .arg(&pt)
        .arg("--onnx")
        .arg(&onnx)
        .output()
        .unwrap_or_else(|e| panic!("cannot run BT_PYTHON={python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "check_export.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn onnx_export_without_a_usable_python_says_what_it_needs() {
    let mut cfg = Config::default();
    cfg.model.arch = Arch::Resnet18;
    cfg.model.projector = vec![16];
    cfg.data.image_size = 32;
    let (_vs, model) = bt_train::setup::build_model(&cfg, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = bt_train::export::onnx(
        &cfg,
        model.encoder(),
        Path::new("w"),
        &dir.path().join("e.onnx"),
        Path::new("/nonexistent/python"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("/nonexistent/python") && e.contains("onnx"), "{e}");
    cfg.model.arch = Arch::KerasResnet34;
    let (_vs, model) = bt_train::setup::build_model(&cfg, Device::Cpu).unwrap();
    let e =
        bt_train::export::onnx(&cfg, model.encoder(), Path::new("w"), &dir.path().join("e.onnx"), Path::new("python3"))
            .unwrap_err()
            .to_string();
    assert!(e.contains("keras-resnet34"), "{e}");
}
