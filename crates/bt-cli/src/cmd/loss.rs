//! `bt-cli bench loss`: reference (D x D) vs fused (Gram) Barlow Twins loss, same inputs.
use super::config::ConfigArgs;
use anyhow::Result;
use bt_config::LossImpl;
use bt_loss::{barlow_twins_loss, LossOptions};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Batch size N.
    #[arg(long, default_value_t = 512)]
    pub n: i64,
    /// Embedding dimension D.
    #[arg(long, default_value_t = 5000)]
    pub d: i64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed repetitions of each measurement (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Normalization, lambda and scale come from the config's `[loss]`.
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of `iters` runs of `f` after one warm-up.
fn time(d: Device, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    sync(d);
    let mut t: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            sync(d);
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let cfg = a.cfg.load()?;
    let dev = bt_train::setup::device(&a.device)?;
    tch::manual_seed(0);
    let base = Tensor::randn([a.n, a.d], (Kind::Float, dev));
    let za = (&base * 2.0 + 0.5).set_requires_grad(true);
    let zb = (&base + Tensor::randn([a.n, a.d], (Kind::Float, dev))).set_requires_grad(true);
    let opts = LossOptions::from_config(&cfg.loss);
    println!(
        "loss bench: N={} D={} device={:?} threads={} normalization={:?} iters={} (median)",
        a.n,
        a.d,
        dev,
        tch::get_num_threads(),
        opts.normalization,
        a.iters
    );
    let mut res = vec![];
    for imp in [LossImpl::Reference, LossImpl::Fused] {
        let o = opts.clone().with_implementation(imp);
        let mut value = 0.0;
        let fwd = time(dev, a.iters, || {
            let out = tch::no_grad(|| barlow_twins_loss(&za, &zb, &o).expect("loss"));
            value = out.loss.double_value(&[]);
        });
        let fb = time(dev, a.iters, || {
            let out = barlow_twins_loss(&za, &zb, &o).expect("loss");
            let g = Tensor::run_backward(&[&out.loss], &[&za, &zb], false, false);
            let _ = g[0].sum(Kind::Float).double_value(&[]);
        });
        println!(
            "{:<9} forward {:>9.2} ms   forward+backward {:>9.2} ms   loss {:.9e}",
            format!("{imp:?}").to_lowercase(),
            fwd * 1e3,
            fb * 1e3,
            value
        );
        res.push((fwd, fb, value));
    }
    let (r, f) = (res[0], res[1]);
    let rel = (r.2 - f.2).abs() / r.2.abs().max(1e-30);
    println!("fused/reference loss relative difference: {rel:.2e}");
    println!("speedup fused vs reference: forward {:.2}x, forward+backward {:.2}x", r.0 / f.0, r.1 / f.1);
    println!("fused_speedup={:.3}", r.1 / f.1);
    Ok(())
}
