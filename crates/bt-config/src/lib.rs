//! The shared configuration of a Barlow Twins run.
//!
//! One struct tree ([`Config`]: `data`, `augment`, `model`, `loss`, `optim`, `schedule`, `run`,
//! `eval`) that every crate reads its part of, so that a run folder's `config.toml` alone
//! reproduces the run. It is assembled in layers, each layer a TOML table merged over the
//! previous one:
//!
//! 1. the built-in defaults ([`Config::default`], the `keras-seed` recipe),
//! 2. a preset shipped in `configs/` ([`PRESETS`]),
//! 3. an optional user file (`--config FILE`),
//! 4. `--set dotted.key=value` overrides.
//!
//! # Why layers are merged leaf by leaf
//! A config error must name the key, the bad value and what is allowed. serde errors from a
//! merged document often lose the key path, so [`ConfigBuilder`] merges one leaf at a time
//! against the schema (the serialized defaults): an unknown key, a wrong type or an unknown enum
//! variant is reported with its dotted path. Range checks ([`Config::validate`]) name the key too.
//!
//! The crate has no dependency on libtorch or on the data pipeline.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use toml::Value;

/// Errors from assembling or validating a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key that the schema does not have.
    #[error("unknown config key `{key}`{}", hint_suffix(.hint))]
    UnknownKey {
        /// Dotted path of the key.
        key: String,
        /// Nearby valid keys.
        hint: String,
    },
    /// A value of the wrong type or an unknown enum variant.
    #[error("bad value for `{key}`: {value} ({reason})")]
    BadValue {
        /// Dotted path of the key.
        key: String,
        /// The offending value as written.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A value outside its allowed range.
    #[error("`{key}` = {value} is out of range: {allowed}")]
    OutOfRange {
        /// Dotted path of the key.
        key: String,
        /// The offending value.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A `--set` argument that is not `key=value`.
    #[error("malformed override `{0}`: expected dotted.key=value, e.g. optim.lr=0.002")]
    MalformedOverride(String),
    /// A preset name that is not shipped.
    #[error("unknown preset `{name}`; available presets: {available}")]
    UnknownPreset {
        /// The requested name.
        name: String,
        /// Comma-separated list of shipped presets.
        available: String,
    },
    /// A config file that cannot be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A config file that is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Parse {
        /// The file (or `<preset NAME>`).
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!("; valid keys here: {hint}")
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// The presets shipped in `configs/`, embedded at compile time: `(name, TOML text)`.
pub const PRESETS: &[(&str, &str)] = &[
    ("keras-seed", include_str!("../../../configs/keras-seed.toml")),
    ("cifar-resnet18", include_str!("../../../configs/cifar-resnet18.toml")),
    ("demo", include_str!("../../../configs/demo.toml")),
];

/// Names of the shipped presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// A complete run configuration. `Default` is the `keras-seed` recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Dataset and batching.
    pub data: DataConfig,
    /// The two views' augmentation policies.
    pub augment: AugmentConfig,
    /// Encoder and projector.
    pub model: ModelConfig,
    /// The cross-correlation loss.
    pub loss: LossConfig,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Run control: epochs, seed, device, checkpoints.
    pub run: RunConfig,
    /// Evaluation protocols.
    pub eval: EvalConfig,
}

/// Which dataset feeds the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// CIFAR-10 in the official binary layout, read from `data.dir`.
    Cifar10,
    /// The embedded procedural dataset (no files needed).
    Synthetic,
}

/// Dataset and batching (`[data]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `cifar10` or `synthetic`.
    pub dataset: DatasetKind,
    /// Folder with `data_batch_1..5.bin`, `test_batch.bin`, `batches.meta.txt`.
    pub dir: PathBuf,
    /// Images per view per step. The seed: 512.
    pub batch_size: usize,
    /// Drop the last incomplete batch (the seed does: 97 steps of 512 per epoch).
    pub drop_remainder: bool,
    /// Augmentation threads; 0 = all cores.
    pub workers: usize,
    /// Batches buffered between the pipeline and the trainer (bounded channel capacity).
    pub queue_capacity: usize,
    /// Synthetic dataset: number of training images.
    pub synthetic_train: usize,
    /// Synthetic dataset: number of test images.
    pub synthetic_test: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: DatasetKind::Cifar10,
            dir: PathBuf::from("data/cifar-10-batches-bin"),
            batch_size: 512,
            drop_remainder: true,
            workers: 0,
            queue_capacity: 4,
            synthetic_train: 10_000,
            synthetic_test: 2_000,
        }
    }
}

