//! Pillow's colour operations on 8-bit RGB images, as torchvision runs them on PIL images.
//!
//! The official Barlow Twins recipe transforms PIL images: every op reads and writes u8, and
//! `ToTensor` + `Normalize` run once at the end. This module reproduces that arithmetic, so a
//! view made with [`bt_config::ColorMath::PilU8`] is the official pipeline's view, and the ops
//! cost one byte per value instead of four:
//!
//! - brightness, contrast, saturation: `ImageEnhance` = `Image.blend(degenerate, img, f)`,
//!   `ImagingBlend`'s C `float` expression `in1 + f * (in2 - in1)` truncated to u8 (clipped
//!   when `f` is outside `[0, 1]`). Degenerate images: black; the rounded mean of the `L` image
//!   (`int(ImageStat.Stat(L).mean[0] + 0.5)`); the `L` image itself.
//! - hue: torchvision's `img.convert("HSV")`, hue band `+= int32(hue * 255)` with u8 wrap,
//!   back with `convert("RGB")` (Pillow's `rgb2hsv`/`hsv2rgb` in `Convert.c`, float/double
//!   arithmetic as the C expressions have it). The round trip is lossy even with a zero shift,
//!   exactly as in torchvision.
//! - grayscale: `convert("L")`, `L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16` (Pillow's
//!   16-bit fixed point of ITU-R 601-2 `0.299/0.587/0.114`), replicated to three bands.
//! - solarize: `ImageOps.solarize(img, 128)`: values `>= 128` become `255 - v`.
//!
//! `tests/pil_color_fixtures.rs` compares each op and whole jitter chains with Pillow 13 /
//! torchvision 0.26 outputs from `scripts/fixtures/pil_color.py`: **bit-exact**.
//!
//! Images are CHW planar (`3 x h x w`, see [`crate::Image`]); `hw = h * w`.

/// `ImagingBlend`'s per-value expression (C `float`): interpolation truncates, extrapolation
/// clips to `[0, 255]` first. Rust's saturating float-to-int cast is exactly that clip
/// followed by the truncation, so one branch-free expression serves both (and vectorizes).
#[inline]
fn blend(a: u8, b: u8, alpha: f32) -> u8 {
    (a as f32 + alpha * (b as i32 - a as i32) as f32) as u8
}

/// Pillow's `convert("L")` of one pixel.
#[inline]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

fn planes(img: &mut [u8]) -> (&mut [u8], &mut [u8], &mut [u8]) {
    assert_eq!(img.len() % 3, 0, "pil_color: image must be 3 x h x w (CHW)");
    let hw = img.len() / 3;
    let (r, gb) = img.split_at_mut(hw);
    let (g, b) = gb.split_at_mut(hw);
    (r, g, b)
}

fn apply_lut(img: &mut [u8], lut: &[u8; 256]) {
    for v in img.iter_mut() {
        *v = lut[*v as usize];
    }
}

/// `ImageEnhance.Brightness(img).enhance(factor)` (torchvision `adjust_brightness`).
pub fn brightness(img: &mut [u8], factor: f32) {
    let lut: [u8; 256] = std::array::from_fn(|v| blend(0, v as u8, factor));
    apply_lut(img, &lut);
}

/// `ImageEnhance.Contrast(img).enhance(factor)` (torchvision `adjust_contrast`).
pub fn contrast(img: &mut [u8], factor: f32) {
    let (r, g, b) = planes(img);
    // ImageStat's mean comes from the histogram: an exact integer sum, divided in double.
    let sum: u64 = r.iter().zip(g.iter()).zip(b.iter()).map(|((&r, &g), &b)| luma(r, g, b) as u64).sum();
    let mean = (sum as f64 / r.len() as f64 + 0.5) as u8;
    let lut: [u8; 256] = std::array::from_fn(|v| blend(mean, v as u8, factor));
    apply_lut(img, &lut);
}

