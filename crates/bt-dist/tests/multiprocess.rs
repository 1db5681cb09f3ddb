//! Real multi-process tests over Gloo on 127.0.0.1.
//!
//! The test binary re-executes itself as the worker processes: each test spawns `WORLD` copies of
//! `current_exe() worker --exact --ignored` with the torchrun variables (`RANK`, `WORLD_SIZE`,
//! `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) and a scenario name, and checks their exit codes and
//! output. The workers assert their own results (a failed assertion exits non-zero and the test
//! prints the worker's stderr). Every wait has a deadline, so a hang fails the test instead of
//! stalling CI.
//!
//! Scenarios:
//! - `collectives`: bucketed sum/mean of mixed tensors, all_reduce, broadcast, barrier, uneven
//!   all_gather, and the backward passes of both differentiable collectives.
//! - `exact`: the exactness test. 2 ranks x batch B train an MLP through the Barlow Twins loss
//!   (bt-loss, both implementations, both normalizations) with `LossReducer` and averaged
//!   gradients; the parameters must equal single-process training on batch 2B to 1e-5. Negative
//!   controls: the identity-backward reduction (a plain all-reduce inside the loss) with summed
//!   or averaged gradients must NOT match.
//! - `kill`: a rank is SIGKILLed mid-run (rank 1; and rank 0, which hosts the TCPStore); the
//!   survivor must exit non-zero with a message naming the lost rank.
//! - `stall`: rank 1 stays alive but stops calling collectives; rank 0 must fail at the timeout
//!   (not hang), and must not call rank 1 lost (its heartbeat still runs).
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bt_config::{LossConfig, LossImpl, LossNorm};
use bt_dist::{all_gather_autograd, all_reduce_sum_autograd, LossReducer, ProcessGroup};
use bt_loss::{barlow_twins_loss, CrossReplicaReduce, LossOptions, ReduceError};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

const SCENARIO: &str = "BT_DIST_TEST_SCENARIO";
const OUT_DIR: &str = "BT_DIST_TEST_OUT";
const TIMEOUT_MS: &str = "BT_DIST_TEST_TIMEOUT_MS";
const WORLD: usize = 2;

// ---------------------------------------------------------------------------------------------
// Parent side