/// How a view is cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropKind {
    /// The seed's: square side uniform integer in `[crop_min_side, crop_max_side)`, random
    /// position, `tf.image.resize` bilinear back to 32x32.
    KerasSquare,
    /// torchvision `RandomResizedCrop(32, scale=crop_scale, ratio=crop_ratio)`.
    RandomResized,
}

/// Semantics of the color-jitter numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JitterStyle {
    /// `tf.image.random_*` in fixed order, no clipping between steps: brightness is an
    /// additive delta in `[-b, b)`, contrast/saturation factors in `[1-c, 1+c)`, hue delta in
    /// `[-h, h]`.
    Tf,
    /// torchvision `ColorJitter`: multiplicative brightness `[1-b, 1+b]`, contrast around the
    /// grayscale mean, random order, clamped to [0,1] after each op.
    Torchvision,
}

/// One view's augmentation policy (`[augment.view_a]`, `[augment.view_b]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// Crop style.
    pub crop: CropKind,
    /// `keras-square`: smallest crop side (inclusive).
    pub crop_min_side: u32,
    /// `keras-square`: crop side upper bound (exclusive, as `tf.random.uniform` with ints).
    pub crop_max_side: u32,
    /// `random-resized`: area fraction range.
    pub crop_scale: [f64; 2],
    /// `random-resized`: aspect ratio range.
    pub crop_ratio: [f64; 2],
    /// Probability of the horizontal-flip branch.
    pub flip_prob: f64,
    /// Seed quirk: inside the branch `tf.image.random_flip_left_right` flips with its own 0.5,
    /// so the effective probability is `flip_prob / 2`.
    pub flip_double_coin: bool,
    /// Probability of color jitter.
    pub jitter_prob: f64,
    /// Semantics of the four jitter strengths.
    pub jitter_style: JitterStyle,
    /// Brightness strength (see [`JitterStyle`]).
    pub brightness: f64,
    /// Contrast strength: factor in `[1-c, 1+c)`.
    pub contrast: f64,
    /// Saturation strength: factor in `[1-s, 1+s)`.
    pub saturation: f64,
    /// Hue strength: delta in `[-h, h]` (fraction of the hue circle).
    pub hue: f64,
    /// Probability of the 3x3 gaussian blur (reflect padding).
    pub blur_prob: f64,
    /// Blur sigma range `[lo, hi)`.
    pub blur_sigma: [f64; 2],
    /// Seed quirk: `np.random.random()` runs once when the tf.function is traced, so one sigma
    /// is drawn for the whole run (from the run seed).
    pub blur_sigma_once: bool,
    /// Probability of grayscale (TF weights 0.2989, 0.5870, 0.1140, replicated to 3 channels).
    pub grayscale_prob: f64,
    /// Probability of solarization.
    pub solarize_prob: f64,
    /// Seed quirk: `tf.where(x < 10, x, 255 - x)` on [0,1] data never changes a pixel. When
    /// false, the usual solarize: `x >= 0.5 -> 1 - x`.
    pub solarize_noop_quirk: bool,
    /// Clip to [0,1] at the end (the seed's `clip_by_value`).
    pub clip: bool,
}