/// `ImageEnhance.Color(img).enhance(factor)` (torchvision `adjust_saturation`).
pub fn saturation(img: &mut [u8], factor: f32) {
    let (r, g, b) = planes(img);
    // Row by row: the luma of a row first, then three straight blend loops that vectorize.
    const ROW: usize = 256;
    let mut l = [0u8; ROW];
    for start in (0..r.len()).step_by(ROW) {
        let end = (start + ROW).min(r.len());
        let l = &mut l[..end - start];
        for (((l, &r), &g), &b) in l.iter_mut().zip(&r[start..end]).zip(&g[start..end]).zip(&b[start..end]) {
            *l = luma(r, g, b);
        }
        for plane in [&mut r[start..end], &mut g[start..end], &mut b[start..end]] {
            for (v, &l) in plane.iter_mut().zip(l.iter()) {
                *v = blend(l, *v, factor);
            }
        }
    }
}

/// C `round` (half away from zero) of a non-negative double: the fraction `x - trunc(x)` is
/// exact, so this is the libm result without a libm call per value.
#[inline]
fn round_nonneg(x: f64) -> i32 {
    let i = x as i32;
    i + (x - i as f64 >= 0.5) as i32
}

/// Pillow's `rgb2hsv` of one pixel (`Convert.c`, after Python's `colorsys`).
#[inline]
fn rgb_to_hsv(r: u8, g: u8, b: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if minc == maxc {
        return (0, 0, maxc);
    }
    let cr = (maxc - minc) as f32;
    let s = cr / maxc as f32;
    // Only the two quotients a branch uses are computed (each is the C float division).
    let q = |c: u8| (maxc - c) as f32 / cr;
    // `2.0 + rc - bc` is double arithmetic stored into a float.
    let h: f32 = if r == maxc {
        q(b) - q(g)
    } else if g == maxc {
        (2.0 + q(r) as f64 - q(b) as f64) as f32
    } else {
        (4.0 + q(g) as f64 - q(r) as f64) as f32
    };
    // fmod(x, 1.0) for x = h / 6 + 1 in [5/6, 11/6]: subtracting 1 is exact there.
    let x = h as f64 / 6.0 + 1.0;
    let h = (if x >= 1.0 { x - 1.0 } else { x }) as f32;
    let uh = ((h as f64 * 255.0) as i32).clamp(0, 255) as u8;
    let us = ((s as f64 * 255.0) as i32).clamp(0, 255) as u8;
    (uh, us, maxc)
}

