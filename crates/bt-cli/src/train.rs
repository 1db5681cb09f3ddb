//! The pretraining loop: twin pipeline -> device -> model (two forwards) -> loss -> optimizer
//! -> schedule, with metrics, plots, checkpoints and the optional kNN monitor.
//!
//! [`pretrain`] is a function of the config, the data and a start [`Position`] (plus the
//! weights and optimizer state of that position when resuming): the pipeline's batches are
//! keyed by `(seed, epoch, batch)` and the schedule by the step index, so a run continued from
//! a checkpoint sees exactly the batches and learning rates it would have seen.
//!
//! # Overlap
//! The pipeline's bounded queue already augments the next batches on worker threads while the
//! step runs. On CUDA the loop also fetches and uploads batch `i+1` right after *enqueueing* step
//! `i`: pinned host memory, copied on a side stream and ordered by an event (`device.rs`), so the
//! transfer overlaps the GPU's compute; on CPU the upload only wraps the batch in a tensor.
//!
//! # Data parallelism
//! With `WORLD_SIZE > 1` (torchrun / `bt-cli launch`) the same loop runs on every rank with the
//! four rules of `dist.rs`: rank 0's weights broadcast, this rank's rows of each global batch, the
//! loss over the global batch, averaged gradients; only rank 0 writes the run folder.
//! `data_wait_s` in the metrics is the time the loop spent blocked on the pipeline.
use crate::checkpoint::{self, Position};
use crate::eval::knn;
use crate::metrics::{self, MetricsWriter};
use crate::plot::{Chart, Series};
use crate::progress::Bar;
use crate::guard::{self, Guard, Verdict};
use crate::runfolder::RunFolder;
use anyhow::{bail, Context, Result};
use bt_config::Config;
use bt_data::{Dataset, TwinBatch, TwinPipeline};
use bt_model::BarlowTwins;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// What the run produced.
pub struct Outcome {
    /// The variable store (keeps the model's tensors alive).
    pub _vs: nn::VarStore,
    /// The trained model.
    pub model: BarlowTwins,
    /// Steps taken in this invocation.
    pub steps: usize,
    /// Wall time of the loop, seconds.
    pub wall_s: f64,
    /// Mean loss of the last epoch.
    pub final_loss: f64,
    /// Fraction of loop time spent waiting for data (after the first epoch's first step).
    pub data_wait_fraction: f64,
}

/// A batch on its way to the device (CUDA: copied on a side stream; see device.rs).
struct DeviceBatch {
    staged: Option<crate::device::Staged>,
    n: usize,
    wait_s: f64,
}

fn fetch(it: &mut bt_data::EpochIter, up: &mut crate::device::Uploader) -> Result<Option<DeviceBatch>> {
    let t0 = Instant::now();
    let next: Option<bt_data::Result<TwinBatch>> = it.next();
    let wait_s = t0.elapsed().as_secs_f64();
    let Some(b) = next else { return Ok(None) };
    let b = b.context("data pipeline")?;
    let n = b.batch_size;
    let staged = up.upload(&[&b.view_a, &b.view_b], n)?;
    // The uploader copied the views (CPU: `from_slice`; CUDA: into pinned memory), so the batch
    // buffers can go back to the pipeline now.
    drop(b);
    Ok(Some(DeviceBatch { staged: Some(staged), n, wait_s }))
}

