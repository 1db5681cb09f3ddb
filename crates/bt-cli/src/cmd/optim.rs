//! `bt-cli bench optim`: one optimizer step on the parameter shapes of a preset's model: the
//! grouped (flat-buffer) optimizer vs the per-tensor reference loop, and optionally timm's Lamb
//! from Python on the same shapes, in the same run.
use super::config::ConfigArgs;
use anyhow::{bail, Context, Result};
use bt_optim::{build, build_per_tensor, trainable_named, LrPair, Optimizer};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Timed steps per implementation (after one warm-up step); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
    /// Also time timm's Lamb with this script (bench/optim_timm.py) on the same shapes.
    #[arg(long, value_name = "PATH")]
    pub compare_python: Option<PathBuf>,
    /// Python interpreter for --compare-python.
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    /// The model (`[model]`) and optimizer (`[optim]`) come from the config.
    #[command(flatten)]
    pub cfg: ConfigArgs,
}

fn median_step_ms(opt: &mut dyn Optimizer, iters: usize, lr: &LrPair) -> Result<f64> {
    opt.step(lr)?;
    let mut t = Vec::new();
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        opt.step(lr)?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let cfg = a.cfg.load()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = bt_model::BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    let named = trainable_named(&vs);
    let numel: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
    // Gradients: d/dp Σ p·c = c, random, allocated once and kept (no zero_grad while timing).
    tch::manual_seed(0);
    let total = named
        .iter()
        .map(|(_, p)| (p * p.randn_like()).sum(Kind::Float))
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |acc, t| acc + t);
    total.backward();
    println!(
        "optim bench: preset {} ({:?}), {} tensors, {} parameters, threads={}, iters={} (median)",
        a.cfg.preset,
        cfg.optim.name,
        named.len(),
        numel,
        tch::get_num_threads(),
        a.iters
    );
    let lr = LrPair::same(cfg.optim.lr);
    let shapes: Vec<(String, Vec<i64>)> = named.iter().map(|(n, t)| (n.clone(), t.size())).collect();

    let per_tensor = {
        let mut o = build_per_tensor(&cfg.optim, named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect())?;
        median_step_ms(o.as_mut(), a.iters, &lr)?
    };
    println!("per-tensor loop ({} tensors x ~12 ops): {per_tensor:>9.1} ms/step", named.len());
    let grouped = {
        let mut o = build(&cfg.optim, named)?;
        median_step_ms(o.as_mut(), a.iters, &lr)?
    };
    println!("grouped flat buffer (~15 ops):        {grouped:>9.1} ms/step");
    println!("grouped vs per-tensor: {:.2}x", per_tensor / grouped);

    if let Some(script) = &a.compare_python {
        let json_path = std::env::temp_dir().join(format!("bt-optim-shapes-{}.json", std::process::id()));
        let json = serde_json::to_string(&shapes)?;
        std::fs::write(&json_path, json)?;
        let out = std::process::Command::new(&a.python)
            .arg(script)
            .arg("--shapes")
            .arg(&json_path)
            .arg("--iters")
            .arg(a.iters.to_string())
            .arg("--threads")
            .arg(tch::get_num_threads().to_string())
            .output()
            .with_context(|| format!("running {} {}", a.python.display(), script.display()))?;
        let _ = std::fs::remove_file(&json_path);
        if !out.status.success() {
            bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (mut timm, mut timm_loop) = (None, None);
        for line in stdout.lines() {
            println!("  python: {line}");
            if let Some(v) = line.strip_prefix("timm_lamb_step_ms=") {
                timm = v.trim().parse::<f64>().ok();
            }
            if let Some(v) = line.strip_prefix("timm_lamb_loop_ms=") {
                timm_loop = v.trim().parse::<f64>().ok();
            }
        }
        let timm = timm.context("the Python script printed no timm_lamb_step_ms= line")?;
        println!("grouped vs timm Lamb foreach=True: {:.2}x", timm / grouped);
        if let Some(l) = timm_loop {
            println!("grouped vs timm Lamb foreach=False: {:.2}x", l / grouped);
        }
    }
    println!("grouped_step_ms={grouped:.3}");
    Ok(())
}
