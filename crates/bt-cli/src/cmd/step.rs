//! `bt-cli bench step`: the trainer's own step (`bt_train::step::StepBench`: the `StaticStep`,
//! the guard ring flushed every `run.log_every` steps, the uploader; a CUDA graph replay where the
//! trainer would use one) timed window by window, interleaved with the PyTorch eager peer
//! (`bench/step_torch.py`, same steps per window) on the same libtorch when `--compare-python`.
use super::config::ConfigArgs;
use anyhow::{bail, Context, Result};
use bt_config::{LossImpl, Precision};
use bt_train::perf::{train_step_flops, PEAK_FLOPS};
use std::path::PathBuf;
use tch::Device;

#[derive(clap::Args)]
pub struct BenchStepArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Side of the square inputs (default: the config's data.image_size).
    #[arg(long)]
    pub image_size: Option<i64>,
    /// Images per view (default: the config's data.batch_size).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Timed steps, in windows of `run.log_every` (the median of the windows' mean step time is
    /// reported).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first (allocator and oneDNN/cuDNN warm-up).
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Intra-op threads (default: libtorch's choice, all cores); passed to the Python run too.
    #[arg(long)]
    pub threads: Option<i32>,
    /// Also run bench/step_torch.py (the same model and loss in PyTorch eager) with this
    /// Python, same libtorch version, same threads, and print the ratio.
    #[arg(long, value_name = "PYTHON")]
    pub compare_python: Option<PathBuf>,
    /// Memory layout of the Python peer: `same` as bt-cli's step (`run.channels_last`), or
    /// `nchw`, PyTorch's default (what eager code gets without `.to(memory_format=...)`).
    #[arg(long, value_enum, default_value_t = PeerLayout::Same)]
    pub peer_layout: PeerLayout,
}

/// `bench step --peer-layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerLayout {
    /// The layout bt-cli runs.
    Same,
    /// Contiguous NCHW (PyTorch's default).
    Nchw,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

pub fn bench_step(a: BenchStepArgs) -> Result<()> {
    let cfg = a.cfg.load()?;
    let dev = bt_train::setup::device(&a.device)?;
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let batch = a.batch.unwrap_or(cfg.data.batch_size as i64);
    let side = a.image_size.unwrap_or(cfg.data.image_size as i64);
    if batch < 2 {
        bail!("--batch must be at least 2 (batch norm and the loss need two rows)");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let mut bench = bt_train::step::StepBench::new(&cfg, dev, batch as usize, side as usize)?;
    let settings = bt_train::device::StepSettings::for_run(&cfg, dev)?;
    let flops = train_step_flops(bench.model(), &cfg.model, batch, side);
    let loss_impl = bt_loss::resolve_impl(cfg.loss.implementation, batch, bench.model().embed_dim());
    println!(
        "bench step: {:?} width {} projector {:?}, batch {batch} per view, device {dev:?}, {threads} threads, \
         loss {loss_impl:?}, precision {:?}, channels_last {}",
        cfg.model.arch, cfg.model.width, cfg.model.projector, settings.precision, settings.channels_last
    );
    println!(
        "model FLOPs per step (conv + linear, 2 views, fwd + 2x bwd): {flops:.3e}; the trainer's step: {:?} (flat), \
         guard, flush every {} steps (run.log_every)",
        cfg.optim.name, cfg.run.log_every
    );
    // The Python peer starts first (its model build and warm-up run before ours), then the two
    // alternate window by window: on a shared machine, load drifts hit both sides alike.
    let mut peer = match &a.compare_python {
        Some(py) => {
            let peer = bt_train::device::StepSettings {
                channels_last: settings.channels_last && a.peer_layout == PeerLayout::Same,
                ..settings
            };
            println!("python peer layout: {}", if peer.channels_last { "channels-last" } else { "NCHW (contiguous)" });
            Some(PythonPeer::start(py, &cfg, loss_impl, batch, side, a.warmup, threads, dev, peer)?)
        }
        None => None,
    };
    // Windows of run.log_every steps: the trainer's unit between two host syncs.
    let windows = |total: usize| {
        let w = cfg.run.log_every;
        (0..total.div_ceil(w)).map(move |i| w.min(total - i * w))
    };
    // On CUDA the capture happens after bt_train::step::WARMUP eager steps: keep it out of the timing.
    let warmup = if dev.is_cuda() { a.warmup.max(bt_train::step::WARMUP + 1) } else { a.warmup };
    for w in windows(warmup) {
        bench.window(w)?;
    }
    if let Some(why) = bench.take_warning() {
        println!("warning: {why}");
    }
    let wait0 = bench.uploader().final_wait_ms()?;
    let (mut times, mut py_times) = (Vec::new(), Vec::new());
    let mut total_s = 0.0;
    for w in windows(a.steps) {
        let s = bench.window(w)?;
        total_s += s;
        times.push(s / w as f64);
        if let Some(p) = peer.as_mut() {
            let mut py = 0.0;
            for _ in 0..w {
                py += p.step()?;
            }
            py_times.push(py / w as f64);
        }
    }
    let paired: Vec<f64> = py_times.iter().zip(&times).map(|(p, r)| p / r).collect();
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(l, h), &t| (l.min(t), h.max(t)));
        format!("min {:.1} ms, max {:.1} ms", lo * 1e3, hi * 1e3)
    };
    let (rust_spread, py_spread) = (spread(&times), spread(&py_times));
    let n_windows = times.len();
    let med = median(&mut times);
    let pairs = batch as f64 / med;
    let (wait1, measured) = bench.uploader().final_wait_ms()?;
    let wait_pct = 100.0 * (wait1 - wait0.0) / 1e3 / total_s.max(1e-12);
    let mfu = flops / med / PEAK_FLOPS;
    let graph = if bench.replaying() { ", CUDA graph replay" } else { "" };
    println!(
        "rust (tch):      median step {:.1} ms over {} steps in {n_windows} window(s) ({rust_spread}){graph}, {:.1} pairs/s",
        med * 1e3,
        a.steps,
        pairs
    );
    if dev.is_cuda() {
        println!(
            "GPU waiting for input: {wait_pct:.2}% of step time ({} waits measured with CUDA events); \
             MFU {:.2}% ({:.1} TFLOP/s of {:.0})",
            measured - wait0.1,
            100.0 * mfu,
            flops / med / 1e12,
            PEAK_FLOPS / 1e12
        );
    }
    let mut ratio = None;
    if let Some(p) = peer {
        let py_med = median(&mut py_times);
        println!(
            "pytorch eager:   median step {:.1} ms over {} steps ({py_spread}), {:.1} pairs/s (torch {}, {} threads, interleaved)",
            py_med * 1e3,
            a.steps,
            batch as f64 / py_med,
            p.torch,
            p.threads
        );
        let r = py_med / med;
        println!("ratio pytorch/rust step time: {r:.3} (>= 1.0: Rust at least as fast)");
        let mut paired = paired;
        println!("median of the {} paired (back-to-back) ratios: {:.3}", paired.len(), median(&mut paired));
        ratio = Some(r);
    }
    let gpu = if dev.is_cuda() { format!(" input_wait_pct={wait_pct:.3} mfu={mfu:.4}") } else { String::new() };
    match ratio {
        Some(r) => println!("step_ms={:.3} pairs_per_s={:.2}{gpu} torch_ratio={r:.3}", med * 1e3, pairs),
        None => println!("step_ms={:.3} pairs_per_s={:.2}{gpu}", med * 1e3, pairs),
    }
    Ok(())
}

