//! `[data]`: which dataset, where, and how it is batched.
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
