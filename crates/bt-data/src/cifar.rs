//! CIFAR-10 in the official binary layout, held as one contiguous byte buffer.
//!
//! A record is 1 label byte followed by 1024 R, 1024 G and 1024 B bytes, each plane row-major
//! (so an image is CHW, exactly the layout the pipeline writes out). The images of a split are
//! kept in one `Vec<u8>` of `N * 3072` bytes: 150 MB of f32 would be 4x larger and the
//! augmentation reads u8 through a 256-entry table at no cost.
use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

/// Side of a CIFAR image.
pub const IMAGE_SIDE: usize = 32;
/// Colour channels.
pub const CHANNELS: usize = 3;
/// Bytes (= values) of one image, CHW.
pub const IMAGE_BYTES: usize = CHANNELS * IMAGE_SIDE * IMAGE_SIDE;
/// Bytes of one record: the label byte and the image.
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes.
pub const NUM_CLASSES: usize = 10;
/// Records in one official batch file.
pub const OFFICIAL_RECORDS: usize = 10_000;
/// Bytes of one official batch file (30,730,000).
pub const OFFICIAL_FILE_BYTES: u64 = (OFFICIAL_RECORDS * RECORD_BYTES) as u64;
/// The training files, in order.
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test file.
pub const TEST_FILE: &str = "test_batch.bin";
/// The class-name file.
pub const META_FILE: &str = "batches.meta.txt";

/// One split: `N` images as one contiguous CHW u8 buffer, and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl Dataset {
    /// Wraps buffers; `images.len()` must be `labels.len() * 3072` and every label `< 10`.
    pub fn new(images: Vec<u8>, labels: Vec<u8>) -> Result<Self> {
        if images.len() != labels.len() * IMAGE_BYTES {
            return Err(DataError::Shape {
                what: "Dataset::new images (labels.len() * 3072 bytes)".into(),
                expected: labels.len() * IMAGE_BYTES,
                got: images.len(),
            });
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= NUM_CLASSES) {
            return Err(DataError::BadConfig {
                key: format!("labels[{i}]"),
                reason: format!("label {} is not a class index 0..=9", labels[i]),
            });
        }
        Ok(Self { images, labels })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// `true` when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image `i`, CHW, 3072 bytes.
    ///
    /// # Panics
    /// If `i >= len()`.
    #[inline]
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }

    /// Label of image `i`.
    #[inline]
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// All images, `N x 3 x 32 x 32` bytes.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Images `indices` as NCHW f32 in `[0, 1]` (`x / 255`, as the seed), written into `out`.
    ///
    /// # Shapes
    /// `out.len() == indices.len() * 3072`.
    pub fn gather_f32(&self, indices: &[usize], out: &mut [f32]) {
        assert_eq!(out.len(), indices.len() * IMAGE_BYTES, "gather_f32: out length");
        let lut = crate::ops::u8_to_unit();
        for (dst, &i) in out.chunks_exact_mut(IMAGE_BYTES).zip(indices) {
            for (d, &s) in dst.iter_mut().zip(self.image(i)) {
                *d = lut[s as usize];
            }
        }
    }

    /// Un-augmented batches in dataset order (evaluation, linear probe, kNN).
    pub fn eval_batches(&self, batch_size: usize, drop_remainder: bool) -> EvalBatches<'_> {
        assert!(batch_size > 0, "eval_batches: batch_size must be > 0");
        EvalBatches { ds: self, batch_size, drop_remainder, next: 0 }
    }
}

/// One un-augmented batch.
///
/// # Shapes
/// `images`: `N x 3 x image_size x image_size` f32 (see [`EvalBatch::shape`]).
#[derive(Debug, Clone)]
pub struct EvalBatch {
    /// `N x 3 x S x S` f32: `x / 255` for CIFAR, normalized for sources that normalize.
    pub images: Vec<f32>,
    /// Class indices, `N` (`-1` for an unlabeled image).
    pub labels: Vec<i64>,
    /// Dataset indices, `N`.
    pub indices: Vec<i64>,
    /// Side `S` of the square images.
    pub image_size: usize,
}

