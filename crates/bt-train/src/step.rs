//! The train step as one object with fixed buffers: [`StaticStep`], run by the trainer for every
//! step and by `bt-cli bench step` ([`StepBench`]), so the benchmark times the trainer's own step.
//!
//! One step is: copy the batch into the static input buffers, forward both views, the loss,
//! zero + backward, (data-parallel: average the gradients), gather the gradients, record the
//! guard row into its device ring, look the learning rate up in the epoch's device table at the
//! device step index, `Optimizer::step_device`, restore the batch-norm buffers of a skipped step,
//! and advance the device index. Nothing in it reads a value back or passes a per-step value from
//! the host, and everything it writes across steps lives in buffers allocated once: the inputs,
//! the lr table and index, the guard ring and its slot, the batch-norm snapshot, the optimizer's
//! flat buffers, the gradients (allocated by the first backward).
//!
//! # CUDA graphs (`run.cuda_graph`)
//! That is what a CUDA graph needs: a replay launches the same kernels with the same arguments,
//! so every varying index must come from device memory and every tensor read across steps must
//! keep its address. On CUDA the first [`WARMUP`] steps run eagerly on a side stream (cuDNN
//! autotuning and lazy initialization cannot be captured), the next step is captured once with
//! `bt_shim::CudaGraph` (private memory pool) and replayed, and every later step copies its batch
//! into the input buffers and replays. The host half of a step (the guard's step/epoch note, the
//! optimizer's host step mirror) is done outside the graph. Where a step cannot be captured the
//! run stays eager and [`StaticStep::take_warning`] says why: data parallelism (bt-dist's Gloo
//! collectives copy through the host, and the loss reads a row count back), a fault hook
//! (`BT_FAULT_NONFINITE` decides on the host, per step), a shim built without CUDA, or a failed
//! capture. A batch of another shape than the captured one (no `data.drop_remainder`) runs
//! eagerly.
//!
//! On CPU the same step runs eagerly; `tests/static_step.rs` shows it gives bit-identical weights
//! and optimizer state to the step the loop ran before (separate forward/loss/backward/step calls
//! with a host-indexed lr).
use crate::device::{Staged, StepSettings, Uploader};
use crate::dist::Dist;
use crate::error::Result;
use crate::guard::{self, Guard, Pending};
use bt_config::Config;
use bt_model::BarlowTwins;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Eager steps before the capture (torch.cuda.graph's docs ask for a few on a side stream).
pub const WARMUP: usize = 3;

/// Borrowed parts of the trainer a step uses.
pub struct StepParts<'a> {
    /// The model (train mode).
    pub model: &'a BarlowTwins,
    /// The flat optimizer over the model's trainable variables.
    pub opt: &'a mut dyn bt_optim::Optimizer,
    /// The guard (records; test-only fault hooks).
    pub guard: &'a Guard,
    /// The guard's device ring.
    pub pending: &'a mut Pending,
    /// Data parallelism, if any.
    pub dist: Option<&'a Dist>,
}

enum Graph {
    /// Eager steps only.
    Off,
    /// Eager steps on `side` until `left` reaches 0, then capture.
    Warming { left: usize, side: bt_shim::CudaStream, device: usize },
    /// Captured: replay.
    Ready(bt_shim::CudaGraph),
}

