//! The pretraining loop: twin pipeline -> device -> model (two forwards) -> loss -> guard ->
//! optimizer -> schedule, with metrics, plots, checkpoints and the optional kNN monitor.
//!
//! [`Trainer::pretrain`] is a function of the config, the data and a start position (the
//! weights, optimizer state and [`Position`] of a checkpoint when resuming): the pipeline's
//! batches are keyed by `(seed, epoch, batch)` and the schedule by the step index, so a run
//! continued from a checkpoint sees exactly the batches and learning rates it would have seen.
//!
//! # Overlap
//! The pipeline's bounded queue already augments the next batches on worker threads while the
//! step runs. On CUDA the loop also fetches and uploads batch `i+1` right after *enqueueing* step
//! `i`: pinned host memory, copied on a side stream and ordered by an event (`device.rs`), so the
//! transfer overlaps the GPU's compute; on CPU the upload only wraps the batch in a tensor.
//!
//! # Data parallelism
//! With a [`Dist`] ([`Trainer::with_dist`]) the same loop runs on every rank with the four rules
//! of `dist.rs`: rank 0's weights broadcast, this rank's rows of each global batch, the loss over
//! the global batch, averaged gradients; only rank 0 writes the run folder. Stop decisions are
//! collective (every rank polls at the same points).
use crate::checkpoint;
use crate::control::{Interrupted, Stop, StopReason, StopToken};
use crate::dist::Dist;
use crate::error::{Result, ResultExt};
use crate::guard::{self, Guard, Verdict};
use crate::metrics::{self, MetricsWriter};
use crate::observer::{EpochMetrics, Event, Observer, StepMetrics};
use crate::plot::{Chart, Series};
use crate::runfolder::RunFolder;
use crate::setup::Data;
use crate::store::{self, Position};
use bt_config::Config;
use bt_data::{TwinBatch, TwinPipeline};
use bt_model::BarlowTwins;
use serde_json::json;
use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device};

/// What a run produced.
pub struct Outcome {
    /// The variable store (owns the model's tensors).
    pub vs: nn::VarStore,
    /// The model as it stands at the end (or at the stop).
    pub model: BarlowTwins,
    /// Where the run stands.
    pub position: Position,
    /// `Some` when the run stopped before its last epoch (a checkpoint holds the position).
    pub stop: Option<Stop>,
    /// Steps taken in this invocation.
    pub steps: usize,
    /// Wall time of the loop, seconds.
    pub wall_s: f64,
    /// Mean loss of the last finished epoch (NaN if none finished).
    pub final_loss: f64,
    /// Fraction of loop time spent waiting for data (after the first step).
    pub data_wait_fraction: f64,
}

/// Pretrains a Barlow Twins model; see the module doc.
///
/// ```no_run
/// # fn main() -> bt_train::Result<()> {
/// use bt_train::{RunFolder, Trainer};
/// let cfg = bt_config::Config::preset("demo")?;
/// let data = bt_train::setup::load_data(&cfg)?;
/// let run = RunFolder::create("runs/demo")?;
/// let out = Trainer::new(cfg, tch::Device::Cpu).pretrain(&data, &run, None)?;
/// println!("final loss {:.3}", out.final_loss);
/// # Ok(()) }
/// ```
pub struct Trainer<'o> {
    cfg: Config,
    device: Device,
    dist: Option<Arc<Dist>>,
    stop: StopToken,
    observer: Box<dyn Observer + 'o>,
}

/// A batch on its way to the device (CUDA: copied on a side stream; see device.rs).
struct DeviceBatch {
    staged: Option<crate::device::Staged>,
    n: usize,
    wait_s: f64,
    /// The images' labels (kept only for the online probe; empty otherwise).
    labels: Vec<i64>,
}