impl EvalBatch {
    /// `[N, 3, S, S]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len(), 3, self.image_size, self.image_size]
    }
    /// Images in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// `true` for an empty batch (never yielded).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Iterator of [`EvalBatch`]es; see [`Dataset::eval_batches`].
#[derive(Debug)]
pub struct EvalBatches<'a> {
    ds: &'a Dataset,
    batch_size: usize,
    drop_remainder: bool,
    next: usize,
}

impl Iterator for EvalBatches<'_> {
    type Item = EvalBatch;
    fn next(&mut self) -> Option<EvalBatch> {
        let left = self.ds.len().saturating_sub(self.next);
        let n = left.min(self.batch_size);
        if n == 0 || (self.drop_remainder && n < self.batch_size) {
            return None;
        }
        let idx: Vec<usize> = (self.next..self.next + n).collect();
        self.next += n;
        let mut images = vec![0f32; n * IMAGE_BYTES];
        self.ds.gather_f32(&idx, &mut images);
        Some(EvalBatch {
            images,
            labels: idx.iter().map(|&i| self.ds.label(i) as i64).collect(),
            indices: idx.iter().map(|&i| i as i64).collect(),
            image_size: IMAGE_SIDE,
        })
    }
}

impl crate::source::ImageSource for Dataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn load(&self, index: usize, _hint: crate::source::LoadHint) -> Result<crate::source::Image> {
        Ok(crate::source::Image { width: IMAGE_SIDE, height: IMAGE_SIDE, data: self.image(index).to_vec() })
    }
    fn dims(&self, _index: usize) -> Option<(usize, usize)> {
        Some((IMAGE_SIDE, IMAGE_SIDE))
    }
    fn label(&self, index: usize) -> Option<u32> {
        Some(self.labels[index] as u32)
    }
    fn num_classes(&self) -> Option<usize> {
        Some(NUM_CLASSES)
    }
    fn describe(&self, index: usize) -> String {
        format!("record {index}")
    }
}

/// How strictly file sizes are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeCheck {
    /// Every file must be exactly 30,730,000 bytes (10,000 records), as the official archive.
    Official,
    /// Any whole number of records (custom or synthetic files).
    Records,
}

/// Both splits and the class names.
#[derive(Debug, Clone)]
pub struct Cifar10 {
    /// 50,000 training images (5 files concatenated in order).
    pub train: Dataset,
    /// 10,000 test images.
    pub test: Dataset,
    /// The 10 names of `batches.meta.txt`.
    pub class_names: Vec<String>,
}

impl Cifar10 {
    /// Loads the official layout from `dir`, requiring official file sizes.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        Self::load_with(dir, SizeCheck::Official)
    }

    /// Loads with the given size check ([`SizeCheck::Records`] for custom files).
    pub fn load_with(dir: impl AsRef<Path>, check: SizeCheck) -> Result<Self> {
        let dir = dir.as_ref();
        let class_names = read_meta(&dir.join(META_FILE))?;
        let train_paths: Vec<PathBuf> = TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
        let train = read_batches(&train_paths, check)?;
        let test = read_batches(&[dir.join(TEST_FILE)], check)?;
        Ok(Self { train, test, class_names })
    }
}

fn open_err(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::MissingFile { path: path.into() }
    } else {
        DataError::Io { path: path.into(), source: e }
    }
}

/// Reads `batches.meta.txt`: the first 10 non-empty lines are the class names; the official
/// file pads with blank lines, which are allowed.
pub fn read_meta(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| open_err(path, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| DataError::BadMeta { path: path.into(), reason: format!("not UTF-8 ({e})") })?;
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.len() != NUM_CLASSES {
        return Err(DataError::BadMeta {
            path: path.into(),
            reason: format!("expected {NUM_CLASSES} non-empty class-name lines, found {}", names.len()),
        });
    }
    Ok(names)
}