impl ViewConfig {
    /// The seed notebook's policy, quirks included.
    pub fn keras_seed() -> Self {
        Self {
            crop: CropKind::KerasSquare,
            crop_min_side: 24,
            crop_max_side: 32,
            crop_scale: [0.08, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip_prob: 0.5,
            flip_double_coin: true,
            jitter_prob: 0.8,
            jitter_style: JitterStyle::Tf,
            brightness: 0.8,
            contrast: 0.6,
            saturation: 0.6,
            hue: 0.2,
            blur_prob: 0.2,
            blur_sigma: [0.0, 1.0],
            blur_sigma_once: true,
            grayscale_prob: 0.2,
            solarize_prob: 0.2,
            solarize_noop_quirk: true,
            clip: true,
        }
    }

    /// solo-learn's CIFAR recipe for one view; `solarize_prob` is 0.0 for view A, 0.2 for B.
    pub fn cifar_asymmetric(solarize_prob: f64) -> Self {
        Self {
            crop: CropKind::RandomResized,
            crop_min_side: 24,
            crop_max_side: 32,
            crop_scale: [0.08, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip_prob: 0.5,
            flip_double_coin: false,
            jitter_prob: 0.8,
            jitter_style: JitterStyle::Torchvision,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            blur_prob: 0.0,
            blur_sigma: [0.1, 2.0],
            blur_sigma_once: false,
            grayscale_prob: 0.2,
            solarize_prob,
            solarize_noop_quirk: false,
            clip: true,
        }
    }
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self::keras_seed()
    }
}

/// Both views' policies (`[augment]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// A label for logs and previews (`keras-seed`, `cifar-asymmetric`, ...).
    pub policy: String,
    /// Policy of the first view.
    pub view_a: ViewConfig,
    /// Policy of the second view.
    pub view_b: ViewConfig,
}

impl AugmentConfig {
    /// The seed's symmetric policy.
    pub fn keras_seed() -> Self {
        Self {
            policy: "keras-seed".into(),
            view_a: ViewConfig::keras_seed(),
            view_b: ViewConfig::keras_seed(),
        }
    }
    /// solo-learn's asymmetric CIFAR policy (solarize 0.0 on A, 0.2 on B).
    pub fn cifar_asymmetric() -> Self {
        Self {
            policy: "cifar-asymmetric".into(),
            view_a: ViewConfig::cifar_asymmetric(0.0),
            view_b: ViewConfig::cifar_asymmetric(0.2),
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::keras_seed()
    }
}

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
        Self {
            lambda: 5e-3,
            normalization: LossNorm::KerasSeed,
            scale: 1.0,
            implementation: LossImpl::Auto,
        }
    }
}

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
        Self {
            kind: ScheduleKind::Constant,
            warmup_epochs: 10.0,
            scale_with_batch: false,
            final_lr_fraction: 0.001,
        }
    }
}

/// Arithmetic precision of the train step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Full f32.
    F32,
    /// bf16 autocast with f32 master weights and f32 loss reductions (CUDA).
    Bf16,
}

