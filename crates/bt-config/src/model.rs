//! `[model]`: encoder architecture and projector.
use serde::{Deserialize, Serialize};

/// Encoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// The notebook's ResNet-34 with Keras semantics (7x7/2 stem, max-pool, biases, BN eps 1e-3).
    KerasResnet34,
    /// CIFAR-stem ResNet-18 (3x3/1 stem, no max-pool), torchvision names.
    CifarResnet18,
    /// CIFAR-stem ResNet-34.
    CifarResnet34,
    /// CIFAR-stem ResNet-50 (bottleneck blocks).
    CifarResnet50,
}

/// Encoder and projector (`[model]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Encoder architecture.
    pub arch: Arch,
    /// Width of the first stage (64 in every published ResNet; smaller for the CPU demo).
    pub width: i64,
    /// Projector layer widths; the last is the embedding dimension D.
    pub projector: Vec<i64>,
    /// Batch norm after each hidden projector layer.
    pub projector_bn: bool,
    /// Bias in the projector's linear layers (Keras default true; official: false).
    pub projector_bias: bool,
    /// Zero-init the last BN of each residual block (CIFAR ResNets).
    pub zero_init_residual: bool,
    /// Data-parallel runs: the projector's batch norm takes its statistics over the global
    /// batch (PyTorch's `SyncBatchNorm`) instead of each rank's rows. The encoder's stays per
    /// rank. No effect in a single process.
    pub projector_sync_bn: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Arch::KerasResnet34,
            width: 64,
            projector: vec![5000, 5000, 5000],
            projector_bn: true,
            projector_bias: true,
            zero_init_residual: false,
            projector_sync_bn: false,
        }
    }
}
