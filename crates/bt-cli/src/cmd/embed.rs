//! `bt-cli embed`: frozen embeddings and labels of a split, as `.npy` or `.safetensors`.
use super::eval::Source;
use crate::runfolder::atomic_write;
use crate::setup::{self, FeatureKind};
use crate::tensors::{npy_bytes, safetensors_bytes};
use anyhow::{bail, Result};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub src: Source,
    /// Which split.
    #[arg(long, value_enum, default_value = "test")]
    pub split: Split,
    /// Encoder features (default) or projector embeddings.
    #[arg(long, value_enum, default_value = "encoder")]
    pub features: FeatureKind,
    /// Output: `X.npy` (embeddings; labels go to `X.labels.npy`) or `X.safetensors`
    /// (tensors `embeddings` and `labels`).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let ext = a.out.extension().and_then(|e| e.to_str()).unwrap_or("").to_string();
    if ext != "npy" && ext != "safetensors" {
        bail!("--out {}: the file name must end in .npy or .safetensors", a.out.display());
    }
    let l = a.src.load()?;
    let data = setup::load_data(&l.cfg)?;
    let ds = match a.split {
        Split::Train => &data.train,
        Split::Test => &data.test,
    };
    let (x, y) = setup::features(&l.model, ds, a.features, 256, false, l.device)?;
    if let Some(dir) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let labels_path = if ext == "npy" {
        let lp = a.out.with_extension("labels.npy");
        atomic_write(&a.out, &npy_bytes(&x)?)?;
        atomic_write(&lp, &npy_bytes(&y)?)?;
        Some(lp)
    } else {
        let meta = HashMap::from([
            ("split".to_string(), format!("{:?}", a.split).to_lowercase()),
            ("features".to_string(), format!("{:?}", a.features).to_lowercase()),
            ("checkpoint".to_string(), l.weights.display().to_string()),
        ]);
        atomic_write(&a.out, &safetensors_bytes(&[("embeddings".into(), x.shallow_clone()), ("labels".into(), y.shallow_clone())], meta)?)?;
        None
    };
    println!(
        "wrote {} x {} {:?} embeddings of the {:?} split to {}{}",
        x.size()[0],
        x.size()[1],
        a.features,
        a.split,
        a.out.display(),
        labels_path.map(|p| format!(" (labels: {})", p.display())).unwrap_or_default()
    );
    Ok(())
}