/// Pillow's `hsv2rgb` of one pixel: the transcription [`hue_pixel`] is tested against.
#[cfg(test)]
fn hsv_to_rgb(h: u8, s: u8, v: u8) -> (u8, u8, u8) {
    if s == 0 {
        return (v, v, v);
    }
    let hh = h as f32 as f64 * 6.0 / 255.0;
    // floor of a non-negative value.
    let i = hh as i32;
    let f = (hh - i as f32 as f64) as f32;
    let fs = (s as f32 as f64 / 255.0) as f32;
    let vf = v as f32 as f64;
    let c = |x: f64| round_nonneg(x).clamp(0, 255) as u8;
    let p = c(vf * (1.0 - fs as f64));
    let q = c(vf * (1.0 - (fs * f) as f64));
    let t = c(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// Tables that make [`hue`] division-free, each entry computed by the reference functions
/// above, so the fast path returns their exact bits.
struct HueTables {
    /// `us` of `rgb2hsv` by `maxc * 256 + (maxc - minc)`.
    s: Vec<u8>,
    /// `uh` of `rgb2hsv` by `(case * 256 + (maxc - minc)) * 256 + (maxc - mid)`; `case` is the
    /// max channel (first in R, G, B order, as the C branches) times 2 plus whether the min
    /// channel is the later of the other two. `h` depends on nothing else.
    h: Vec<u8>,
    /// `hsv2rgb`'s sextant `i` and remainder `f` by hue byte.
    sextant: [(u8, f32); 256],
    /// `hsv2rgb`'s `fs` by saturation byte.
    fs: [f32; 256],
}

fn hue_tables() -> &'static HueTables {
    static T: std::sync::OnceLock<HueTables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut s = vec![0u8; 65536];
        for maxc in 1..256usize {
            for cr in 1..=maxc {
                s[maxc * 256 + cr] = rgb_to_hsv(maxc as u8, (maxc - cr) as u8, (maxc - cr) as u8).1;
            }
        }
        let mut h = vec![0u8; 6 * 65536];
        for case in 0..6usize {
            let (maxch, later_min) = (case / 2, case % 2 == 1);
            let others = [(maxch + 1) % 3, (maxch + 2) % 3];
            let (first, second) = (others[0].min(others[1]), others[0].max(others[1]));
            let minch = if later_min { second } else { first };
            let midch = if later_min { first } else { second };
            for cr in 1..256usize {
                for d in 0..=cr {
                    let mut px = [0u8; 3];
                    px[maxch] = 255;
                    px[minch] = (255 - cr) as u8;
                    px[midch] = (255 - d) as u8;
                    h[(case * 256 + cr) * 256 + d] = rgb_to_hsv(px[0], px[1], px[2]).0;
                }
            }
        }
        let sextant = std::array::from_fn(|h| {
            let hh = h as f32 as f64 * 6.0 / 255.0;
            let i = hh as i32;
            (i as u8, (hh - i as f32 as f64) as f32)
        });
        let fs = std::array::from_fn(|s| (s as f32 as f64 / 255.0) as f32);
        HueTables { s, h, sextant, fs }
    })
}

/// [`rgb_to_hsv`] + hue shift + [`hsv_to_rgb`] through [`HueTables`].
#[inline]
fn hue_pixel(t: &HueTables, r: u8, g: u8, b: u8, shift: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        // h = s = 0: gray stays gray whatever the shift.
        return (maxc, maxc, maxc);
    }
    let cr = (maxc - minc) as usize;
    // The C branches test R, then G: the first channel equal to the max.
    let (maxch, a, b2) = if r == maxc {
        (0, g, b)
    } else if g == maxc {
        (1, r, b)
    } else {
        (2, r, g)
    };
    // `a` and `b2` are the other two in R, G, B order; ties give q = 1 for both either way.
    let (later_min, mid) = if b2 < a { (1, a) } else { (0, b2) };
    let case = maxch * 2 + later_min;
    let uh = t.h[(case * 256 + cr) * 256 + (maxc - mid) as usize];
    let us = t.s[maxc as usize * 256 + cr];
    if us == 0 {
        return (maxc, maxc, maxc);
    }
    let (i, f) = t.sextant[uh.wrapping_add(shift) as usize];
    let fs = t.fs[us as usize];
    let v = maxc;
    let vf = v as f64;
    let c = |x: f64| round_nonneg(x).clamp(0, 255) as u8;
    let p = c(vf * (1.0 - fs as f64));
    let q = c(vf * (1.0 - (fs * f) as f64));
    let tt = c(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    match i % 6 {
        0 => (v, tt, p),
        1 => (q, v, p),
        2 => (p, v, tt),
        3 => (p, q, v),
        4 => (tt, p, v),
        _ => (v, p, q),
    }
}

/// torchvision's `adjust_hue` on a PIL RGB image (`hue` in `[-0.5, 0.5]`).
pub fn hue(img: &mut [u8], hue: f64) {
    // np.int32(hue * 255) truncates toward zero; .astype(uint8) wraps.
    let shift = (hue * 255.0) as i32 as u8;
    let t = hue_tables();
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        (*r, *g, *b) = hue_pixel(t, *r, *g, *b, shift);
    }
}

/// torchvision `Grayscale(3)` / `RandomGrayscale` on PIL: `convert("L")` in every band.
pub fn grayscale(img: &mut [u8]) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let l = luma(*r, *g, *b);
        (*r, *g, *b) = (l, l, l);
    }
}

