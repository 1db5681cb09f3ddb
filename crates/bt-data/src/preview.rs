//! The seed's `plot_values`: a grid of originals next to their two augmented views.
use crate::cifar::IMAGE_SIDE;
use crate::error::{DataError, Result};
use crate::pil;
use crate::policy::TwinPolicy;
use crate::source::{ImageSource, LoadHint};
use image::{Rgb, RgbImage};
use std::path::Path;

/// Upscaling factor of each 32x32 tile (nearest neighbour, so pixels stay visible).
pub const PREVIEW_SCALE: u32 = 4;
const GAP: u32 = 4;

/// `n` rows of (original, view A, view B) for the first `n` images of a 32x32 source (CIFAR,
/// synthetic), augmented with the streams of `(seed, epoch 0, index)`, each tile upscaled
/// [`PREVIEW_SCALE`] times. See [`preview_grid_sized`] for other sizes.
pub fn preview_grid<S: ImageSource + ?Sized>(dataset: &S, policy: &TwinPolicy, n: usize, seed: u64) -> RgbImage {
    preview_grid_sized(dataset, policy, n, seed, IMAGE_SIDE)
        .unwrap_or_else(|_| RgbImage::from_pixel(1, 1, Rgb([255, 255, 255])))
}

/// As [`preview_grid`] with views of `size x size` (the original column is the whole image
/// resized to `size x size` with Pillow's bilinear filter). Tiles are upscaled to about 128 px.
///
/// # Errors
/// When an image cannot be loaded.
pub fn preview_grid_sized<S: ImageSource + ?Sized>(
    dataset: &S,
    policy: &TwinPolicy,
    n: usize,
    seed: u64,
    size: usize,
) -> Result<RgbImage> {
    let n = n.min(dataset.len()).max(1);
    let scale = (128 / size as u32).max(1);
    let tile = size as u32 * scale;
    let (w, h) = (3 * tile + 4 * GAP, n as u32 * (tile + GAP) + GAP);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    if dataset.is_empty() {
        return Ok(img);
    }
    let lut = crate::ops::u8_to_unit();
    let per = 3 * size * size;
    let mut tiles = vec![vec![0f32; per]; 3];
    for row in 0..n {
        let src = dataset.load(row, LoadHint::FULL)?;
        let native = dataset.dims(row).unwrap_or((src.width, src.height));
        let mut orig = vec![0u8; per];
        let full = pil::Region { left: 0, top: 0, width: src.width, height: src.height };
        let bx = [0.0, 0.0, src.width as f32, src.height as f32];
        pil::resize(&src.data, src.width, src.height, full, bx, pil::Filter::Bilinear, false, &mut orig, size, size);
        for (d, &s) in tiles[0].iter_mut().zip(&orig) {
            *d = lut[s as usize];
        }
        let (pa, pb) = policy.sample_pair_for(seed, 0, row as u64, native.1, native.0);
        policy.a.render(&src, native, &pa, &mut tiles[1], size);
        policy.b.render(&src, native, &pb, &mut tiles[2], size);
        for (col, t) in tiles.iter().enumerate() {
            let (x0, y0) = (GAP + col as u32 * (tile + GAP), GAP + row as u32 * (tile + GAP));
            for y in 0..tile {
                for x in 0..tile {
                    let p = (y / scale) as usize * size + (x / scale) as usize;
                    let px = |c: usize| (t[c * size * size + p].clamp(0.0, 1.0) * 255.0).round() as u8;
                    img.put_pixel(x0 + x, y0 + y, Rgb([px(0), px(1), px(2)]));
                }
            }
        }
    }
    Ok(img)
}

/// Writes `img` as PNG.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| DataError::ImageWrite { path: path.into(), message: e.to_string() })
}
