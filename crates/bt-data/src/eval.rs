//! Un-augmented evaluation batches from any [`ImageSource`].
//!
//! The transform is torchvision's evaluation transform on PIL images: `Resize(r)` (shorter
//! side to `r = round(image_size * 256 / 224)`, bilinear, the longer side `int(r * long /
//! short)`) then `CenterCrop(image_size)` (offsets `int(round((h - S) / 2))`, Python's
//! half-to-even rounding), then `x / 255` and the normalization. An image that already is
//! `image_size x image_size` is taken as is (CIFAR at 32, STL-10 at 96), which keeps CIFAR's
//! evaluation batches exactly [`crate::Dataset::eval_batches`].
use crate::cifar::EvalBatch;
use crate::error::Result;
use crate::pil;
use crate::source::{Image, ImageSource, LoadHint};
use rayon::prelude::*;
use std::sync::Arc;

/// The side the shorter image side is resized to before the center crop.
pub fn resize_side(image_size: usize) -> usize {
    (image_size * 256 + 112) / 224
}

/// Python's `round(d / 2)` for an integer `d` (half to even).
fn half_round_even(d: usize) -> usize {
    let a = d / 2;
    if d % 2 == 1 && a % 2 == 1 {
        a + 1
    } else {
        a
    }
}

/// The evaluation view of `img` as `3 x size x size` u8 CHW (see the module doc).
pub fn eval_view(img: &Image, size: usize) -> Vec<u8> {
    if img.width == size && img.height == size {
        return img.data.clone();
    }
    let r = resize_side(size);
    let (w, h) = (img.width, img.height);
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (r as f64 * long as f64 / short as f64) as usize;
    let (nw, nh) = if w <= h { (r, new_long) } else { (new_long, r) };
    let resized = if (nw, nh) == (w, h) {
        img.data.clone()
    } else {
        let mut out = vec![0u8; 3 * nw * nh];
        let full = pil::Region { left: 0, top: 0, width: w, height: h };
        pil::resize(
            &img.data,
            w,
            h,
            full,
            [0.0, 0.0, w as f32, h as f32],
            pil::Filter::Bilinear,
            false,
            &mut out,
            nw,
            nh,
        );
        out
    };
    let top = half_round_even(nh - size.min(nh));
    let left = half_round_even(nw - size.min(nw));
    let mut out = vec![0u8; 3 * size * size];
    for c in 0..3 {
        for y in 0..size.min(nh) {
            let src = &resized[c * nw * nh + (top + y) * nw + left..][..size.min(nw)];
            out[c * size * size + y * size..][..src.len()].copy_from_slice(src);
        }
    }
    out
}

/// Evaluation batches of `source` in index order; see [`eval_batches`].
pub struct SourceEvalBatches {
    source: Arc<dyn ImageSource>,
    size: usize,
    norm: Option<([f32; 3], [f32; 3])>,
    batch_size: usize,
    drop_remainder: bool,
    next: usize,
}

impl std::fmt::Debug for SourceEvalBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceEvalBatches").field("len", &self.source.len()).field("next", &self.next).finish()
    }
}

/// Un-augmented batches of `source` at `data.image_size`, normalized as
/// [`bt_config::DataConfig::normalization`] says, decoded on the current rayon pool; labels
/// are `-1` for unlabeled images.
pub fn eval_batches(
    source: Arc<dyn ImageSource>,
    data: &bt_config::DataConfig,
    batch_size: usize,
    drop_remainder: bool,
) -> SourceEvalBatches {
    assert!(batch_size > 0, "eval_batches: batch_size must be > 0");
    let norm = data.normalization().map(|(m, s)| (m.map(|v| v as f32), s.map(|v| v as f32)));
    SourceEvalBatches { source, size: data.image_size, norm, batch_size, drop_remainder, next: 0 }
}

impl Iterator for SourceEvalBatches {
    type Item = Result<EvalBatch>;
    fn next(&mut self) -> Option<Result<EvalBatch>> {
        let left = self.source.len().saturating_sub(self.next);
        let n = left.min(self.batch_size);
        if n == 0 || (self.drop_remainder && n < self.batch_size) {
            return None;
        }
        let idx: Vec<usize> = (self.next..self.next + n).collect();
        self.next += n;
        let per = 3 * self.size * self.size;
        let mut images = vec![0f32; n * per];
        let lut = crate::ops::u8_to_unit();
        let (src, size, norm) = (&*self.source, self.size, self.norm);
        let r = images.par_chunks_mut(per).zip(idx.par_iter()).try_for_each(|(out, &i)| -> Result<()> {
            let v = eval_view(&src.load(i, LoadHint::FULL)?, size);
            for (o, &b) in out.iter_mut().zip(&v) {
                *o = lut[b as usize];
            }
            if let Some((m, s)) = norm {
                for (c, plane) in out.chunks_exact_mut(size * size).enumerate() {
                    plane.iter_mut().for_each(|x| *x = (*x - m[c]) / s[c]);
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            self.next = self.source.len();
            return Some(Err(e));
        }
        Some(Ok(EvalBatch {
            images,
            labels: idx.iter().map(|&i| src.label(i).map_or(-1, |l| l as i64)).collect(),
            indices: idx.iter().map(|&i| i as i64).collect(),
            image_size: size,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_of_center_offsets() {
        // round(0.5) = 0, round(1.5) = 2, round(2.5) = 2, round(3.5) = 4.
        assert_eq!([1, 3, 5, 7, 4].map(half_round_even), [0, 2, 2, 4, 2]);
        assert_eq!((resize_side(224), resize_side(96), resize_side(32)), (256, 110, 37));
    }
}
