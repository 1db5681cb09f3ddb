//! `[optim]` and `[schedule]`: the optimizer and its learning-rate schedule.
use serde::{Deserialize, Serialize};

/// Optimizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    /// `tfa.optimizers.LAMB`.
    Lamb,
    /// LARS (official Barlow Twins / solo-learn).
    Lars,
}

/// Optimizer (`[optim]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// `lamb` or `lars`.
    pub name: OptimKind,
    /// Base learning rate for weights.
    pub lr: f64,
    /// Learning rate for biases and norm parameters; 0 = same as `lr`.
    pub lr_bias: f64,
    /// LAMB β1.
    pub beta1: f64,
    /// LAMB β2.
    pub beta2: f64,
    /// LAMB ε.
    pub eps: f64,
    /// Decoupled weight decay (LAMB) / L2 added to the gradient (LARS).
    pub weight_decay: f64,
    /// LARS momentum.
    pub momentum: f64,
    /// LARS trust coefficient η.
    pub eta: f64,
    /// solo-learn's LARS `clip_lr`: trust ratio limited so the local lr never exceeds the global.
    pub clip_lr: bool,
    /// Exclude rank-1 parameters (biases, norm weights) from weight decay and adaptation.
    pub exclude_bias_and_norm: bool,
    /// Which LARS: `official` (facebookresearch/barlowtwins) or `solo-learn` (trust ratio with
    /// the decay term and eps in the denominator, `clip_lr`). Ignored by LAMB.
    pub lars_variant: LarsVariant,
}

/// LARS flavour (`optim.lars_variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LarsVariant {
    /// facebookresearch/barlowtwins `main.py`: decay added to the gradient, then
    /// `eta * ||w|| / ||g + wd w||`; momentum buffer without dampening.
    #[default]
    Official,
    /// solo-learn `solo/utils/lars.py`: `eta * ||w|| / (||g|| + wd ||w|| + 1e-8)`, decay only where
    /// adapted, optional `clip_lr`.
    SoloLearn,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            name: OptimKind::Lamb,
            lr: 1e-3,
            lr_bias: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
            momentum: 0.9,
            eta: 1e-3,
            clip_lr: false,
            exclude_bias_and_norm: false,
            lars_variant: LarsVariant::Official,
        }
    }
}

/// Learning-rate schedule kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Constant `optim.lr` (the seed).
    Constant,
    /// Linear warmup then cosine decay to `final_lr_fraction` of the base.
    WarmupCosine,
}

/// Learning-rate schedule (`[schedule]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// Schedule kind.
    pub kind: ScheduleKind,
    /// Warmup length in epochs.
    pub warmup_epochs: f64,
    /// Multiply the base lr by `batch_size / 256` (official).
    pub scale_with_batch: bool,
    /// Final lr as a fraction of the base (official 0.001).
    pub final_lr_fraction: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup_epochs: 10.0, scale_with_batch: false, final_lr_fraction: 0.001 }
    }
}