/// Pretrains `cfg` on `train` from `start`, writing everything into `run`.
///
/// `resume`: a training checkpoint to start from (weights, optimizer state, position); its
/// config hash must match.
pub fn pretrain(
    cfg: &Config,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    device: Device,
    run: &RunFolder,
    resume: Option<&Path>,
) -> Result<Outcome> {
    let cfg_text = cfg.to_toml();
    // The trajectory hash: run-control keys (max_steps, workers, ...) may change on resume.
    let cfg_hash = crate::ckpt_store::config_hash(cfg);
    let main = crate::dist::is_main();
    let (_, world) = crate::dist::rank_world();
    if main {
        crate::runfolder::atomic_write(&run.config(), cfg_text.as_bytes())?;
    }

    // Data-parallel: this rank's rows of the same global batches (dist.rs).
    let pipe = crate::dist::shard(TwinPipeline::new(train.clone(), &cfg.data, &cfg.augment, cfg.run.seed)?)?;
    let spe = pipe.batches_per_epoch();
    if spe == 0 {
        bail!(
            "data.batch_size = {} is larger than the training set ({} images) with drop_remainder: no step per epoch",
            cfg.data.batch_size,
            train.len()
        );
    }
    let total_steps = spe * cfg.run.epochs;

    let (vs, mut model) = crate::setup::build_model(cfg, device)?;
    // CUDA: bf16 + channels-last unless run.fast_cuda = false; cuDNN benchmark (device.rs).
    let settings = crate::device::StepSettings::for_run(cfg, device)?;
    settings.apply_backend(device)?;
    model.set_precision(settings.precision);
    let mut opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs))?;
    let schedule = bt_optim::Schedule::from_config(&cfg.schedule, &cfg.optim, cfg.data.batch_size, spe, cfg.run.epochs);
    let loss_opts = crate::dist::loss_options(&cfg.loss);
    let mut guard = Guard::new(&cfg.run);
    // The optimizer's variables (views into its flat buffer since `build`): the guard reads
    // their gradients.
    let guard_params = bt_optim::trainable_named(&vs);

    let mut pos = Position::default();
    if let Some(path) = resume {
        let l = checkpoint::load(path)?;
        if l.config_hash != cfg_hash {
            // cmd::pretrain refuses this before we get here unless --allow-config-change.
            tracing::warn!("{} was written by a different config (hash {} != {cfg_hash}); continuing as asked", path.display(), l.config_hash);
        }
        checkpoint::copy_into_model(&model, &l.model, path)?;
        opt.load_state(&l.optimizer)?;
        pos = l.position;
        tracing::info!("resuming from {} at epoch {}, batch {}, step {}", path.display(), pos.epochs_done, pos.batch_in_epoch, pos.step);
    }

    // Every rank starts from rank 0's weights (a no-op for a single process).
    crate::dist::broadcast_model(&model)?;
    crate::dist::sync_projector_bn(&mut model, &cfg.model);
    let params = model.trainable_variables();
    // Only rank 0 writes the run folder; the other ranks' records go nowhere.
    let mut mw = MetricsWriter::open(&if main { run.metrics() } else { std::path::PathBuf::from("/dev/null") })?;
    let c = model.param_counts();
    mw.write(&json!({
        "kind": "run", "event": "start", "device": format!("{device:?}"),
        "dataset_train": train.len(), "steps_per_epoch": spe, "epochs": cfg.run.epochs,
        "batch_size": cfg.data.batch_size, "pipeline_threads": pipe.threads(),
        "intra_op_threads": tch::get_num_threads(), "trainable_params": c.total_trainable(),
        "config_hash": cfg_hash, "start_step": pos.step,
    }))?;
    if pos.step == 0 && main {
        let grid = bt_data::preview_grid(&train, pipe.policy(), 8, cfg.run.seed);
        bt_data::save_png(&grid, &run.augment_png())?;
    }
    tracing::info!(
        "pretraining {:?} (width {}, projector {:?}) on {device:?}: {} images, batch {}, {} steps/epoch, {} epochs, {} pipeline threads",
        cfg.model.arch, cfg.model.width, cfg.model.projector, train.len(), cfg.data.batch_size, spe, cfg.run.epochs, pipe.threads()
    );

    let bar = Bar::new(total_steps as u64, pos.step as u64);
    let t_start = Instant::now();
    let (mut loop_s, mut wait_s_total) = (0.0f64, 0.0f64);
    let mut final_loss = f64::NAN;
    let mut steps_here = 0usize;
    let mut up = crate::device::Uploader::new(device, settings.channels_last)?;
    let mut last_msg = String::new();

    for epoch in pos.epochs_done..cfg.run.epochs {
        let start_batch = if epoch == pos.epochs_done { pos.batch_in_epoch } else { 0 };
        let mut it = pipe.epoch(epoch as u64, start_batch);
        let t_epoch = Instant::now();
        let (mut ep_wait, mut ep_pairs, mut ep_steps) = (0.0f64, 0usize, 0usize);
        let zero = || Tensor::zeros([], (Kind::Double, device));
        let (mut sum_loss, mut sum_inv, mut sum_red) = (zero(), zero(), zero());
        let mut win_t = Instant::now();
        let mut win_pairs = 0usize;
        let mut win_wait = 0.0f64;
        let mut next = fetch(&mut it, &mut up)?;
        while let Some(mut cur) = next.take() {
            let t_step = Instant::now();
            let lr = schedule.lr_at(pos.step);
            let snap = guard.needs_snapshot().then(|| guard::snapshot_buffers(&model));
            let x = cur.staged.take().expect("a staged batch").ready(&mut up)?;
            let z_a = crate::dist::forward_grouped(&model, &x[0], cfg.run.bn_batch);
            let z_b = crate::dist::forward_grouped(&model, &x[1], cfg.run.bn_batch);
            let mut out = bt_loss::barlow_twins_loss(&z_a, &z_b, &loss_opts)?;
            guard.inject_loss_fault(pos.step + 1, &mut out);
            opt.zero_grad();
            out.loss.backward();
            // Data-parallel: the full-batch gradient on every rank, before the guard reads it.
            crate::dist::average_grads(&params)?;
            guard.inject_grad_fault(pos.step + 1, &guard_params);
            // Non-finite guard and spike detector, before the update touches the weights.
            let skipped = match guard.check(pos.step + 1, epoch + 1, &out, &guard_params)? {
                (_, Verdict::Apply) => {
                    opt.step(&lr)?;
                    false
                }
                (_, Verdict::Skip(why)) => {
                    tracing::warn!("skipping step {} (epoch {}): {why}", pos.step + 1, epoch + 1);
                    if let Some(s) = &snap {
                        guard::restore_buffers(&model, s);
                    }
                    opt.zero_grad();
                    mw.write(&json!({"kind": "skip", "epoch": epoch + 1, "step": pos.step + 1, "reason": why}))?;
                    true
                }
            };
            // Enqueued (CUDA) or done (CPU): get the next batch while the device works.
            next = fetch(&mut it, &mut up)?;
            let wait = next.as_ref().map_or(0.0, |b| b.wait_s) + if ep_steps == 0 { cur.wait_s } else { 0.0 };
            tch::no_grad(|| if !skipped {
                sum_loss += out.loss.detach().to_kind(Kind::Double);
                sum_inv += out.invariance.detach().to_kind(Kind::Double);
                sum_red += out.redundancy.detach().to_kind(Kind::Double);
            });
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
            if !skipped && (pos.step % cfg.run.log_every == 0 || pos.step == total_steps) {
                let loss = out.loss.double_value(&[]); // syncs the device
                let dt = win_t.elapsed().as_secs_f64();
                let pps = win_pairs as f64 / dt.max(1e-9);
                mw.write(&json!({
                    "kind": "step", "epoch": epoch + 1, "step": pos.step, "loss": loss,
                    "invariance": out.invariance.double_value(&[]), "redundancy": out.redundancy.double_value(&[]),
                    "lr": lr.weights, "pairs_per_s": pps, "data_wait_s": win_wait, "window_s": dt,
                    "wall_s": t_start.elapsed().as_secs_f64(),
                }))?;
                last_msg = format!("loss {loss:.2} | {pps:.0} pairs/s");
                win_t = Instant::now();
                win_pairs = 0;
                win_wait = 0.0;
            }
            bar.update(pos.step as u64, format!("epoch {}/{}", epoch + 1, cfg.run.epochs), last_msg.clone());
            // Mid-epoch checkpoint (a signal, run.max_steps, run.checkpoint_every_steps); at the
            // epoch's last batch the epoch-end code below writes it.
            // Every rank asks at every step (data-parallel: the ranks agree, see stop_reason).
            let stop = crate::ckpt_store::stop_reason(cfg, pos)?;
            let due = cfg.run.checkpoint_every_steps > 0 && pos.step % cfg.run.checkpoint_every_steps == 0;
            if (stop.is_some() || due) && pos.batch_in_epoch < spe {
                let path = run.checkpoints().join(crate::ckpt_store::file_name(pos));
                if main {
                    checkpoint::save(&path, &model, opt.state(), pos, &cfg_hash, cfg.run.seed, &cfg_text)?;
                    run.prune_checkpoints(cfg.run.keep_checkpoints)?;
                }
                if let Some(reason) = stop {
                    return Err(crate::ckpt_store::Stop { reason, checkpoint: path, step: pos.step }.into());
                }
            }
        }
        drop(it);
        pos.epochs_done = epoch + 1;
        pos.batch_in_epoch = 0;
        let ep_s = t_epoch.elapsed().as_secs_f64();
        let n = ep_steps.max(1) as f64;
        let (l, inv, red) = (sum_loss.double_value(&[]) / n, sum_inv.double_value(&[]) / n, sum_red.double_value(&[]) / n);
        final_loss = l;
        let lr_now = schedule.lr_at(pos.step.saturating_sub(1)).weights;
        mw.write(&json!({
            "kind": "epoch", "epoch": epoch + 1, "steps": ep_steps, "step": pos.step, "loss": l,
            "invariance": inv, "redundancy": red, "lr": lr_now, "pairs_per_s": ep_pairs as f64 / ep_s,
            "data_wait_s": ep_wait, "data_wait_pct": 100.0 * ep_wait / ep_s,
            "gpu_input_wait_ms": up.wait_ms()?.0, "epoch_s": ep_s,
            "wall_s": t_start.elapsed().as_secs_f64(),
        }))?;
        tracing::info!(
            "epoch {}/{}: loss {l:.3} (invariance {inv:.3}, redundancy {red:.2}), lr {lr_now:.2e}, {:.0} pairs/s, data wait {:.1}%, {ep_s:.1}s",
            epoch + 1, cfg.run.epochs, ep_pairs as f64 / ep_s, 100.0 * ep_wait / ep_s
        );
        if let Err(e) = if main { plot_loss(run, spe) } else { Ok(()) } {
            tracing::warn!("could not refresh {}: {e:#}", run.loss_png().display());
        }
        let due = cfg.run.checkpoint_every_steps > 0 && pos.step % cfg.run.checkpoint_every_steps == 0;
        if main && (pos.epochs_done % cfg.run.checkpoint_every == 0 || pos.epochs_done == cfg.run.epochs || due) {
            let path = run.checkpoint(pos.epochs_done);
            checkpoint::save(&path, &model, opt.state(), pos, &cfg_hash, cfg.run.seed, &cfg_text)?;
            run.prune_checkpoints(cfg.run.keep_checkpoints)?;
        }
        // After a signal, stop without the (possibly long) kNN monitor.
        if main && cfg.run.knn_every > 0 && pos.epochs_done % cfg.run.knn_every == 0 && crate::signals::requested().is_none() {
            let t = Instant::now();
            let acc = knn_monitor(cfg, &model, &train, &test, device)?;
            tracing::info!("kNN monitor after epoch {}: top-1 {:.2}% ({:.1}s)", pos.epochs_done, 100.0 * acc, t.elapsed().as_secs_f64());
            mw.write(&json!({"kind": "knn", "epoch": pos.epochs_done, "step": pos.step, "top1": acc, "k": cfg.eval.knn_k, "temperature": cfg.eval.knn_temperature}))?;
        }
        if let Some(reason) = crate::ckpt_store::stop_reason(cfg, pos)?.filter(|_| pos.epochs_done < cfg.run.epochs) {
            let path = run.checkpoint(pos.epochs_done);
            if main && !path.is_file() {
                checkpoint::save(&path, &model, opt.state(), pos, &cfg_hash, cfg.run.seed, &cfg_text)?;
                run.prune_checkpoints(cfg.run.keep_checkpoints)?;
            }
            return Err(crate::ckpt_store::Stop { reason, checkpoint: path, step: pos.step }.into());
        }
    }
    drop(bar);
    let wall_s = t_start.elapsed().as_secs_f64();
    if main {
        checkpoint::atomic_via(&run.model(), |p| Ok(model.save_full(p)?))?;
        checkpoint::atomic_via(&run.encoder(), |p| Ok(model.save_encoder(p)?))?;
    }
    let data_wait_fraction = if loop_s > 0.0 { wait_s_total / loop_s } else { 0.0 };
    mw.write(&json!({
        "kind": "run", "event": "end", "steps": steps_here, "wall_s": wall_s, "final_loss": final_loss,
        "data_wait_fraction": data_wait_fraction,
    }))?;
    tracing::info!(
        "done: {steps_here} steps in {wall_s:.1}s, final epoch loss {final_loss:.3}, data wait {:.2}% of step time; run folder {}",
        100.0 * data_wait_fraction,
        run.dir().display()
    );
    Ok(Outcome { _vs: vs, model, steps: steps_here, wall_s, final_loss, data_wait_fraction })
}