/// Run control (`[run]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Pretraining epochs.
    pub epochs: usize,
    /// Master seed: shuffles, augmentations, initialization.
    pub seed: u64,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Precision of the train step.
    pub precision: Precision,
    /// Channels-last (NHWC) activations: the input batch is uploaded in NHWC and the
    /// convolutions and batch norms keep it; the same numbers up to float rounding. On CUDA
    /// `fast_cuda` turns it on. On CPU it is opt-in: ~5-10% faster for the CIFAR ResNets on an
    /// idle machine (docs/BENCHMARKS.md), but oneDNN's NHWC weight-gradient kernels synchronize
    /// their OpenMP threads often, and with more busy threads than cores (several processes each
    /// using every core) they slow down many times over. `false`: contiguous NCHW.
    pub channels_last: bool,
    /// Write a checkpoint every this many epochs.
    pub checkpoint_every: usize,
    /// Keep the last K checkpoints.
    pub keep_checkpoints: usize,
    /// kNN monitor every N epochs; 0 = off.
    pub knn_every: usize,
    /// Write a per-step metrics line every N steps.
    pub log_every: usize,
    /// Also write a checkpoint every N optimizer steps, mid-epoch included; 0 = only at the
    /// `checkpoint_every` epoch boundaries. For long epochs, it bounds the work a crash can lose.
    pub checkpoint_every_steps: usize,
    /// Stop (with a checkpoint) once this many optimizer steps are done in total; 0 = no limit.
    /// A later `bt-cli pretrain` on the same run folder continues from there.
    pub max_steps: usize,
    /// What a NaN/inf loss or gradient does: `stop` the run (the last good checkpoint is kept)
    /// or `skip` the step (no update; batch-norm statistics restored).
    pub on_nonfinite: NonFinitePolicy,
    /// Loss-spike detector: a step whose loss exceeds `spike_factor` x the median of the last
    /// `spike_window` finite losses is a spike; 0 = off.
    pub spike_factor: f64,
    /// Loss-spike detector: number of recent losses the median is taken over.
    pub spike_window: usize,
    /// Loss-spike detector: this many consecutive spikes stop the run (1 = the first one).
    pub spike_patience: usize,
    /// Batch-norm statistics over groups of this many pairs ("ghost batch norm"): each view's
    /// batch is forwarded in chunks of `bn_batch` rows; 0 = the process's whole batch. With data
    /// parallelism every rank already normalizes only its own `batch_size / world` rows (no
    /// SyncBN), so a single process with `bn_batch = batch_size / W` computes exactly what W
    /// ranks compute (the multi-process exactness test relies on this). The loss always sees
    /// the whole global batch.
    pub bn_batch: usize,
    /// On a CUDA device, run bf16 convolutions/linear layers (f32 master weights, f32 loss) with
    /// channels-last inputs whatever `precision` and `channels_last` say: presets are fast on a
    /// GPU without a GPU-specific config. `false`: honor `precision`/`channels_last` exactly (e.g.
    /// an f32 CUDA run). No effect on CPU.
    pub fast_cuda: bool,
}

/// What the trainer does with a non-finite loss or gradient (`run.on_nonfinite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NonFinitePolicy {
    /// Stop the run with a message naming the step and the term; the last good checkpoint stays.
    #[default]
    Stop,
    /// Skip the step: no optimizer update, batch-norm running statistics put back.
    Skip,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            epochs: 160,
            seed: 1024,
            device: "auto".into(),
            precision: Precision::F32,
            channels_last: false,
            checkpoint_every: 1,
            keep_checkpoints: 3,
            knn_every: 0,
            log_every: 1,
            checkpoint_every_steps: 0,
            max_steps: 0,
            on_nonfinite: NonFinitePolicy::Stop,
            spike_factor: 0.0,
            spike_window: 50,
            spike_patience: 3,
            bn_batch: 0,
            fast_cuda: true,
        }
    }
}

/// Linear-probe protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinearProtocol {
    /// The notebook's: frozen whole twin network, 5000-d projector output, Dense(10) softmax
    /// with L2 0.02, LAMB defaults, 35 epochs, batch 512, drop remainder.
    KerasSeed,
    /// Frozen encoder features, linear classifier, cosine schedule, hyperparameters chosen on a
    /// validation split of train.
    Standard,
}

/// Evaluation (`[eval]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Linear-probe protocol.
    pub linear_protocol: LinearProtocol,
    /// Linear-probe epochs.
    pub linear_epochs: usize,
    /// Linear-probe batch size.
    pub linear_batch_size: usize,
    /// `keras-seed` probe: L2 factor on the Dense kernel.
    pub linear_l2: f64,
    /// `standard` probe: fraction of train held out for hyperparameter choice.
    pub val_fraction: f64,
    /// kNN neighbours.
    pub knn_k: usize,
    /// kNN vote temperature.
    pub knn_temperature: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            linear_protocol: LinearProtocol::KerasSeed,
            linear_epochs: 35,
            linear_batch_size: 512,
            linear_l2: 0.02,
            val_fraction: 0.1,
            knn_k: 200,
            knn_temperature: 0.1,
        }
    }
}

impl Config {
    /// The effective config as TOML text (what `bt-cli config` prints and run folders keep).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }

