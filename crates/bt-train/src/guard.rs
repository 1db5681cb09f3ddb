//! The non-finite guard and the loss-spike detector of the training loop.
//!
//! Every step, after `backward` and before the optimizer touches the weights, the loss, its two
//! terms and the largest |gradient| of every trainable parameter are gathered into one small
//! tensor and read back with a single device sync (`amax(|g|)` is NaN or inf exactly when the
//! gradient holds one, and unlike a sum it cannot overflow on large finite values). A bad value
//! either stops the run (`run.on_nonfinite = "stop"`: no checkpoint of the poisoned state is
//! written, so the last good one is what a resume starts from) or skips the step (`"skip"`: no
//! update, and the batch-norm running statistics the two forward passes already moved are put
//! back from a snapshot). The message names the step and the term: `invariance`, `redundancy`,
//! or the parameters whose gradient went bad.
//!
//! The cost on CUDA is one host sync per step (the loop already syncs for its logged loss).
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

    /// Checks step `step` (1-based, the one just computed) of epoch `epoch` (1-based): the loss
    /// terms of `out` and the gradients of `params`. Returns the loss value (for logging) and
    /// the verdict; a stop is an error whose message names the step and the bad term(s).
    pub fn check(
        &mut self,
        step: usize,
        epoch: usize,
        out: &bt_loss::LossOutput,
        params: &[(String, Tensor)],
    ) -> Result<(f64, Verdict)> {
        let mut parts = vec![
            out.loss.detach().to_kind(Kind::Double).reshape([1]),
            out.invariance.detach().to_kind(Kind::Double).reshape([1]),
            out.redundancy.detach().to_kind(Kind::Double).reshape([1]),
        ];
        let mut names = Vec::with_capacity(params.len());
        for (name, p) in params {
            let g = p.grad();
            if g.defined() {
                parts.push(g.detach().abs().amax([] as [i64; 0], false).to_kind(Kind::Double).reshape([1]));
                names.push(name.as_str());
            }
        }
        // One sync for everything.
        let vals: Vec<f64> = Vec::<f64>::try_from(Tensor::cat(&parts, 0).to_device(tch::Device::Cpu))?;
        let (loss, inv, red) = (vals[0], vals[1], vals[2]);
        let mut bad = Vec::new();
        if !loss.is_finite() {
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
            names.iter().zip(&vals[3..]).filter(|(_, v)| !v.is_finite()).map(|(n, _)| *n).collect();
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
                NonFinitePolicy::Skip => Ok((loss, Verdict::Skip(what))),
            };
        }
        self.observe_for_spikes(step, loss)?;
        Ok((loss, Verdict::Apply))
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

/// Puts back what [`snapshot_buffers`] took.
pub fn restore_buffers(model: &bt_model::BarlowTwins, snap: &[Tensor]) {
    tch::no_grad(|| {
        for (v, s) in model.variables().iter().filter(|v| !v.tensor.requires_grad()).zip(snap) {
            v.tensor.shallow_clone().copy_(s);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(loss: f64, inv: f64, red: f64) -> bt_loss::LossOutput {
        bt_loss::LossOutput { loss: Tensor::from(loss), invariance: Tensor::from(inv), redundancy: Tensor::from(red) }
    }

    fn leaf(name: &str, grad: &[f32]) -> (String, Tensor) {
        let p = Tensor::zeros([grad.len() as i64], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        (&p * Tensor::from_slice(grad)).sum(Kind::Float).backward();
        (name.to_string(), p)
    }

    #[test]
    fn stop_names_the_step_and_the_bad_term() {
        let mut g = Guard::new(&RunConfig::default());
        let ps = vec![leaf("a.weight", &[1.0, 2.0]), leaf("b.bias", &[f32::INFINITY, 0.0])];
        let e = g.check(17, 3, &out(1.0, 1.0, 0.0), &ps).unwrap_err().to_string();
        assert!(e.contains("step 17") && e.contains("`b.bias`") && !e.contains("a.weight"), "{e}");
        let ok = vec![leaf("a.weight", &[1.0, 2.0])];
        let e = g.check(5, 1, &out(f64::NAN, f64::NAN, 2.0), &ok).unwrap_err().to_string();
        assert!(e.contains("step 5") && e.contains("invariance = NaN") && !e.contains("redundancy ="), "{e}");
        let (l, v) = g.check(6, 1, &out(3.0, 2.0, 100.0), &ok).unwrap();
        assert_eq!((l, v), (3.0, Verdict::Apply));
    }

    #[test]
    fn skip_policy_returns_skip_and_nan_grad_is_caught() {
        let run = RunConfig { on_nonfinite: NonFinitePolicy::Skip, ..Default::default() };
        let mut g = Guard::new(&run);
        let ps = vec![leaf("w", &[f32::NAN, 1.0])];
        let (_, v) = g.check(2, 1, &out(1.0, 1.0, 1.0), &ps).unwrap();
        assert!(matches!(v, Verdict::Skip(ref s) if s.contains("`w`")), "{v:?}");
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