struct Worker {
    rank: usize,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Worker {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One process group at a time: `free_port` releases the port it found, and while another
/// scenario's group runs, its Gloo pair sockets take ephemeral ports too and can grab that one
/// (seen in CI: two scenarios failing together, "workers never got going", connection resets
/// between the groups).
static ONE_GROUP: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_group() -> std::sync::MutexGuard<'static, ()> {
    ONE_GROUP.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn(scenario: &str, dir: &Path, timeout_ms: u64) -> Vec<Worker> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    (0..WORLD)
        .map(|rank| {
            let stdout = dir.join(format!("rank{rank}.out"));
            let stderr = dir.join(format!("rank{rank}.err"));
            let child = Command::new(&exe)
                .args(["worker", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
                .env(SCENARIO, scenario)
                .env(OUT_DIR, dir)
                .env(TIMEOUT_MS, timeout_ms.to_string())
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", WORLD.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .stdout(Stdio::from(File::create(&stdout).unwrap()))
                .stderr(Stdio::from(File::create(&stderr).unwrap()))
                .spawn()
                .unwrap();
            Worker { rank, child, stdout, stderr }
        })
        .collect()
}

/// Waits for one worker; kills it and panics when the deadline passes (a hang).
fn wait(w: &mut Worker, deadline: Instant, all_logs: &str) -> ExitStatus {
    loop {
        if let Some(status) = w.child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = w.child.kill();
            let _ = w.child.wait();
            panic!("rank {} hung past its deadline\n{all_logs}\n{}", w.rank, w.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logs(workers: &[Worker]) -> String {
    workers
        .iter()
        .map(|w| format!("--- rank {} stdout\n{}--- rank {} stderr\n{}", w.rank, w.stdout(), w.rank, w.stderr()))
        .collect()
}

fn run_to_success(scenario: &str, budget: Duration) -> (tempfile::TempDir, Vec<Worker>) {
    let _one = one_group();
    let dir = tempfile::tempdir().unwrap();
    let mut workers = spawn(scenario, dir.path(), 30_000);
    let deadline = Instant::now() + budget;
    for i in 0..workers.len() {
        let status = wait(&mut workers[i], deadline, "");
        assert!(status.success(), "rank {i} failed ({status})\n{}", logs(&workers));
    }
    (dir, workers)
}

#[test]
fn two_process_collectives_match_their_definitions() {
    let (_dir, workers) = run_to_success("collectives", Duration::from_secs(120));
    for w in &workers {
        assert!(w.stdout().contains("collectives ok"), "{}", logs(&workers));
    }
}

#[test]
fn two_process_training_equals_single_process_on_the_global_batch() {
    let (_dir, workers) = run_to_success("exact", Duration::from_secs(300));
    let out = workers[0].stdout();
    println!("{out}");
    assert_eq!(out.matches("exact ok").count(), 4, "{}", logs(&workers));
}

fn kill_one_rank(victim: usize) -> String {
    fail_one_rank("kill", victim)
}

/// Runs `scenario` (`kill`: both ranks loop over all-reduces; `kill-loss`: over the Barlow Twins
/// loss with [`LossReducer`]; `stall`: rank 1 stops calling collectives after a few steps but
/// stays alive), SIGKILLs `victim` once both ranks are
/// running (for `stall`, after the survivor has failed), and returns the survivor's stderr.
fn fail_one_rank(scenario: &str, victim: usize) -> String {
    let _one = one_group();
    let dir = tempfile::tempdir().unwrap();
    let timeout_ms = 5_000;
    let mut workers = spawn(scenario, dir.path(), timeout_ms);
    let ready = |r: usize| dir.path().join(format!("ready{r}")).exists();
    let start = Instant::now();
    while !(ready(0) && ready(1)) {
        if start.elapsed() > Duration::from_secs(60) {
            for w in &mut workers {
                let _ = w.child.kill();
            }
            panic!("workers never got going\n{}", logs(&workers));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if scenario.starts_with("kill") {
        workers[victim].child.kill().unwrap();
        workers[victim].child.wait().unwrap();
    }
    let survivor = 1 - victim;
    // A hang guard, not a timing assertion: the timeout plus generous slack for a loaded CI box.
    let deadline = Instant::now() + Duration::from_millis(timeout_ms) * 2 + Duration::from_secs(30);
    let all = logs(&workers);
    let status = wait(&mut workers[survivor], deadline, &all);
    let _ = workers[victim].child.kill();
    let _ = workers[victim].child.wait();
    let err = workers[survivor].stderr();
    assert_eq!(status.code(), Some(3), "survivor rank {survivor} must exit with 3 ({status})\n{err}");
    println!("{scenario} rank {victim}; rank {survivor} exited with {status}:\n{err}");
    err
}

#[test]
fn killing_rank_1_makes_rank_0_exit_naming_it() {
    let err = kill_one_rank(1);
    assert!(err.contains("all_reduce on rank 0 of 2 failed"), "{err}");
    assert!(err.contains("lost rank(s): 1"), "{err}");
}

#[test]
fn killing_rank_0_the_store_host_makes_rank_1_exit_naming_it() {
    let err = kill_one_rank(0);
    assert!(err.contains("on rank 1 of 2 failed"), "{err}");
    assert!(err.contains("lost rank(s): 0"), "{err}");
}

/// A lost peer inside the loss is an error (`LossError::Reduce` carrying the `DistError`),
/// not a panic: the survivor gets it from `barlow_twins_loss` and exits cleanly.
#[test]
fn killing_a_rank_during_the_loss_is_an_error_of_the_loss_naming_it() {
    let err = fail_one_rank("kill-loss", 1);
    assert!(err.contains("loss error: cross-replica all_"), "{err}");
    assert!(err.contains("on rank 0 of 2 failed"), "{err}");
    assert!(err.contains("lost rank(s): 1"), "{err}");
    assert!(err.contains("source is a DistError"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_stalled_rank_makes_the_other_time_out_instead_of_hanging() {
    let err = fail_one_rank("stall", 1);
    assert!(err.contains("all_reduce on rank 0 of 2 failed"), "{err}");
    // Alive but not participating: the post-mortem must not call it lost.
    assert!(err.contains("every peer's heartbeat is alive"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Worker side

#[test]
#[ignore = "entry point of the worker processes that the other tests spawn"]
fn worker() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    match scenario.as_str() {
        "collectives" => collectives(),
        "exact" => exact(),
        "kill" => kill(false),
        "kill-loss" => kill_loss(),
        "stall" => kill(true),
        other => panic!("unknown scenario {other}"),
    }
}

fn group() -> ProcessGroup {
    let ms: u64 = std::env::var(TIMEOUT_MS).unwrap().parse().unwrap();
    ProcessGroup::from_env(Duration::from_millis(ms)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(3)
    })
}

/// The largest `|a - b|`, through the workspace's comparison (`bt_testkit`): a size mismatch,
/// a NaN or an infinity panics (`.abs().max()` of a NaN difference is NaN, and `d < tol` with a
/// NaN `d` is false, but `fold(0.0, f64::max)` over such values drops it).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let v = |t: &Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    bt_testkit::max_abs_diff("tensors", &v(a), &v(b)).unwrap_or_else(|e| panic!("{e}")).diff
}

fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let d = max_diff(got, want);
    assert!(d < 1e-9, "{what}: max |diff| {d}\ngot {got}\nwant {want}");
}

fn collectives() {
    let mut pg = group();
    assert_eq!(pg.world_size(), WORLD);
    let r = pg.rank() as f64;
    let f32_ = (Kind::Float, Device::Cpu);
    let f64_ = (Kind::Double, Device::Cpu);

    // Bucketed in-place sum: 64-byte buckets force several buckets, a kind change, a
    // non-contiguous tensor and an integer tensor.
    pg.set_bucket_bytes(64);
    let base = Tensor::arange(40, f32_).view([5, 8]);
    let mut ts = vec![
        Tensor::arange(12, f32_).view([3, 4]) * (r + 1.0),
        Tensor::ones([5], f64_) * (r + 0.5),
        (&base * (r + 1.0)).tr(),
        Tensor::from_slice(&[pg.rank() as i64 * 10 + 1]),
    ];
    assert!(!ts[2].is_contiguous());
    pg.all_reduce_sum_(&mut ts).unwrap();
    // Σ_{r=0,1} (r + 1) = 3, Σ (r + 0.5) = 2, Σ (10 r + 1) = 12.
    assert_close("sum f32", &ts[0], &(Tensor::arange(12, f32_).view([3, 4]) * 3.0));
    assert_close("sum f64", &ts[1], &(Tensor::ones([5], f64_) * 2.0));
    assert_close("sum non-contiguous", &ts[2], &(&base * 3.0).tr());
    assert_eq!(ts[3].int64_value(&[0]), 12);

    let mut m = vec![Tensor::full([4], r, f64_)];
    pg.all_reduce_mean_(&mut m).unwrap();
    assert_close("mean", &m[0], &Tensor::full([4], 0.5, f64_));

    let x = Tensor::full([2, 2], r + 1.0, f32_);
    let y = pg.all_reduce(&x).unwrap();
    assert_close("all_reduce", &y, &Tensor::full([2, 2], 3.0, f32_));
    assert_close("all_reduce leaves its input", &x, &Tensor::full([2, 2], r + 1.0, f32_));

    // Broadcast into a leaf that requires grad (a parameter): rank 1's values win.
    let mut p = vec![Tensor::full([3], 10.0 * r + 7.0, f32_).set_requires_grad(true)];
    pg.set_bucket_bytes(bt_dist::DEFAULT_BUCKET_BYTES);
    pg.broadcast_(&mut p, 1).unwrap();
    assert_close("broadcast", &p[0], &Tensor::full([3], 17.0, f32_));
    assert!(pg.broadcast_(&mut p, 2).is_err(), "root out of range");

    // Uneven rows: rank r has r + 1 rows of value r.
    let g = pg.all_gather(&Tensor::full([pg.rank() as i64 + 1, 2], r, f32_)).unwrap();
    assert_close("all_gather", &g, &Tensor::from_slice(&[0f32, 0., 1., 1., 1., 1.]).view([3, 2]));

    pg.barrier().unwrap();

    // all_reduce_sum_autograd: forward Σ_r x_r, backward Σ_r (incoming gradient of rank r).
    let coef = Tensor::from_slice(&[1.0, 2.0, 3.0]).to_kind(Kind::Double) * (r + 1.0);
    let x = Tensor::full([3], r + 1.0, f64_).set_requires_grad(true);
    let y = all_reduce_sum_autograd(&pg, &x).unwrap();
    assert_close("autograd forward", &y, &Tensor::full([3], 3.0, f64_));
    (&y * &coef).sum(Kind::Double).backward();
    let want = Tensor::from_slice(&[3.0, 6.0, 9.0]);
    assert_close("autograd backward = sum of the ranks' gradients", &x.grad(), &want);

    // The identity-backward variant: same value, only this rank's gradient.
    let x = Tensor::full([3], r + 1.0, f64_).set_requires_grad(true);
    let y = all_reduce_sum_identity_grad(&pg, &x).unwrap();
    assert_close("identity forward", &y, &Tensor::full([3], 3.0, f64_));
    (&y * &coef).sum(Kind::Double).backward();
    assert_close("identity backward", &x.grad(), &coef);

    // all_gather_autograd with uneven rows: backward gives each rank Σ_q of its rows' gradients.
    let n = pg.rank() as i64 + 1;
    let x = Tensor::full([n, 2], r + 1.0, f64_).set_requires_grad(true);
    let y = all_gather_autograd(&pg, &x).unwrap();
    assert_eq!(y.size(), vec![3, 2]);
    let weights = Tensor::arange(6, f64_).view([3, 2]) * (r + 1.0);
    (&y * &weights).sum(Kind::Double).backward();
    let offset = if pg.rank() == 0 { 0 } else { 1 };
    let want = Tensor::arange(6, f64_).view([3, 2]).narrow(0, offset, n) * 3.0;
    assert_close("all_gather backward", &x.grad(), &want);

    pg.barrier().unwrap();
    println!("collectives ok on rank {}", pg.rank());
}

/// `Σ_r x_r` whose gradient with respect to `x` is the identity: `x + (Σ_r x_r − x).detach()`.
///
/// What a plain `torch.distributed.all_reduce` inside a loss amounts to (the official Barlow
/// Twins code and lightly reduce `c` this way). With the loss's global batch normalization it
/// gives wrong gradients (the global mean and std enter every rank's rows, which are reduced
/// again), and DDP's averaging adds a `1/W` (lightly's bug). The negative control of the
/// exactness test; deliberately not in bt-dist's API.
fn all_reduce_sum_identity_grad(pg: &ProcessGroup, x: &Tensor) -> Result<Tensor, ReduceError> {
    let reduced = pg.all_reduce(x)?;
    Ok(x + (reduced - x).detach())
}

/// A plain all-reduce inside the loss: identity backward (the negative control).
struct IdentityGradReducer(Arc<ProcessGroup>);

impl CrossReplicaReduce for IdentityGradReducer {
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
        all_reduce_sum_identity_grad(&self.0, x)
    }
    fn all_gather(&self, x: &Tensor) -> Result<Tensor, ReduceError> {
        // Other ranks' rows are constants; the gradient reaches only this rank's own rows.
        let all = self.0.all_gather(x)?;
        let n = x.size()[0];
        let off = self.0.rank() as i64 * n;
        let rest = all.size()[0] - off - n;
        Ok(Tensor::cat(&[all.narrow(0, 0, off), x.shallow_clone(), all.narrow(0, off + n, rest)], 0))
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum GradSync {
    Mean,
    Sum,
}

const STEPS: i64 = 4;
const B: i64 = 6; // per-rank batch
const LR: f64 = 0.05;

/// Trains the MLP for STEPS SGD steps on rows `[start, start + len)` of each global batch and
/// returns the parameters by name, and the loss of each step.
fn train(
    opts: &LossOptions,
    pg: Option<(&ProcessGroup, GradSync)>,
    start: i64,
    len: i64,
) -> (Vec<(String, Tensor)>, Vec<f64>) {
    tch::manual_seed(11);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq().add(nn::linear(&root / "l1", 6, 16, Default::default())).add_fn(|x| x.tanh()).add(nn::linear(
        &root / "l2",
        16,
        12,
        Default::default(),
    ));
    vs.set_kind(Kind::Double);
    let mut params: Vec<Tensor> = vs.trainable_variables();
    if let Some((pg, _)) = pg {
        // The usual initial sync (identical seeds make it a no-op here, which is the point of
        // testing it: a wrong broadcast would change the parameters).
        pg.broadcast_(&mut params, 0).unwrap();
    }

    tch::manual_seed(5);
    let xa = Tensor::randn([STEPS, WORLD as i64 * B, 6], (Kind::Double, Device::Cpu));
    let xb = &xa + Tensor::randn([STEPS, WORLD as i64 * B, 6], (Kind::Double, Device::Cpu)) * 0.3;
    let mut losses = Vec::new();
    for k in 0..STEPS {
        let za = net.forward(&xa.get(k).narrow(0, start, len));
        let zb = net.forward(&xb.get(k).narrow(0, start, len));
        let out = barlow_twins_loss(&za, &zb, opts).unwrap();
        losses.push(out.loss.double_value(&[]));
        out.loss.backward();
        let mut grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        match pg {
            Some((pg, GradSync::Mean)) => pg.all_reduce_mean_(&mut grads).unwrap(),
            Some((pg, GradSync::Sum)) => pg.all_reduce_sum_(&mut grads).unwrap(),
            None => {}
        }
        tch::no_grad(|| {
            for (p, g) in params.iter_mut().zip(&grads) {
                let _ = p.f_sub_(&(g * LR)).unwrap();
            }
        });
        for p in &params {
            let _ = p.grad().zero_();
        }
    }
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    (named, losses)
}

fn param_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len(), "parameter lists differ in length");
    // max_diff panics on a NaN, so the fold never sees one.
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            max_diff(ta, tb)
        })
        .fold(0.0, f64::max)
}

fn exact() {
    let mut pg = group();
    // Small buckets: the gradient sync runs through several coalesced collectives.
    pg.set_bucket_bytes(512);
    let pg = Arc::new(pg);
    let rank = pg.rank() as i64;
    for (implementation, normalization) in [
        (LossImpl::Reference, LossNorm::KerasSeed),
        (LossImpl::Reference, LossNorm::Batchnorm),
        (LossImpl::Fused, LossNorm::KerasSeed),
        (LossImpl::Fused, LossNorm::Batchnorm),
    ] {
        let mut base = LossOptions::from_config(&LossConfig::default()).with_implementation(implementation);
        base.normalization = normalization;
        // A larger λ than the seed's 5e-3 so that the off-diagonal (Gram / all_gather) path
        // weighs in the gradient as much as the diagonal one.
        base.lambda = 0.05;
        let (single, single_losses) = train(&base, None, 0, WORLD as i64 * B);

        let correct = base.clone().with_reducer(Arc::new(LossReducer::new(pg.clone())));
        let (dist, dist_losses) = train(&correct, Some((&pg, GradSync::Mean)), rank * B, B);
        let naive = base.clone().with_reducer(Arc::new(IdentityGradReducer(pg.clone())));
        let (naive_sum, _) = train(&naive, Some((&pg, GradSync::Sum)), rank * B, B);
        let (naive_mean, _) = train(&naive, Some((&pg, GradSync::Mean)), rank * B, B);

        let d = param_diff(&dist, &single);
        let d_loss =
            bt_testkit::max_abs_diff("losses", &dist_losses, &single_losses).unwrap_or_else(|e| panic!("{e}")).diff;
        let d_sum = param_diff(&naive_sum, &single);
        let d_mean = param_diff(&naive_mean, &single);
        println!(
            "{implementation:?}/{normalization:?}: loss {:.4} -> {:.4}; max |param diff| vs single \
             process: sum-backward+mean {d:.2e} (loss diff {d_loss:.2e}), identity-backward+sum \
             {d_sum:.2e}, identity-backward+mean {d_mean:.2e}",
            single_losses[0],
            single_losses[STEPS as usize - 1],
        );
        assert!(d < 1e-5 && d_loss < 1e-9, "{implementation:?}/{normalization:?}: not exact: {d}");
        // The controls: the same comparison must fail for the reductions that are wrong.
        assert!(d_sum > 1e-4, "{implementation:?}/{normalization:?}: identity+sum passed: {d_sum}");
        assert!(d_mean > 1e-4, "{implementation:?}/{normalization:?}: identity+mean passed: {d_mean}");
        println!("exact ok");
    }
    pg.barrier().unwrap();
}

fn kill(stall_rank_1: bool) {
    let pg = group();
    let dir = PathBuf::from(std::env::var(OUT_DIR).unwrap());
    for step in 0u64.. {
        let mut t = vec![Tensor::ones([1000], (Kind::Float, Device::Cpu))];
        if let Err(e) = pg.all_reduce_sum_(&mut t) {
            eprintln!("{e}");
            std::process::exit(3);
        }
        if step == 3 {
            File::create(dir.join(format!("ready{}", pg.rank()))).unwrap();
        }
        if stall_rank_1 && pg.rank() == 1 && step == 5 {
            // Stuck (a deadlock, a slow disk): alive, heartbeat running, no collectives. The
            // parent kills this process after rank 0 has given up.
            std::thread::sleep(Duration::from_secs(600));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Both ranks compute the loss with [`LossReducer`] until it fails; the error is printed with
/// its source chain and the process exits with 3.
fn kill_loss() {
    let pg = Arc::new(group());
    let dir = PathBuf::from(std::env::var(OUT_DIR).unwrap());
    let opts = LossOptions::default().with_reducer(Arc::new(LossReducer::new(pg.clone())));
    let z = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
    for step in 0u64.. {
        match barlow_twins_loss(&z, &(&z * 0.5), &opts) {
            Ok(_) => {}
            Err(e) => {
                let dist = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<bt_dist::DistError>()).is_some();
                eprintln!("loss error: {e}");
                if dist {
                    eprintln!("(its source is a DistError)");
                }
                std::process::exit(3);
            }
        }
        if step == 3 {
            File::create(dir.join(format!("ready{}", pg.rank()))).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
