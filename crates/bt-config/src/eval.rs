//! `[eval]`: evaluation protocols.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// The official Barlow Twins `evaluate.py --weights freeze`: frozen encoder in eval mode,
    /// a linear layer trained on augmented images (RandomResizedCrop + flip) with SGD and a
    /// per-epoch cosine schedule, test images resized and center-cropped; top-1/top-5.
    Official,
    /// Semi-supervised fine-tuning, `evaluate.py --weights finetune`: the whole encoder (batch
    /// norm in training mode) and a linear layer trained on augmented images of a labeled
    /// subset (`eval.finetune_train_percent` or `eval.finetune_train_files`), SGD with one
    /// learning rate for the backbone and one for the classifier, per-epoch cosine schedule.
    Finetune,
}

/// How frozen features are stored between extraction and the classifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeaturePrecision {
    /// f32 when a split's f32 matrix fits the memory left in `eval.feature_memory_mb`, else f16.
    /// CIFAR-sized splits stay f32 (results identical to an in-memory f32 matrix); ImageNet's
    /// 1.28M x 2048 train matrix (10 GB in f32) goes to f16 (5 GB), spilled past the budget.
    Auto,
    /// Always f32 (spilled to disk as f32 past the budget).
    F32,
    /// Always f16: half the memory; kNN and probe accuracies move by rounding only.
    F16,
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
    /// Memory budget of the frozen feature matrices of both splits, MiB: chunks past it are
    /// spilled to a file in `eval.feature_dir` (removed when the evaluation ends); 0 = stream
    /// everything from that file.
    pub feature_memory_mb: usize,
    /// Storage precision of frozen features.
    pub feature_precision: FeaturePrecision,
    /// Folder of the spill file; empty = the OS temp folder (`$TMPDIR`). Point it at a local
    /// disk with room for the features (ImageNet train in f16: 5.2 GB) when /tmp is a RAM disk.
    pub feature_dir: PathBuf,
    /// `official` protocol: epochs (`evaluate.py --epochs`, default 100).
    pub official_epochs: usize,
    /// `official` protocol: batch size (`--batch-size`, default 256).
    pub official_batch_size: usize,
    /// `official` protocol: classifier learning rate (the README's linear-evaluation command
    /// passes `--lr-classifier 0.1`; the script's default is 0.3).
    pub official_lr: f64,
    /// `official` protocol: weight decay (`--weight-decay`, default 1e-6).
    pub official_weight_decay: f64,
    /// `finetune` protocol: epochs (the README's semi-supervised command: `--epochs 20`).
    pub finetune_epochs: usize,
    /// `finetune` protocol: batch size (`--batch-size`, default 256).
    pub finetune_batch_size: usize,
    /// `finetune` protocol: the encoder's learning rate (README: `--lr-backbone 0.002`).
    pub finetune_lr_backbone: f64,
    /// `finetune` protocol: the classifier's learning rate (README: `--lr-classifier 0.5`).
    pub finetune_lr_classifier: f64,
    /// `finetune` protocol: weight decay of both (README: `--weight-decay 0`).
    pub finetune_weight_decay: f64,
    /// `finetune` protocol: percent of the labeled training split used, drawn class-balanced
    /// by `run.seed` (`--train-percent`; the paper's settings are 1 and 10, the script's
    /// default 100). Ignored when `finetune_train_files` is set.
    pub finetune_train_percent: f64,
    /// `finetune` protocol: a file list naming the training images instead (SimCLR's
    /// `imagenet_subsets/1percent.txt` format, one `n01440764_10026.JPEG` per line, or
    /// `class/file` lines); image-folder training splits only. Empty = `finetune_train_percent`.
    pub finetune_train_files: PathBuf,
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
            // 2 GiB: CIFAR's 50k x 512 f32 train matrix (100 MB) stays in memory many times
            // over; ImageNet's spills without exhausting a 16 GB machine.
            feature_memory_mb: 2048,
            feature_precision: FeaturePrecision::Auto,
            feature_dir: PathBuf::new(),
            official_epochs: 100,
            official_batch_size: 256,
            official_lr: 0.1,
            official_weight_decay: 1e-6,
            finetune_epochs: 20,
            finetune_batch_size: 256,
            finetune_lr_backbone: 0.002,
            finetune_lr_classifier: 0.5,
            finetune_weight_decay: 0.0,
            finetune_train_percent: 100.0,
            finetune_train_files: PathBuf::new(),
        }
    }
}