/// kNN top-1 of the encoder features (test vs train, un-augmented).
pub fn knn_monitor(cfg: &Config, model: &BarlowTwins, train: &Dataset, test: &Dataset, device: Device) -> Result<f64> {
    use crate::setup::{features, FeatureKind};
    let (tf, tl) = features(model, train, FeatureKind::Encoder, 256, false, device)?;
    let (vf, vl) = features(model, test, FeatureKind::Encoder, 256, false, device)?;
    Ok(knn::accuracy(&tf, &tl, &vf, &vl, cfg.eval.knn_k, cfg.eval.knn_temperature, crate::eval::linear::CLASSES))
}

/// Redraws `loss.png` from `metrics.jsonl` (so a resumed run's curve includes its past).
pub fn plot_loss(run: &RunFolder, steps_per_epoch: usize) -> Result<()> {
    let recs = metrics::read_all(&run.metrics())?;
    let spe = steps_per_epoch.max(1) as f64;
    let steps: Vec<(f64, f64)> = metrics::of_kind(&recs, "step")
        .filter_map(|r| Some((r["step"].as_f64()? / spe, r["loss"].as_f64()?)))
        .collect();
    let epochs: Vec<(f64, f64)> =
        metrics::of_kind(&recs, "epoch").filter_map(|r| Some((r["epoch"].as_f64()?, r["loss"].as_f64()?))).collect();
    Chart {
        title: "Barlow Twins loss".into(),
        x_label: "epoch".into(),
        series: vec![
            Series { label: "step".into(), points: steps, color: [120, 170, 225], thick: 1 },
            Series { label: "epoch mean".into(), points: epochs, color: [200, 40, 40], thick: 3 },
        ],
        log_y_above_ratio: Some(20.0),
    }
    .save(&run.loss_png())
}