/// bench/step_torch.py in `--interleave` mode: one step per request.
struct PythonPeer {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    torch: String,
    threads: i64,
}

impl PythonPeer {
    // One argument per flag of bench/step_torch.py's command line.
    #[allow(clippy::too_many_arguments)]
    fn start(
        py: &std::path::Path,
        cfg: &bt_config::Config,
        loss_impl: LossImpl,
        batch: i64,
        side: i64,
        warmup: usize,
        threads: i32,
        dev: Device,
        settings: bt_train::device::StepSettings,
    ) -> Result<Self> {
        use std::process::Stdio;
        // BT_BENCH_DIR: where a shipped bundle keeps bench/*.py (the GPU machine has no source tree).
        let script = match std::env::var_os("BT_BENCH_DIR") {
            Some(d) => PathBuf::from(d).join("step_torch.py"),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/step_torch.py"),
        };
        let name = match cfg.optim.name {
            bt_config::OptimKind::Lamb => "lamb",
            bt_config::OptimKind::Lars => "lars",
        };
        let mut extra: Vec<String> = vec!["--optim".into(), name.into(), "--lr".into(), cfg.optim.lr.to_string()];
        extra.extend(["--weight-decay".into(), cfg.optim.weight_decay.to_string()]);
        if settings.precision == Precision::Bf16 {
            extra.push("--bf16".into());
        }
        if settings.channels_last {
            extra.push("--channels-last".into());
        }
        let m = &cfg.model;
        let proj: Vec<String> = m.projector.iter().map(|d| d.to_string()).collect();
        let device = match dev {
            Device::Cuda(i) => format!("cuda:{i}"),
            _ => "cpu".into(),
        };
        let mut child = std::process::Command::new(py)
            .arg(&script)
            .args(["--arch", &format!("{:?}", m.arch)])
            .args(["--width", &m.width.to_string()])
            .args(["--projector", &proj.join(",")])
            .args(["--projector-bn", &m.projector_bn.to_string()])
            .args(["--projector-bias", &m.projector_bias.to_string()])
            .args(["--lambda", &cfg.loss.lambda.to_string()])
            .args(["--scale", &cfg.loss.scale.to_string()])
            .args(["--normalization", &format!("{:?}", cfg.loss.normalization)])
            .args(["--loss-impl", if loss_impl == LossImpl::Fused { "fused" } else { "reference" }])
            .args(["--batch", &batch.to_string()])
            .args(["--image-size", &side.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--device", &device])
            .args(&extra)
            .arg("--interleave")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {}", py.display(), script.display()))?;
        let stdin = child.stdin.take().context("python stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("python stdout")?);
        let mut peer = Self { child, stdin, stdout, torch: String::new(), threads: 0 };
        let v = peer.read()?;
        peer.torch = v["torch"].as_str().unwrap_or("?").to_string();
        peer.threads = v["threads"].as_i64().unwrap_or(0);
        Ok(peer)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("bench/step_torch.py exited ({status}) before answering; see its stderr above");
        }
        serde_json::from_str(line.trim()).with_context(|| format!("bad line from step_torch.py: `{}`", line.trim()))
    }

    fn step(&mut self) -> Result<f64> {
        use std::io::Write;
        writeln!(self.stdin, "step")?;
        self.stdin.flush()?;
        self.read()?["step_s"].as_f64().context("no step_s in step_torch.py output")
    }
}

impl Drop for PythonPeer {
    fn drop(&mut self) {
        use std::io::Write;
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}
