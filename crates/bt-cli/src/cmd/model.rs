//! `bt-cli model-summary` and `bt-cli bench step`.
use super::config::ConfigArgs;
use anyhow::{bail, Context, Result};
use bt_config::{parse_device, DeviceSpec, LossImpl, Precision};
use bt_model::BarlowTwins;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct SummaryArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Input height and width of the traced forward (CIFAR: 32).
    #[arg(long, default_value_t = 32)]
    pub size: i64,
}

#[derive(clap::Args)]
pub struct BenchStepArgs {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
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
}

fn thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn shape(s: &[i64]) -> String {
    // Batch dimension dropped, as Keras prints `None`.
    let dims: Vec<String> = s[1..].iter().map(|d| d.to_string()).collect();
    format!("N x {}", dims.join(" x "))
}

pub fn summary(a: SummaryArgs) -> Result<()> {
    let cfg = a.cfg.load()?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    let rows = model.layer_table(a.size, a.size);
    println!(
        "model: {:?}, width {}, projector {:?} (bn {}, bias {}), input N x 3 x {} x {}",
        cfg.model.arch,
        cfg.model.width,
        cfg.model.projector,
        cfg.model.projector_bn,
        cfg.model.projector_bias,
        a.size,
        a.size
    );
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let k = rows.iter().map(|r| r.kind.len()).max().unwrap_or(4).max(4);
    println!(
        "{:<w$}  {:<k$}  {:<20}  {:>12}  {:>14}",
        "name", "layer", "output shape", "params", "non-trainable"
    );
    println!("{}", "-".repeat(w + k + 20 + 12 + 14 + 8));
    for r in &rows {
        println!(
            "{:<w$}  {:<k$}  {:<20}  {:>12}  {:>14}",
            r.name,
            r.kind,
            shape(&r.output_shape),
            thousands(r.trainable),
            thousands(r.non_trainable)
        );
    }
    let c = model.param_counts();
    // The table must account for every parameter the model holds.
    let (tr, nt): (i64, i64) = rows
        .iter()
        .fold((0, 0), |(a, b), r| (a + r.trainable, b + r.non_trainable));
    if (tr, nt) != (c.total_trainable(), c.total_non_trainable()) {
        bail!("layer table sums ({tr}, {nt}) differ from the model's counts {c:?}");
    }
    println!("{}", "-".repeat(w + k + 20 + 12 + 14 + 8));
    println!(
        "encoder:   {} trainable + {} non-trainable = {}  (features: {})",
        thousands(c.encoder_trainable),
        thousands(c.encoder_non_trainable),
        thousands(c.encoder_trainable + c.encoder_non_trainable),
        model.feature_dim()
    );
    println!(
        "projector: {} trainable + {} non-trainable = {}  (embedding: {})",
        thousands(c.projector_trainable),
        thousands(c.projector_non_trainable),
        thousands(c.projector_trainable + c.projector_non_trainable),
        model.embed_dim()
    );
    println!(
        "total:     {} trainable + {} non-trainable = {}",
        thousands(c.total_trainable()),
        thousands(c.total_non_trainable()),
        thousands(c.total_trainable() + c.total_non_trainable())
    );
    println!("(non-trainable = BN moving mean/variance; num_batches_tracked counters not counted)");
    println!(
        "trainable={} non_trainable={} encoder_trainable={} encoder_non_trainable={}",
        c.total_trainable(),
        c.total_non_trainable(),
        c.encoder_trainable,
        c.encoder_non_trainable
    );
    Ok(())
}

