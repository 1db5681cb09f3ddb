//! `StaticStep` (fixed buffers, device lr index, guard ring) against the step the training loop
//! ran before it: over 20 steps on CPU, every variable (weights and batch-norm buffers) and the
//! optimizer state must be bit-identical.
//!
//! The reference is the previous loop's code written out with public calls: forward both views,
//! the loss, zero + backward, then `Optimizer::step` at the schedule's learning rate for the
//! host's step index (stop policy), or, for the skip policy, the previous device path (a fresh
//! buffer snapshot per step, the finite flag, `step_device` with the host-indexed row of the
//! epoch's lr table, `restore_buffers_where`).
use bt_config::{Config, NonFinitePolicy};
use bt_train::guard::{self, Guard, Pending};
use bt_train::step::{StaticStep, StepParts};
use tch::{Device, Kind, Tensor};

const SPE: usize = 5;

/// Model init and the batches draw from libtorch's global generator (`manual_seed`): the tests
/// of this file run one at a time so a parallel one cannot reseed it midway.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const EPOCHS: usize = 4;

fn config(policy: NonFinitePolicy) -> Config {
    let mut cfg = Config::preset("demo").unwrap();
    (cfg.model.width, cfg.model.projector) = (2, vec![16, 16]);
    (cfg.data.batch_size, cfg.data.image_size) = (8, 16);
    (cfg.run.on_nonfinite, cfg.run.log_every) = (policy, 3);
    cfg
}

/// Step `k`'s two views; step 12 has 6 rows instead of 8 (a remainder batch: the static inputs
/// are reallocated).
fn batch(k: usize) -> [Tensor; 2] {
    tch::manual_seed(1000 + k as i64);
    let n = if k == 12 { 6 } else { 8 };
    [0, 1].map(|_| Tensor::rand([n, 3, 16, 16], (Kind::Float, Device::Cpu)))
}

fn schedule(cfg: &Config) -> bt_optim::Schedule {
    bt_optim::Schedule::from_config(&cfg.schedule, &cfg.optim, cfg.data.batch_size, SPE, EPOCHS)
}

fn lr_rows(s: &bt_optim::Schedule, epoch: usize) -> Vec<f64> {
    (0..SPE).flat_map(|b| [s.lr_at(epoch * SPE + b).weights, s.lr_at(epoch * SPE + b).biases]).collect()
}

type Run = (Vec<(String, Tensor)>, Vec<(String, Tensor)>, i64);

/// The previous loop's step, 20 times.
fn reference(cfg: &Config) -> Run {
    let (vs, model) = bt_train::setup::build_model(cfg, Device::Cpu).unwrap();
    let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs)).unwrap();
    let sched = schedule(cfg);
    let opts = bt_loss::LossOptions::from_config(&cfg.loss);
    let params = model.trainable_variables();
    let skip = cfg.run.on_nonfinite == NonFinitePolicy::Skip;
    for epoch in 0..EPOCHS {
        let table = Tensor::from_slice(&lr_rows(&sched, epoch)).view([SPE as i64, 2]);
        for b in 0..SPE {
            let k = epoch * SPE + b;
            let snap = skip.then(|| guard::snapshot_buffers(&model));
            let x = batch(k);
            let z_a = model.forward(&x[0], true);
            let z_b = model.forward(&x[1], true);
            let out = bt_loss::barlow_twins_loss(&z_a, &z_b, &opts).unwrap();
            for p in &params {
                let g = p.grad();
                if g.defined() {
                    let _ = g.shallow_clone().zero_();
                }
            }
            out.loss.backward();
            match &snap {
                None => opt.step(&sched.lr_at(k)).unwrap(),
                Some(s) => {
                    let _ = opt.gather_grads().unwrap();
                    let finite = tch::no_grad(|| {
                        let terms =
                            Tensor::stack(&[out.loss.detach(), out.invariance.detach(), out.redundancy.detach()], 0);
                        terms.isfinite().all().logical_and(&opt.nonfinite_grads().unwrap().sum(Kind::Double).eq(0.0))
                    });
                    opt.step_device(&table.get(b as i64), Some(&finite)).unwrap();
                    guard::restore_buffers_where(&model, s, &finite).unwrap();
                }
            }
        }
    }
    let vars = vs.variables().into_iter().collect();
    (vars, opt.try_state().unwrap(), opt.step_count())
}

/// The same 20 steps through `StaticStep`, with the loop's flush cadence.
fn static_step(cfg: &Config) -> (Run, Vec<[f64; 3]>) {
    let (vs, model) = bt_train::setup::build_model(cfg, Device::Cpu).unwrap();
    let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs)).unwrap();
    let sched = schedule(cfg);
    let mut guard = Guard::new(&cfg.run);
    let mut pending = Pending::new(cfg.run.log_every, Device::Cpu).unwrap();
    let settings = bt_train::device::StepSettings::for_run(cfg, Device::Cpu).unwrap();
    let mut step = StaticStep::new(cfg, &model, &vs, settings, &guard, None).unwrap();
    assert!(step.take_warning().is_none() && !step.replaying());
    let names = opt.param_names();
    let mut losses = Vec::new();
    for epoch in 0..EPOCHS {
        step.set_epoch_lrs(&lr_rows(&sched, epoch), 0).unwrap();
        for b in 0..SPE {
            let k = epoch * SPE + b;
            let mut parts =
                StepParts { model: &model, opt: opt.as_mut(), guard: &guard, pending: &mut pending, dist: None };
            step.run_step(&mut parts, &batch(k), k + 1, epoch + 1).unwrap();
            if pending.is_full() || b + 1 == SPE {
                for j in guard.flush(&mut pending, &names).unwrap() {
                    assert_eq!(j.verdict, guard::Verdict::Apply);
                    losses.push(j.loss);
                }
            }
        }
    }
    let vars = vs.variables().into_iter().collect();
    ((vars, opt.try_state().unwrap(), opt.step_count()), losses)
}

