//! Image sources (CIFAR-10, STL-10, folders of images at any resolution), TensorFlow- and
//! Pillow-faithful augmentations and a deterministic rayon twin-view pipeline for Barlow
//! Twins. No libtorch dependency: any Rust project can use it.
//!
//! - [`source`]: the seam. [`ImageSource`] (length, native size, decode, optional label) and
//!   [`Image`] (u8 RGB, CHW planar); [`MemoryImages`] for fixed-size sets in memory.
//! - [`cifar`]: the official binary layout ([`Cifar10::load`], [`write_cifar_binary`]) into one
//!   contiguous u8 buffer per split ([`Dataset`], an [`ImageSource`]), plus evaluation batches.
//! - [`stl10`]: the official STL-10 binaries (column-major planes) into [`MemoryImages`].
//! - [`folder`]: [`ImageFolder`], torchvision's `ImageFolder` layout or an unlabeled tree or a
//!   file list; header scan at open, decode on the pipeline's pool, optional decoded cache,
//!   bad files named or skipped and counted. [`decode`]: formats, EXIF, colour types, reduced
//!   JPEG decoding.
//! - [`synthetic`]: an embedded 10-class shape dataset for tests and the CPU demo.
//! - [`ops`]: each augmentation as a pure function with explicit parameters, reproducing the
//!   arithmetic of TensorFlow's kernels or torchvision's, checked against both to 1e-5.
//!   [`pil`]: Pillow's resize (BILINEAR/BICUBIC, box) and GaussianBlur, **bit-exact**;
//!   [`pil_color`]: torchvision's colour ops on PIL images (u8, Pillow's arithmetic), and the
//!   fused `ToTensor` + `Normalize` write, **bit-exact**.
//! - [`policy`]: `bt_config::ViewConfig` -> [`ViewPolicy`], which samples a [`ViewParams`]
//!   on the source's native size and renders it at `data.image_size`.
//! - [`pipeline`]: [`TwinPipeline`] -> [`EpochIter`] of [`TwinBatch`]es over a bounded channel.
//! - [`eval`]: evaluation batches of any source (torchvision `Resize(S*256/224)` +
//!   `CenterCrop(S)`). [`bench`]: pairs/s of the pipeline. [`preview`]: the PNG grid.
//!
//! # Key design choice: crops are sampled on the native image, decoded once, resized once
//! A view's crop is drawn in the source's own pixels (from the header, before decoding) and
//! resized straight to `image_size`, as torchvision's `RandomResizedCrop` on a PIL image. Both
//! views share one decode; when both crops have at least `image_size` pixels per side at 1/2,
//! 1/4 or 1/8 scale, a JPEG is decoded at that scale in the DCT domain (`data.jpeg_draft`, PIL's
//! `draft` idea), and the crop becomes a fractional Pillow box on the smaller image. At full
//! scale, the decode of a sequential JPEG stops after the MCU row holding the lower crop's
//! bottom ([`LoadHint::rows`]): the views read nothing below it, and the rows kept are the
//! bytes a whole decode gives there, so the batches are the same bit for bit.
//!
//! # Decoder choice and throughput (measured on the 2-core development machine)
//! Full-size JPEGs go to `zune-jpeg` directly (the decoder inside `image`, without its
//! wrapper's three header parses, file copy and `DynamicImage` conversion), DCT-reduced ones to
//! `jpeg-decoder`'s `Decoder::scale` (zune has no DCT scaling), PNG/WebP/CMYK JPEGs to `image`.
//! On `imagenet-sample` (1000 ImageNet JPEGs, 198k pixels and 108 KB per file on average), one
//! thread, best of 3 over 300 files, 2026-12-01: this crate's full decode 2.6 ms/image, the
//! same files through Pillow's libjpeg-turbo (SIMD) 2.7 ms; `jpeg-decoder` at 1/2 scale
//! 2.3-2.8 ms, 1/4 1.7-2.4, 1/8 1.6-2.3. These files are large, high-quality JPEGs, so Huffman
//! decoding (which no scaling skips) dominates; libjpeg-turbo's C decoder without its SIMD
//! (`mozjpeg-sys`: nasm is absent here and in CI) was slower than `jpeg-decoder` at every
//! scale (8.6-9.7 vs 7.6-8.3 ms full under load).
//!
//! `zune-jpeg` is pinned to its release candidate `=0.5.16-rc3`, for two reasons measured on
//! the same 1000 files: (1) its cooperative cancellation is what stops a decode below the
//! crops (0.5.15 has no way to stop early); stopping saved ~5% of the decode time at 224 px
//! (`examples/stages.rs`: 1.87 vs 1.97 ms/image, both alternating file by file); (2) it fixes
//! something in 0.5.15's 4:2:0 path: the two versions differ on 59 of the 1000 files (all
//! 4:2:0, a few hundred pixels each), and on the 7 of those compared with Pillow's
//! libjpeg-turbo decode, 0.5.15 was off by up to 27 levels, the release candidate by at most
//! 5 (both ~0.2-0.3 on average, as on every file: a different IDCT). `image` keeps its own 0.5.15 for the
//! CMYK JPEGs it still decodes. Decoding is now about half of a 224 px pair's
//! CPU time (~2.0 of 3.7 ms); the rest is the views' resize, hue, blur and blends (see `docs/BENCHMARKS.md`,
//! and `examples/stages.rs` for a per-stage split). Throughput against the official pipeline:
//! `docs/BENCHMARKS.md`.
//!
//! # The official recipe runs on u8, as on PIL images
//! With `color_math = "pil-u8"` (the ImageNet presets) a view stays a u8 image from the resize
//! to the end, every op is Pillow's integer/float arithmetic exactly
//! ([`ViewPolicy::render_u8`]), and `ToTensor` + `Normalize` is one table lookup per value into
//! the batch: the crop resize, jitter, grayscale, blur, solarize and the evaluation
//! resize/crop are the official pipeline's bit for bit. The CIFAR presets keep `"f32"`: colour
//! jitter, grayscale (weights 0.2989/0.587/0.114) and solarize on f32 views, as torchvision's
//! tensor ops or TensorFlow's, and their batches are unchanged bit for bit.
//!
//! # Randomness keyed by coordinates, not drawn from a shared generator
//! Every random number of view `v` of image `i` in epoch `e` comes from a counter-based stream
//! keyed by `(seed, e, i, v)` ([`rng::SampleRng`]), and the epoch's shuffle from `(seed, e)`.
//! A shared or per-thread generator would make the output depend on scheduling; keyed streams
//! make batches bit-identical for any worker count and let a resumed run restart mid-epoch
//! without replaying the skipped batches. Sampling ([`ViewPolicy::sample`]) is separate from the
//! arithmetic ([`apply`]), so each op is testable against TensorFlow with chosen parameters.
//!
//! # Why the batches are f32, not u8
//! Views leave the pipeline as contiguous NCHW **f32**, ready for `Tensor::from_slice` and one
//! host-to-device copy. u8 would quarter the copy, but the seed's views are not u8 images: colour
//! jitter produces continuous values (outside `[0, 1]` before the final clip), blur and resize
//! interpolate; quantizing to 256 levels would change the recipe, and doing the augmentations
//! on the GPU instead would tie this crate to libtorch. The copy is small anyway: 2 x 512 x 12 KiB
//! = 12.6 MB per step, about 1 ms over PCIe 4 against the seed's 294 ms step.
//! The `pil-u8` policies (the ImageNet presets) are u8 images until `ToTensor`, so for them
//! [`TwinPipeline::with_u8_views`] can hand over u8 NHWC views instead (the Python binding's
//! `dtype="uint8"`), for a consumer that normalizes on its device.
//!
//! # Example
//! `cargo run --release -p bt-data --example twin_batches` (see `examples/twin_batches.rs`):
//! ```
//! use bt_data::{synthetic, TwinPipeline};
//! use std::sync::Arc;
//! let ds = Arc::new(synthetic::generate(64, 0, synthetic::Split::Train));
//! let data = bt_config::DataConfig { batch_size: 16, workers: 2, ..Default::default() };
//! let pipe = TwinPipeline::new(ds, &data, &bt_config::AugmentConfig::keras_seed(), 1024).unwrap();
//! for batch in pipe.epoch(0, 0) {
//!     let b = batch.unwrap();
//!     assert_eq!(b.view_a.len(), 16 * 3 * 32 * 32);
//! }
//! ```
#![deny(missing_docs)]

