//! `bt-cli config`: the effective config as TOML.
use anyhow::Result;
use bt_config::{Config, ConfigBuilder};
use std::path::PathBuf;

/// Where a config comes from: a preset, a file over it, and `--set` overrides over both.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    #[arg(long, default_value = "keras-seed", help = preset_help())]
    pub preset: String,
    /// A TOML file merged over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `dotted.key=value` overrides, applied last (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// `--preset`'s help, from the list of embedded presets (so it never lists fewer).
fn preset_help() -> String {
    format!("Preset name (crates/bt-config/configs/NAME.toml): {}", bt_config::preset_names().join(", "))
}

impl ConfigArgs {
    /// Assembles and validates the config.
    pub fn load(&self) -> Result<Config> {
        let mut b = ConfigBuilder::new();
        b.preset(&self.preset)?;
        if let Some(path) = &self.config {
            b.file(path)?;
        }
        for s in &self.sets {
            b.set(s)?;
        }
        Ok(b.build()?)
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

pub fn run(a: Args) -> Result<()> {
    print!("{}", a.cfg.load()?.to_toml());
    Ok(())
}

/// `--data DIR [--test-data DIR] | --synthetic`: overrides the config's `data.dataset`,
/// `data.dir` and `data.test_dir`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DataArgs {
    /// The images: a CIFAR-10 binary folder (`data_batch_1.bin`), an STL-10 binary folder
    /// (`train_X.bin`/`unlabeled_X.bin`), or a folder of images (one subfolder per class, or
    /// any tree of JPEG/PNG/WebP files). The kind is detected unless the config names an image
    /// folder or STL-10 already.
    #[arg(long, conflicts_with = "synthetic")]
    pub data: Option<PathBuf>,
    /// Labeled evaluation images of an image-folder dataset (one subfolder per class):
    /// `data.test_dir`.
    #[arg(long, requires = "data")]
    pub test_data: Option<PathBuf>,
    /// Use the embedded synthetic dataset (no download needed).
    #[arg(long)]
    pub synthetic: bool,
}

impl DataArgs {
    /// Applies the flags to a config.
    pub fn apply(&self, cfg: &mut Config) {
        use bt_config::DatasetKind;
        if self.synthetic {
            cfg.data.dataset = DatasetKind::Synthetic;
        } else if let Some(d) = &self.data {
            if !matches!(cfg.data.dataset, DatasetKind::ImageFolder | DatasetKind::Stl10) {
                cfg.data.dataset = bt_data::detect_kind(d);
            }
            cfg.data.dir = d.clone();
        }
        if let Some(t) = &self.test_data {
            cfg.data.test_dir = t.clone();
        }
    }
}
