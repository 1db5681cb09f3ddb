//! Published checkpoints in: torchvision and timm ResNet-50 state dicts, the official Barlow
//! Twins `main.py` checkpoint and `resnet50.pth`, a solo-learn Lightning checkpoint, each
//! written by `scripts/fixtures/foreign_checkpoints.py` with the project's Python (`BT_PYTHON`)
//! at test time (random weights and BN statistics; ~600 MB, too large to commit). Imported into
//! ours, the eval-mode features (and projector outputs) equal PyTorch's own forward of the same
//! input. Wrong architectures, truncated, legacy, foreign and non-weights-only files fail with
//! errors naming the file and what is wrong.
//!
//! Tolerance: both sides run the same libtorch kernels with one thread, so the results are
//! (nearly) bit-identical; 1e-5 relative to the largest feature leaves room for a different
//! summation order and nothing else (a wrong BN statistic or a missing layer is off by > 1e-2).
use bt_config::{Arch, ModelConfig};
use bt_model::foreign::{self, FileFormat, Layout, Loaded};
use bt_model::{BarlowTwins, Encoder, ModelError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{nn, Device, Tensor};

struct Fixtures {
    _dir: tempfile::TempDir,
    path: PathBuf,
    io: HashMap<String, Tensor>,
}

// Tensors are not Sync; the map is only read, each test takes its own copies under the lock.
unsafe impl Sync for Fixtures {}
unsafe impl Send for Fixtures {}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let python = std::env::var("BT_PYTHON").unwrap_or_else(|_| {
            panic!(
                "BT_PYTHON is not set. This test runs scripts/fixtures/foreign_checkpoints.py with the project's \
                 Python (torch, torchvision, timm): run it via `cargo xtask test`, or set BT_PYTHON=.venv/bin/python"
            )
        });
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(&python)
            .arg(root.join("scripts/fixtures/foreign_checkpoints.py"))
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run BT_PYTHON={python}: {e}"));
        assert!(
            out.status.success(),
            "fixture script failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let io = Tensor::read_safetensors(dir.path().join("io.safetensors")).unwrap().into_iter().collect();
        Fixtures { path: dir.path().to_path_buf(), _dir: dir, io }
    })
}

fn file(name: &str) -> PathBuf {
    fixtures().path.join(name)
}

fn io(name: &str) -> Tensor {
    fixtures().io.get(name).unwrap_or_else(|| panic!("io.safetensors lacks {name}")).copy()
}

/// max |a - b| <= tol * max(1, max |b|), failing on NaN and on a shape mismatch.
fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    assert_eq!(a.size(), b.size(), "{what}: shapes differ");
    let diff = (a - b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]).max(1.0);
    assert!(diff <= tol * scale, "{what}: max |diff| {diff} > {tol} x {scale}");
}

fn encoder(arch: Arch) -> (nn::VarStore, Encoder) {
    let vs = nn::VarStore::new(Device::Cpu);
    let e = Encoder::new(&vs.root(), &ModelConfig { arch, ..ModelConfig::default() });
    (vs, e)
}

fn features(e: &Encoder) -> Tensor {
    tch::set_num_threads(1);
    tch::no_grad(|| e.forward(&io("x"), false))
}

#[test]
fn torchvision_resnet50_state_dict_matches_torchvision_forward() {
    let im = foreign::import(file("tv_resnet50.pth")).unwrap();
    assert_eq!((im.format, im.layout), (FileFormat::TorchZip, Layout::Torchvision));
    assert!(im.notes.iter().any(|n| n.contains("fc.*")), "fc not noted: {:?}", im.notes);
    let (_vs, e) = encoder(Arch::Resnet50);
    e.load_imported(&im).unwrap();
    assert_close(&features(&e), &io("h_tv50"), 1e-5, "torchvision resnet50");
}

#[test]
fn timm_resnet50_state_dict_matches_timm_forward() {
    let im = foreign::import(file("timm_resnet50.pth")).unwrap();
    assert_eq!(im.layout, Layout::Torchvision);
    let (_vs, e) = encoder(Arch::Resnet50);
    e.load_imported(&im).unwrap();
    assert_close(&features(&e), &io("h_timm50"), 1e-5, "timm resnet50");
}

#[test]
fn official_full_checkpoint_loads_encoder_and_projector() {
    let im = foreign::import(file("official_full.pth")).unwrap();
    assert_eq!(im.layout, Layout::OfficialFull);
    let notes = im.notes.join("\n");
    assert!(notes.contains("module.bn.*") && notes.contains("optimizer.* (training state, not read)"), "{notes}");
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch: Arch::Resnet50,
        projector: vec![64, 64, 64],
        projector_bias: false,
        ..ModelConfig::default()
    };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    assert_eq!(m.load_imported(&im, true).unwrap(), Loaded::EncoderAndProjector);
    tch::set_num_threads(1);
    let (h, z) = tch::no_grad(|| m.forward_features(&io("x"), false));
    assert_close(&h, &io("h_official"), 1e-5, "official backbone");
    assert_close(&z, &io("z_official"), 1e-5, "official projector");

    // The published resnet50.pth: the same backbone, flat, no fc.
    let flat = foreign::import(file("official_resnet50.pth")).unwrap();
    assert_eq!(flat.layout, Layout::Torchvision);
    assert!(flat.notes.is_empty(), "{:?}", flat.notes);
    let (_vs, e) = encoder(Arch::Resnet50);
    e.load_imported(&flat).unwrap();
    assert_close(&features(&e), &io("h_official"), 1e-5, "official resnet50.pth");

    // A projector of other widths is refused with its keys, and nothing is half-loaded.
    let vs = nn::VarStore::new(Device::Cpu);
    let other = BarlowTwins::new(&vs.root(), &ModelConfig { projector: vec![64, 32], ..cfg });
    let e = other.load_imported(&im, true).unwrap_err().to_string();
    assert!(e.contains("projector") && e.contains("3.weight"), "{e}");
}

