//! `bt-cli preview-augment` and `bt-cli bench data`.
use super::config::{ConfigArgs, DataArgs};
use anyhow::{bail, Result};
use bt_data::TwinPolicy;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub source: DataArgs,
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
    pub source: DataArgs,
    /// Worker threads (0 = all cores; default: the config's data.workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed batches (after one warm-up batch).
    #[arg(long, default_value_t = 40)]
    pub batches: usize,
    /// Also time the pipeline for about this many seconds per thread count (1 and all
    /// `--threads`), the figure `docs/BENCHMARKS.md` compares with the Python pipelines.
    #[arg(long)]
    pub seconds: Option<f64>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

pub fn preview(a: PreviewArgs) -> Result<()> {
    if a.n == 0 {
        bail!("--n must be at least 1");
    }
    let mut cfg = a.cfg.load()?;
    a.source.apply(&mut cfg);
    cfg.data.synthetic_train = cfg.data.synthetic_train.min(a.n.max(10));
    let data = bt_train::setup::load_data(&cfg)?;
    let policy = TwinPolicy::from_config(&cfg.augment, cfg.run.seed)?;
    let grid = bt_data::preview_grid_sized(&*data.train, &policy, a.n, cfg.run.seed, cfg.data.image_size)?;
    bt_data::save_png(&grid, &a.out)?;
    println!(
        "wrote {} ({}x{}: {} rows of original | view A | view B, policy {}, {} px)",
        a.out.display(),
        grid.width(),
        grid.height(),
        a.n.min(data.train.len()),
        cfg.augment.policy,
        cfg.data.image_size
    );
    Ok(())
}

pub fn bench(a: BenchArgs) -> Result<()> {
    if a.batches == 0 {
        bail!("--batches must be at least 1");
    }
    let mut cfg = a.cfg.load()?;
    a.source.apply(&mut cfg);
    if let Some(t) = a.threads {
        cfg.data.workers = t;
    }
    let t0 = Instant::now();
    let need = (a.batches + 1) * cfg.data.batch_size;
    cfg.data.synthetic_train = need.max(cfg.data.synthetic_train);
    let data = bt_train::setup::load_data(&cfg)?;
    println!(
        "dataset: {} ({} images), opened in {:.2}s",
        data.description,
        data.train.len(),
        t0.elapsed().as_secs_f64()
    );
    if data.train.len() < cfg.data.batch_size {
        bail!("dataset smaller than one batch of {}", cfg.data.batch_size);
    }
    let mut rate = 0.0;
    match a.seconds {
        None => {
            let pipe = bt_data::TwinPipeline::new(data.train.clone(), &cfg.data, &cfg.augment, cfg.run.seed)?;
            // Warm-up batch (thread pool start, page faults of the first buffers) is not timed.
            let mut epoch = 0u64;
            let mut it = pipe.epoch(epoch, 0);
            it.next().ok_or_else(|| anyhow::anyhow!("empty epoch"))??;
            let start = Instant::now();
            let (mut pairs, mut done) = (0usize, 0usize);
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
            println!(
                "policy {} | {} px | batch {} | {} threads | {done} batches in {dt:.3}s",
                cfg.augment.policy,
                cfg.data.image_size,
                cfg.data.batch_size,
                pipe.threads()
            );
            rate = pairs as f64 / dt;
        }
        Some(secs) => {
            let all = if cfg.data.workers == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                cfg.data.workers
            };
            let mut counts = vec![1];
            if all > 1 {
                counts.push(all);
            }
            for threads in counts {
                let t = bt_data::bench::pairs_per_second(
                    data.train.clone(),
                    &cfg.data,
                    &cfg.augment,
                    cfg.run.seed,
                    threads,
                    secs,
                )?;
                println!(
                    "policy {} | {} px | batch {} | {threads} thread(s): {:.1} pairs/s ({:.1} per thread), {} pairs in {:.1}s",
                    cfg.augment.policy, cfg.data.image_size, cfg.data.batch_size, t.pairs_per_second, t.pairs_per_second / threads as f64, t.pairs, t.seconds
                );
                rate = t.pairs_per_second;
            }
        }
    }
    println!("pairs_per_s={rate:.0}");
    Ok(())
}
