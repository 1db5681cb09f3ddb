//! `bt-cli embed`: frozen embeddings and labels of a split, as `.npy` or `.safetensors`.
use super::eval::Source;
use anyhow::Result;
use bt_train::eval::{self, FeatureKind};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Features {
    /// Encoder output (`N x F`, 512 for ResNet-18/34 at width 64).
    Encoder,
    /// Projector output (`N x D`, the embedding the loss sees).
    Projector,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub src: Source,
    /// Which split (default: test when the data has a labeled evaluation split, else train).
    #[arg(long, value_enum)]
    pub split: Option<Split>,
    /// Encoder features (default) or projector embeddings.
    #[arg(long, value_enum, default_value = "encoder")]
    pub features: Features,
    /// Output: `X.npy` (embeddings; labels go to `X.labels.npy`) or `X.safetensors`
    /// (tensors `embeddings` and `labels`); the images of the rows, in order, go to
    /// `X.files.txt` (file paths for image folders).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    // A bad --out is refused before the model is loaded.
    bt_train::embed::Format::of(&a.out)?;
    let l = a.src.load()?;
    let data = bt_train::setup::load_data(&l.cfg)?;
    let split = a.split.unwrap_or(if data.test.is_some() { Split::Test } else { Split::Train });
    let ds = match split {
        Split::Train => &data.train,
        Split::Test => data.test()?,
    };
    let kind = match a.features {
        Features::Encoder => FeatureKind::Encoder,
        Features::Projector => FeatureKind::Projector,
    };
    let (x, y) = eval::features(&l.model, ds, &l.cfg.data, kind, 256, false, l.device)?;
    // Row i is image i of the source: its file (or record) names the row.
    let names: Vec<String> = (0..ds.len()).map(|i| ds.describe(i)).collect();
    let meta = HashMap::from([
        ("split".to_string(), format!("{split:?}").to_lowercase()),
        ("features".to_string(), format!("{:?}", a.features).to_lowercase()),
        ("checkpoint".to_string(), l.weights.display().to_string()),
    ]);
    let files = bt_train::embed::write(&a.out, &x, &y, &names, meta)?;
    let others: Vec<String> = files[1..].iter().map(|p| p.display().to_string()).collect();
    let labels = format!(" (also {})", others.join(", "));
    println!(
        "wrote {} x {} {:?} embeddings of the {:?} split to {}{labels}",
        x.size()[0],
        x.size()[1],
        a.features,
        split,
        a.out.display()
    );
    Ok(())
}