/// The train step with fixed buffers; see the module doc.
pub struct StaticStep {
    /// `[n, 3, s, s]` f32 per view (channels-last when the settings say so); allocated by the
    /// first batch, reallocated by an eager step whose batch has another shape.
    inputs: Option<[Tensor; 2]>,
    channels_last: bool,
    /// `[steps_per_epoch, 2]` f64: this epoch's (weights, biases) learning rates.
    lr_table: Option<Tensor>,
    /// `[1]` i64: the row of `lr_table` the next step reads.
    lr_index: Tensor,
    /// The model's non-trainable buffers and their copies (skip policy only).
    snapshot: Option<(Vec<Tensor>, Vec<Tensor>)>,
    /// The model's trainable variables (their gradients are zeroed each step).
    params: Vec<Tensor>,
    /// `(name, variable)`: the gradient fault hook's target list.
    named: Vec<(String, Tensor)>,
    loss: bt_loss::LossOptions,
    bn_batch: usize,
    graph: Graph,
    warning: Option<String>,
    /// Keep the first view's encoder features (`run.online_probe`).
    want_features: bool,
    /// The last step's first-view encoder features, detached (under a CUDA graph: the captured
    /// step's output, which every replay rewrites in place).
    features: Option<Tensor>,
}

impl StaticStep {
    /// The step of `cfg` for `model` (whose variables live in `vs`) on `device`. The CUDA graph
    /// is planned here (see the module doc); a reason not to use one is queued for
    /// [`take_warning`](Self::take_warning).
    pub fn new(
        cfg: &Config,
        model: &BarlowTwins,
        vs: &nn::VarStore,
        settings: StepSettings,
        guard: &Guard,
        dist: Option<&Dist>,
    ) -> Result<Self> {
        let device = vs.device();
        let snapshot = guard.needs_snapshot().then(|| {
            let bufs: Vec<Tensor> = model
                .variables()
                .iter()
                .filter(|v| !v.tensor.requires_grad())
                .map(|v| v.tensor.shallow_clone())
                .collect();
            let copies = guard::snapshot_buffers(model);
            (bufs, copies)
        });
        let (graph, warning) = match device {
            Device::Cuda(d) if cfg.run.cuda_graph => match graph_blocker(guard, dist) {
                None => (Graph::Warming { left: WARMUP, side: bt_shim::CudaStream::new(d)?, device: d }, None),
                Some(why) => (Graph::Off, Some(format!("run.cuda_graph: eager steps, {why}"))),
            },
            _ => (Graph::Off, None),
        };
        Ok(Self {
            inputs: None,
            channels_last: settings.channels_last,
            lr_table: None,
            lr_index: Tensor::f_zeros([1], (Kind::Int64, device))?,
            snapshot,
            params: model.trainable_variables(),
            named: bt_optim::trainable_named(vs),
            loss: crate::dist::loss_options(&cfg.loss, dist),
            bn_batch: cfg.run.bn_batch,
            graph,
            warning,
            want_features: cfg.run.online_probe,
            features: None,
        })
    }

    /// The first view's encoder features of the last step (`N x F`, f32, detached), when
    /// `run.online_probe` asked for them.
    pub fn features(&self) -> Option<&Tensor> {
        self.features.as_ref()
    }

    /// Whether steps are replayed from a captured CUDA graph (after the warm-up).
    pub fn replaying(&self) -> bool {
        matches!(self.graph, Graph::Ready(_))
    }

