//! The non-finite guard and the loss-spike detector of the training loop, without a host sync
//! per step.
//!
//! Every step, after `backward` and before the optimizer touches the weights, [`Guard::record`]
//! builds on the device one `[3 + P]` f64 row: the loss, its two terms, and for each of the P
//! trainable parameters the number of chunks of its gradient holding a NaN or inf (one
//! `aminmax` over the optimizer's flat gradient buffer, `Optimizer::nonfinite_grads`: NaN
//! propagates through both, and unlike a sum neither can overflow on large finite values), and
//! from it a 0-d bool "finite" flag. Nothing is read back then. With `run.on_nonfinite = "skip"`
//! the flag goes to `Optimizer::step_device`, which leaves weights, moments and step count as
//! they were on a bad step, and [`restore_buffers_where`] puts back the batch-norm statistics the
//! two forward passes moved, all on the device.
//!
//! The rows go into [`Pending`], a fixed-size device ring (`[capacity, 3 + P]`, written at a
//! slot held in device memory, so a CUDA graph replay writes the next row, not the captured
//! one), and are read back in one batch ([`Guard::flush`]) at each log
//! point and before every checkpoint write, epoch end and stop, or when the ring is full; the stop policy and the spike
//! detector then run over them in step order. A bad step under `"stop"` is an error naming the
//! step and the term: `invariance`, `redundancy`, or the parameters whose gradient went bad; the
//! update of that step (and the few after it, up to the flush) did happen, but since every
//! checkpoint write flushes first, no checkpoint of that state is written and the last good one
//! is what a resume starts from. Same messages and the same checkpoints as the per-step check
//! this replaced; only the moment of the error moves to the next flush.
//!
//! # Test-only fault hook
//! `BT_FAULT_NONFINITE=loss@K` makes the invariance term (and so the loss) NaN at step K
//! (1-based), `grad@K` puts +inf into the gradient of the first trainable parameter (by name) at
//! step K. Never set it in real runs.
use crate::error::{Error, Result};
use bt_config::{NonFinitePolicy, RunConfig};
use std::collections::VecDeque;
use tch::{Kind, Tensor};

/// What the loop should do with the step it just computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Apply the update.
    Apply,
    /// Skip it (policy `skip`); the string says why, for the log.
    Skip(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Loss(usize),
    Grad(usize),
}

/// The steps recorded since the last flush: their rows in a fixed device ring, their step and
/// epoch numbers on the host. Nothing here is allocated per step.
#[derive(Debug)]
pub struct Pending {
    /// `[capacity, 3 + P]` f64 on the device; allocated by the first record (P is known then).
    ring: Option<Tensor>,
    /// `[1]` i64 on the device: the slot the next record writes (`index_copy_` reads it there).
    slot: Tensor,
    /// `(step, epoch, slot)` of each recorded step not flushed yet, in order.
    steps: Vec<(usize, usize, usize)>,
    /// The host's mirror of `slot`.
    next: usize,
    capacity: usize,
}

impl Pending {
    /// An empty ring of `capacity` rows (at least 1) on `device`.
    pub fn new(capacity: usize, device: tch::Device) -> Result<Self> {
        let slot = Tensor::f_zeros([1], (Kind::Int64, device))?;
        Ok(Self { ring: None, slot, steps: Vec::new(), next: 0, capacity: capacity.max(1) })
    }

    /// Whether the next record would overwrite a row not read back yet: flush first.
    pub fn is_full(&self) -> bool {
        self.steps.len() >= self.capacity
    }

    /// Whether no step waits.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The host half of a record: step `step` of epoch `epoch` (1-based) took the next slot.
    /// [`Guard::record_device`] (or a graph replay of it) wrote the row there.
    ///
    /// # Errors
    /// When the ring is full: a row would be lost, so this is a bug in the caller's flush cadence.
    pub fn note(&mut self, step: usize, epoch: usize) -> Result<()> {
        self.check_room(step)?;
        self.steps.push((step, epoch, self.next));
        self.next = (self.next + 1) % self.capacity;
        Ok(())
    }