fn assert_identical(policy: NonFinitePolicy) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = config(policy);
    let (want_vars, want_state, want_steps) = reference(&cfg);
    let ((got_vars, got_state, got_steps), losses) = static_step(&cfg);
    assert_eq!(losses.len(), SPE * EPOCHS, "every step's row read back once");
    assert!(losses.iter().all(|l| l.iter().all(|v| v.is_finite())));
    assert_eq!(got_steps, want_steps);
    assert_eq!(want_steps, (SPE * EPOCHS) as i64);
    let mut want: Vec<(String, Tensor)> = want_vars.into_iter().chain(want_state).collect();
    let mut got: Vec<(String, Tensor)> = got_vars.into_iter().chain(got_state).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(want.iter().map(|w| &w.0).collect::<Vec<_>>(), got.iter().map(|g| &g.0).collect::<Vec<_>>());
    let (init_vs, _) = bt_train::setup::build_model(&cfg, Device::Cpu).unwrap();
    let init = init_vs.variables();
    let mut moved = 0;
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        assert_eq!(w.size(), g.size(), "{name}");
        assert!(w.equal(g), "{name}: differs ({policy:?})");
        moved += init.get(name).is_some_and(|i| !i.equal(w)) as usize;
    }
    // Not a vacuous comparison: the steps moved the weights and BN statistics.
    assert!(moved > 10, "{moved} variables moved");
}

#[test]
fn static_step_is_bit_identical_to_the_previous_step() {
    assert_identical(NonFinitePolicy::Stop);
}

#[test]
fn static_step_with_skip_policy_is_bit_identical_to_the_previous_device_step() {
    assert_identical(NonFinitePolicy::Skip);
}

/// 12 steps on CUDA (f32, so cuDNN's choices are the only difference), eager vs replayed from a
/// CUDA graph after the warm-up: the same weights up to cuDNN's run-to-run rounding, and the
/// same logged losses. Run on a GPU with `--ignored`.
#[test]
#[ignore = "needs CUDA"]
fn cuda_graph_replay_matches_eager_steps() {
    assert!(bt_shim::cuda_device_count() > 0, "no CUDA device: this test needs a GPU");
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = |graph: bool| {
        let mut cfg = config(NonFinitePolicy::Skip);
        (cfg.run.fast_cuda, cfg.run.cuda_graph) = (false, graph);
        let dev = Device::Cuda(0);
        let (vs, model) = bt_train::setup::build_model(&cfg, dev).unwrap();
        let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs)).unwrap();
        let mut guard = Guard::new(&cfg.run);
        let mut pending = Pending::new(cfg.run.log_every, dev).unwrap();
        let settings = bt_train::device::StepSettings::for_run(&cfg, dev).unwrap();
        let mut step = StaticStep::new(&cfg, &model, &vs, settings, &guard, None).unwrap();
        assert_eq!(step.take_warning(), None);
        let sched = schedule(&cfg);
        let names = opt.param_names();
        let mut losses = Vec::new();
        for epoch in 0..3 {
            step.set_epoch_lrs(&lr_rows(&sched, epoch), 0).unwrap();
            for b in 0..4 {
                let k = epoch * SPE + b;
                let x = batch(k).map(|t| t.to_device(dev));
                let mut parts =
                    StepParts { model: &model, opt: opt.as_mut(), guard: &guard, pending: &mut pending, dist: None };
                step.run_step(&mut parts, &x, k + 1, epoch + 1).unwrap();
                if pending.is_full() {
                    losses.extend(guard.flush(&mut pending, &names).unwrap().into_iter().map(|j| j.loss[0]));
                }
            }
        }
        losses.extend(guard.flush(&mut pending, &names).unwrap().into_iter().map(|j| j.loss[0]));
        assert_eq!(step.replaying(), graph);
        let vars: Vec<(String, Tensor)> =
            vs.variables().into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu))).collect();
        (vars, losses, opt.step_count())
    };
    let (eager, eager_losses, eager_steps) = run(false);
    let (graph, graph_losses, graph_steps) = run(true);
    assert_eq!((eager_steps, graph_steps), (12, 12));
    assert_eq!(eager_losses.len(), 12);
    assert_eq!(eager_losses.len(), graph_losses.len(), "losses {eager_losses:?} vs {graph_losses:?}");
    for (a, b) in eager_losses.iter().zip(&graph_losses) {
        assert!(a.is_finite() && b.is_finite(), "losses {eager_losses:?} vs {graph_losses:?}");
        assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "losses {eager_losses:?} vs {graph_losses:?}");
    }
    assert_eq!(eager.len(), graph.len(), "the two runs have different variables");
    let graph: std::collections::HashMap<_, _> = graph.into_iter().collect();
    for (name, e) in &eager {
        let g = &graph[name];
        let d = (e.to_kind(Kind::Double) - g.to_kind(Kind::Double)).abs().max().double_value(&[]);
        assert!(d <= 1e-4, "{name}: eager and replayed steps differ by {d}");
    }
}