    /// Why the step runs eagerly on CUDA with `run.cuda_graph` on, once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.warning.take()
    }

    /// Loads an epoch's learning rates (`[weights, biases]` per batch, flattened: one upload)
    /// into the device table, and points the device index at batch `start` (a resumed epoch).
    pub fn set_epoch_lrs(&mut self, rows: &[f64], start: usize) -> Result<()> {
        let device = self.lr_index.device();
        let t = bt_host::from_f64s(rows, Kind::Double, device)?.f_view([-1, 2])?;
        tch::no_grad(|| -> Result<()> {
            match &self.lr_table {
                // Same size every epoch: copied into the table a captured graph reads.
                Some(table) if table.size() == t.size() => {
                    table.shallow_clone().f_copy_(&t)?;
                }
                _ => self.lr_table = Some(t),
            }
            let _ = self.lr_index.f_fill_(start as i64)?;
            Ok(())
        })
    }

    /// One train step on `views` (`[n, 3, s, s]` each, on the device), recorded by the guard as
    /// step `step` of epoch `epoch` (1-based). See the module doc.
    pub fn run_step(&mut self, p: &mut StepParts<'_>, views: &[Tensor], step: usize, epoch: usize) -> Result<()> {
        let same_shape = self.inputs.as_ref().is_some_and(|x| x[0].size() == views[0].size());
        if let Graph::Ready(g) = &self.graph {
            if same_shape {
                self.load_inputs(views)?;
                g.replay()?;
                return self.after_replay(p, step, epoch);
            }
            // Another shape than the captured one: this step eagerly, on its own tensors.
            self.body(p, views, step)?;
            p.pending.note(step, epoch)?;
            return Ok(());
        }
        if !same_shape {
            self.inputs = Some(self.alloc_inputs(views)?);
        }
        self.load_inputs(views)?;
        let x = self.inputs.as_ref().expect("loaded above").each_ref().map(Tensor::shallow_clone);
        match &mut self.graph {
            Graph::Off => self.body(p, &x, step)?,
            Graph::Warming { left, side, device } if *left > 0 => {
                *left -= 1;
                let (side, device) = (*side, *device);
                // Synchronized around: the warm-up must not overlap the main stream's work.
                bt_shim::cuda_synchronize(device)?;
                {
                    let _on_side = side.make_current()?;
                    self.body(p, &x, step)?;
                }
                bt_shim::cuda_synchronize(device)?;
            }
            Graph::Warming { side, device, .. } => {
                let (side, device) = (*side, *device);
                match self.capture(p, &x, step, side, device) {
                    Ok(g) => {
                        self.graph = Graph::Ready(g);
                        let Graph::Ready(g) = &self.graph else { unreachable!("set above") };
                        g.replay()?;
                        return self.after_replay(p, step, epoch);
                    }
                    Err(e) => {
                        // Nothing of the captured step ran; the optimizer's host mirror did
                        // count it, so it is dropped.
                        p.opt.forget_host_step();
                        self.graph = Graph::Off;
                        self.warning = Some(format!("run.cuda_graph: capture failed ({e}); eager steps from here on"));
                        self.body(p, &x, step)?;
                    }
                }
            }
            Graph::Ready(_) => unreachable!("handled above"),
        }
        p.pending.note(step, epoch)?;
        Ok(())
    }

    /// Captures one step on `side` (nothing runs until the first replay).
    fn capture(
        &mut self,
        p: &mut StepParts<'_>,
        x: &[Tensor; 2],
        step: usize,
        side: bt_shim::CudaStream,
        device: usize,
    ) -> Result<bt_shim::CudaGraph> {
        bt_shim::cuda_synchronize(device)?;
        let mut g = bt_shim::CudaGraph::new(device)?;
        g.capture_begin(&side)?;
        let body = self.body(p, x, step);
        // End the capture even when the body failed, so the stream leaves capture mode.
        let end = g.capture_end();
        body?;
        end?;
        Ok(g)
    }

    /// The host half of a replayed step.
    fn after_replay(&mut self, p: &mut StepParts<'_>, step: usize, epoch: usize) -> Result<()> {
        // The replay advanced only the device step counter.
        p.opt.forget_host_step();
        p.pending.note(step, epoch)
    }

    fn alloc_inputs(&self, views: &[Tensor]) -> Result<[Tensor; 2]> {
        let a = |v: &Tensor| -> Result<Tensor> {
            let t = Tensor::f_empty(v.size(), (Kind::Float, v.device()))?;
            Ok(if self.channels_last { bt_shim::to_channels_last(&t)? } else { t })
        };
        Ok([a(&views[0])?, a(&views[1])?])
    }

    fn load_inputs(&self, views: &[Tensor]) -> Result<()> {
        let inputs = self.inputs.as_ref().expect("allocated before loading");
        tch::no_grad(|| -> Result<()> {
            for (dst, src) in inputs.iter().zip(views) {
                dst.shallow_clone().f_copy_(src)?;
            }
            Ok(())
        })
    }

    /// The device work of one step (what a graph captures). `step` only feeds the test-only
    /// fault hooks, which keep a run eager.
    fn body(&mut self, p: &mut StepParts<'_>, x: &[Tensor], step: usize) -> Result<()> {
        if let Some((bufs, copies)) = &self.snapshot {
            tch::no_grad(|| -> Result<()> {
                for (c, b) in copies.iter().zip(bufs) {
                    c.shallow_clone().f_copy_(b)?;
                }
                Ok(())
            })?;
        }
        // bf16: every weight cast once per step, shared by both forwards (f32: nothing).
        p.model.refresh_low_precision_weights(self.channels_last)?;
        let z_a = if self.want_features {
            let (h, z) = crate::dist::forward_grouped_features(p.model, &x[0], self.bn_batch);
            self.features = Some(h.detach());
            z
        } else {
            crate::dist::forward_grouped(p.model, &x[0], self.bn_batch)
        };
        let z_b = crate::dist::forward_grouped(p.model, &x[1], self.bn_batch);
        let mut out = bt_loss::barlow_twins_loss(&z_a, &z_b, &self.loss)?;
        p.guard.inject_loss_fault(step, &mut out);
        zero_grads(&self.params)?;
        out.loss.f_backward()?;
        // Data-parallel: the full-batch gradient on every rank, before the guard reads it.
        if let Some(d) = p.dist {
            d.average_grads(&self.params)?;
        }
        p.guard.inject_grad_fault(step, &self.named);
        // Non-finite guard, before the update touches the weights: recorded on the device,
        // judged at the next flush (guard.rs); a skip is applied on the device.
        let _ = p.opt.gather_grads()?;
        let finite = p.guard.record_device(p.pending, &out, &*p.opt)?;
        let table = self.lr_table.as_ref().ok_or_else(|| {
            crate::Error::Refused("StaticStep::run_step before set_epoch_lrs: no learning-rate table".into())
        })?;
        let lr = table.f_index_select(0, &self.lr_index)?.f_view([2])?;
        match &self.snapshot {
            Some((_, copies)) => {
                p.opt.step_device(&lr, Some(&finite))?;
                guard::restore_buffers_where(p.model, copies, &finite)?;
            }
            None => p.opt.step_device(&lr, None)?,
        }
        let _ = self.lr_index.f_add_scalar_(1)?;
        Ok(())
    }
}