    /// Parses a complete or partial TOML document over the defaults (no preset).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let mut b = ConfigBuilder::new();
        b.merge_str(text, Path::new("<string>"))?;
        b.build()
    }

    /// A shipped preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        let mut b = ConfigBuilder::new();
        b.preset(name)?;
        b.build()
    }

    /// Checks every range constraint; the error names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<()> {
        fn range(key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
            if !(v.is_finite() && v >= lo && v <= hi) {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: v.to_string(),
                    allowed: format!("a number in [{lo}, {hi}]"),
                });
            }
            Ok(())
        }
        fn positive(key: &str, v: f64) -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: v.to_string(),
                    allowed: "a finite number > 0".into(),
                });
            }
            Ok(())
        }
        fn nonneg(key: &str, v: f64) -> Result<()> {
            range(key, v, 0.0, f64::MAX)
        }
        fn at_least(key: &str, v: usize, lo: usize) -> Result<()> {
            if v < lo {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: v.to_string(),
                    allowed: format!("an integer >= {lo}"),
                });
            }
            Ok(())
        }
        fn ordered(key: &str, v: [f64; 2], lo: f64, hi: f64) -> Result<()> {
            range(&format!("{key}[0]"), v[0], lo, hi)?;
            range(&format!("{key}[1]"), v[1], lo, hi)?;
            if v[0] > v[1] {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: format!("[{}, {}]", v[0], v[1]),
                    allowed: "[lo, hi] with lo <= hi".into(),
                });
            }
            Ok(())
        }

        let d = &self.data;
        at_least("data.batch_size", d.batch_size, 1)?;
        at_least("data.queue_capacity", d.queue_capacity, 1)?;
        at_least("data.synthetic_train", d.synthetic_train, 1)?;
        at_least("data.synthetic_test", d.synthetic_test, 1)?;

        for (name, v) in [("augment.view_a", &self.augment.view_a), ("augment.view_b", &self.augment.view_b)] {
            for (k, p) in [
                ("flip_prob", v.flip_prob),
                ("jitter_prob", v.jitter_prob),
                ("blur_prob", v.blur_prob),
                ("grayscale_prob", v.grayscale_prob),
                ("solarize_prob", v.solarize_prob),
            ] {
                range(&format!("{name}.{k}"), p, 0.0, 1.0)?;
            }
            if v.crop_min_side == 0 || v.crop_min_side >= v.crop_max_side || v.crop_max_side > 33 {
                return Err(ConfigError::OutOfRange {
                    key: format!("{name}.crop_min_side"),
                    value: format!("{}..{}", v.crop_min_side, v.crop_max_side),
                    allowed: "1 <= crop_min_side < crop_max_side <= 33 (max exclusive)".into(),
                });
            }
            ordered(&format!("{name}.crop_scale"), v.crop_scale, 1e-6, 1.0)?;
            ordered(&format!("{name}.crop_ratio"), v.crop_ratio, 1e-3, 1e3)?;
            range(&format!("{name}.brightness"), v.brightness, 0.0, 1.0)?;
            range(&format!("{name}.contrast"), v.contrast, 0.0, 1.0)?;
            range(&format!("{name}.saturation"), v.saturation, 0.0, 1.0)?;
            range(&format!("{name}.hue"), v.hue, 0.0, 0.5)?;
            ordered(&format!("{name}.blur_sigma"), v.blur_sigma, 0.0, 100.0)?;
        }

        let m = &self.model;
        if !(1..=1024).contains(&m.width) {
            return Err(ConfigError::OutOfRange {
                key: "model.width".into(),
                value: m.width.to_string(),
                allowed: "an integer in [1, 1024]".into(),
            });
        }
        if m.projector.iter().any(|&w| w < 1) {
            return Err(ConfigError::OutOfRange {
                key: "model.projector".into(),
                value: format!("{:?}", m.projector),
                allowed: "a list of layer widths, each >= 1 (may be empty: no projector)".into(),
            });
        }

        nonneg("loss.lambda", self.loss.lambda)?;
        positive("loss.scale", self.loss.scale)?;

        let o = &self.optim;
        positive("optim.lr", o.lr)?;
        nonneg("optim.lr_bias", o.lr_bias)?;
        range("optim.beta1", o.beta1, 0.0, 0.999_999)?;
        range("optim.beta2", o.beta2, 0.0, 0.999_999_999)?;
        positive("optim.eps", o.eps)?;
        nonneg("optim.weight_decay", o.weight_decay)?;
        range("optim.momentum", o.momentum, 0.0, 0.999_999)?;
        positive("optim.eta", o.eta)?;

        nonneg("schedule.warmup_epochs", self.schedule.warmup_epochs)?;
        range("schedule.final_lr_fraction", self.schedule.final_lr_fraction, 0.0, 1.0)?;

        let r = &self.run;
        at_least("run.epochs", r.epochs, 1)?;
        at_least("run.checkpoint_every", r.checkpoint_every, 1)?;
        at_least("run.keep_checkpoints", r.keep_checkpoints, 1)?;
        at_least("run.log_every", r.log_every, 1)?;
        if r.spike_factor != 0.0 && !(r.spike_factor.is_finite() && r.spike_factor > 1.0) {
            return Err(ConfigError::OutOfRange {
                key: "run.spike_factor".into(),
                value: r.spike_factor.to_string(),
                allowed: "0 (off) or a finite number > 1".into(),
            });
        }
        at_least("run.spike_window", r.spike_window, 1)?;
        at_least("run.spike_patience", r.spike_patience, 1)?;
        if parse_device(&r.device).is_none() {
            return Err(ConfigError::BadValue {
                key: "run.device".into(),
                value: format!("{:?}", r.device),
                reason: "expected auto, cpu, cuda or cuda:N".into(),
            });
        }

        let e = &self.eval;
        at_least("eval.linear_epochs", e.linear_epochs, 1)?;
        at_least("eval.linear_batch_size", e.linear_batch_size, 1)?;
        nonneg("eval.linear_l2", e.linear_l2)?;
        range("eval.val_fraction", e.val_fraction, 0.0, 0.9)?;
        at_least("eval.knn_k", e.knn_k, 1)?;
        positive("eval.knn_temperature", e.knn_temperature)?;
        Ok(())
    }
}

