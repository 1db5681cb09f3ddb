//! `bt-cli demo`: the README's first command. Pretrains the `demo` preset (synthetic data, or
//! CIFAR-10 when `data/cifar-10-batches-bin` exists), then puts the linear-probe and kNN
//! accuracy of the pretrained encoder next to those of the same architecture at its random
//! initialization (the very weights pretraining started from).
use crate::observer::CliObserver;
use anyhow::Result;
use bt_config::{ConfigBuilder, DatasetKind};
use bt_train::{setup, RunFolder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Run folder (overwritten).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Pretraining epochs (default: the preset's run.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Use the synthetic dataset even when CIFAR-10 is present.
    #[arg(long)]
    pub synthetic: bool,
    /// auto, cpu, cuda or cuda:N (default: the preset's run.device).
    #[arg(long)]
    pub device: Option<String>,
    /// `dotted.key=value` overrides of the demo preset (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// Where the demo looks for CIFAR-10.
pub const CIFAR_DIR: &str = "data/cifar-10-batches-bin";

pub fn run(a: Args) -> Result<()> {
    let t0 = Instant::now();
    let mut b = ConfigBuilder::new();
    b.preset("demo")?;
    if let Some(e) = a.epochs {
        b.set(&format!("run.epochs={e}"))?;
    }
    if let Some(d) = &a.device {
        b.set(&format!("run.device=\"{d}\""))?;
    }
    for s in &a.sets {
        b.set(s)?;
    }
    let use_cifar = !a.synthetic && Path::new(CIFAR_DIR).join("data_batch_1.bin").is_file();
    if use_cifar {
        b.set("data.dataset=\"cifar10\"")?.set(&format!("data.dir=\"{CIFAR_DIR}\""))?;
    }
    let cfg = b.build()?;
    let device = setup::device(&cfg.run.device)?;
    let data = if cfg.data.dataset == DatasetKind::Cifar10 {
        // The demo's time budget (< 10 min on 2 cores) fixes its image count: the first
        // synthetic_train / synthetic_test images of each CIFAR-10 split.
        let (train, test, _) = bt_data::load_from_config(&cfg)?;
        let train = setup::head(&train, cfg.data.synthetic_train)?;
        let test: Arc<dyn bt_data::ImageSource> = Arc::new(setup::head(&test, cfg.data.synthetic_test)?);
        let what = format!("CIFAR-10 subset ({} train, {} test) from {CIFAR_DIR}", train.len(), test.len());
        setup::Data::new(Arc::new(train), Some(test), what)
    } else {
        setup::load_data(&cfg)?
    };
    println!("demo: {} epochs of the `demo` preset on {} ({device:?})", cfg.run.epochs, data.description);
    let run = RunFolder::create(&a.out)?;
    let t = Instant::now();
    let bt_train::demo::DemoResult { outcome: o, rows } =
        bt_train::demo::run(&cfg, &data, device, &run, CliObserver::default())?;
    tracing::info!("pretrained and evaluated in {:.1}s", t.elapsed().as_secs_f64());
    bt_train::report::write(&run)?;
    let acc = |v: &Value| v["test_top1"].as_f64().unwrap_or(f64::NAN);
    println!();
    println!("{:<22} {:>18} {:>14}", "test top-1", "linear (standard)", format!("kNN (k={})", cfg.eval.knn_k));
    for (w, lin, knn) in &rows {
        let label = if *w == "pretrained" { "pretrained encoder" } else { "random init" };
        println!("{label:<22} {:>17.2}% {:>13.2}%", 100.0 * acc(lin), 100.0 * acc(knn));
    }
    println!();
    println!(
        "pretraining {:.0}s ({} steps), total {:.0}s; run folder: {} (read {}/report.md)",
        o.wall_s,
        o.steps,
        t0.elapsed().as_secs_f64(),
        run.dir().display(),
        run.dir().display()
    );
    println!(
        "linear_pretrained={:.4} linear_random={:.4} knn_pretrained={:.4} knn_random={:.4}",
        acc(&rows[0].1),
        acc(&rows[1].1),
        acc(&rows[0].2),
        acc(&rows[1].2)
    );
    Ok(())
}