    fn check_room(&self, step: usize) -> Result<()> {
        if self.is_full() {
            return Err(Error::Refused(format!(
                "guard ring full ({} rows) at step {step}: the loop must flush before recording more",
                self.capacity
            )));
        }
        Ok(())
    }

    /// Writes `row` at the device slot and advances the slot, on the device.
    fn write(&mut self, row: &Tensor) -> Result<()> {
        if self.ring.is_none() {
            self.ring = Some(Tensor::f_zeros([self.capacity as i64, row.size()[0]], (Kind::Double, row.device()))?);
        }
        let ring = self.ring.as_ref().expect("allocated above");
        let _ = ring.shallow_clone().f_index_copy_(0, &self.slot, &row.f_unsqueeze(0)?)?;
        let _ = self.slot.f_add_scalar_(1)?.f_remainder_(self.capacity as i64)?;
        Ok(())
    }
}

/// What a flush found for one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// 1-based step.
    pub step: usize,
    /// 1-based epoch.
    pub epoch: usize,
    /// Loss, invariance, redundancy as computed (NaN/inf on a bad step).
    pub loss: [f64; 3],
    /// The verdict (a stop is the error `flush` returns instead).
    pub verdict: Verdict,
}

/// Per-run guard state.
#[derive(Debug)]
pub struct Guard {
    policy: NonFinitePolicy,
    spike_factor: f64,
    spike_window: usize,
    spike_patience: usize,
    recent: VecDeque<f64>,
    strikes: usize,
    fault: Option<Fault>,
}

impl Guard {
    /// A guard for `run`'s policy and spike settings.
    pub fn new(run: &RunConfig) -> Self {
        let fault = std::env::var("BT_FAULT_NONFINITE").ok().and_then(|v| {
            let (what, k) = v.split_once('@')?;
            let k = k.parse().ok()?;
            match what {
                "loss" => Some(Fault::Loss(k)),
                "grad" => Some(Fault::Grad(k)),
                _ => None,
            }
        });
        Self {
            policy: run.on_nonfinite,
            spike_factor: run.spike_factor,
            spike_window: run.spike_window,
            spike_patience: run.spike_patience,
            recent: VecDeque::new(),
            strikes: 0,
            fault,
        }
    }

    /// Whether a test-only fault hook (`BT_FAULT_NONFINITE`) is set: it decides on the host per
    /// step, so such a step cannot be replayed from a CUDA graph.
    pub fn fault_hook_set(&self) -> bool {
        self.fault.is_some()
    }

    /// Whether the loop must snapshot batch-norm buffers before the forward passes.
    pub fn needs_snapshot(&self) -> bool {
        self.policy == NonFinitePolicy::Skip
    }

    /// Test-only: poisons the loss terms at the configured step (see the module doc).
    pub fn inject_loss_fault(&self, step: usize, out: &mut bt_loss::LossOutput) {
        if self.fault == Some(Fault::Loss(step)) {
            out.invariance = &out.invariance + f64::NAN;
            out.loss = &out.loss + f64::NAN;
        }
    }

    /// Test-only: poisons a gradient at the configured step (after `backward`).
    pub fn inject_grad_fault(&self, step: usize, params: &[(String, Tensor)]) {
        if self.fault == Some(Fault::Grad(step)) {
            if let Some((_, p)) = params.iter().min_by(|a, b| a.0.cmp(&b.0)) {
                let g = p.grad();
                if g.defined() {
                    tch::no_grad(|| {
                        let _ = g.view([-1]).get(0).fill_(f64::INFINITY);
                    });
                }
            }
        }
    }