/// Why a step cannot be captured, if it cannot (see the module doc).
fn graph_blocker(guard: &Guard, dist: Option<&Dist>) -> Option<&'static str> {
    if !bt_shim::built_with_cuda() {
        Some("bt-shim was built without the CUDA headers (no CudaGraph)")
    } else if dist.is_some() {
        Some("data parallelism: bt-dist's collectives and the loss's row count go through the host")
    } else if guard.fault_hook_set() {
        Some("BT_FAULT_NONFINITE is set (the fault hook decides per step on the host)")
    } else {
        None
    }
}

/// Zeroes the gradients that exist (none before the first backward) with one `_foreach_zero_`.
fn zero_grads(params: &[Tensor]) -> Result<()> {
    let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
    Ok(bt_shim::foreach_zero_(&grads)?)
}

/// The trainer's step on a fixed random batch, for `bt-cli bench step`: the same
/// [`StaticStep`], guard ring and uploader as [`Trainer`](crate::Trainer), flushed at the
/// trainer's log cadence; a window of steps is timed from its first upload to its flush (the
/// window's one host sync), as the trainer's `pairs_per_s` is.
pub struct StepBench {
    _vs: nn::VarStore,
    model: BarlowTwins,
    opt: Box<dyn bt_optim::Optimizer>,
    guard: Guard,
    pending: Pending,
    step: StaticStep,
    up: Uploader,
    host: [Vec<f32>; 2],
    next: Option<Staged>,
    names: Vec<String>,
    shape: (usize, usize),
    done: usize,
    lr_rows: Vec<f64>,
}

