//! The data-source seam: any set of images the pipeline can draw twin views from.
//!
//! The pipeline asks a source for four things: how many images, the native size of image `i`
//! (to sample its crops before decoding), the image itself, and optionally its label. Datasets
//! of this crate implement [`ImageSource`] ([`crate::Dataset`] for CIFAR-10 and the synthetic
//! set, [`crate::MemoryImages`] for STL-10 or any fixed-size set, [`crate::ImageFolder`]); a
//! user's own loader is a few lines:
//!
//! ```
//! use bt_data::{Image, ImageSource, LoadHint};
//! /// In-memory images, no labels.
//! struct Mine(Vec<Image>);
//! impl ImageSource for Mine {
//!     fn len(&self) -> usize {
//!         self.0.len()
//!     }
//!     fn load(&self, i: usize, _hint: LoadHint) -> bt_data::Result<Image> {
//!         Ok(self.0[i].clone())
//!     }
//!     fn dims(&self, i: usize) -> Option<(usize, usize)> {
//!         Some((self.0[i].width, self.0[i].height))
//!     }
//! }
//! let src = Mine(vec![Image::new(40, 30, vec![128; 3 * 40 * 30]).unwrap()]);
//! assert_eq!(src.len(), 1);
//! ```
use crate::error::{DataError, Result};
use std::mem::MaybeUninit;
use std::sync::Arc;

/// An 8-bit RGB image, **CHW planar**: the R plane, then G, then B, each `height` rows of
/// `width` bytes. Planar because every op and the NCHW batch are planar, and a planar plane is
/// what Pillow's per-band filters and the CIFAR/STL-10 files store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `3 * height * width` bytes, CHW.
    pub data: Vec<u8>,
}

impl Image {
    /// Wraps a CHW buffer of `3 * width * height` bytes.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != 3 * width * height || width == 0 || height == 0 {
            return Err(DataError::Shape {
                what: format!("Image::new {width}x{height} (3 * width * height CHW bytes, sides > 0)"),
                expected: 3 * width * height,
                got: data.len(),
            });
        }
        Ok(Self { width, height, data })
    }

    /// From interleaved RGB (HWC, as decoders and `image::RgbImage` produce).
    pub fn from_hwc(width: usize, height: usize, hwc: &[u8]) -> Result<Self> {
        if hwc.len() != 3 * width * height {
            return Err(DataError::Shape {
                what: format!("Image::from_hwc {width}x{height}"),
                expected: 3 * width * height,
                got: hwc.len(),
            });
        }
        let n = 3 * width * height;
        // Not zero-filled first: the deinterleave writes every byte (a memset of a fresh
        // buffer per decoded image was ~1.5% of the ImageNet pipeline).
        let mut data = Vec::with_capacity(n);
        deinterleave(hwc, &mut data.spare_capacity_mut()[..n]);
        // SAFETY: `deinterleave` initialized all `n = 3 * (hwc.len() / 3)` bytes (length checked above).
        unsafe { data.set_len(n) };
        Self::new(width, height, data)
    }

    /// Interleaved RGB (HWC) copy.
    pub fn to_hwc(&self) -> Vec<u8> {
        let hw = self.width * self.height;
        let mut out = Vec::with_capacity(3 * hw);
        for i in 0..hw {
            out.extend_from_slice(&[self.data[i], self.data[hw + i], self.data[2 * hw + i]]);
        }
        out
    }
}

/// What the consumer will do with an image, so a loader may decode less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadHint {
    /// The source may return the image reduced by any factor `k <= max_reduction` (e.g. a JPEG
    /// decoded at 1/2, 1/4 or 1/8 in the DCT domain), with sides `ceil(native / k)`. The
    /// pipeline compares the returned size with [`ImageSource::dims`] and scales its crops.
    pub max_reduction: u32,
    /// Only the native image's rows `0..rows` will be read. A source returning the image at
    /// full scale may then return just its top rows (native width, a height of at least
    /// `min(rows, native height)`; e.g. a JPEG decode stopped below them). With
    /// `max_reduction > 1`, a reduced image is always whole.
    pub rows: usize,
}

impl LoadHint {
    /// The whole image at full resolution.
    pub const FULL: Self = Self { max_reduction: 1, rows: usize::MAX };
}

impl Default for LoadHint {
    fn default() -> Self {
        Self::FULL
    }
}

/// A set of images the twin pipeline and the evaluation batches can read. Implementations
/// must be cheap to call from many threads at once (`load` runs on the rayon pool).
pub trait ImageSource: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;

    /// `true` when there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Image `index` (after any orientation fix), possibly reduced as `hint` allows.
    fn load(&self, index: usize, hint: LoadHint) -> Result<Image>;

    /// Native `(width, height)` of image `index` without decoding it, when known. `None` makes
    /// the pipeline decode at full size first and sample the crops on what it got.
    fn dims(&self, index: usize) -> Option<(usize, usize)> {
        let _ = index;
        None
    }

    /// Class of image `index`, when the source is labeled.
    fn label(&self, index: usize) -> Option<u32> {
        let _ = index;
        None
    }

    /// Number of classes, when the source is labeled.
    fn num_classes(&self) -> Option<usize> {
        None
    }

    /// Class names in label order, when known.
    fn class_names(&self) -> Option<Vec<String>> {
        None
    }

    /// What image `index` is, for error messages (a file path, a record number).
    fn describe(&self, index: usize) -> String {
        format!("image {index}")
    }

    /// Unreadable images skipped or replaced so far (header scan and decode time), for the
    /// trainer's metrics. Sources that cannot have bad images return 0.
    fn bad_images(&self) -> usize {
        0
    }
}

