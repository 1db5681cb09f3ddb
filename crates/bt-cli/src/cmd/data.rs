//! `bt-cli preview-augment` and `bt-cli bench data`.
use super::config::ConfigArgs;
use anyhow::{bail, Context, Result};
use bt_data::{synthetic, Cifar10, Dataset, SizeCheck, TwinPipeline, TwinPolicy};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Where the images come from.
#[derive(clap::Args, Clone, Debug)]
#[group(required = true, multiple = false)]
pub struct Source {
    /// A `cifar-10-batches-bin` folder (official layout; custom sizes accepted).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// The embedded synthetic shapes dataset.
    #[arg(long)]
    pub synthetic: bool,
}

impl Source {
    /// The training split.
    fn load(&self, n_synthetic: usize, seed: u64) -> Result<Dataset> {
        match &self.data {
            Some(dir) => Ok(Cifar10::load_with(dir, SizeCheck::Records)
                .with_context(|| format!("loading CIFAR-10 from {}", dir.display()))?
                .train),
            None => Ok(synthetic::generate(n_synthetic, seed, synthetic::Split::Train)),
        }
    }
}

#[derive(clap::Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub source: Source,
    /// Output PNG.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (rows).
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub source: Source,
    /// Worker threads (0 = all cores; default: the config's data.workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed batches (after one warm-up batch).
    #[arg(long, default_value_t = 40)]
    pub batches: usize,
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

pub fn preview(a: PreviewArgs) -> Result<()> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let cfg = a.cfg.load()?;
    let ds = a.source.load(a.n.max(10), cfg.run.seed)?;
    let policy = TwinPolicy::from_config(&cfg.augment, cfg.run.seed)?;
    let grid = bt_data::preview_grid(&ds, &policy, a.n, cfg.run.seed);
    bt_data::save_png(&grid, &a.out)?;
    println!(
        "wrote {} ({}x{}: {} rows of original | view A | view B, policy {})",
        a.out.display(),
        grid.width(),
        grid.height(),
        a.n.min(ds.len()),
        cfg.augment.policy
    );
    Ok(())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.batches == 0 {
        bail!("--batches must be at least 1");
    }
    let mut cfg = a.cfg.load()?;
    if let Some(t) = a.threads {
        cfg.data.workers = t;
    }
    let t0 = Instant::now();
    let need = (a.batches + 1) * cfg.data.batch_size;
    let ds = Arc::new(a.source.load(need.max(cfg.data.synthetic_train), cfg.run.seed)?);
    println!("dataset: {} images, loaded in {:.2}s", ds.len(), t0.elapsed().as_secs_f64());
    let pipe = TwinPipeline::new(ds, &cfg.data, &cfg.augment, cfg.run.seed)?;
    let per_epoch = pipe.batches_per_epoch();
    if per_epoch == 0 {
        bail!("dataset smaller than one batch of {}", cfg.data.batch_size);
    }
    // Warm-up batch (thread pool start, page faults of the first buffers) is not timed.
    let mut epoch = 0u64;
    let mut it = pipe.epoch(epoch, 0);
    it.next().context("empty epoch")??;
    let start = Instant::now();
    let mut pairs = 0usize;
    let mut done = 0;
    while done < a.batches {
        match it.next() {
            Some(b) => {
                pairs += b?.batch_size;
                done += 1;
            }
            None => {
                epoch += 1;
                it = pipe.epoch(epoch, 0);
            }
        }
    }
    let dt = start.elapsed().as_secs_f64();
    drop(it);
    let rate = pairs as f64 / dt;
    println!(
        "policy {} | batch {} | {} threads | {} batches in {:.3}s",
        cfg.augment.policy,
        cfg.data.batch_size,
        pipe.threads(),
        done,
        dt
    );
    println!("pairs_per_s={rate:.0}");
    Ok(())
}