#[test]
fn solo_learn_checkpoint_loads_backbone_and_projector() {
    let im = foreign::import(file("solo_resnet18.ckpt")).unwrap();
    assert_eq!(im.layout, Layout::SoloLearn);
    assert!(im.notes.iter().any(|n| n.contains("classifier")), "{:?}", im.notes);
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        projector: vec![32, 32, 16],
        projector_bias: true,
        ..ModelConfig::default()
    };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    assert_eq!(m.load_imported(&im, true).unwrap(), Loaded::EncoderAndProjector);
    tch::set_num_threads(1);
    let (h, z) = tch::no_grad(|| m.forward_features(&io("x"), false));
    assert_close(&h, &io("h_solo"), 1e-5, "solo-learn backbone");
    assert_close(&z, &io("z_solo"), 1e-5, "solo-learn projector");
}

#[test]
fn wrong_architecture_fails_with_the_key_lists() {
    let im = foreign::import(file("tv_resnet50.pth")).unwrap();
    let (_vs, e) = encoder(Arch::Resnet18);
    let before = e.variables()[0].tensor.copy();
    let err = e.load_imported(&im).unwrap_err();
    let ModelError::Import(m) = &err else { panic!("{err}") };
    let (missing, unexpected, misshaped) = (&m.missing, &m.unexpected, &m.misshaped);
    assert!(unexpected.iter().any(|k| k == "layer1.0.conv3.weight"), "{unexpected:?}");
    assert!(misshaped.iter().any(|k| k.starts_with("layer1.0.conv1.weight")), "{misshaped:?}");
    assert!(missing.is_empty(), "{missing:?}");
    let msg = err.to_string();
    assert!(msg.contains("tv_resnet50.pth") && msg.contains("looks like resnet50"), "{msg}");
    assert!(e.variables()[0].tensor.equal(&before), "the encoder changed on error");
}

fn err_of(path: &Path) -> String {
    foreign::import(path).unwrap_err().to_string()
}

#[test]
fn truncated_foreign_legacy_and_unsafe_files_fail_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(file("solo_resnet18.ckpt")).unwrap();
    let cut = dir.path().join("cut.ckpt");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let e = err_of(&cut);
    assert!(e.contains("cut.ckpt") && e.contains("truncated"), "{e}");

    let text = dir.path().join("notes.pth");
    std::fs::write(&text, "just some text, not weights\n").unwrap();
    let e = err_of(&text);
    assert!(e.contains("notes.pth") && e.contains("neither a torch.save zip archive nor safetensors"), "{e}");

    let e = err_of(&file("legacy.pth"));
    assert!(e.contains("legacy.pth") && e.contains("legacy (pre-1.6, non-zip)"), "{e}");

    let e = err_of(&file("evil.pth"));
    assert!(e.contains("evil.pth") && e.contains("`argparse.Namespace`"), "{e}");

    let e = err_of(&dir.path().join("absent.pth"));
    assert!(e.contains("absent.pth") && e.contains("cannot read"), "{e}");
}

#[test]
fn our_safetensors_checkpoints_are_recognized_too() {
    let dir = tempfile::tempdir().unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let cfg = ModelConfig { arch: Arch::Resnet18, projector: vec![16, 8], ..ModelConfig::default() };
    let m = BarlowTwins::new(&vs.root(), &cfg);
    let (full, enc) = (dir.path().join("model.safetensors"), dir.path().join("encoder.safetensors"));
    m.save_full(&full).unwrap();
    m.save_encoder(&enc).unwrap();
    let im = foreign::import(&full).unwrap();
    assert_eq!((im.format, im.layout), (FileFormat::Safetensors, Layout::Ours));
    let vs2 = nn::VarStore::new(Device::Cpu);
    let m2 = BarlowTwins::new(&vs2.root(), &ModelConfig { ..cfg.clone() });
    assert_eq!(m2.load_imported(&im, true).unwrap(), Loaded::EncoderAndProjector);
    for (a, b) in m.variables().iter().zip(m2.variables()) {
        assert!(a.tensor.equal(&b.tensor), "{} differs", a.name);
    }
    let im = foreign::import(&enc).unwrap();
    assert_eq!(im.layout, Layout::Torchvision);
    let (_vs, e) = encoder(Arch::Resnet18);
    e.load_imported(&im).unwrap();
}