fn device(s: &str) -> Result<Device> {
    Ok(
        match parse_device(s)
            .with_context(|| format!("bad --device `{s}` (cpu, cuda, cuda:N, auto)"))?
        {
            DeviceSpec::Auto => Device::cuda_if_available(),
            DeviceSpec::Cpu => Device::Cpu,
            DeviceSpec::Cuda(i) => {
                if !tch::Cuda::is_available() {
                    bail!("--device {s}: CUDA is not available in this libtorch/machine");
                }
                Device::Cuda(i)
            }
        },
    )
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
    let dev = device(&a.device)?;
    if let Some(t) = a.threads {
        tch::set_num_threads(t);
    }
    let threads = tch::get_num_threads();
    let batch = a.batch.unwrap_or(cfg.data.batch_size as i64);
    if batch < 2 {
        bail!("--batch must be at least 2 (batch norm and the loss need two rows)");
    }
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    tch::manual_seed(cfg.run.seed as i64);
    let vs = nn::VarStore::new(dev);
    let mut model = BarlowTwins::try_new(&vs.root(), &cfg.model)?;
    model.set_precision(cfg.run.precision);
    let loss_impl = bt_loss::resolve_impl(cfg.loss.implementation, batch, model.embed_dim());
    let opts = bt_loss::LossOptions::from_config(&cfg.loss).with_implementation(loss_impl);
    let params = model.trainable_variables();
    let mk = || {
        let x = Tensor::rand([batch, 3, 32, 32], (Kind::Float, dev));
        if cfg.run.channels_last {
            x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
        } else {
            x
        }
    };
    let (x_a, x_b) = (mk(), mk());
    println!(
        "bench step: {:?} width {} projector {:?}, batch {batch} per view, device {dev:?}, {threads} threads, \
         loss {loss_impl:?}, precision {:?}, channels_last {}",
        cfg.model.arch, cfg.model.width, cfg.model.projector, cfg.run.precision, cfg.run.channels_last
    );
    let step = || -> Result<f64> {
        let t = Instant::now();
        for p in &params {
            p.shallow_clone().zero_grad();
        }
        let z_a = model.forward(&x_a, true);
        let z_b = model.forward(&x_b, true);
        let out = bt_loss::barlow_twins_loss(&z_a, &z_b, &opts)?;
        out.loss.backward();
        sync(dev);
        Ok(t.elapsed().as_secs_f64())
    };
    // The Python peer starts first (its model build and warm-up run before ours), then the two
    // alternate step by step: on a shared machine, load drifts hit both sides alike.
    let mut peer = match &a.compare_python {
        Some(py) => {
            if cfg.run.precision != Precision::F32 || cfg.run.channels_last {
                bail!("--compare-python compares f32, contiguous runs only (run.precision=f32, run.channels_last=false)");
            }
            Some(PythonPeer::start(
                py, &cfg, loss_impl, batch, a.warmup, threads, dev,
            )?)
        }
        None => None,
    };
    for _ in 0..a.warmup {
        step()?;
    }
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
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0.0f64), |(l, h), &t| (l.min(t), h.max(t)));
        format!("min {:.1} ms, max {:.1} ms", lo * 1e3, hi * 1e3)
    };
    let (rust_spread, py_spread) = (spread(&times), spread(&py_times));
    let med = median(&mut times);
    let pairs = batch as f64 / med;
    println!(
        "rust (tch):      median step {:.1} ms over {} steps ({rust_spread}), {:.1} pairs/s",
        med * 1e3,
        a.steps,
        pairs
    );
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
        println!(
            "median of the {} paired (back-to-back) ratios: {:.3}",
            paired.len(),
            median(&mut paired)
        );
        ratio = Some(r);
    }
    match ratio {
        Some(r) => println!(
            "step_ms={:.3} pairs_per_s={:.2} torch_ratio={r:.3}",
            med * 1e3,
            pairs
        ),
        None => println!("step_ms={:.3} pairs_per_s={:.2}", med * 1e3, pairs),
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
    fn start(
        py: &std::path::Path,
        cfg: &bt_config::Config,
        loss_impl: LossImpl,
        batch: i64,
        warmup: usize,
        threads: i32,
        dev: Device,
    ) -> Result<Self> {
        use std::process::Stdio;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/step_torch.py");
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
            .args([
                "--loss-impl",
                if loss_impl == LossImpl::Fused {
                    "fused"
                } else {
                    "reference"
                },
            ])
            .args(["--batch", &batch.to_string()])
            .args(["--warmup", &warmup.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--device", &device])
            .arg("--interleave")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {} {}", py.display(), script.display()))?;
        let stdin = child.stdin.take().context("python stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("python stdout")?);
        let mut peer = Self {
            child,
            stdin,
            stdout,
            torch: String::new(),
            threads: 0,
        };
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
        serde_json::from_str(line.trim())
            .with_context(|| format!("bad line from step_torch.py: `{}`", line.trim()))
    }

    fn step(&mut self) -> Result<f64> {
        use std::io::Write;
        writeln!(self.stdin, "step")?;
        self.stdin.flush()?;
        self.read()?["step_s"]
            .as_f64()
            .context("no step_s in step_torch.py output")
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
