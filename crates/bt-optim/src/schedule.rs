//! Learning-rate schedules.
use crate::LrPair;
use bt_config::{OptimConfig, ScheduleConfig, ScheduleKind};

/// The learning rate of every step of a run.
///
/// `warmup-cosine` is the official Barlow Twins `adjust_learning_rate`, with `optim.lr` /
/// `optim.lr_bias` in the role of `learning_rate_weights` / `learning_rate_biases`:
///
/// ```text
/// base = batch / 256 if scale_with_batch else 1
/// step < warmup:  f = base · step / warmup
/// else:           q = ½ (1 + cos(π (step − warmup) / (total − warmup)))
///                 f = base · q + base · final_lr_fraction · (1 − q)
/// lr_weights = f · optim.lr,   lr_biases = f · (optim.lr_bias, or optim.lr when 0)
/// ```
/// with `warmup = warmup_epochs · steps_per_epoch` and `total = epochs · steps_per_epoch`.
/// `constant` is `base · optim.lr` at every step.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    kind: ScheduleKind,
    lr_weights: f64,
    lr_biases: f64,
    base: f64,
    warmup_steps: f64,
    total_steps: f64,
    final_fraction: f64,
}

impl Schedule {
    /// The schedule of a run.
    pub fn from_config(
        s: &ScheduleConfig,
        o: &OptimConfig,
        batch_size: usize,
        steps_per_epoch: usize,
        epochs: usize,
    ) -> Self {
        Self {
            kind: s.kind,
            lr_weights: o.lr,
            lr_biases: if o.lr_bias > 0.0 { o.lr_bias } else { o.lr },
            base: if s.scale_with_batch { batch_size as f64 / 256.0 } else { 1.0 },
            warmup_steps: s.warmup_epochs * steps_per_epoch as f64,
            total_steps: (epochs * steps_per_epoch) as f64,
            final_fraction: s.final_lr_fraction,
        }
    }

    /// The multiplier of `optim.lr` at `step` (0-based), `base` included.
    pub fn factor(&self, step: usize) -> f64 {
        let step = step as f64;
        match self.kind {
            ScheduleKind::Constant => self.base,
            ScheduleKind::WarmupCosine => {
                if step < self.warmup_steps {
                    self.base * step / self.warmup_steps
                } else {
                    let span = (self.total_steps - self.warmup_steps).max(1.0);
                    let progress = ((step - self.warmup_steps) / span).min(1.0);
                    let q = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                    let end = self.base * self.final_fraction;
                    self.base * q + end * (1.0 - q)
                }
            }
        }
    }

    /// Learning rates of weights and biases at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> LrPair {
        let f = self.factor(step);
        LrPair { weights: f * self.lr_weights, biases: f * self.lr_biases }
    }
}
