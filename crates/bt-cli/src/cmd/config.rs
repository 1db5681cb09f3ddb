//! `bt-cli config`: the effective config as TOML.
use anyhow::Result;
use bt_config::{Config, ConfigBuilder};
use std::path::PathBuf;

/// Where a config comes from: a preset, a file over it, and `--set` overrides over both.
#[derive(clap::Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Preset name (crates/bt-config/configs/NAME.toml): keras-seed, cifar-resnet18, demo.
    #[arg(long, default_value = "keras-seed")]
    pub preset: String,
    /// A TOML file merged over the preset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `dotted.key=value` overrides, applied last (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
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

/// `--data DIR | --synthetic`: overrides the config's `data.dataset` / `data.dir`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DataArgs {
    /// CIFAR-10 binary folder (default: the config's data.dir, `data/cifar-10-batches-bin`).
    #[arg(long, conflicts_with = "synthetic")]
    pub data: Option<PathBuf>,
    /// Use the embedded synthetic dataset (no download needed).
    #[arg(long)]
    pub synthetic: bool,
}

impl DataArgs {
    /// Applies the flags to a config.
    pub fn apply(&self, cfg: &mut Config) {
        if self.synthetic {
            cfg.data.dataset = bt_config::DatasetKind::Synthetic;
        } else if let Some(d) = &self.data {
            cfg.data.dataset = bt_config::DatasetKind::Cifar10;
            cfg.data.dir = d.clone();
        }
    }
}