    /// Records step `step` of epoch `epoch` (1-based) on the device: the loss terms of `out`
    /// and the non-finite chunk counts of the optimizer's gathered gradients (call after
    /// `Optimizer::gather_grads`). Returns the 0-d bool flag "everything finite". No host transfer.
    pub fn record(
        &self,
        pending: &mut Pending,
        step: usize,
        epoch: usize,
        out: &bt_loss::LossOutput,
        opt: &dyn bt_optim::Optimizer,
    ) -> Result<Tensor> {
        // Checked before the device write, so a full ring is never overwritten.
        pending.check_room(step)?;
        let flag = self.record_device(pending, out, opt)?;
        pending.note(step, epoch)?;
        Ok(flag)
    }

    /// The device half of [`record`](Self::record): builds the row, writes it at the ring's
    /// device slot and returns the flag; only kernels, so a CUDA graph can capture it. The
    /// caller notes the step with [`Pending::note`] (on every replay, too).
    pub fn record_device(
        &self,
        pending: &mut Pending,
        out: &bt_loss::LossOutput,
        opt: &dyn bt_optim::Optimizer,
    ) -> Result<Tensor> {
        tch::no_grad(|| -> Result<Tensor> {
            let terms = Tensor::f_stack(&[out.loss.detach(), out.invariance.detach(), out.redundancy.detach()], 0)?
                .f_to_kind(Kind::Double)?;
            let bad = opt.nonfinite_grads()?;
            let flag = terms.f_isfinite()?.f_all()?.f_logical_and(&bad.f_sum(Kind::Double)?.f_eq(0.0)?)?;
            pending.write(&Tensor::f_cat(&[terms, bad], 0)?)?;
            Ok(flag)
        })
    }

    /// Reads the ring back in one transfer and judges the pending steps in order (`names`: the
    /// optimizer's parameter names). A stop (non-finite under `"stop"`, or a sustained spike)
    /// is an error naming the first such step.
    pub fn flush(&mut self, pending: &mut Pending, names: &[String]) -> Result<Vec<Judged>> {
        let Some(ring) = pending.ring.as_ref().filter(|_| !pending.steps.is_empty()) else {
            return Ok(Vec::new());
        };
        // The whole ring (capacity x width f64, a few KB): one read, no index upload.
        let vals = bt_host::read_f64s(ring)?;
        let width = 3 + names.len();
        let mut out = Vec::with_capacity(pending.steps.len());
        for (step, epoch, slot) in pending.steps.drain(..) {
            let v = &vals[slot * width..(slot + 1) * width];
            let verdict = self.judge(step, epoch, v, names)?;
            out.push(Judged { step, epoch, loss: [v[0], v[1], v[2]], verdict });
        }
        Ok(out)
    }

    /// Judges one step from its row (`[loss, invariance, redundancy, bad chunks per parameter]`).
    fn judge(&mut self, step: usize, epoch: usize, vals: &[f64], names: &[String]) -> Result<Verdict> {
        let (loss, inv, red) = (vals[0], vals[1], vals[2]);
        let mut bad = Vec::new();
        if !(loss.is_finite() && inv.is_finite() && red.is_finite()) {
            let mut terms = Vec::new();
            if !inv.is_finite() {
                terms.push(format!("invariance = {inv}"));
            }
            if !red.is_finite() {
                terms.push(format!("redundancy = {red}"));
            }
            if terms.is_empty() {
                terms.push(format!(
                    "both terms finite (invariance {inv}, redundancy {red}): the scale or the sum overflowed"
                ));
            }
            bad.push(format!("loss = {loss} ({})", terms.join(", ")));
        }
        let bad_grads: Vec<&str> =
            names.iter().zip(&vals[3..]).filter(|(_, v)| **v != 0.0).map(|(n, _)| n.as_str()).collect();
        if !bad_grads.is_empty() {
            let shown: Vec<String> = bad_grads.iter().take(5).map(|n| format!("`{n}`")).collect();
            let more = if bad_grads.len() > 5 { format!(" and {} more", bad_grads.len() - 5) } else { String::new() };
            bad.push(format!("non-finite gradient of {}{more}", shown.join(", ")));
        }
        if !bad.is_empty() {
            let what = format!("step {step} (epoch {epoch}): {}", bad.join("; "));
            return match self.policy {
                NonFinitePolicy::Stop => Err(Error::Diverged(format!(
                    "non-finite value at {what}. Stopping; no checkpoint of this state was written, so the last \
                     good checkpoint stays (lower optim.lr, or set run.on_nonfinite=skip to skip such steps)"
                ))),
                NonFinitePolicy::Skip => Ok(Verdict::Skip(what)),
            };
        }
        self.observe_for_spikes(step, loss)?;
        Ok(Verdict::Apply)
    }

