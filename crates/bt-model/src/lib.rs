//! Barlow Twins encoders and projectors on libtorch (CPU or CUDA), with PyTorch-compatible
//! safetensors checkpoints.
//!
//! Three encoder families, picked by [`bt_config::Arch`]:
//!
//! - **`keras-resnet34`**, the seed notebook's model reproduced exactly, Keras semantics
//!   included: `ZeroPadding2D(3)` -> 7x7/2 `same` conv -> BN -> ReLU -> 3x3/2 `same` max-pool ->
//!   stages [3, 4, 6, 3] with 64..512 filters (first block of stages 2-4: stride-2 conv and a
//!   1x1/2 `valid` shortcut conv without BN) -> 2x2 `same` average pool -> flatten (512
//!   features). Every conv and dense layer has a bias and glorot-uniform init; batch norm has
//!   epsilon 1e-3 and momentum 0.99. Parameter counts equal Keras' own: encoder 21,291,392
//!   trainable + 15,232 non-trainable; with the 5000x3 projector 73,886,392 + 35,232.
//! - **`cifar-resnet{18,34,50}`**: torchvision's ResNets with the CIFAR stem (3x3/1 conv, no
//!   max-pool), PyTorch BN defaults, optional `zero_init_residual`, base width `model.width`.
//! - **`resnet{18,34,50}`**: torchvision's ImageNet ResNets exactly (the official Barlow Twins
//!   encoder is `resnet50` at 224 px): 7x7/2 conv (pad 3, no bias) -> BN -> ReLU -> 3x3/2
//!   max-pool (pad 1) -> `BasicBlock`/`Bottleneck` stages (stride on the 3x3 conv, "v1.5";
//!   downsample = 1x1 conv + BN) -> adaptive average pool -> flatten, for any input size; no
//!   `fc`, so 512 / 2048 features. Kaiming-normal fan-out convs, BN gamma 1 / beta 0,
//!   `model.zero_init_residual` zeroes each block's last BN gamma. Same code as the CIFAR
//!   ResNets, only the stem differs. Parameter counts (ResNet-50: 23,508,032), eval and train
//!   forwards and the 224 px multiply-adds (4.09 G) are tested against torchvision.
//!
//! The projector ([`bt_config::ModelConfig::projector`]) is `Linear -> [BN] -> ReLU` per hidden
//! layer and a final `Linear`, indexed like an `nn.Sequential`.
//!
//! # Public surface
//! [`BarlowTwins`] (encoder + projector) and [`Encoder`] (the backbone alone, e.g. for a
//! downstream task) both implement tch's [`nn::ModuleT`] and save/load safetensors checkpoints;
//! their layers (convolutions, batch norms, the name registry) are private, so the only contract
//! is the state-dict names. [`tch`] and the config types ([`ModelConfig`], [`Arch`],
//! [`Precision`]) are re-exported: a user needs no other dependency to build and run a model.
//! Construction and checkpoint I/O return [`ModelError`] for everything libtorch reports (an
//! allocation that fails is [`ModelError::Torch`] naming the variable), never a panic.
//!
//! # Weights in and out
//! [`foreign`] reads published PyTorch checkpoints (`torch.save` zip files, Lightning `.ckpt`,
//! safetensors; torchvision/timm, official Barlow Twins, solo-learn layouts) with a
//! weights-only pickle reader and loads them strictly ([`Encoder::load_imported`],
//! [`BarlowTwins::load_imported`]); [`export`] writes the encoder as TorchScript.
//!
//! # Key design choice: PyTorch state-dict names are the model's identity
//! Every tensor is created under the name PyTorch would give it (`encoder.layer1.0.bn1.running_var`,
//! `projector.0.weight`), including the BN bookkeeping PyTorch has and Keras does not
//! (`num_batches_tracked`, int64). A checkpoint is therefore just the list of
//! [`BarlowTwins::variables`] written as safetensors, and [`BarlowTwins::save_encoder`] of a
//! torchvision ResNet is a state dict that torchvision's and timm's `resnet18` (CIFAR stem) or
//! `resnet50` (as they are, `fc` removed) load with `strict=True` (see
//! `docs/CHECKPOINTS.md`). The alternative (Keras-like names plus a translation table at
//! export) would put a second naming scheme, and its bugs, between the trainer and every
//! PyTorch tool.
//!
//! # Keras semantics that differ from PyTorch, and where they live
//! - TF `same` padding puts the odd pixel of an odd total at the bottom/right (7x7/2 on 38: 2
//!   top, 3 bottom; 3x3/2 on 10: 0 top, 1 bottom); PyTorch's conv padding is symmetric, so the
//!   pad is an explicit op when asymmetric ([`tf_same_pad`]).
//! - Keras updates `moving_variance` with the *biased* batch variance, PyTorch `running_var`
//!   with the unbiased one. The `keras-resnet34` model (encoder and projector BNs) follows Keras;
//!   the CIFAR ResNets follow PyTorch. Tested against Keras itself (`tests/keras_reference.rs`).
//!
//! # Synchronized batch norm without collectives
//! [`BarlowTwins::set_sync_bn`] makes the projector's or every batch norm (PyTorch's
//! `SyncBatchNorm`, [`bt_config::SyncBn`]) normalize over all replicas' rows. This crate knows no
//! process group: the caller passes the cross-replica sum as a closure (bt-cli wraps
//! `bt_dist::all_reduce_sum_autograd`), so the same code is tested in one process with a closure
//! that exchanges tensors between two threads (`tests/sync_bn.rs`).
//!
//! # Speed hooks
//! Inputs may be channels-last (`x.permute([0,2,3,1]).contiguous().permute([0,3,1,2])`); every
//! op here accepts them. [`BarlowTwins::set_precision`] with `Bf16` is mixed precision the way
//! PyTorch's autocast does it, on any device (tch's `autocast` only acts on CUDA, and in float16
//! there, so CPU bf16 needs the casts in the model): bf16 convolutions and linear layers, bf16
//! activations between layers, batch norm computing in f32 on bf16 input, f32 outputs, f32
//! master weights. [`BarlowTwins::refresh_low_precision_weights`] casts the weights once per
//! step (channels-last for the convolutions on request) into bf16 copies that both views'
//! forwards reuse, as autocast's weight-cast cache does. The forward also runs inside a caller's
//! `tch::autocast(true, ..)` (the model never switches autocast itself, so it cannot undo the
//! caller's setting).
//!
//! # Example
//! `cargo run --release -p bt-model --example build_forward_save` builds the model of a preset,
//! runs a forward pass and saves the encoder (`examples/build_forward_save.rs`).
#![deny(missing_docs)]