// Run-time AVX2 dispatch, shared by the kernels of `pil`, `pil_color` and `source` (macros
// before the modules, so every module sees them).

/// `$vis fn $name(args)` running `$imp(args)`, compiled a second time for AVX2 and dispatched
/// on the CPU at run time. The arithmetic is the same in either build (integer ops and IEEE
/// `f32`/`f64` operations round identically at any vector width, and Rust never fuses a
/// multiply-add), so the bits are too; only the loops get wider.
macro_rules! avx2_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $imp:ident($($a:ident: $t:ty),*)) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) {
                    $imp($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { avx2($($a),*) };
                }
            }
            $imp($($a),*)
        }
    };
}

/// `$avx2` (an `unsafe` call of a `#[target_feature(enable = "avx2")]` kernel) when the CPU has
/// AVX2, else `$portable`; off x86-64 only `$portable` is compiled. For kernels written with
/// explicit intrinsics, where `avx2_dispatch!`'s "compile the portable body twice" is not
/// what is wanted.
macro_rules! avx2_or {
    ($avx2:expr, $portable:expr) => {{
        #[cfg(target_arch = "x86_64")]
        let r = if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above), all the kernel requires.
            #[allow(unused_unsafe)]
            unsafe {
                $avx2
            }
        } else {
            $portable
        };
        #[cfg(not(target_arch = "x86_64"))]
        let r = $portable;
        r
    }};
}