    fn observe_for_spikes(&mut self, step: usize, loss: f64) -> Result<()> {
        if self.spike_factor <= 0.0 {
            return Ok(());
        }
        if self.recent.len() >= self.spike_window {
            let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            if loss > self.spike_factor * median {
                self.strikes += 1;
                if self.strikes >= self.spike_patience {
                    return Err(Error::Diverged(format!(
                        "loss spike at step {step}: loss {loss:.4} > {} x {median:.4} (median of the last {} steps) for {} \
                         consecutive step(s); stopping, the last good checkpoint stays (run.spike_factor = 0 turns the detector off)",
                        self.spike_factor,
                        self.spike_window,
                        self.strikes
                    )));
                }
                // A spike does not enter the window, so it cannot raise its own baseline.
                return Ok(());
            }
        }
        self.strikes = 0;
        self.recent.push_back(loss);
        if self.recent.len() > self.spike_window {
            self.recent.pop_front();
        }
        Ok(())
    }
}

/// Copies of the model's non-trainable float buffers (batch-norm running statistics and
/// counters), to undo a skipped step's forward passes.
pub fn snapshot_buffers(model: &bt_model::BarlowTwins) -> Vec<Tensor> {
    tch::no_grad(|| model.variables().iter().filter(|v| !v.tensor.requires_grad()).map(|v| v.tensor.copy()).collect())
}