/// `ImageOps.solarize(img, threshold)`: values `>= threshold` are inverted.
pub fn solarize(img: &mut [u8], threshold: u8) {
    for v in img.iter_mut() {
        if *v >= threshold {
            *v = 255 - *v;
        }
    }
}

/// torchvision `ColorJitter` on PIL: the four adjustments in `order` (0 brightness,
/// 1 contrast, 2 saturation, 3 hue). Factors arrive as Python floats; Pillow's blend takes
/// them as C `float`.
pub fn color_jitter(img: &mut [u8], order: [u8; 4], brightness_f: f64, contrast_f: f64, saturation_f: f64, hue_f: f64) {
    for op in order {
        match op {
            0 => brightness(img, brightness_f as f32),
            1 => contrast(img, contrast_f as f32),
            2 => saturation(img, saturation_f as f32),
            _ => hue(img, hue_f),
        }
    }
}

/// torchvision `ToTensor` (+ `Normalize(mean, std)` when `norm` is given) of a CHW u8 image
/// into `out`, in one pass through a per-channel table of the 256 results: `v / 255` in
/// float32, then `(x - mean) / std` in float32, the same operations as torchvision's, so the
/// same bits.
///
/// # Panics
/// When `out.len() != img.len()` or the length is not a multiple of 3.
pub fn to_tensor(img: &[u8], out: &mut [f32], norm: Option<([f32; 3], [f32; 3])>) {
    assert_eq!(img.len(), out.len(), "pil_color::to_tensor: sizes differ");
    assert_eq!(img.len() % 3, 0, "pil_color::to_tensor: image must be 3 x h x w (CHW)");
    let hw = img.len() / 3;
    let unit = crate::ops::u8_to_unit();
    for (c, (plane, o)) in img.chunks_exact(hw.max(1)).zip(out.chunks_exact_mut(hw.max(1))).enumerate() {
        let lut: [f32; 256] = match norm {
            Some((mean, std)) => std::array::from_fn(|v| (unit[v] - mean[c]) / std[c]),
            None => *unit,
        };
        for (o, &v) in o.iter_mut().zip(plane) {
            *o = lut[v as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trip_keeps_grays_and_primaries() {
        for v in [0u8, 1, 128, 255] {
            assert_eq!(hsv_to_rgb(rgb_to_hsv(v, v, v).0, 0, v), (v, v, v));
        }
        for px in [(255u8, 0u8, 0u8), (0, 255, 0), (0, 0, 255)] {
            let (h, s, v) = rgb_to_hsv(px.0, px.1, px.2);
            assert_eq!(hsv_to_rgb(h, s, v), px);
        }
    }

    #[test]
    fn table_hue_equals_the_transcription() {
        // Every 5th level per channel plus the ends (ties, grays, primaries), every 17th shift.
        let levels: Vec<u8> = (0..=255u8).step_by(5).chain([1, 2, 254, 255]).collect();
        let t = hue_tables();
        for shift in (0..=255u8).step_by(17) {
            for &r in &levels {
                for &g in &levels {
                    for &b in &levels {
                        let (h, s, v) = rgb_to_hsv(r, g, b);
                        let want = hsv_to_rgb(h.wrapping_add(shift), s, v);
                        assert_eq!(hue_pixel(t, r, g, b, shift), want, "{r} {g} {b} shift {shift}");
                    }
                }
            }
        }
    }

    #[test]
    fn round_nonneg_is_c_round() {
        for x in [0.0, 0.49999999999999994, 0.5, 1.5, 2.5, 254.49999999999997, 254.5, 3.0000000000000004] {
            assert_eq!(round_nonneg(x), x.round() as i32, "{x}");
        }
    }

    #[test]
    fn blend_identity_and_black() {
        for v in 0..=255u8 {
            assert_eq!(blend(0, v, 1.0), v);
            assert_eq!(blend(v, 17, 0.0), v);
        }
    }
}