/// A parsed `run.device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when available, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

/// Parses `auto`, `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(s: &str) -> Option<DeviceSpec> {
    match s {
        "auto" => Some(DeviceSpec::Auto),
        "cpu" => Some(DeviceSpec::Cpu),
        "cuda" => Some(DeviceSpec::Cuda(0)),
        _ => s.strip_prefix("cuda:")?.parse().ok().map(DeviceSpec::Cuda),
    }
}

/// Assembles a [`Config`] from layers; see the crate doc.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    schema: Value,
    current: Value,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigBuilder {
    /// Starts from the built-in defaults.
    pub fn new() -> Self {
        let schema = Value::try_from(Config::default()).expect("defaults serialize");
        Self { current: schema.clone(), schema }
    }

    /// Merges a shipped preset.
    pub fn preset(&mut self, name: &str) -> Result<&mut Self> {
        let text = PRESETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t).ok_or_else(|| {
            ConfigError::UnknownPreset { name: name.into(), available: preset_names().join(", ") }
        })?;
        self.merge_str(text, &PathBuf::from(format!("configs/{name}.toml")))?;
        Ok(self)
    }

    /// Merges a TOML file.
    pub fn file(&mut self, path: &Path) -> Result<&mut Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Io { path: path.into(), source })?;
        self.merge_str(&text, path)?;
        Ok(self)
    }

    /// Merges TOML text; `origin` names it in errors.
    pub fn merge_str(&mut self, text: &str, origin: &Path) -> Result<&mut Self> {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.into(), message: e.to_string() })?;
        let mut leaves = Vec::new();
        flatten(&Value::Table(table), String::new(), &mut leaves);
        for (key, value) in leaves {
            self.set_value(&key, value)?;
        }
        Ok(self)
    }

    /// Applies one `dotted.key=value` override. The value is parsed as a TOML value
    /// (`0.1`, `true`, `[2048, 2048]`, `"x"`); anything that is not valid TOML is taken as a
    /// bare string, so `model.arch=cifar-resnet18` works.
    pub fn set(&mut self, assignment: &str) -> Result<&mut Self> {
        let (key, raw) = assignment
            .split_once('=')
            .ok_or_else(|| ConfigError::MalformedOverride(assignment.into()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::MalformedOverride(assignment.into()));
        }
        let raw = raw.trim();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.to_string()));
        self.set_value(key, value)?;
        Ok(self)
    }

    /// Sets one leaf, checking the key against the schema and the whole tree against the types.
    pub fn set_value(&mut self, key: &str, value: Value) -> Result<&mut Self> {
        let parts: Vec<&str> = key.split('.').collect();
        // Walk the schema: every segment must exist, and the leaf must not be a table.
        let mut schema = &self.schema;
        for (i, part) in parts.iter().enumerate() {
            let table = schema.as_table().ok_or_else(|| ConfigError::UnknownKey {
                key: key.into(),
                hint: format!("`{}` is a value, not a section", parts[..i].join(".")),
            })?;
            schema = table.get(*part).ok_or_else(|| ConfigError::UnknownKey {
                key: key.into(),
                hint: table.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        }
        if schema.is_table() {
            return Err(ConfigError::BadValue {
                key: key.into(),
                value: value.to_string(),
                reason: "this is a section; set its keys instead".into(),
            });
        }
        let value = coerce(schema, value, key)?;
        let mut next = self.current.clone();
        let mut slot = &mut next;
        for part in &parts[..parts.len() - 1] {
            slot = slot.as_table_mut().expect("checked above").get_mut(*part).expect("checked above");
        }
        slot.as_table_mut().expect("checked above").insert(parts[parts.len() - 1].into(), value.clone());
        // Enum variants and nested types are checked by deserializing the whole tree.
        if let Err(e) = next.clone().try_into::<Config>() {
            return Err(ConfigError::BadValue {
                key: key.into(),
                value: value.to_string(),
                reason: e.message().trim().to_string(),
            });
        }
        self.current = next;
        Ok(self)
    }

    /// The assembled, validated config.
    pub fn build(&self) -> Result<Config> {
        let cfg: Config = self.current.clone().try_into().map_err(|e: toml::de::Error| {
            ConfigError::BadValue { key: "<config>".into(), value: String::new(), reason: e.to_string() }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }
}

fn flatten(v: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(v, key, out);
            }
        }
        other => out.push((prefix, other.clone())),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean (true/false)",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "a list",
        Value::Table(_) => "a table",
    }
}