/// Puts back what [`snapshot_buffers`] took where `apply` (0-d bool, device) is false, on the
/// device: `where(apply, current, snapshot)`, no host read of the flag.
pub fn restore_buffers_where(model: &bt_model::BarlowTwins, snap: &[Tensor], apply: &Tensor) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (v, s) in model.variables().iter().filter(|v| !v.tensor.requires_grad()).zip(snap) {
            let keep = v.tensor.f_where_self(apply, s)?;
            v.tensor.shallow_clone().f_copy_(&keep)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1-parameter-per-name run of `record` + `flush` on real tensors.
    fn run(g: &mut Guard, step: usize, loss: [f64; 3], grads: &[(&str, &[f32])]) -> Result<Vec<Judged>> {
        let params: Vec<(String, Tensor)> = grads
            .iter()
            .map(|(n, _)| (n.to_string(), Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)))
            .collect();
        for ((_, p), (_, g)) in params.iter().zip(grads) {
            (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
        }
        let mut opt = bt_optim::build(&bt_config::OptimConfig::default(), params).unwrap();
        let _ = opt.gather_grads().unwrap();
        let out = bt_loss::LossOutput {
            loss: Tensor::from(loss[0]),
            invariance: Tensor::from(loss[1]),
            redundancy: Tensor::from(loss[2]),
        };
        let mut pending = Pending::new(4, tch::Device::Cpu).unwrap();
        let before = bt_host::counts();
        let flag = g.record(&mut pending, step, 1, &out, opt.as_ref()).unwrap();
        assert_eq!(bt_host::counts(), before, "record reads nothing back");
        let ok = loss.iter().all(|v| v.is_finite()) && grads.iter().all(|(_, g)| g.iter().all(|v| v.is_finite()));
        assert_eq!(bool::try_from(&flag).unwrap(), ok);
        let mut sorted = opt.param_names();
        sorted.sort();
        g.flush(&mut pending, &sorted)
    }

    #[test]
    fn stop_names_the_step_and_the_bad_term() {
        let mut g = Guard::new(&RunConfig::default());
        let e = run(&mut g, 17, [1.0, 1.0, 0.0], &[("a.weight", &[1.0, 2.0]), ("b.bias", &[f32::INFINITY, 0.0])])
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 17") && e.contains("`b.bias`") && !e.contains("a.weight"), "{e}");
        let e = run(&mut g, 5, [f64::NAN, f64::NAN, 2.0], &[("a.weight", &[1.0, 2.0])]).unwrap_err().to_string();
        assert!(e.contains("step 5") && e.contains("invariance = NaN") && !e.contains("redundancy ="), "{e}");
        let j = run(&mut g, 6, [3.0, 2.0, 100.0], &[("a.weight", &[1.0, 2.0])]).unwrap();
        assert_eq!((j[0].loss[0], &j[0].verdict), (3.0, &Verdict::Apply));
    }

    #[test]
    fn ring_wraps_and_refuses_to_overwrite_unread_rows() {
        let mut g = Guard::new(&RunConfig::default());
        let p = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(&[1.0f32, 2.0])).sum(Kind::Float).backward();
        let mut opt = bt_optim::build(&bt_config::OptimConfig::default(), vec![("w".to_string(), p)]).unwrap();
        let _ = opt.gather_grads().unwrap();
        let names = opt.param_names();
        let mut pending = Pending::new(2, tch::Device::Cpu).unwrap();
        let loss = |v: f64| bt_loss::LossOutput {
            loss: Tensor::from(v),
            invariance: Tensor::from(v / 2.0),
            redundancy: Tensor::from(v / 4.0),
        };
        let mut seen = Vec::new();
        // 5 steps through a 2-row ring: slots 0 1 | 0 1 | 0, flushed when full.
        for step in 1..=5usize {
            if pending.is_full() {
                seen.extend(g.flush(&mut pending, &names).unwrap());
            }
            let _ = g.record(&mut pending, step, 1, &loss(step as f64), opt.as_ref()).unwrap();
        }
        assert!(g.record(&mut pending, 6, 1, &loss(6.0), opt.as_ref()).is_ok());
        let e = g.record(&mut pending, 7, 1, &loss(7.0), opt.as_ref()).unwrap_err().to_string();
        assert!(e.contains("step 7") && e.contains("full"), "{e}");
        seen.extend(g.flush(&mut pending, &names).unwrap());
        let got: Vec<(usize, [f64; 3])> = seen.iter().map(|j| (j.step, j.loss)).collect();
        let want: Vec<(usize, [f64; 3])> = (1..=6).map(|k| (k, [k as f64, k as f64 / 2.0, k as f64 / 4.0])).collect();
        assert_eq!(got, want);
        assert!(pending.is_empty());
    }

    #[test]
    fn skip_policy_returns_skip_and_nan_grad_is_caught() {
        let run_cfg = RunConfig { on_nonfinite: NonFinitePolicy::Skip, ..Default::default() };
        let mut g = Guard::new(&run_cfg);
        let j = run(&mut g, 2, [1.0, 1.0, 1.0], &[("w", &[f32::NAN, 1.0])]).unwrap();
        assert!(matches!(j[0].verdict, Verdict::Skip(ref s) if s.contains("`w`")), "{j:?}");
    }

    #[test]
    fn spike_detector_needs_patience_consecutive_spikes() {
        let run = RunConfig { spike_factor: 3.0, spike_window: 4, spike_patience: 2, ..Default::default() };
        let mut g = Guard::new(&run);
        for _ in 0..4 {
            g.observe_for_spikes(1, 10.0).unwrap();
        }
        g.observe_for_spikes(5, 100.0).unwrap(); // one spike: tolerated
        g.observe_for_spikes(6, 11.0).unwrap(); // back to normal: strikes reset
        g.observe_for_spikes(7, 100.0).unwrap();
        let e = g.observe_for_spikes(8, 31.0).unwrap_err().to_string();
        assert!(e.contains("step 8") && e.contains("spike"), "{e}");
    }
}