fn fetch(
    it: &mut bt_data::EpochIter,
    up: &mut crate::device::Uploader,
    keep_labels: bool,
) -> Result<Option<DeviceBatch>> {
    let t0 = Instant::now();
    let next: Option<bt_data::Result<TwinBatch>> = it.next();
    let wait_s = t0.elapsed().as_secs_f64();
    let Some(b) = next else { return Ok(None) };
    let b = b.context("data pipeline")?;
    let n = b.batch_size;
    let staged = up.upload(&[&b.view_a, &b.view_b], n, b.image_size)?;
    let labels = if keep_labels { b.labels.clone() } else { Vec::new() };
    // The uploader copied the views (CPU: `from_slice`; CUDA: into pinned memory), so the batch
    // buffers can go back to the pipeline now.
    drop(b);
    Ok(Some(DeviceBatch { staged: Some(staged), n, wait_s, labels }))
}

impl<'o> Trainer<'o> {
    /// A trainer for `cfg` on `device`: single process, no observer, a fresh stop token.
    pub fn new(cfg: Config, device: Device) -> Self {
        Self { cfg, device, dist: None, stop: StopToken::new(), observer: Box::new(()) }
    }

    /// Reports events to `observer`.
    pub fn with_observer(mut self, observer: impl Observer + 'o) -> Self {
        self.observer = Box::new(observer);
        self
    }

    /// Polls `token` after every step; when it is triggered the run writes a checkpoint and
    /// returns with [`Outcome::stop`] set.
    pub fn with_stop_token(mut self, token: StopToken) -> Self {
        self.stop = token;
        self
    }

    /// Makes this process one rank of a data-parallel run.
    pub fn with_dist(mut self, dist: Option<Arc<Dist>>) -> Self {
        self.dist = dist;
        self
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn is_main(&self) -> bool {
        self.dist.as_ref().is_none_or(|d| d.rank() == 0)
    }

    /// Pretrains on `data.train` (the kNN monitor evaluates on `data.test`) into `run`, from the
    /// training checkpoint `resume` when given (its config hash should match; a mismatch is
    /// reported as a warning: [`start::decide`](crate::start::decide) refuses it earlier unless
    /// asked not to).
    pub fn pretrain(&mut self, data: &Data, run: &RunFolder, resume: Option<&Path>) -> Result<Outcome> {
        let train = data.train.clone();
        let cfg = self.cfg.clone();
        let device = self.device;
        let cfg_text = cfg.to_toml();
        // The trajectory hash: run-control keys (max_steps, workers, ...) may change on resume.
        let cfg_hash = store::config_hash(&cfg);
        let main = self.is_main();
        let world = self.dist.as_ref().map_or(1, |d| d.world());
        // run.bn_batch against a rank's share: known only now (before the folder is touched).
        cfg.validate_world(world)?;
        if main {
            crate::atomic::atomic_write(&run.config(), cfg_text.as_bytes())?;
        }

        // Data-parallel: this rank's rows of the same global batches (dist.rs).
        let mut pipe = TwinPipeline::new(train.clone(), &cfg.data, &cfg.augment, cfg.run.seed)?;
        if let Some(d) = &self.dist {
            pipe = d.shard(pipe)?;
        }
        let spe = pipe.batches_per_epoch();
        if spe == 0 {
            crate::error::refuse!(
                "data.batch_size = {} is larger than the training set ({} images) with drop_remainder: no step per epoch",
                cfg.data.batch_size,
                train.len()
            );
        }
        let total_steps = spe * cfg.run.epochs;
        if cfg.run.knn_every > 0 && main {
            // The monitor needs labels on both splits: refuse now, not after the first epoch.
            data.test()?;
        }

        let (vs, mut model) = crate::setup::build_model(&cfg, device)?;
        // CUDA: bf16 + channels-last unless run.fast_cuda = false; cuDNN benchmark (device.rs).
        let settings = crate::device::StepSettings::for_run(&cfg, device)?;
        if cfg.run.precision == bt_config::Precision::Auto {
            tracing::info!("run.precision = \"auto\": {}", crate::device::describe_auto(settings.precision, device));
        }
        settings.apply_backend(device)?;
        model.set_precision(settings.precision);
        let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs))?;
        let schedule =
            bt_optim::Schedule::from_config(&cfg.schedule, &cfg.optim, cfg.data.batch_size, spe, cfg.run.epochs);
        let mut guard = Guard::new(&cfg.run);
        let param_names = opt.param_names();
        // Flushed at least every log_every steps and at each epoch end: never more rows pending.
        let mut pending = guard::Pending::new(cfg.run.log_every.min(spe), device)?;