/// Makes `value` the schema's type where that is lossless (integer -> float), else errors.
fn coerce(schema: &Value, value: Value, key: &str) -> Result<Value> {
    let bad = |value: &Value| ConfigError::BadValue {
        key: key.into(),
        value: value.to_string(),
        reason: format!("expected {}, got {}", type_name(schema), type_name(value)),
    };
    match (schema, value) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Integer(_), Value::Integer(i)) if i < 0 => Err(ConfigError::OutOfRange {
            key: key.into(),
            value: i.to_string(),
            allowed: "a non-negative integer".into(),
        }),
        (Value::Array(s), Value::Array(items)) => {
            let elem = s.first();
            items
                .into_iter()
                .map(|it| match elem {
                    Some(e) => coerce(e, it, key),
                    None => Ok(it),
                })
                .collect::<Result<Vec<_>>>()
                .map(Value::Array)
        }
        (s, v) if std::mem::discriminant(s) == std::mem::discriminant(&v) => Ok(v),
        (_, v) => Err(bad(&v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_loads_and_validates() {
        for name in preset_names() {
            let cfg = Config::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.validate().unwrap();
            // The printed config reloads to the same value: a run folder reproduces the run.
            assert_eq!(Config::from_toml_str(&cfg.to_toml()).unwrap(), cfg, "{name}");
        }
    }

    #[test]
    fn keras_seed_preset_has_the_notebook_values() {
        let c = Config::preset("keras-seed").unwrap();
        assert_eq!(c.data.batch_size, 512);
        assert_eq!(c.run.epochs, 160);
        assert_eq!(c.loss.lambda, 5e-3);
        assert_eq!(c.model.projector, vec![5000, 5000, 5000]);
        assert_eq!(c.optim.name, OptimKind::Lamb);
        assert_eq!(c.augment.view_a.crop_max_side, 32);
        assert!(c.augment.view_a.flip_double_coin);
    }

    #[test]
    fn unknown_key_is_named() {
        let mut b = ConfigBuilder::new();
        let e = b.set("nosuch.key=1").unwrap_err().to_string();
        assert!(e.contains("nosuch.key"), "{e}");
        let e = b.set("optim.nosuch=1").unwrap_err().to_string();
        assert!(e.contains("optim.nosuch") && e.contains("lr"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let mut b = ConfigBuilder::new();
        let e = b.set("optim.lr=abc").unwrap_err().to_string();
        assert!(e.contains("optim.lr") && e.contains("abc") && e.contains("number"), "{e}");
        let e = b.set("model.arch=resnet9000").unwrap_err().to_string();
        assert!(e.contains("model.arch") && e.contains("cifar-resnet18"), "{e}");
        let e = b.set("data.batch_size=-3").unwrap_err().to_string();
        assert!(e.contains("data.batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_is_named() {
        for (set, key) in [
            ("data.batch_size=0", "data.batch_size"),
            ("optim.lr=-0.1", "optim.lr"),
            ("loss.lambda=-1", "loss.lambda"),
            ("augment.view_b.solarize_prob=1.5", "augment.view_b.solarize_prob"),
            ("run.device=gpu", "run.device"),
        ] {
            let mut b = ConfigBuilder::new();
            b.set(set).unwrap();
            let e = b.build().unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn overrides_apply_with_coercion() {
        let mut b = ConfigBuilder::new();
        b.preset("keras-seed").unwrap();
        b.set("optim.lr=2").unwrap().set("model.projector=[64, 32]").unwrap();
        b.set("model.arch=cifar-resnet18").unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.optim.lr, 2.0);
        assert_eq!(c.model.projector, vec![64, 32]);
        assert_eq!(c.model.arch, Arch::CifarResnet18);
    }

    #[test]
    fn malformed_file_names_the_file() {
        let mut b = ConfigBuilder::new();
        let e = b.merge_str("[optim\nlr=1", Path::new("my.toml")).unwrap_err().to_string();
        assert!(e.contains("my.toml"), "{e}");
        let e = b.merge_str("[optim]\nlrr = 1.0", Path::new("my.toml")).unwrap_err().to_string();
        assert!(e.contains("optim.lrr"), "{e}");
    }

    #[test]
    fn reliability_keys_default_off_and_are_checked() {
        let c = Config::default();
        assert_eq!((c.run.max_steps, c.run.checkpoint_every_steps, c.run.spike_factor), (0, 0, 0.0));
        assert_eq!(c.run.on_nonfinite, NonFinitePolicy::Stop);
        let mut b = ConfigBuilder::new();
        b.set("run.on_nonfinite=skip").unwrap().set("run.spike_factor=4").unwrap();
        let c = b.build().unwrap();
        assert_eq!((c.run.on_nonfinite, c.run.spike_factor), (NonFinitePolicy::Skip, 4.0));
        let e = ConfigBuilder::new().set("run.on_nonfinite=ignore").unwrap_err().to_string();
        assert!(e.contains("run.on_nonfinite") && e.contains("skip"), "{e}");
        for (set, key) in [("run.spike_factor=0.5", "run.spike_factor"), ("run.spike_window=0", "run.spike_window")] {
            let mut b = ConfigBuilder::new();
            b.set(set).unwrap();
            let e = b.build().unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn unknown_preset_lists_available() {
        let e = Config::preset("nope").unwrap_err().to_string();
        assert!(e.contains("keras-seed") && e.contains("nope"), "{e}");
    }
}
