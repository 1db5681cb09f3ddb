//! The seed's `plot_values`: a grid of originals next to their two augmented views.
use crate::cifar::{Dataset, IMAGE_BYTES, IMAGE_SIDE};
use crate::error::{DataError, Result};
use crate::ops::u8_to_unit;
use crate::policy::{apply, TwinPolicy};
use image::{Rgb, RgbImage};
use std::path::Path;

/// Upscaling factor of each 32x32 tile (nearest neighbour, so pixels stay visible).
pub const PREVIEW_SCALE: u32 = 4;
const GAP: u32 = 4;

/// `n` rows of (original, view A, view B) for the first `n` images, augmented with the streams of
/// `(seed, epoch 0, index)`, each tile upscaled [`PREVIEW_SCALE`] times.
pub fn preview_grid(dataset: &Dataset, policy: &TwinPolicy, n: usize, seed: u64) -> RgbImage {
    let n = n.min(dataset.len()).max(1).min(dataset.len().max(1));
    let tile = IMAGE_SIDE as u32 * PREVIEW_SCALE;
    let (w, h) = (3 * tile + 4 * GAP, n as u32 * (tile + GAP) + GAP);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    if dataset.is_empty() {
        return img;
    }
    let lut = u8_to_unit();
    let mut tiles = [[0f32; IMAGE_BYTES]; 3];
    for row in 0..n {
        let src = dataset.image(row);
        for (d, &s) in tiles[0].iter_mut().zip(src) {
            *d = lut[s as usize];
        }
        let (pa, pb) = policy.sample_pair(seed, 0, row as u64);
        apply(src, &pa, &mut tiles[1]);
        apply(src, &pb, &mut tiles[2]);
        for (col, t) in tiles.iter().enumerate() {
            let (x0, y0) = (GAP + col as u32 * (tile + GAP), GAP + row as u32 * (tile + GAP));
            for y in 0..tile {
                for x in 0..tile {
                    let p = (y / PREVIEW_SCALE) as usize * IMAGE_SIDE + (x / PREVIEW_SCALE) as usize;
                    let px = |c: usize| (t[c * 1024 + p].clamp(0.0, 1.0) * 255.0).round() as u8;
                    img.put_pixel(x0 + x, y0 + y, Rgb([px(0), px(1), px(2)]));
                }
            }
        }
    }
    img
}

/// Writes `img` as PNG.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::ImageWrite { path: path.into(), message: e.to_string() })
}
