//! The online linear probe (`run.online_probe`, solo-learn's method): a linear classifier on the
//! detached encoder features of each batch's first view, trained alongside pretraining on the
//! batch's labels, so a run shows how linearly separable its features are while it trains.
//!
//! Isolation from pretraining is by construction, not by care: the probe gets the features the
//! training forward already computed, detached ([`crate::step::StaticStep::features`]); its
//! gradient is written out by hand (softmax cross-entropy: `(softmax(l) - onehot) / n`), so it
//! builds no autograd graph at all; its weights start at zero (no random draw from any
//! generator the run uses); and it never reads or writes a model tensor. `tests/online_probe.rs`
//! checks that the weights of a run with the probe equal, bit for bit, those of a run without.
//!
//! Optimizer: SGD with momentum 0.9 (PyTorch's update: `v = 0.9 v + g; w -= lr v`), no weight
//! decay, learning rate `run.online_probe_lr` on a per-step cosine to 0 over the run (solo-learn
//! schedules its classifier with the backbone's scheduler). Rows labelled `-1` (unlabeled
//! images) are left out. The per-epoch loss and top-1 are accumulated on the device and read once
//! per epoch. Its state (weights, momentum, the epoch's running statistics) is saved in every
//! training checkpoint ([`OnlineProbe::state`], under `optimizer/online_probe/`), so a resumed
//! run continues the probe where it stopped; a checkpoint written without the probe starts it
//! from zero, with a warning.
use crate::classification::Classification;
use crate::error::Result;
use crate::eval::FeatureStore;
use tch::{Device, Kind, Tensor};

/// The classifier and its running epoch statistics.
pub struct OnlineProbe {
    weight: Tensor,
    bias: Tensor,
    mom_w: Tensor,
    mom_b: Tensor,
    lr: f64,
    total_steps: usize,
    /// `[loss sum, correct, rows]` of the epoch so far (f64, on the device).
    acc: Tensor,
}

/// One epoch of the probe: mean cross-entropy and top-1 over the labeled rows it trained on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeEpoch {
    /// Mean softmax cross-entropy (before each step's update).
    pub loss: f64,
    /// Top-1 on the augmented first views it trained on (before each step's update).
    pub train_top1: f64,
    /// Labeled rows seen.
    pub rows: usize,
}

impl OnlineProbe {
    /// A zero-initialized probe from `features` dimensions to `classes`, on `device`, with peak
    /// learning rate `lr` over `total_steps` steps.
    pub fn new(features: i64, classes: i64, lr: f64, total_steps: usize, device: Device) -> Result<Self> {
        let z = |s: &[i64]| Tensor::f_zeros(s, (Kind::Float, device));
        Ok(Self {
            weight: z(&[classes, features])?,
            bias: z(&[classes])?,
            mom_w: z(&[classes, features])?,
            mom_b: z(&[classes])?,
            lr,
            total_steps: total_steps.max(1),
            acc: Tensor::f_zeros([3], (Kind::Double, device))?,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> i64 {
        self.weight.size()[0]
    }

    /// The learning rate of 0-based step `step`: cosine from `lr` to 0.
    pub fn lr_at(&self, step: usize) -> f64 {
        let t = (step as f64 / self.total_steps as f64).min(1.0);
        self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Logits `N x C` of features `N x F`.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        tch::no_grad(|| h.to_kind(Kind::Float).matmul(&self.weight.tr()) + &self.bias)
    }

    /// One SGD step on features `h` (`N x F`, detached) with `labels` (`N`, int64 on the
    /// probe's device; `-1` rows and rows outside `0..classes` are left out) as 0-based step
    /// `step` of the run.
    pub fn step(&mut self, h: &Tensor, labels: &Tensor, step: usize) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let keep = labels.f_ge(0)?.f_logical_and(&labels.f_lt(self.classes())?)?;
            let w = keep.f_to_kind(Kind::Float)?; // N: 1 for rows that count
            let n = w.f_sum(Kind::Float)?.f_clamp_min(1.0)?;
            let y = labels.f_clamp(0, self.classes() - 1)?;
            let logits = self.logits(h);
            let logp = logits.f_log_softmax(1, Kind::Float)?;
            let onehot = Tensor::f_zeros_like(&logits)?.f_scatter_value(1, &y.f_unsqueeze(1)?, 1.0)?;
            // d(mean CE)/d logits over the kept rows.
            let g = (logp.f_exp()? - &onehot).f_mul(&w.f_unsqueeze(1)?)?.f_div(&n)?;
            let gw = g.f_tr()?.f_matmul(&h.f_to_kind(Kind::Float)?)?;
            let gb = g.f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?;
            let loss = -(logp.f_mul(&onehot)?.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?.f_mul(&w)?)
                .f_sum(Kind::Double)?;
            let correct = logits.f_argmax(1, false)?.f_eq_tensor(&y)?.f_logical_and(&keep)?.f_sum(Kind::Double)?;
            let rows = w.f_sum(Kind::Double)?;
            let _ = self.acc.f_add_(&Tensor::f_stack(&[loss, correct, rows], 0)?)?;
            let lr = self.lr_at(step);
            let _ = self.mom_w.f_mul_scalar_(0.9)?.f_add_(&gw)?;
            let _ = self.mom_b.f_mul_scalar_(0.9)?.f_add_(&gb)?;
            let _ = self.weight.f_sub_(&self.mom_w.f_mul_scalar(lr)?)?;
            let _ = self.bias.f_sub_(&self.mom_b.f_mul_scalar(lr)?)?;
            Ok(())
        })
    }