pub mod bench;
pub mod cifar;
pub mod decode;
pub mod error;
pub mod eval;
pub mod folder;
pub mod ops;
pub mod pil;
pub mod pil_color;
pub mod pipeline;
pub mod policy;
pub mod preview;
pub mod rng;
pub mod source;
pub mod stl10;
pub mod subset;
pub mod synthetic;

pub use cifar::{write_cifar_binary, Cifar10, Dataset, EvalBatch, SizeCheck, IMAGE_BYTES, IMAGE_SIDE, NUM_CLASSES};
pub use error::{DataError, Result};
pub use folder::{FolderOptions, ImageFolder};
pub use pipeline::{EpochIter, Recycler, TwinBatch, TwinPipeline};
pub use policy::{apply, blur_sigma_once, JitterParams, TwinPolicy, ViewParams, ViewPolicy};
pub use preview::{preview_grid, preview_grid_sized, save_png};
pub use source::{Image, ImageSource, IntoSource, LoadHint, MemoryImages};
pub use stl10::load_stl10;
pub use subset::{balanced_subset, listed_subset, Subset};

use std::sync::Arc;

/// Loads the dataset a config asks for: `(train, test, class names)`. CIFAR-10 and synthetic
/// only (fixed 32x32 [`Dataset`]s); [`load_sources`] covers every `data.dataset`.
pub fn load_from_config(cfg: &bt_config::Config) -> Result<(Dataset, Dataset, Vec<String>)> {
    match cfg.data.dataset {
        bt_config::DatasetKind::Cifar10 => {
            let c = Cifar10::load_with(&cfg.data.dir, SizeCheck::Records)?;
            Ok((c.train, c.test, c.class_names))
        }
        bt_config::DatasetKind::Synthetic => Ok((
            synthetic::generate(cfg.data.synthetic_train, cfg.run.seed, synthetic::Split::Train),
            synthetic::generate(cfg.data.synthetic_test, cfg.run.seed, synthetic::Split::Test),
            synthetic::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        )),
        other => Err(DataError::BadConfig {
            key: "data.dataset".into(),
            reason: format!("{other:?} is not a fixed 32x32 dataset: use bt_data::load_sources"),
        }),
    }
}

/// The kind of dataset a folder holds, from its files: CIFAR-10's binary layout
/// (`data_batch_1.bin` / `batches.meta.txt`), STL-10's (`train_X.bin`, `unlabeled_X.bin`,
/// `test_X.bin`), or else a folder of image files. A missing folder, or one with other `.bin`
/// files, is reported as CIFAR-10, whose reader then says what it expected to find.
pub fn detect_kind(dir: &std::path::Path) -> bt_config::DatasetKind {
    use bt_config::DatasetKind;
    let has = |f: &str| dir.join(f).is_file();
    if has("data_batch_1.bin") || has("batches.meta.txt") {
        return DatasetKind::Cifar10;
    }
    if ["train_X.bin", "unlabeled_X.bin", "test_X.bin"].iter().any(|f| has(f)) {
        return DatasetKind::Stl10;
    }
    let other_bin = std::fs::read_dir(dir)
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".bin")))
        .unwrap_or(true);
    if other_bin {
        DatasetKind::Cifar10
    } else {
        DatasetKind::ImageFolder
    }
}