mod checkpoint;
mod encoder;
mod layers;
mod resnet;

/// The config types the constructors and [`BarlowTwins::set_precision`] take, so that a user
/// needs no direct `bt-config` dependency.
pub use bt_config::{Arch, ModelConfig, Precision, SyncBn};
use layers::{glorot, output_f32, refresh_all, BatchNorm, Ctx, Init, Linear, LowPrecision, Registry, Scope};
pub use layers::{tf_same_pad, LayerRow, NamedVar, Role};
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use tch::{nn, Tensor};

pub use checkpoint::CheckpointKind;
pub mod export;
pub mod foreign;
pub use encoder::Encoder;
/// tch, re-exported so that users of this crate name `nn::Path`, `Tensor` and `Device` from the
/// same tch version as the model.
pub use tch;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A model config value this crate cannot build.
    #[error("invalid model config `{key}`: {reason}")]
    Config {
        /// Dotted config key (`model.projector`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Writing or reading a checkpoint file failed.
    #[error("checkpoint {}: {op} failed: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// `write` or `read`.
        op: &'static str,
        /// libtorch / safetensors error.
        source: tch::TchError,
    },
    /// The checkpoint's names do not match the model's (strict loading).
    #[error(
        "checkpoint {} does not match the model ({kind:?}): missing {} key(s) {}; unexpected {} key(s) {}",
        path.display(), missing.len(), preview(missing), unexpected.len(), preview(unexpected)
    )]
    Keys {
        /// The file.
        path: PathBuf,
        /// Whether it was read as a full or encoder-only checkpoint.
        kind: CheckpointKind,
        /// Model variables absent from the file.
        missing: Vec<String>,
        /// File tensors the model does not have.
        unexpected: Vec<String>,
    },
    /// A tensor whose shape or dtype differs from the model's variable.
    #[error("checkpoint {}: `{key}` is {found}, the model expects {expected}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// State-dict name.
        key: String,
        /// Model shape and dtype.
        expected: String,
        /// File shape and dtype.
        found: String,
    },
    /// A foreign weights file ([`foreign`]) that cannot be read: truncated, legacy format,
    /// a Python global outside the weights-only allowlist, not a checkpoint at all.
    #[error("{}: {reason}", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the record, key or global.
        reason: String,
    },
    /// A foreign file's tensors do not match the model (wrong architecture or widths).
    #[error("{0}")]
    Import(Box<ImportMismatch>),
    /// libtorch failed (out of memory, an unavailable device, ...) on a variable.
    #[error("libtorch error {op} `{name}`: {source}")]
    Torch {
        /// What was being done (`allocating`, `copying for saving`, `loading`).
        op: &'static str,
        /// State-dict name of the variable.
        name: String,
        /// libtorch's error.
        source: tch::TchError,
    },
}