    /// The epoch's statistics (one read-back), and a fresh start for the next epoch.
    pub fn end_epoch(&mut self) -> Result<ProbeEpoch> {
        let v = bt_host::read_f64s(&self.acc)?;
        let _ = self.acc.f_zero_()?;
        let rows = v[2].round() as usize;
        let per = |x: f64| if rows > 0 { x / rows as f64 } else { f64::NAN };
        Ok(ProbeEpoch { loss: per(v[0]), train_top1: per(v[1]), rows })
    }

    /// The probe's state for a checkpoint: weights, momentum and the epoch's running
    /// statistics, by name.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let named = [
            ("weight", &self.weight),
            ("bias", &self.bias),
            ("momentum_weight", &self.mom_w),
            ("momentum_bias", &self.mom_b),
            ("epoch_sums", &self.acc),
        ];
        named.into_iter().map(|(k, t)| (k.to_string(), t.shallow_clone())).collect()
    }

    /// Restores a [`state`](Self::state): every entry must be there with this probe's shape
    /// and dtype (the same features and classes); the probe is unchanged on error.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let mine = self.state();
        let mut pairs = Vec::new();
        for (k, t) in &mine {
            let Some((_, src)) = state.iter().find(|(n, _)| n == k) else {
                crate::error::refuse!("the checkpoint's online probe has no `{k}`");
            };
            if src.size() != t.size() || src.kind() != t.kind() {
                crate::error::refuse!(
                    "the checkpoint's online probe `{k}` is {:?} {:?}, this run's is {:?} {:?} (other features or classes)",
                    src.size(),
                    src.kind(),
                    t.size(),
                    t.kind()
                );
            }
            pairs.push((t, src));
        }
        tch::no_grad(|| -> Result<()> {
            for (t, src) in pairs {
                t.shallow_clone().f_copy_(src)?;
            }
            Ok(())
        })
    }

    /// Top-1, top-5 and confusion of the probe on frozen features (the evaluation transform).
    pub fn evaluate(&self, test: &FeatureStore, device: Device) -> Result<Classification> {
        crate::eval::classify_store(test, self.classes(), device, |x| self.logits(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written gradient equals autograd's for PyTorch's mean cross-entropy, and the
    /// update is PyTorch's SGD with momentum (first step: `w -= lr g`).
    #[test]
    fn the_step_is_sgd_on_the_mean_cross_entropy_of_the_labeled_rows() {
        tch::manual_seed(11);
        let h = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 2, -1, 1, 2, 0]);
        let mut p = OnlineProbe::new(4, 3, 0.5, 10, Device::Cpu).unwrap();
        // Start from non-zero weights so the gradient depends on them.
        let w0 = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        p.weight.copy_(&w0);
        // Reference: autograd on the 5 labeled rows.
        let keep = Tensor::from_slice(&[0i64, 1, 3, 4, 5]);
        let w = w0.copy().set_requires_grad(true);
        let b = Tensor::zeros([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let logits = h.index_select(0, &keep).matmul(&w.tr()) + &b;
        let loss = logits.cross_entropy_for_logits(&labels.index_select(0, &keep));
        loss.backward();
        let want_w = &w0 - w.grad() * 0.5;
        p.step(&h, &labels, 0).unwrap();
        let d = (&p.weight - &want_w).abs().max().double_value(&[]);
        assert!(d < 1e-6, "weight differs from autograd SGD by {d}");
        let db = (&p.bias + b.grad() * 0.5).abs().max().double_value(&[]);
        assert!(db < 1e-6, "bias differs by {db}");
        let e = p.end_epoch().unwrap();
        assert_eq!(e.rows, 5);
        assert!((e.loss - loss.double_value(&[])).abs() < 1e-5, "{e:?} vs {}", loss.double_value(&[]));
        // The statistics start again after an epoch's read.
        assert_eq!(p.end_epoch().unwrap().rows, 0);
        assert!((p.lr_at(5) - 0.25).abs() < 1e-12 && p.lr_at(10) < 1e-12);
    }

    #[test]
    fn it_learns_separable_blobs_and_nan_features_fail_the_evaluation() {
        tch::manual_seed(3);
        let centers = Tensor::randn([4, 8], (Kind::Float, Device::Cpu)) * 3.0;
        let y = Tensor::randint(4, [512], (Kind::Int64, Device::Cpu));
        let x = centers.index_select(0, &y) + Tensor::randn([512, 8], (Kind::Float, Device::Cpu));
        let mut p = OnlineProbe::new(8, 4, 0.1, 64, Device::Cpu).unwrap();
        for s in 0..64 {
            let r = Tensor::arange_start((s % 8) * 64, (s % 8) * 64 + 64, (Kind::Int64, Device::Cpu));
            p.step(&x.index_select(0, &r), &y.index_select(0, &r), s as usize).unwrap();
        }
        let e = p.end_epoch().unwrap();
        assert!(e.train_top1 > 0.8, "{e:?}");
        let store = FeatureStore::from_tensors(&x, &y).unwrap();
        let c = p.evaluate(&store, Device::Cpu).unwrap();
        assert!(c.top1 > 0.9, "{c:?}");
        let bad = FeatureStore::from_tensors(&x.full_like(f64::NAN), &y).unwrap();
        assert!(p.evaluate(&bad, Device::Cpu).is_err());
    }
}
