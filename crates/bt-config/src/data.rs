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
    /// A folder of JPEG/PNG/WebP images at any resolution (`data.dir`, optional
    /// `data.test_dir`, `data.file_list`): torchvision `ImageFolder` layout or unlabeled.
    ImageFolder,
    /// STL-10 in the official binary layout (`train_X.bin`, ... in `data.dir`), 96x96.
    Stl10,
}

/// Which STL-10 images feed pretraining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stl10Split {
    /// The 5,000 labeled training images.
    Train,
    /// The 100,000 unlabeled images.
    Unlabeled,
    /// Both (solo-learn's choice): 105,000 images.
    #[serde(rename = "train+unlabeled")]
    TrainUnlabeled,
}

/// What an image folder keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Decode every image every time it is drawn (bounded memory).
    None,
    /// Decode each image once (at the smallest size the crops still allow) and keep it.
    Decoded,
}

/// Dataset and batching (`[data]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `cifar10`, `synthetic`, `image-folder` or `stl10`.
    pub dataset: DatasetKind,
    /// `cifar10`: folder with `data_batch_1..5.bin`, `test_batch.bin`, `batches.meta.txt`;
    /// `stl10`: folder with `train_X.bin`, ...; `image-folder`: the pretraining images.
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
    /// Side of the square views fed to the model (crops are resized to it). CIFAR: 32.
    pub image_size: usize,
    /// `image-folder`: the evaluation split (torchvision `ImageFolder` layout, >= 2 classes);
    /// empty = none.
    pub test_dir: PathBuf,
    /// `image-folder`: a text file of image paths (one per line, relative to the file's own
    /// folder) used instead of walking `data.dir`; empty = walk.
    pub file_list: PathBuf,
    /// `image-folder`: `none` or `decoded` (keep decoded images in memory).
    pub cache: CacheMode,
    /// `image-folder`: skip (and count) unreadable images instead of failing.
    pub skip_bad_images: bool,
    /// `image-folder`: Pillow's `Image.MAX_IMAGE_PIXELS` (89,478,485, a quarter GiB of RGB):
    /// an image with more pixels is a warning, one with more than twice as many is refused from
    /// its header as unreadable (a decompression bomb: a few hundred KB of PNG can say 60000 x
    /// 60000); 0 = no limit.
    pub max_image_pixels: u64,
    /// `image-folder`: decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain when both
    /// views' crops still have at least `image_size` pixels per side (PIL's `draft`), and
    /// stop a full-size sequential JPEG's decode below the lower crop's bottom row (the same
    /// views bit for bit: the rows kept are those a full decode gives).
    pub jpeg_draft: bool,
    /// `stl10`: `train`, `unlabeled` or `train+unlabeled` for pretraining.
    pub stl10_split: Stl10Split,
    /// Per-channel mean subtracted from the views; empty = the dataset's default (none for
    /// `cifar10`/`synthetic`, ImageNet's `[0.485, 0.456, 0.406]` otherwise).
    pub mean: Vec<f64>,
    /// Per-channel std the views are divided by; empty = the dataset's default (none for
    /// `cifar10`/`synthetic`, ImageNet's `[0.229, 0.224, 0.225]` otherwise).
    pub std: Vec<f64>,
}

impl DataConfig {
    /// The `(mean, std)` the views are normalized with, `None` for no normalization: the
    /// configured values, else the dataset's default.
    pub fn normalization(&self) -> Option<([f64; 3], [f64; 3])> {
        let imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let pick = |v: &[f64], d: [f64; 3]| if v.len() == 3 { [v[0], v[1], v[2]] } else { d };
        match (self.mean.is_empty() && self.std.is_empty(), self.dataset) {
            (true, DatasetKind::Cifar10 | DatasetKind::Synthetic) => None,
            (true, _) => Some(imagenet),
            (false, DatasetKind::Cifar10 | DatasetKind::Synthetic) => {
                Some((pick(&self.mean, [0.0; 3]), pick(&self.std, [1.0; 3])))
            }
            (false, _) => Some((pick(&self.mean, imagenet.0), pick(&self.std, imagenet.1))),
        }
    }
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
            image_size: 32,
            test_dir: PathBuf::new(),
            file_list: PathBuf::new(),
            cache: CacheMode::None,
            skip_bad_images: false,
            max_image_pixels: 89_478_485,
            jpeg_draft: true,
            stl10_split: Stl10Split::TrainUnlabeled,
            mean: Vec::new(),
            std: Vec::new(),
        }
    }
}