/// What [`ModelError::Import`] reports: the three key lists of a strict import.
#[derive(Debug, Clone)]
pub struct ImportMismatch {
    /// The file.
    pub path: PathBuf,
    /// `encoder` or `projector`.
    pub part: &'static str,
    /// The layout recognized ([`foreign::Layout`]).
    pub layout: String,
    /// Model variables the file lacks (our names).
    pub missing: Vec<String>,
    /// File tensors the model does not have (after the layout's prefix is removed).
    pub unexpected: Vec<String>,
    /// `name: file shape, model shape` for each tensor of another shape or kind.
    pub misshaped: Vec<String>,
    /// What the file looks like, when recognizable (`; the file's encoder looks like ...`).
    pub hint: String,
}

impl std::fmt::Display for ImportMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} layout) does not match the model's {}{}: missing {} key(s) {}; unexpected {} key(s) {}; wrongly shaped {} key(s) {}",
            self.path.display(),
            self.layout,
            self.part,
            self.hint,
            self.missing.len(),
            list(&self.missing),
            self.unexpected.len(),
            list(&self.unexpected),
            self.misshaped.len(),
            list(&self.misshaped)
        )
    }
}

/// Up to 12 keys, then how many more: long enough to see the pattern of a wrong architecture.
fn list(keys: &[String]) -> String {
    let mut s: Vec<&str> = keys.iter().take(12).map(|k| k.as_str()).collect();
    let more = keys.len().saturating_sub(12);
    let tail = if more > 0 { format!(", ... {more} more") } else { String::new() };
    s.retain(|k| !k.is_empty());
    format!("[{}{tail}]", s.join(", "))
}

fn preview(keys: &[String]) -> String {
    let mut s: Vec<&str> = keys.iter().take(4).map(|k| k.as_str()).collect();
    if keys.len() > 4 {
        s.push("...");
    }
    format!("[{}]", s.join(", "))
}

/// The cross-replica sum of synchronized batch norm ([`BarlowTwins::set_sync_bn`]): returns
/// `Σ_replicas x` and, in the backward pass, adds the incoming gradients across replicas.
pub type CrossReplicaSum = Box<dyn Fn(&Tensor) -> Tensor + Send>;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

enum ProjLayer {
    Linear(Linear),
    Bn(BatchNorm),
    Relu,
}

/// Parameter counts, split as Keras' `model.summary()` does: non-trainable = BN moving
/// statistics (`num_batches_tracked` is not counted: it is bookkeeping, not a weight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// Encoder trainable parameters.
    pub encoder_trainable: i64,
    /// Encoder BN moving statistics.
    pub encoder_non_trainable: i64,
    /// Projector trainable parameters.
    pub projector_trainable: i64,
    /// Projector BN moving statistics.
    pub projector_non_trainable: i64,
}

impl ParamCounts {
    /// Trainable parameters of the whole model.
    pub fn total_trainable(&self) -> i64 {
        self.encoder_trainable + self.projector_trainable
    }
    /// Non-trainable parameters of the whole model.
    pub fn total_non_trainable(&self) -> i64 {
        self.encoder_non_trainable + self.projector_non_trainable
    }
}

