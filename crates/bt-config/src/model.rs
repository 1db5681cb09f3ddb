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
    /// torchvision's ImageNet ResNet-18: 7x7/2 stem + 3x3/2 max-pool (any input size, e.g. 224).
    Resnet18,
    /// torchvision's ImageNet ResNet-34.
    Resnet34,
    /// torchvision's ImageNet ResNet-50 (bottleneck v1.5): the official Barlow Twins encoder.
    Resnet50,
}

/// Which batch norms take their statistics over every replica's rows in a data-parallel run
/// (PyTorch's `SyncBatchNorm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncBn {
    /// Per-rank statistics everywhere.
    #[default]
    Off,
    /// The projector's batch norms only.
    Projector,
    /// Every batch norm, encoder included (the official recipe converts the whole model).
    All,
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
    /// Zero-init the last BN of each residual block (torchvision ResNets, CIFAR or ImageNet stem).
    pub zero_init_residual: bool,
    /// Data-parallel runs: the projector's batch norm takes its statistics over the global
    /// batch (PyTorch's `SyncBatchNorm`) instead of each rank's rows. The encoder's stays per
    /// rank. No effect in a single process. Kept for existing configs: `true` is
    /// `sync_bn = "projector"`; see [`ModelConfig::sync_bn_scope`].
    pub projector_sync_bn: bool,
    /// Data-parallel runs: which batch norms are synchronized across ranks (`off`, `projector`,
    /// `all`). No effect in a single process.
    pub sync_bn: SyncBn,
    /// A published checkpoint a fresh run starts from (`bt-cli pretrain --init FILE`): the
    /// encoder's weights and, where the file has a matching one, the projector's (torch.save
    /// zip, Lightning `.ckpt` or safetensors; layouts in bt-model's `foreign`). Empty = the
    /// seeded random init. A resumed run loads its checkpoint and ignores this.
    pub init: String,
}

impl ModelConfig {
    /// The batch norms to synchronize: `sync_bn`, or `Projector` when only the older
    /// `projector_sync_bn = true` is set (validation rejects setting both).
    pub fn sync_bn_scope(&self) -> SyncBn {
        match (self.sync_bn, self.projector_sync_bn) {
            (SyncBn::Off, true) => SyncBn::Projector,
            (s, _) => s,
        }
    }
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
            sync_bn: SyncBn::Off,
            init: String::new(),
        }
    }
}