/// The pretraining and evaluation sources of a config.
pub struct Sources {
    /// Pretraining images.
    pub train: Arc<dyn ImageSource>,
    /// Labeled evaluation images, when the dataset has them.
    pub test: Option<Arc<dyn ImageSource>>,
    /// Class names in label order, when known.
    pub class_names: Option<Vec<String>>,
    /// One line for logs.
    pub description: String,
    /// What the user should see before training (empty class folders, folder-link loops,
    /// skipped or oversized images), one line each; the caller logs them.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").field("description", &self.description).finish()
    }
}

/// Opens what `cfg.data` names, for any `data.dataset`. Image folders are header-scanned here
/// (see [`folder`]), so a bad file or folder fails before the first step.
pub fn load_sources(cfg: &bt_config::Config) -> Result<Sources> {
    use bt_config::DatasetKind;
    let d = &cfg.data;
    match d.dataset {
        DatasetKind::Cifar10 | DatasetKind::Synthetic => {
            let (train, test, names) = load_from_config(cfg)?;
            let description = format!("{:?} ({} train, {} test)", d.dataset, train.len(), test.len());
            Ok(Sources {
                train: Arc::new(train),
                test: Some(Arc::new(test)),
                class_names: Some(names),
                description,
                warnings: Vec::new(),
            })
        }
        DatasetKind::Stl10 => {
            let (train, test, names) = load_stl10(&d.dir, d.stl10_split)?;
            let description = format!(
                "STL-10 from {} ({:?}: {} train, {} test)",
                d.dir.display(),
                d.stl10_split,
                train.len(),
                test.len()
            );
            Ok(Sources {
                train: Arc::new(train),
                test: Some(Arc::new(test)),
                class_names: Some(names),
                description,
                warnings: Vec::new(),
            })
        }
        DatasetKind::ImageFolder => {
            // A cached image keeps the side at which the smallest crop still has image_size px.
            let min_scale = cfg.augment.view_a.crop_scale[0].min(cfg.augment.view_b.crop_scale[0]).max(1e-6);
            let reduced_ok = TwinPolicy::from_config(&cfg.augment, cfg.run.seed)?.allows_reduced_decode();
            let cache_min_side =
                if reduced_ok && d.jpeg_draft { (d.image_size as f64 / min_scale.sqrt()).ceil() as usize } else { 0 };
            let opts = FolderOptions {
                key: "data.dir".into(),
                file_list: (!d.file_list.as_os_str().is_empty()).then(|| d.file_list.clone()),
                require_labels: false,
                skip_bad: d.skip_bad_images,
                cache: d.cache == bt_config::CacheMode::Decoded,
                cache_min_side,
                image_size: d.image_size,
                max_image_pixels: d.max_image_pixels,
            };
            let train = ImageFolder::open(&d.dir, &opts)?;
            let test = if d.test_dir.as_os_str().is_empty() {
                None
            } else {
                let o = FolderOptions {
                    key: "data.test_dir".into(),
                    file_list: None,
                    require_labels: true,
                    cache: false,
                    ..opts.clone()
                };
                Some(ImageFolder::open(&d.test_dir, &o)?)
            };
            let links = train.links_followed() + test.as_ref().map_or(0, |t| t.links_followed());
            let description = format!(
                "image folder {} ({} images{}, {} unreadable skipped, {links} folder link(s) followed){}",
                train.root().display(),
                train.len(),
                train.num_classes().map_or(String::new(), |k| format!(", {k} classes")),
                train.bad_images(),
                test.as_ref().map_or(String::new(), |t| format!(
                    "; evaluation {} ({} images, {} classes)",
                    t.root().display(),
                    t.len(),
                    t.num_classes().unwrap_or(0)
                )),
            );
            let class_names = test.as_ref().and_then(|t| t.class_names()).or_else(|| train.class_names());
            let mut warnings = train.warnings().to_vec();
            warnings.extend(test.iter().flat_map(|t| t.warnings().iter().map(|w| format!("data.test_dir: {w}"))));
            Ok(Sources {
                train: Arc::new(train),
                test: test.map(|t| Arc::new(t) as Arc<dyn ImageSource>),
                class_names,
                description,
                warnings,
            })
        }
    }
}