/// Encoder + projector of a Barlow Twins model.
///
/// # Shapes
/// Input `N x 3 x H x W` float in [0, 1] (the seed does not normalize; 32x32 for CIFAR),
/// contiguous or channels-last. [`encode`](Self::encode) gives `N x F` features
/// (F = [`feature_dim`](Self::feature_dim): 512 for ResNet-18/34 at width 64, 2048 for
/// ResNet-50), [`forward`](Self::forward) `N x D` embeddings (D = [`embed_dim`](Self::embed_dim),
/// the last projector width).
///
/// Implements [`nn::ModuleT`]: `forward_t(x, train)` is [`forward`](Self::forward), the
/// projector applied to the [`Encoder`]'s features.
///
/// # Panics
/// Training-mode forwards panic (libtorch error) on a batch of one: batch norm needs more than
/// one value per channel.
pub struct BarlowTwins {
    encoder: Encoder,
    projector: Vec<ProjLayer>,
    vars: Vec<NamedVar>,
    embed_dim: i64,
    bf16: bool,
    /// The bf16 weight slots of every convolution and linear layer (encoder's included).
    low: Vec<Arc<LowPrecision>>,
    cfg: ModelConfig,
    sync_scope: SyncBn,
    sync_sum: Option<CrossReplicaSum>,
}

/// The closure [`BarlowTwins::set_projector_sync`] takes (a [`CrossReplicaSum`]; `Send`, so
/// that the model is a [`nn::ModuleT`]).
pub type ProjectorSync = CrossReplicaSum;

impl std::fmt::Debug for BarlowTwins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarlowTwins")
            .field("arch", &self.cfg.arch)
            .field("feature_dim", &self.encoder.feature_dim())
            .field("embed_dim", &self.embed_dim)
            .field("variables", &self.vars.len())
            .finish()
    }
}