        let mut pos = Position::default();
        let mut probe_state = None;
        if let Some(path) = resume {
            let l = checkpoint::load(path)?;
            if l.config_hash != cfg_hash {
                let msg = format!(
                    "{} was written by a different config (hash {} != {cfg_hash}); continuing as asked",
                    path.display(),
                    l.config_hash
                );
                self.observer.on_event(&Event::Warning(&msg));
            }
            checkpoint::copy_into_model(&model, &l.model, path)?;
            opt.load_state(&l.optimizer)?;
            pos = l.position;
            probe_state = Some((l.probe, path.to_path_buf()));
        } else if !cfg.model.init.is_empty() {
            // A fresh run from published weights (model.init, recorded in config.toml).
            let im = bt_model::foreign::import(&cfg.model.init)?;
            let loaded = model.load_imported(&im, true)?;
            let mut msg = format!("initialized from {} ({:?} layout, {loaded:?})", cfg.model.init, im.layout);
            for n in &im.notes {
                msg.push_str(&format!("; {n}"));
            }
            if main {
                let rec = serde_json::json!({
                    "init": cfg.model.init,
                    "layout": format!("{:?}", im.layout),
                    "loaded": format!("{loaded:?}"),
                    "notes": im.notes,
                });
                crate::atomic::atomic_write(&run.dir().join("init.json"), rec.to_string().as_bytes())?;
            }
            self.observer.on_event(&Event::Warning(&msg));
        }

        // Every rank starts from rank 0's weights.
        if let Some(d) = &self.dist {
            d.broadcast_model(&model)?;
        }
        crate::dist::sync_bn(self.dist.as_deref(), &mut model, &cfg.model);
        // The online probe (probe.rs): rank 0 only, on its own rows; needs labels.
        let mut probe = None;
        if cfg.run.online_probe && main {
            match train.num_classes().filter(|&c| c > 0) {
                Some(c) => {
                    probe = Some(crate::probe::OnlineProbe::new(
                        model.feature_dim(),
                        c as i64,
                        cfg.run.online_probe_lr,
                        total_steps,
                        device,
                    )?)
                }
                None => self.observer.on_event(&Event::Warning(&format!(
                    "run.online_probe: {} has no class labels; no online probe",
                    data.description
                ))),
            }
        }
        if let (Some(p), Some((state, path))) = (probe.as_mut(), probe_state) {
            if state.is_empty() {
                let msg = format!(
                    "{} holds no online probe (written without run.online_probe): it starts from zero",
                    path.display()
                );
                self.observer.on_event(&Event::Warning(&msg));
            } else {
                p.load_state(&state).with_context(|| format!("resuming the online probe from {}", path.display()))?;
            }
        }
        // The step with fixed buffers (step.rs), CUDA-graph replayed where it can be.
        let mut step = crate::step::StaticStep::new(&cfg, &model, &vs, settings, &guard, self.dist.as_deref())?;
        // Only rank 0 writes the run folder; the other ranks' records go nowhere.
        let mut mw = MetricsWriter::open(&if main { run.metrics() } else { std::path::PathBuf::from("/dev/null") })?;
        let mut tb = match (main && cfg.run.tensorboard, run.dir()) {
            (true, dir) => Some(crate::tensorboard::TensorBoard::create(dir)?),
            _ => None,
        };
        // The loss curve's past (a resumed run), read once; new points are appended in memory.
        let mut curve = if main { LossCurve::load(run, spe) } else { LossCurve::default() };
        let c = model.param_counts();
        mw.write(&json!({
            "kind": "run", "event": "start", "device": format!("{device:?}"),
            "dataset_train": train.len(), "steps_per_epoch": spe, "epochs": cfg.run.epochs,
            "batch_size": cfg.data.batch_size, "pipeline_threads": pipe.threads(),
            "intra_op_threads": tch::get_num_threads(), "trainable_params": c.total_trainable(),
            "config_hash": cfg_hash, "start_step": pos.step,
        }))?;
        if pos.step == 0 && main {
            let grid = bt_data::preview_grid_sized(&*train, pipe.policy(), 8, cfg.run.seed, cfg.data.image_size)?;
            crate::atomic::atomic_write(&run.augment_png(), &crate::plot::png_bytes(&grid, &run.augment_png())?)?;
        }
        let summary = format!(
            "pretraining {:?} (width {}, projector {:?}) on {device:?}: {} images, batch {}, {} steps/epoch, {} epochs, {} pipeline threads",
            cfg.model.arch,
            cfg.model.width,
            cfg.model.projector,
            train.len(),
            cfg.data.batch_size,
            spe,
            cfg.run.epochs,
            pipe.threads()
        );
        let (token, dist) = (self.stop.clone(), self.dist.clone());
        let mut obs = ObserverPair { user: &mut *self.observer, tb: tb.as_mut() };
        obs.emit(&Event::Started { summary: &summary, start: pos, steps_per_epoch: spe, total_steps });
        // The kNN monitor's baseline: the random-init encoder (epoch 0), so the curve shows what
        // pretraining gained and a run that learns nothing (or worse) is visible as such.
        if main && cfg.run.knn_every > 0 && pos.step == 0 {
            let t = Instant::now();
            let acc = crate::eval::knn_top1(&cfg, &model, data, device)?;
            let seconds = t.elapsed().as_secs_f64();
            mw.write(&json!({"kind": "knn", "epoch": 0, "step": 0, "top1": acc, "k": cfg.eval.knn_k, "temperature": cfg.eval.knn_temperature}))?;
            obs.emit(&Event::Evaluated { name: "knn", epoch: 0, step: 0, top1: acc, seconds });
        }

