//! `[run]`: run control (epochs, seed, device, checkpoints, guard) and device parsing.
use serde::{Deserialize, Serialize};

/// Arithmetic precision of the train step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Full f32.
    F32,
    /// bf16 autocast with f32 master weights and f32 loss reductions (CUDA).
    Bf16,
    /// bf16 where the hardware computes it: on CUDA and on CPUs with AMX-BF16 or AVX512-BF16
    /// (detected at run time, `bt-cli info` says which); f32 on other CPUs, where bf16 is
    /// emulated and slower. Resolved by `bt_train::device::resolve_precision` before a model
    /// sees it.
    Auto,
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
    /// Write a per-step metrics line every N steps. Also how often the trainer reads the step's
    /// values back from the device (the loss terms and the guard's flags, in one batch): between
    /// log points a CUDA step has no host sync. 20 by default, not 1, for that reason.
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
    /// On a CUDA device, capture the train step (both forwards, loss, backward, guard, optimizer)
    /// into a CUDA graph after a few eager warm-up steps and replay it every step (one launch
    /// instead of thousands). Where the step cannot be captured (data parallelism, a fault hook,
    /// a shim built without CUDA) the run falls back to eager steps with a warning saying why.
    /// `false`: always eager. No effect on CPU, where the same static step runs eagerly.
    pub cuda_graph: bool,
    /// Also write TensorBoard event files (`events.out.tfevents.*`) into the run folder: loss,
    /// its two terms, lr, pairs/s, data wait and the kNN monitor (`tensorboard --logdir runs/`).
    pub tensorboard: bool,
    /// Online linear probe (solo-learn's): a linear classifier on the detached encoder features
    /// of each batch's first view, trained alongside pretraining on the labels the dataset has
    /// with its own SGD (momentum 0.9, no weight decay, cosine from `online_probe_lr` over the
    /// run), logged per epoch (training top-1 on the augmented views; test top-1/top-5 on the
    /// evaluation transform at the kNN monitor's epochs and at the end). It reads the features
    /// the training forward computes anyway and never touches the model, its gradients or the
    /// random streams: the pretraining trajectory is bit-identical with and without it.
    pub online_probe: bool,
    /// The online probe's peak learning rate (solo-learn's `classifier_lr`, 0.1).
    pub online_probe_lr: f64,
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
            log_every: 20,
            checkpoint_every_steps: 0,
            max_steps: 0,
            on_nonfinite: NonFinitePolicy::Stop,
            spike_factor: 0.0,
            spike_window: 50,
            spike_patience: 3,
            bn_batch: 0,
            fast_cuda: true,
            cuda_graph: true,
            tensorboard: false,
            online_probe: false,
            online_probe_lr: 0.1,
        }
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