impl<T: ImageSource + ?Sized> ImageSource for Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn load(&self, index: usize, hint: LoadHint) -> Result<Image> {
        (**self).load(index, hint)
    }
    fn dims(&self, index: usize) -> Option<(usize, usize)> {
        (**self).dims(index)
    }
    fn label(&self, index: usize) -> Option<u32> {
        (**self).label(index)
    }
    fn num_classes(&self) -> Option<usize> {
        (**self).num_classes()
    }
    fn class_names(&self) -> Option<Vec<String>> {
        (**self).class_names()
    }
    fn describe(&self, index: usize) -> String {
        (**self).describe(index)
    }
    fn bad_images(&self) -> usize {
        (**self).bad_images()
    }
}

/// What [`crate::TwinPipeline::new`] accepts: an `Arc` of any source, or an
/// `Arc<dyn ImageSource>`.
pub trait IntoSource {
    /// The shared trait object.
    fn into_source(self) -> Arc<dyn ImageSource>;
}

impl<T: ImageSource + 'static> IntoSource for Arc<T> {
    fn into_source(self) -> Arc<dyn ImageSource> {
        self
    }
}

impl IntoSource for Arc<dyn ImageSource> {
    fn into_source(self) -> Arc<dyn ImageSource> {
        self
    }
}

/// Fixed-size images held in memory as one contiguous CHW buffer, with optional labels:
/// STL-10, or any set a caller already has in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryImages {
    width: usize,
    height: usize,
    data: Vec<u8>,
    labels: Vec<Option<u32>>,
    num_classes: Option<usize>,
    class_names: Option<Vec<String>>,
    what: String,
}

impl MemoryImages {
    /// `labels.len()` images of `width x height`, CHW each, back to back in `data`. Labels
    /// must be `< num_classes` when both are given.
    pub fn new(
        width: usize,
        height: usize,
        data: Vec<u8>,
        labels: Vec<Option<u32>>,
        num_classes: Option<usize>,
    ) -> Result<Self> {
        let per = 3 * width * height;
        if data.len() != labels.len() * per || per == 0 {
            return Err(DataError::Shape {
                what: format!("MemoryImages::new ({} images of 3x{height}x{width})", labels.len()),
                expected: labels.len() * per,
                got: data.len(),
            });
        }
        if let Some(k) = num_classes {
            if let Some(i) = labels.iter().position(|l| l.is_some_and(|l| l as usize >= k)) {
                return Err(DataError::BadConfig {
                    key: format!("labels[{i}]"),
                    reason: format!("label {:?} is not a class index below {k}", labels[i]),
                });
            }
        }
        Ok(Self { width, height, data, labels, num_classes, class_names: None, what: "image".into() })
    }

    /// Names the images in errors (`"{what} {index}"`) and sets class names.
    pub fn with_names(mut self, what: impl Into<String>, class_names: Option<Vec<String>>) -> Self {
        self.what = what.into();
        self.class_names = class_names;
        self
    }

    /// Image `i` as CHW bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = 3 * self.width * self.height;
        &self.data[i * per..(i + 1) * per]
    }

    /// `(width, height)` of every image.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }
}

impl ImageSource for MemoryImages {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn load(&self, index: usize, _hint: LoadHint) -> Result<Image> {
        Ok(Image { width: self.width, height: self.height, data: self.image(index).to_vec() })
    }
    fn dims(&self, _index: usize) -> Option<(usize, usize)> {
        Some((self.width, self.height))
    }
    fn label(&self, index: usize) -> Option<u32> {
        self.labels[index]
    }
    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }
    fn class_names(&self) -> Option<Vec<String>> {
        self.class_names.clone()
    }
    fn describe(&self, index: usize) -> String {
        format!("{} {index}", self.what)
    }
}

/// Interleaved RGB (HWC) into three planes (CHW) of `chw.len() / 3` values each; writes
/// every value of `chw` when `hwc.len() == chw.len()`.
fn deinterleave(hwc: &[u8], chw: &mut [MaybeUninit<u8>]) {
    avx2_or!(deinterleave_avx2(hwc, chw), deinterleave_impl(hwc, chw))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_avx2(hwc: &[u8], chw: &mut [MaybeUninit<u8>]) {
    deinterleave_impl(hwc, chw)
}

#[inline(always)]
fn deinterleave_impl(hwc: &[u8], chw: &mut [MaybeUninit<u8>]) {
    let hw = chw.len() / 3;
    let (r, gb) = chw.split_at_mut(hw);
    let (g, b) = gb.split_at_mut(hw);
    for (((px, r), g), b) in hwc.chunks_exact(3).zip(r).zip(g).zip(b) {
        r.write(px[0]);
        g.write(px[1]);
        b.write(px[2]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_hwc_splits_the_planes_and_round_trips() {
        // Sizes around the vector widths, so both the vector body and the tail are exercised.
        for (w, h) in [(1, 1), (5, 3), (16, 2), (33, 7)] {
            let hwc: Vec<u8> = (0..3 * w * h).map(|i| (i * 37 + i / 5) as u8).collect();
            let img = Image::from_hwc(w, h, &hwc).unwrap();
            for p in 0..w * h {
                for c in 0..3 {
                    assert_eq!(img.data[c * w * h + p], hwc[3 * p + c], "{w}x{h} pixel {p} band {c}");
                }
            }
            assert_eq!(img.to_hwc(), hwc);
        }
        assert!(Image::from_hwc(4, 4, &[0u8; 47]).is_err());
    }
}