        let t_start = Instant::now();
        let (mut loop_s, mut wait_s_total) = (0.0f64, 0.0f64);
        let mut final_loss = f64::NAN;
        let mut steps_here = 0usize;
        let mut up = crate::device::Uploader::new(device, settings.channels_last)?;
        // Checkpoints are written on a background thread, one at a time (`checkpoint::Writer`);
        // `Event::Checkpoint` is emitted once a file is on disk (polled after every step).
        let id = checkpoint::RunIdentity { config_hash: cfg_hash.clone(), seed: cfg.run.seed, config_toml: cfg_text };
        let ckpt = RefCell::new(checkpoint::Writer::new(run.checkpoints(), cfg.run.keep_checkpoints, id));
        // The online probe's state rides in the optimizer section, under `online_probe/`.
        let save = |path: &Path,
                    model: &BarlowTwins,
                    opt: &dyn bt_optim::Optimizer,
                    probe: Option<&crate::probe::OnlineProbe>,
                    pos: Position| {
            let mut state = opt.state();
            if let Some(p) = probe {
                state.extend(p.state().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::PROBE), t)));
            }
            ckpt.borrow_mut().save(path, model, state, pos)
        };

        let mut stopped: Option<Stop> = None;
        'epochs: for epoch in pos.epochs_done..cfg.run.epochs {
            let start_batch = if epoch == pos.epochs_done { pos.batch_in_epoch } else { 0 };
            let mut it = pipe.epoch(epoch as u64, start_batch);
            let t_epoch = Instant::now();
            let (mut ep_wait, mut ep_pairs, mut ep_steps) = (0.0f64, 0usize, 0usize);
            // Summed on the host from the flushed rows: no device accumulator to read back.
            let mut sums = [0.0f64; 3];
            // This epoch's learning rates as one device table (one upload per epoch): the
            // optimizer reads its step's row at the step's device index (step.rs).
            let lr_rows: Vec<f64> = (0..spe)
                .flat_map(|b| {
                    let lr = schedule.lr_at(epoch * spe + b);
                    [lr.weights, lr.biases]
                })
                .collect();
            step.set_epoch_lrs(&lr_rows, start_batch)?;
            let mut win_t = Instant::now();
            let mut win_pairs = 0usize;
            let mut win_wait = 0.0f64;
            let mut next = fetch(&mut it, &mut up, probe.is_some())?;
            while let Some(mut cur) = next.take() {
                let t_step = Instant::now();
                let lr = schedule.lr_at(pos.step);
                let x = cur.staged.take().expect("a staged batch").ready(&mut up)?;
                let mut parts = crate::step::StepParts {
                    model: &model,
                    opt: opt.as_mut(),
                    guard: &guard,
                    pending: &mut pending,
                    dist: dist.as_deref(),
                };
                step.run_step(&mut parts, &x, pos.step + 1, epoch + 1)?;
                if let (Some(p), Some(h)) = (probe.as_mut(), step.features()) {
                    let labels = bt_host::from_i64s(&cur.labels, device)?;
                    p.step(h, &labels, pos.step)?;
                }
                if let Some(w) = step.take_warning() {
                    obs.emit(&Event::Warning(&w));
                }
                // Enqueued (CUDA) or done (CPU): get the next batch while the device works.
                next = fetch(&mut it, &mut up, probe.is_some())?;
                let wait = next.as_ref().map_or(0.0, |b| b.wait_s) + if ep_steps == 0 { cur.wait_s } else { 0.0 };
                pos.step += 1;
                pos.batch_in_epoch += 1;
                ep_steps += 1;
                steps_here += 1;
                ep_pairs += cur.n * world;
                win_pairs += cur.n * world;
                ep_wait += wait;
                win_wait += wait;
                // The very first step pays for allocator and oneDNN warm-up: keep it out of the
                // data-wait fraction (it is in the wall time).
                if steps_here > 1 {
                    wait_s_total += wait;
                    loop_s += t_step.elapsed().as_secs_f64();
                }
                let due = cfg.run.checkpoint_every_steps > 0 && pos.step % cfg.run.checkpoint_every_steps == 0;
                let log_point = pos.step % cfg.run.log_every == 0 || pos.step == total_steps;
                // The one read-back of the window: at log points (or a full guard ring), and before anything that writes a
                // checkpoint (a due checkpoint, the epoch's end; a stop below), so no bad state is saved.
                if log_point || due || pos.batch_in_epoch == spe || pending.is_full() {
                    for j in guard.flush(&mut pending, &param_names)? {
                        absorb(&j, &mut sums, &mut obs, &mut mw)?;
                        if log_point && j.step == pos.step && j.verdict == Verdict::Apply {
                            let dt = win_t.elapsed().as_secs_f64();
                            let m = StepMetrics {
                                epoch: epoch + 1,
                                step: pos.step,
                                loss: j.loss[0],
                                invariance: j.loss[1],
                                redundancy: j.loss[2],
                                lr: lr.weights,
                                pairs_per_s: win_pairs as f64 / dt.max(1e-9),
                                data_wait_s: win_wait,
                            };
                            mw.write(&json!({
                                "kind": "step", "epoch": m.epoch, "step": m.step, "loss": m.loss,
                                "invariance": m.invariance, "redundancy": m.redundancy,
                                "lr": m.lr, "pairs_per_s": m.pairs_per_s, "data_wait_s": m.data_wait_s, "window_s": dt,
                                "wall_s": t_start.elapsed().as_secs_f64(),
                            }))?;
                            curve.steps.push((m.step as f64 / spe as f64, m.loss));
                            obs.emit(&Event::Step(&m));
                            win_t = Instant::now();
                            win_pairs = 0;
                            win_wait = 0.0;
                        }
                    }
                }
                obs.emit(&Event::Progress { step: pos.step, total_steps, epoch: epoch + 1, epochs: cfg.run.epochs });
                if let Some(w) = ckpt.borrow_mut().poll()? {
                    obs.emit(&Event::Checkpoint { path: &w.path, position: w.position });
                }
                // Mid-epoch checkpoint (a stop request, run.max_steps, run.checkpoint_every_steps);
                // at the epoch's last batch the epoch-end code below writes it.
                // Every rank asks at every step (data-parallel: the ranks agree, see stop_reason).
                let stop = stop_reason(&token, dist.as_deref(), cfg.run.max_steps, pos)?;
                if stop.is_some() {
                    for j in guard.flush(&mut pending, &param_names)? {
                        absorb(&j, &mut sums, &mut obs, &mut mw)?;
                    }
                }
                if (stop.is_some() || due) && pos.batch_in_epoch < spe {
                    let path = run.checkpoints().join(store::file_name(pos));
                    if main {
                        if let Some(w) = save(&path, &model, opt.as_ref(), probe.as_ref(), pos)? {
                            obs.emit(&Event::Checkpoint { path: &w.path, position: w.position });
                        }
                    }
                    if let Some(reason) = stop {
                        obs.emit(&Event::Stopping { reason, step: pos.step });
                        stopped = Some(Stop { reason, checkpoint: path, step: pos.step });
                        break 'epochs;
                    }
                }
            }
            drop(it);
            for j in guard.flush(&mut pending, &param_names)? {
                absorb(&j, &mut sums, &mut obs, &mut mw)?;
            }
            pos.epochs_done = epoch + 1;
            pos.batch_in_epoch = 0;
            let ep_s = t_epoch.elapsed().as_secs_f64();
            let n = ep_steps.max(1) as f64;
            let (l, inv, red) = (sums[0] / n, sums[1] / n, sums[2] / n);
            final_loss = l;
            let em = EpochMetrics {
                epoch: epoch + 1,
                epochs: cfg.run.epochs,
                step: pos.step,
                loss: l,
                invariance: inv,
                redundancy: red,
                lr: schedule.lr_at(pos.step.saturating_sub(1)).weights,
                pairs_per_s: ep_pairs as f64 / ep_s,
                data_wait_pct: 100.0 * ep_wait / ep_s,
                epoch_s: ep_s,
                skipped_images: pipe.bad_images(),
            };
            mw.write(&json!({
                "kind": "epoch", "epoch": em.epoch, "steps": ep_steps, "step": em.step, "loss": l,
                "invariance": inv, "redundancy": red, "lr": em.lr, "pairs_per_s": em.pairs_per_s,
                "data_wait_s": ep_wait, "data_wait_pct": em.data_wait_pct,
                "gpu_input_wait_ms": up.wait_ms()?.0, "epoch_s": ep_s,
                "skipped_images": em.skipped_images,
                "wall_s": t_start.elapsed().as_secs_f64(),
            }))?;
            curve.epochs.push((em.epoch as f64, l));
            obs.emit(&Event::Epoch(&em));
            // The kNN monitor's epochs (rank 0, not after a stop request).
            let monitor = main && cfg.run.knn_every > 0 && pos.epochs_done % cfg.run.knn_every == 0;
            let mut monitor_stores = None;
            if let Some(p) = probe.as_mut() {
                let pe = p.end_epoch()?;
                let mut rec = json!({
                    "kind": "online_probe", "epoch": em.epoch, "step": pos.step, "loss": pe.loss,
                    "train_top1": pe.train_top1, "rows": pe.rows, "lr": p.lr_at(pos.step.saturating_sub(1)),
                });
                // On the evaluation transform at the kNN monitor's epochs and at the end.
                if (monitor || pos.epochs_done == cfg.run.epochs) && token.requested().is_none() {
                    if let Some(test) = &data.test {
                        let t = Instant::now();
                        // At the monitor's epochs one extraction serves the probe and the monitor.
                        if monitor {
                            let kind = crate::eval::FeatureKind::Encoder;
                            monitor_stores = Some(crate::eval::both_splits(&cfg, &model, data, kind, device, &mut ())?);
                        }
                        let own;
                        let store = match &monitor_stores {
                            Some((_, test)) => test,
                            None => {
                                own = crate::eval::test_store(&cfg, &model, test, device, &mut ())?;
                                &own
                            }
                        };
                        let c = p.evaluate(store, device)?;
                        (rec["test_top1"], rec["test_top5"]) = (json!(c.top1), json!(c.top5));
                        let seconds = t.elapsed().as_secs_f64();
                        obs.emit(&Event::Evaluated {
                            name: "online_probe",
                            epoch: pos.epochs_done,
                            step: pos.step,
                            top1: c.top1,
                            seconds,
                        });
                    }
                }
                mw.write(&rec)?;
                obs.emit(&Event::Evaluated {
                    name: "online_probe_train",
                    epoch: em.epoch,
                    step: pos.step,
                    top1: pe.train_top1,
                    seconds: 0.0,
                });
            }
            if main {
                if let Err(e) = curve.save(run) {
                    obs.emit(&Event::Warning(&format!("could not refresh {}: {e}", run.loss_png().display())));
                }
            }
            let due = cfg.run.checkpoint_every_steps > 0 && pos.step % cfg.run.checkpoint_every_steps == 0;
            if main && (pos.epochs_done % cfg.run.checkpoint_every == 0 || pos.epochs_done == cfg.run.epochs || due) {
                let path = run.checkpoint(pos.epochs_done);
                if let Some(w) = save(&path, &model, opt.as_ref(), probe.as_ref(), pos)? {
                    obs.emit(&Event::Checkpoint { path: &w.path, position: w.position });
                }
            }
            // After a stop request, stop without the (possibly long) kNN monitor.
            if monitor && token.requested().is_none() {
                let t = Instant::now();
                let acc = match monitor_stores.take() {
                    Some((train, test)) => crate::eval::knn_top1_of(&cfg, &train, &test, device)?,
                    None => crate::eval::knn_top1(&cfg, &model, data, device)?,
                };
                let seconds = t.elapsed().as_secs_f64();
                mw.write(&json!({"kind": "knn", "epoch": pos.epochs_done, "step": pos.step, "top1": acc, "k": cfg.eval.knn_k, "temperature": cfg.eval.knn_temperature}))?;
                obs.emit(&Event::Evaluated { name: "knn", epoch: pos.epochs_done, step: pos.step, top1: acc, seconds });
            }
            if let Some(reason) = stop_reason(&token, dist.as_deref(), cfg.run.max_steps, pos)?
                .filter(|_| pos.epochs_done < cfg.run.epochs)
            {
                let path = run.checkpoint(pos.epochs_done);
                if main && !path.is_file() && !ckpt.borrow().in_flight(&path) {
                    if let Some(w) = save(&path, &model, opt.as_ref(), probe.as_ref(), pos)? {
                        obs.emit(&Event::Checkpoint { path: &w.path, position: w.position });
                    }
                }
                obs.emit(&Event::Stopping { reason, step: pos.step });
                stopped = Some(Stop { reason, checkpoint: path, step: pos.step });
                break 'epochs;
            }
        }
        // The run ends (or stops) only once its last checkpoint is on disk; a failed write is
        // this run's error.
        if let Some(w) = ckpt.borrow_mut().wait()? {
            obs.emit(&Event::Checkpoint { path: &w.path, position: w.position });
        }
        let wall_s = t_start.elapsed().as_secs_f64();
        let data_wait_fraction = if loop_s > 0.0 { wait_s_total / loop_s } else { 0.0 };
        if stopped.is_some() {
            // Stopped early: the checkpoint holds the position; no final model, no end record.
            return Ok(Outcome {
                vs,
                model,
                position: pos,
                stop: stopped,
                steps: steps_here,
                wall_s,
                final_loss,
                data_wait_fraction,
            });
        }
        if main {
            crate::atomic::atomic_via(&run.model(), |p| Ok(model.save_full(p)?))?;
            crate::atomic::atomic_via(&run.encoder(), |p| Ok(model.save_encoder(p)?))?;
        }
        mw.write(&json!({
            "kind": "run", "event": "end", "steps": steps_here, "wall_s": wall_s, "final_loss": final_loss,
            "data_wait_fraction": data_wait_fraction,
        }))?;
        obs.emit(&Event::Finished { steps: steps_here, wall_s, final_loss, data_wait_fraction });
        Ok(Outcome { vs, model, position: pos, stop: None, steps: steps_here, wall_s, final_loss, data_wait_fraction })
    }
}