impl StepBench {
    /// A seeded model of `cfg` on `device`, `batch` pairs of `side` px per step; the settings
    /// are the trainer's ([`StepSettings::for_run`]). The learning rate is `optim.lr` (constant).
    pub fn new(cfg: &Config, device: Device, batch: usize, side: usize) -> Result<Self> {
        tch::manual_seed(cfg.run.seed as i64);
        let vs = nn::VarStore::new(device);
        let mut model = BarlowTwins::try_new(&vs.root(), &cfg.model)?;
        let settings = StepSettings::for_run(cfg, device)?;
        settings.apply_backend(device)?;
        model.set_precision(settings.precision);
        let opt = bt_optim::build(&cfg.optim, bt_optim::trainable_named(&vs))?;
        let guard = Guard::new(&cfg.run);
        let pending = Pending::new(cfg.run.log_every, device)?;
        let step = StaticStep::new(cfg, &model, &vs, settings, &guard, None)?;
        let host = [0, 1].map(|_| {
            Vec::<f32>::try_from(Tensor::rand([(batch * 3 * side * side) as i64], (Kind::Float, Device::Cpu)))
        });
        let [a, b] = host;
        let names = opt.param_names();
        let lr_rows = [cfg.optim.lr, cfg.optim.lr].repeat(cfg.run.log_every);
        let mut up = Uploader::new(device, settings.channels_last)?;
        let host = [a?, b?];
        let next = Some(up.upload(&[&host[0], &host[1]], batch, side)?);
        Ok(Self {
            _vs: vs,
            model,
            opt,
            guard,
            pending,
            step,
            up,
            host,
            next,
            names,
            shape: (batch, side),
            done: 0,
            lr_rows,
        })
    }

    /// The model.
    pub fn model(&self) -> &BarlowTwins {
        &self.model
    }

    /// Why the step is not replayed from a CUDA graph on CUDA, once.
    pub fn take_warning(&mut self) -> Option<String> {
        self.step.take_warning()
    }

    /// Whether the steps replay a CUDA graph.
    pub fn replaying(&self) -> bool {
        self.step.replaying()
    }

    /// The uploader (its GPU input-wait measurements).
    pub fn uploader(&mut self) -> &mut Uploader {
        &mut self.up
    }

    /// Runs `steps` trainer steps (at most `run.log_every`: one guard window) and the flush that
    /// ends the window; returns the window's seconds. A window of steps that all ran is the
    /// trainer's unit of work between two host syncs.
    pub fn window(&mut self, steps: usize) -> Result<f64> {
        let t = Instant::now();
        if steps > self.lr_rows.len() / 2 {
            crate::error::refuse!("bench step: a window of {steps} steps is longer than run.log_every");
        }
        // One "epoch" of `log_every` batches per window: the table upload is the trainer's
        // once-per-epoch cost, paid here once per window (a few bytes).
        self.step.set_epoch_lrs(&self.lr_rows, 0)?;
        for _ in 0..steps {
            let x = self.next.take().expect("a staged batch").ready(&mut self.up)?;
            self.done += 1;
            let mut parts = StepParts {
                model: &self.model,
                opt: self.opt.as_mut(),
                guard: &self.guard,
                pending: &mut self.pending,
                dist: None,
            };
            self.step.run_step(&mut parts, &x, self.done, 1)?;
            // The next batch's copy overlaps this step's queued kernels, as in the trainer.
            self.next = Some(self.up.upload(&[&self.host[0], &self.host[1]], self.shape.0, self.shape.1)?);
        }
        let judged = self.guard.flush(&mut self.pending, &self.names)?;
        if let Some(j) = judged.iter().find(|j| !j.loss[0].is_finite()) {
            crate::error::refuse!("bench step: step {} gave loss {}", j.step, j.loss[0]);
        }
        Ok(t.elapsed().as_secs_f64())
    }
}