fn read_batches(paths: &[PathBuf], check: SizeCheck) -> Result<Dataset> {
    // Sizes first, so the whole buffer is allocated once.
    let mut counts = Vec::with_capacity(paths.len());
    for p in paths {
        let size = std::fs::metadata(p).map_err(|e| open_err(p, e))?.len();
        let ok = match check {
            SizeCheck::Official => size == OFFICIAL_FILE_BYTES,
            SizeCheck::Records => size % RECORD_BYTES as u64 == 0 && size > 0,
        };
        if !ok {
            let expected = match check {
                SizeCheck::Official => {
                    format!("{OFFICIAL_FILE_BYTES} (10,000 records of {RECORD_BYTES} bytes, the official layout)")
                }
                SizeCheck::Records => format!("a non-zero multiple of the {RECORD_BYTES}-byte record"),
            };
            return Err(DataError::BadSize { path: p.clone(), size, expected });
        }
        counts.push(size as usize / RECORD_BYTES);
    }
    let total: usize = counts.iter().sum();
    // The sizes come from the file system, not from data read: a (sparse) file claiming a
    // terabyte of records is an error naming it, never an allocation abort.
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    let bytes = total.checked_mul(IMAGE_BYTES);
    if bytes.is_none_or(|b| images.try_reserve_exact(b).is_err() || labels.try_reserve_exact(total).is_err()) {
        let (k, &n) = counts.iter().enumerate().max_by_key(|(_, n)| **n).expect("at least one file");
        return Err(DataError::BadSize {
            path: paths[k].clone(),
            size: (n * RECORD_BYTES) as u64,
            expected: format!(
                "records this machine can hold in memory ({total} records, {} bytes of images, cannot be allocated)",
                bytes.map_or("more than usize::MAX".to_string(), |b| b.to_string())
            ),
        });
    }
    for (p, &n) in paths.iter().zip(&counts) {
        let raw = std::fs::read(p).map_err(|e| open_err(p, e))?;
        if raw.len() != n * RECORD_BYTES {
            // The file changed between the size check and the read.
            return Err(DataError::BadSize {
                path: p.clone(),
                size: raw.len() as u64,
                expected: format!("{} bytes as reported a moment earlier", n * RECORD_BYTES),
            });
        }
        for (r, rec) in raw.chunks_exact(RECORD_BYTES).enumerate() {
            if rec[0] as usize >= NUM_CLASSES {
                return Err(DataError::BadLabel {
                    path: p.clone(),
                    record: r,
                    offset: (r * RECORD_BYTES) as u64,
                    label: rec[0],
                });
            }
            labels.push(rec[0]);
            images.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Dataset { images, labels })
}

/// The CIFAR-10 class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Writes `train` and `test` in the official layout under `dir` (created if needed): the train
/// split is cut into 5 files of as equal size as possible (the last takes the remainder),
/// `class_names` go to `batches.meta.txt` (one per line, as the official file).
pub fn write_cifar_binary(dir: impl AsRef<Path>, train: &Dataset, test: &Dataset, class_names: &[&str]) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| DataError::Io { path: dir.into(), source: e })?;
    let per = train.len() / TRAIN_FILES.len();
    for (k, f) in TRAIN_FILES.iter().enumerate() {
        let lo = k * per;
        let hi = if k + 1 == TRAIN_FILES.len() { train.len() } else { lo + per };
        write_records(&dir.join(f), train, lo..hi)?;
    }
    write_records(&dir.join(TEST_FILE), test, 0..test.len())?;
    let mut meta = class_names.join("\n");
    meta.push_str("\n\n");
    let path = dir.join(META_FILE);
    std::fs::write(&path, meta).map_err(|e| DataError::Io { path, source: e })
}

fn write_records(path: &Path, ds: &Dataset, range: std::ops::Range<usize>) -> Result<()> {
    let mut buf = Vec::with_capacity(range.len() * RECORD_BYTES);
    for i in range {
        buf.push(ds.label(i));
        buf.extend_from_slice(ds.image(i));
    }
    std::fs::write(path, buf).map_err(|e| DataError::Io { path: path.into(), source: e })
}