impl BarlowTwins {
    /// Builds the model under `vs` (encoder under `encoder.`, projector under `projector.`).
    ///
    /// # Panics
    /// On a config that [`try_new`](Self::try_new) rejects (`Config::validate` already does).
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> BarlowTwins {
        Self::try_new(vs, cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the model, or says which config key is unusable or which variable libtorch could
    /// not allocate ([`ModelError::Torch`]: out of memory, an unavailable device). After an
    /// allocation error `vs` may hold some of the model's variables.
    pub fn try_new(vs: &nn::Path, cfg: &ModelConfig) -> Result<BarlowTwins> {
        encoder::check_width(cfg)?;
        if cfg.projector.is_empty() || cfg.projector.iter().any(|&w| w <= 0) {
            return Err(ModelError::Config {
                key: "model.projector",
                reason: format!("{:?}: need at least one positive width", cfg.projector),
            });
        }
        let reg = Rc::new(RefCell::new(Registry::default()));
        let root = Scope::root(vs, reg.clone());
        let keras = cfg.arch == Arch::KerasResnet34;
        let mut encoder = Encoder::build(&root.sub("encoder"), cfg);
        let feature_dim = encoder.feature_dim();
        let proj = root.sub("projector");
        let mut projector = Vec::new();
        let mut c_in = feature_dim;
        let last = cfg.projector.len() - 1;
        for (i, &w) in cfg.projector.iter().enumerate() {
            let s = proj.sub(projector.len());
            // Keras Dense: glorot-uniform kernel, zero bias; nn.Linear: U(±1/sqrt(fan_in)) both.
            let init = if keras { glorot(c_in, w) } else { Init::Uniform(1.0 / (c_in as f64).sqrt()) };
            projector.push(ProjLayer::Linear(Linear::new(&s, c_in, w, cfg.projector_bias, init, !keras)));
            c_in = w;
            if i < last {
                if cfg.projector_bn {
                    let s = proj.sub(projector.len());
                    projector.push(ProjLayer::Bn(if keras {
                        BatchNorm::keras(&s, w)
                    } else {
                        BatchNorm::torch(&s, w)
                    }));
                }
                projector.push(ProjLayer::Relu);
            }
        }
        encoder::take_error(&reg)?;
        // The scopes still hold the registry; take its contents rather than unwrapping the Rc.
        let vars = std::mem::take(&mut reg.borrow_mut().vars);
        let low = std::mem::take(&mut reg.borrow_mut().low);
        encoder.low = low.iter().filter(|l| l.name.starts_with(checkpoint::ENC)).cloned().collect();
        encoder.vars = vars
            .iter()
            .filter_map(|v| {
                Some(NamedVar {
                    name: v.name.strip_prefix(checkpoint::ENC)?.to_string(),
                    tensor: v.tensor.shallow_clone(),
                    role: v.role,
                })
            })
            .collect();
        Ok(BarlowTwins {
            encoder,
            projector,
            vars,
            embed_dim: c_in,
            bf16: false,
            low,
            cfg: cfg.clone(),
            sync_scope: SyncBn::Off,
            sync_sum: None,
        })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Encoder output width F.
    pub fn feature_dim(&self) -> i64 {
        self.encoder.feature_dim()
    }

    /// The encoder (its [`variables`](Encoder::variables) are named without the `encoder.`
    /// prefix and share storage with this model's).
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Embedding width D (the last projector layer).
    pub fn embed_dim(&self) -> i64 {
        self.embed_dim
    }

    /// `Bf16`: mixed precision as PyTorch's autocast, on CPU and CUDA alike. Convolutions and
    /// linear layers compute in bfloat16 with bf16 copies of the f32 weights; activations flow in
    /// bf16 between layers; batch norm computes in f32 (f32 parameters and running statistics)
    /// on its bf16 input and returns bf16; the outputs of [`forward`](Self::forward),
    /// [`encode`](Self::encode) and [`project`](Self::project) are f32. The trainable variables
    /// stay f32 (the master weights); see
    /// [`refresh_low_precision_weights`](Self::refresh_low_precision_weights). `F32`: full
    /// precision (drops any bf16 copies). `Auto` depends on the device and the CPU, which
    /// this crate does not look at: resolve it first (`bt_train::device::resolve_precision`);
    /// here it counts as `F32` (and fails a debug assertion).
    pub fn set_precision(&mut self, p: Precision) {
        debug_assert!(p != Precision::Auto, "resolve run.precision = auto before set_precision");
        self.bf16 = p == Precision::Bf16;
        // The encoder's flag only: its bf16 slots are also in `self.low`, cleared once below.
        self.encoder.bf16 = self.bf16;
        if !self.bf16 {
            // Nothing fails when clearing.
            let _ = refresh_all(&self.low, None);
        }
    }

    /// Under `Bf16`, casts every convolution and linear weight (and bias) to its bf16 copy,
    /// NHWC-strided for the 4-D convolution weights when `channels_last` (cuDNN then runs its
    /// NHWC kernels without transforming the weight on every call). Call it once per training
    /// step, after the optimizer updated the weights and before the step's forwards: every
    /// training-mode forward until the next call reuses these copies, so the two views of a step
    /// cast each weight once, not twice. The casts are recorded by autograd (they run with
    /// gradients enabled whatever the caller's mode), so the backward pass accumulates each
    /// weight's gradient into the f32 variable's `.grad` as before.
    ///
    /// Inference-mode forwards never use the copies (they cast per call, so an evaluation after
    /// an optimizer step sees the new weights); a training-mode forward with no refresh since
    /// [`set_precision`](Self::set_precision) casts per call too. A no-op under `F32`.
    ///
    /// # Errors
    /// [`ModelError::Torch`] when libtorch cannot allocate a copy (out of memory).
    pub fn refresh_low_precision_weights(&self, channels_last: bool) -> Result<()> {
        if self.bf16 {
            refresh_all(&self.low, Some(channels_last))?;
        }
        Ok(())
    }

    /// Synchronized batch norm (PyTorch's `SyncBatchNorm`): training-mode batch norms in
    /// `scope` (the projector's, or every one, encoder included) take their statistics over
    /// every replica's rows. `sum(x)` must return `Σ_replicas x` and, in the backward pass, add
    /// the incoming gradients across replicas (`bt_dist::all_reduce_sum_autograd` does both);
    /// every replica must run the same forwards, since each synced BN calls `sum` twice (the
    /// per-channel sums with the row count, then the squared deviations). `SyncBn::Off` or
    /// `None` (the default): per-process statistics.
    pub fn set_sync_bn(&mut self, scope: SyncBn, sum: Option<CrossReplicaSum>) {
        self.sync_scope = scope;
        self.sync_sum = sum;
    }

    /// [`set_sync_bn`](Self::set_sync_bn) with `SyncBn::Projector` (the encoder's batch norm
    /// stays per process).
    pub fn set_projector_sync(&mut self, sum: Option<CrossReplicaSum>) {
        self.set_sync_bn(SyncBn::Projector, sum);
    }

    /// Which batch norms are synchronized now (`Off` when no cross-replica sum is set).
    pub fn sync_bn(&self) -> SyncBn {
        match self.sync_sum {
            Some(_) => self.sync_scope,
            None => SyncBn::Off,
        }
    }

    /// The cross-replica sum for the encoder's (`encoder`) or the projector's batch norms.
    fn sync_for(&self, encoder: bool) -> Option<&dyn Fn(&Tensor) -> Tensor> {
        let sum = self.sync_sum.as_deref()?;
        match (self.sync_scope, encoder) {
            (SyncBn::All, _) | (SyncBn::Projector, false) => Some(sum),
            _ => None,
        }
    }

    fn encode_ctx(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let ctx = &Ctx { train: ctx.train, bf16: ctx.bf16, trace: ctx.trace, sync: self.sync_for(true) };
        self.encoder.forward_ctx(x, ctx)
    }

    fn project_ctx(&self, h: &Tensor, ctx: &Ctx) -> Tensor {
        let ctx = &Ctx { train: ctx.train, bf16: ctx.bf16, trace: ctx.trace, sync: self.sync_for(false) };
        let mut z = h.shallow_clone();
        for l in &self.projector {
            z = match l {
                ProjLayer::Linear(l) => l.forward(&z, ctx),
                ProjLayer::Bn(b) => b.forward(&z, ctx),
                ProjLayer::Relu => z.relu_(),
            };
        }
        z
    }

    /// Encoder features (`N x F`). `train`: batch norm uses batch statistics and updates its
    /// running statistics.
    pub fn encode(&self, x: &Tensor, train: bool) -> Tensor {
        output_f32(self.encode_ctx(x, &Ctx::plain(train, self.bf16)))
    }

    /// Embeddings (`N x D`, f32): encoder then projector.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let ctx = Ctx::plain(train, self.bf16);
        // The features stay in the compute kind between encoder and projector.
        output_f32(self.project_ctx(&self.encode_ctx(x, &ctx), &ctx))
    }

    /// Features and embeddings of one pass: `(N x F, N x D)`, both f32.
    pub fn forward_features(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let ctx = Ctx::plain(train, self.bf16);
        let h = self.encode_ctx(x, &ctx);
        let z = self.project_ctx(&h, &ctx);
        (output_f32(h), output_f32(z))
    }

    /// Projector only (`N x F -> N x D`, f32).
    pub fn project(&self, h: &Tensor, train: bool) -> Tensor {
        output_f32(self.project_ctx(h, &Ctx::plain(train, self.bf16)))
    }

    /// Every variable (parameters, BN buffers, counters) in creation order, under its
    /// state-dict name relative to the `vs` the model was built under.
    pub fn variables(&self) -> &[NamedVar] {
        &self.vars
    }

    /// Trainable tensors in creation order (what the optimizer updates).
    pub fn trainable_variables(&self) -> Vec<Tensor> {
        self.vars.iter().filter(|v| v.role == Role::Trainable).map(|v| v.tensor.shallow_clone()).collect()
    }

    /// Parameter totals, split encoder/projector and trainable/non-trainable.
    pub fn param_counts(&self) -> ParamCounts {
        let mut c = ParamCounts::default();
        for v in &self.vars {
            let n = v.tensor.numel() as i64;
            let enc = v.name.starts_with("encoder.");
            match (v.role, enc) {
                (Role::Trainable, true) => c.encoder_trainable += n,
                (Role::Trainable, false) => c.projector_trainable += n,
                (Role::Buffer, true) => c.encoder_non_trainable += n,
                (Role::Buffer, false) => c.projector_non_trainable += n,
                (Role::Counter, _) => {}
            }
        }
        c
    }

    /// Per-layer rows (name, kind, output shape, parameters) traced by an inference-mode
    /// forward of one `3 x h x w` zero image (running statistics are not touched).
    pub fn layer_table(&self, h: i64, w: i64) -> Vec<LayerRow> {
        trace_layers(&self.vars, h, w, |x, ctx| {
            let h = self.encode_ctx(x, ctx);
            let _ = self.project_ctx(&h, ctx);
        })
    }
}

impl nn::ModuleT for BarlowTwins {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward(xs, train)
    }
}

/// The rows `run` records for one `3 x h x w` zero image on the device of `vars`, in inference
/// mode (running statistics are not touched) and without gradients.
fn trace_layers(vars: &[NamedVar], h: i64, w: i64, run: impl FnOnce(&Tensor, &Ctx)) -> Vec<LayerRow> {
    let trace = RefCell::new(Vec::new());
    let device = vars.first().map_or(tch::Device::Cpu, |v| v.tensor.device());
    let x = Tensor::zeros([1, 3, h, w], (tch::Kind::Float, device));
    let ctx = Ctx { train: false, bf16: false, trace: Some(&trace), sync: None };
    tch::no_grad(|| run(&x, &ctx));
    trace.into_inner()
}
