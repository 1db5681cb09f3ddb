//! `bt-cli bench step`: the train step (both views' forward, the loss, backward and, on CUDA,
//! the optimizer) timed step by step, interleaved with the PyTorch eager peer
//! (`bench/step_torch.py`) on the same libtorch when `--compare-python` is given.
use super::config::ConfigArgs;
use anyhow::{bail, Context, Result};
use bt_config::{LossImpl, Precision};
use bt_model::BarlowTwins;
use bt_train::perf::{train_step_flops, PEAK_FLOPS};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

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
    /// Timed steps (the median is reported).
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
    /// Include the optimizer step (the config's flat LAMB/LARS; the Python peer runs a foreach
    /// LAMB/LARS): `auto` = on for CUDA (the whole train step), off for CPU (forward + backward,
    /// the CPU figures recorded before the CUDA work).
    #[arg(long, value_enum, default_value_t = OptimMode::Auto)]
    pub optim: OptimMode,
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

/// `bench step --optim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimMode {
    /// On for CUDA, off for CPU.
    Auto,
    /// Always.
    On,
    /// Never.
    Off,
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
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
    tch::manual_seed(cfg.run.seed as i64);
    let vs = nn::VarStore::new(dev);
    let mut model = BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    // The trainer's settings on this device (CUDA: bf16 + channels-last unless run.fast_cuda=false).
    let settings = bt_train::device::StepSettings::for_run(&cfg, dev)?;
    settings.apply_backend(dev)?;
    model.set_precision(settings.precision);
    let with_optim = match a.optim {
        OptimMode::Auto => dev.is_cuda(),
        OptimMode::On => true,
        OptimMode::Off => false,
    };
    let flops = train_step_flops(&model, &cfg.model, batch, side);
    let loss_impl = bt_loss::resolve_impl(cfg.loss.implementation, batch, model.embed_dim());
    let opts = bt_loss::LossOptions::from_config(&cfg.loss).with_implementation(loss_impl);
    let params = model.trainable_variables();
    let opt = if with_optim {
        Some(std::cell::RefCell::new(bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs))?))
    } else {
        None
    };
    let lr = bt_optim::LrPair::same(cfg.optim.lr);
    // Inputs go through the trainer's uploader every step (CUDA: pinned host memory, side-stream
    // copy of the next batch while this one computes, GPU wait measured with events).
    let host: Vec<Vec<f32>> = (0..2)
        .map(|_| Vec::<f32>::try_from(Tensor::rand([batch * 3 * side * side], (Kind::Float, Device::Cpu))))
        .collect::<std::result::Result<_, _>>()?;
    let up = std::cell::RefCell::new(bt_train::device::Uploader::new(dev, settings.channels_last)?);
    let next =
        std::cell::RefCell::new(Some(up.borrow_mut().upload(&[&host[0], &host[1]], batch as usize, side as usize)?));
    println!(
        "bench step: {:?} width {} projector {:?}, batch {batch} per view, device {dev:?}, {threads} threads, \
         loss {loss_impl:?}, precision {:?}, channels_last {}",
        cfg.model.arch, cfg.model.width, cfg.model.projector, settings.precision, settings.channels_last
    );
    println!(
        "model FLOPs per step (conv + linear, 2 views, fwd + 2x bwd): {:.3e}; optimizer step {}",
        flops,
        if with_optim { format!("{:?} (flat)", cfg.optim.name) } else { "not timed".into() }
    );
    let step = || -> Result<f64> {
        let t = Instant::now();
        for p in &params {
            p.shallow_clone().zero_grad();
        }
        let staged = next.borrow_mut().take().expect("a staged batch");
        let x = staged.ready(&mut up.borrow_mut())?;
        let z_a = model.forward(&x[0], true);
        let z_b = model.forward(&x[1], true);
        let out = bt_loss::barlow_twins_loss(&z_a, &z_b, &opts)?;
        out.loss.backward();
        if let Some(o) = &opt {
            o.borrow_mut().step(&lr)?;
        }
        // The next batch's copy overlaps this step's queued kernels.
        *next.borrow_mut() = Some(up.borrow_mut().upload(&[&host[0], &host[1]], batch as usize, side as usize)?);
        sync(dev);
        Ok(t.elapsed().as_secs_f64())
    };
    // The Python peer starts first (its model build and warm-up run before ours), then the two
    // alternate step by step: on a shared machine, load drifts hit both sides alike.
    let mut peer = match &a.compare_python {
        Some(py) => {
            let peer = bt_train::device::StepSettings {
                channels_last: settings.channels_last && a.peer_layout == PeerLayout::Same,
                ..settings
            };
            println!("python peer layout: {}", if peer.channels_last { "channels-last" } else { "NCHW (contiguous)" });
            Some(PythonPeer::start(py, &cfg, loss_impl, batch, side, a.warmup, threads, dev, peer, with_optim)?)
        }
        None => None,
    };
    for _ in 0..a.warmup {
        step()?;
    }
    let wait0 = up.borrow_mut().final_wait_ms()?;
    let mut times = Vec::with_capacity(a.steps);
    let mut py_times = Vec::with_capacity(a.steps);
    for _ in 0..a.steps {
        times.push(step()?);
        if let Some(p) = peer.as_mut() {
            py_times.push(p.step()?);
        }
    }
    let paired: Vec<f64> = py_times.iter().zip(&times).map(|(p, r)| p / r).collect();
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0.0f64), |(l, h), &t| (l.min(t), h.max(t)));
        format!("min {:.1} ms, max {:.1} ms", lo * 1e3, hi * 1e3)
    };
    let (rust_spread, py_spread) = (spread(&times), spread(&py_times));
    let total_s: f64 = times.iter().sum();
    let med = median(&mut times);
    let pairs = batch as f64 / med;
    let (wait1, measured) = up.borrow_mut().final_wait_ms()?;
    let wait_pct = 100.0 * (wait1 - wait0.0) / 1e3 / total_s.max(1e-12);
    let mfu = flops / med / PEAK_FLOPS;
    println!(
        "rust (tch):      median step {:.1} ms over {} steps ({rust_spread}), {:.1} pairs/s",
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
        with_optim: bool,
    ) -> Result<Self> {
        use std::process::Stdio;
        // BT_BENCH_DIR: where a shipped bundle keeps bench/*.py (the GPU machine has no source tree).
        let script = match std::env::var_os("BT_BENCH_DIR") {
            Some(d) => PathBuf::from(d).join("step_torch.py"),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/step_torch.py"),
        };
        let mut extra: Vec<String> = Vec::new();
        if with_optim {
            let name = match cfg.optim.name {
                bt_config::OptimKind::Lamb => "lamb",
                bt_config::OptimKind::Lars => "lars",
            };
            extra.extend(["--optim".into(), name.into(), "--lr".into(), cfg.optim.lr.to_string()]);
            extra.extend(["--weight-decay".into(), cfg.optim.weight_decay.to_string()]);
        }
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
