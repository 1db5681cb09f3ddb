//! Export for serving: the encoder as TorchScript (traced in-process by libtorch, see
//! [`bt_model::Encoder::export_torchscript`]) or ONNX (our checkpoint, which has torchvision's
//! names, rebuilt as torchvision's ResNet and exported by the provisioned Python's `torch.onnx`,
//! the exporter PyTorch maintains; the script is embedded here and written to a temporary
//! file). Beside the model goes `<out>.json`: architecture, feature width, input size and the
//! normalization the input must already have.
use crate::error::{refuse, Error, Result};
use bt_config::Config;
use bt_model::Encoder;
use std::path::{Path, PathBuf};
use std::process::Command;

const ONNX_SCRIPT: &str = include_str!("export_onnx.py");

/// The sidecar file of an exported model: `encoder.pt` -> `encoder.pt.json`.
pub fn sidecar_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// What a serving program needs to know about the input (written as the sidecar JSON).
pub fn sidecar(cfg: &Config, enc: &Encoder, format: &str, weights: &Path) -> serde_json::Value {
    let (mean, std) = cfg.data.normalization().unwrap_or(([0.0; 3], [1.0; 3]));
    serde_json::json!({
        "format": format,
        "arch": format!("{:?}", cfg.model.arch),
        "feature_dim": enc.feature_dim(),
        "input": {
            "layout": "N x 3 x H x W, float32, RGB",
            "height": cfg.data.image_size,
            "width": cfg.data.image_size,
            "pixels": "x = (rgb / 255 - mean) / std per channel",
            "mean": mean,
            "std": std,
            "eval_transform": "resize the shorter side, center-crop to height x width (bt-cli embed's)",
        },
        "output": "N x feature_dim encoder features (no projector, no fc)",
        "weights": weights.display().to_string(),
    })
}

/// Writes `enc` as TorchScript to `out` (traced at `data.image_size`) and the sidecar JSON.
pub fn torchscript(cfg: &Config, enc: &Encoder, weights: &Path, out: &Path) -> Result<Vec<PathBuf>> {
    let s = cfg.data.image_size as i64;
    enc.export_torchscript(out, s, s)?;
    let side = sidecar_path(out);
    let text = serde_json::to_string_pretty(&sidecar(cfg, enc, "torchscript", weights))?;
    crate::atomic::atomic_write(&side, text.as_bytes())?;
    Ok(vec![out.to_path_buf(), side])
}

/// Writes `enc` as ONNX to `out`: its checkpoint (torchvision names) goes to a temporary file,
/// and `python` (a Python with torch, torchvision, safetensors and onnx: the provisioned
/// `.venv`) rebuilds it as torchvision's ResNet and exports it with `torch.onnx.export`. The
/// torchvision ResNets (ImageNet or CIFAR stem, width 64) only: a TorchScript trace carries its
/// weights as graph constants, which the exporter does not take.
pub fn onnx(cfg: &Config, enc: &Encoder, weights: &Path, out: &Path, python: &Path) -> Result<Vec<PathBuf>> {
    use bt_config::Arch;
    let arch = match cfg.model.arch {
        Arch::Resnet18 => "resnet18",
        Arch::Resnet34 => "resnet34",
        Arch::Resnet50 => "resnet50",
        Arch::CifarResnet18 => "cifar-resnet18",
        Arch::CifarResnet34 => "cifar-resnet34",
        Arch::CifarResnet50 => "cifar-resnet50",
        Arch::KerasResnet34 => {
            refuse!("ONNX export covers the torchvision ResNets; keras-resnet34 exports as TorchScript only")
        }
    };
    if cfg.model.width != 64 {
        refuse!("ONNX export rebuilds torchvision's ResNet, whose width is 64; model.width = {}", cfg.model.width);
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempdir_in(dir)?;
    let st = tmp.join("encoder.safetensors");
    // Not `onnx.py`: the script's folder comes first on sys.path, and `import onnx` would find it.
    let script = tmp.join("export_onnx.py");
    let res = std::fs::write(&script, ONNX_SCRIPT).map_err(|e| Error::io("writing", &script, e)).and_then(|()| {
        enc.save(&st)?;
        let s = cfg.data.image_size.to_string();
        Ok(Command::new(python).arg(&script).arg(&st).arg(arch).arg(out).arg(&s).arg(&s).output())
    });
    let _ = std::fs::remove_dir_all(&tmp);
    let o = match res? {
        Ok(o) => o,
        Err(e) => refuse!(
            "ONNX export needs a Python with torch, torchvision, safetensors and onnx (the provisioned \
             .venv/bin/python; set BT_PYTHON or --python): cannot run {}: {e}",
            python.display()
        ),
    };
    if !o.status.success() {
        refuse!(
            "ONNX export with {} failed ({}): {}",
            python.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim_end().lines().last().unwrap_or("")
        );
    }
    let side = sidecar_path(out);
    let text = serde_json::to_string_pretty(&sidecar(cfg, enc, "onnx", weights))?;
    crate::atomic::atomic_write(&side, text.as_bytes())?;
    Ok(vec![out.to_path_buf(), side])
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    for i in 0..100u32 {
        let p = dir.join(format!(".bt-export-{}-{i}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io("creating", &p, e)),
        }
    }
    refuse!("cannot create a temporary folder in {}", dir.display())
}