/// Takes one judged step into the epoch sums (applied) or the log (skipped).
fn absorb(
    j: &guard::Judged,
    sums: &mut [f64; 3],
    obs: &mut ObserverPair<'_, '_>,
    mw: &mut MetricsWriter,
) -> Result<()> {
    match &j.verdict {
        Verdict::Apply => {
            for (s, v) in sums.iter_mut().zip(j.loss) {
                *s += v;
            }
        }
        Verdict::Skip(why) => {
            obs.emit(&Event::Skipped { step: j.step, reason: why });
            mw.write(&json!({"kind": "skip", "epoch": j.epoch, "step": j.step, "reason": why}))?;
        }
    }
    Ok(())
}

/// Whether the run must stop now (after the step that brought it to `pos`). A collective in a
/// data-parallel run: every rank calls it at the same points.
fn stop_reason(token: &StopToken, dist: Option<&Dist>, max_steps: usize, pos: Position) -> Result<Option<StopReason>> {
    let local = token.requested();
    let agreed: Option<Interrupted> = match dist {
        Some(d) => d.agreed_stop(local)?,
        None => local,
    };
    if let Some(i) = agreed {
        return Ok(Some(StopReason::Interrupted(i)));
    }
    Ok((max_steps > 0 && pos.step >= max_steps).then_some(StopReason::MaxSteps(max_steps)))
}

