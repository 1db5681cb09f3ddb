//! `[loss]`: the cross-correlation loss.
use serde::{Deserialize, Serialize};

/// How embeddings are normalized over the batch before the cross-correlation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossNorm {
    /// The seed: `(z - mean) / std`, population std, no epsilon.
    KerasSeed,
    /// Official / solo-learn: BN without affine, epsilon 1e-5.
    Batchnorm,
}

/// Which loss implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossImpl {
    /// Pick by shape: fused (Gram matrices, O(N²D)) when 2N < D, else reference.
    Auto,
    /// Builds the D x D cross-correlation matrix.
    Reference,
    /// Never builds the D x D matrix.
    Fused,
}

/// The cross-correlation loss (`[loss]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the off-diagonal (redundancy) term. Seed 5e-3; official 0.0051.
    pub lambda: f64,
    /// Normalization mode.
    pub normalization: LossNorm,
    /// Multiplies the whole loss (solo-learn: 0.1; seed: 1).
    pub scale: f64,
    /// Implementation choice.
    pub implementation: LossImpl,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self { lambda: 5e-3, normalization: LossNorm::KerasSeed, scale: 1.0, implementation: LossImpl::Auto }
    }
}