/// The caller's observer and the run's own TensorBoard writer.
struct ObserverPair<'a, 'o> {
    user: &'a mut (dyn Observer + 'o),
    tb: Option<&'a mut crate::tensorboard::TensorBoard>,
}

impl ObserverPair<'_, '_> {
    fn emit(&mut self, e: &Event<'_>) {
        self.user.on_event(e);
        if let Some(tb) = &mut self.tb {
            tb.on_event(e);
        }
    }
}

/// The points of `loss.png`: read from `metrics.jsonl` once at start (a resumed run's curve
/// includes its past), then appended as the run goes, so redrawing it every epoch costs the
/// same at epoch 1000 as at epoch 1.
#[derive(Debug, Default)]
struct LossCurve {
    /// `(epoch as a fraction, loss)` of logged steps.
    steps: Vec<(f64, f64)>,
    /// `(epoch, mean loss)`.
    epochs: Vec<(f64, f64)>,
}

impl LossCurve {
    fn load(run: &RunFolder, steps_per_epoch: usize) -> Self {
        let recs = metrics::read_all(&run.metrics()).unwrap_or_default();
        let spe = steps_per_epoch.max(1) as f64;
        let steps = metrics::of_kind(&recs, "step")
            .filter_map(|r| Some((r["step"].as_f64()? / spe, r["loss"].as_f64()?)))
            .collect();
        let epochs = metrics::of_kind(&recs, "epoch")
            .filter_map(|r| Some((r["epoch"].as_f64()?, r["loss"].as_f64()?)))
            .collect();
        Self { steps, epochs }
    }

    fn save(&self, run: &RunFolder) -> Result<()> {
        Chart {
            title: "Barlow Twins loss".into(),
            x_label: "epoch".into(),
            series: vec![
                Series { label: "step".into(), points: self.steps.clone(), color: [120, 170, 225], thick: 1 },
                Series { label: "epoch mean".into(), points: self.epochs.clone(), color: [200, 40, 40], thick: 3 },
            ],
            log_y_above_ratio: Some(20.0),
        }
        .save(&run.loss_png())
    }
}
