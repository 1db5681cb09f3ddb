//! Augmentation operations as pure functions with explicit parameters.
//!
//! Images are f32, **CHW planar** (`3 x h x w`, the layout of the CIFAR file and of the NCHW
//! batch), so that every op runs in place on the batch buffer. Each `tf_*` op reproduces the
//! arithmetic of the TensorFlow kernel it is named after (float32 throughout, same operation
//! order where it matters), including values outside `[0, 1]` produced by earlier steps; each
//! `tv_*` op reproduces torchvision's `transforms.v2.functional` on float tensors. The tests in
//! `tests/tf_fixtures.rs` compare them with TensorFlow/torchvision outputs to 1e-5.
//!
//! # Shapes
//! `img.len() == 3 * h * w` for every op taking `(img, h, w)`; they panic otherwise.
use std::sync::OnceLock;

/// The 256 values `b as f32 / 255.0` (the seed's `x / 255.0` in float32), so reading a u8
/// pixel costs one load instead of a conversion and a division.
pub fn u8_to_unit() -> &'static [f32; 256] {
    static LUT: OnceLock<[f32; 256]> = OnceLock::new();
    LUT.get_or_init(|| std::array::from_fn(|i| i as f32 / 255.0f32))
}

#[inline]
fn check(img: &[f32], h: usize, w: usize) -> usize {
    assert_eq!(img.len(), 3 * h * w, "image must be 3 x {h} x {w} (CHW)");
    h * w
}

/// A crop rectangle in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRect {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
}

/// One output coordinate's bilinear taps along an axis.
#[derive(Debug, Clone, Copy, Default)]
struct Tap {
    lower: u32,
    upper: u32,
    lerp: f32,
}

/// `ResizeBilinear` with `half_pixel_centers=True` (what `tf.image.resize(..., 'bilinear')`
/// runs when antialias is off): `in = (out + 0.5) * scale - 0.5` in float32 with
/// `scale = in_size / out_size`, `lower = max(floor(in), 0)`, `upper = min(ceil(in), in-1)`,
/// `lerp = in - floor(in)`. Computed once per crop and axis instead of per pixel.
fn axis_taps(in_size: usize, out_size: usize, offset: usize, taps: &mut [Tap]) {
    let scale = in_size as f32 / out_size as f32;
    for (i, t) in taps.iter_mut().enumerate().take(out_size) {
        let x = (i as f32 + 0.5) * scale - 0.5;
        let xf = x.floor();
        let lower = (xf as i64).max(0) as usize;
        let upper = (x.ceil() as i64).min(in_size as i64 - 1) as usize;
        *t = Tap { lower: (lower + offset) as u32, upper: (upper + offset) as u32, lerp: x - xf };
    }
}

/// Crop `rect` out of a CHW source image (`src_h x src_w`, any pixel type through `load`),
/// resize it to `out_h x out_w` with `tf.image.resize` bilinear semantics (half-pixel centers,
/// no antialias), optionally mirrored left-right, into `out` (CHW f32).
///
/// Mirroring the *output* columns is exactly `tf.image.flip_left_right` after the resize, so the
/// flip costs nothing here.
// Explicit sizes and crop, as the op is specified (no image struct to hide them in).
#[allow(clippy::too_many_arguments)]
pub fn crop_resize_with<S: Copy>(
    src: &[S],
    src_h: usize,
    src_w: usize,
    rect: CropRect,
    flip: bool,
    out: &mut [f32],
    out_h: usize,
    out_w: usize,
    load: impl Fn(S) -> f32,
) {
    assert_eq!(src.len(), 3 * src_h * src_w, "crop_resize: source must be 3 x {src_h} x {src_w}");
    assert_eq!(out.len(), 3 * out_h * out_w, "crop_resize: out must be 3 x {out_h} x {out_w}");
    assert!(
        rect.height > 0 && rect.width > 0 && rect.top + rect.height <= src_h && rect.left + rect.width <= src_w,
        "crop_resize: crop {rect:?} outside {src_h}x{src_w}"
    );
    const STACK: usize = 64;
    let mut ys = [Tap::default(); STACK];
    let mut xs = [Tap::default(); STACK];
    let (mut ys_heap, mut xs_heap);
    let (ys, xs): (&mut [Tap], &mut [Tap]) = if out_h <= STACK && out_w <= STACK {
        (&mut ys[..out_h], &mut xs[..out_w])
    } else {
        ys_heap = vec![Tap::default(); out_h];
        xs_heap = vec![Tap::default(); out_w];
        (&mut ys_heap, &mut xs_heap)
    };
    axis_taps(rect.height, out_h, rect.top, ys);
    axis_taps(rect.width, out_w, rect.left, xs);
    if flip {
        xs.reverse();
    }
    // Separable, and still bit-identical to TF's kernel: TF computes
    // `top = tl + (tr - tl) * xl; bottom = bl + (br - bl) * xl; out = top + (bottom - top) * yl`,
    // and `top`/`bottom` are exactly the horizontal pass of the two source rows. Doing the
    // horizontal pass once per source row (<= crop height rows) instead of twice per output
    // pixel halves the work and makes the vertical pass a contiguous, vectorizable lerp.
    let rows = rect.height;
    let mut hstack = [0f32; 32 * 64];
    let mut hheap;
    let hbuf: &mut [f32] = if rows * out_w <= hstack.len() {
        &mut hstack[..rows * out_w]
    } else {
        hheap = vec![0f32; rows * out_w];
        &mut hheap
    };
    for c in 0..3 {
        let plane = &src[c * src_h * src_w..(c + 1) * src_h * src_w];
        for r in 0..rows {
            let srow = &plane[(rect.top + r) * src_w..][..src_w];
            let hrow = &mut hbuf[r * out_w..][..out_w];
            for (o, tx) in hrow.iter_mut().zip(xs.iter()) {
                let l = load(srow[tx.lower as usize]);
                let u = load(srow[tx.upper as usize]);
                *o = l + (u - l) * tx.lerp;
            }
        }
        let oplane = &mut out[c * out_h * out_w..(c + 1) * out_h * out_w];
        for (orow, ty) in oplane.chunks_exact_mut(out_w).zip(ys.iter()) {
            let top = &hbuf[(ty.lower as usize - rect.top) * out_w..][..out_w];
            let bot = &hbuf[(ty.upper as usize - rect.top) * out_w..][..out_w];
            let yl = ty.lerp;
            for ((o, &t), &b) in orow.iter_mut().zip(top).zip(bot) {
                *o = t + (b - t) * yl;
            }
        }
    }
}

/// [`crop_resize_with`] on a u8 CHW image read as `x / 255`.
// Explicit sizes and crop, as the op is specified (no image struct to hide them in).
#[allow(clippy::too_many_arguments)]
pub fn crop_resize_u8(
    src: &[u8],
    src_h: usize,
    src_w: usize,
    rect: CropRect,
    flip: bool,
    out: &mut [f32],
    out_h: usize,
    out_w: usize,
) {
    let lut = u8_to_unit();
    crop_resize_with(src, src_h, src_w, rect, flip, out, out_h, out_w, |b| lut[b as usize]);
}

/// [`crop_resize_with`] on an f32 CHW image.
// Explicit sizes and crop, as the op is specified (no image struct to hide them in).
#[allow(clippy::too_many_arguments)]
pub fn crop_resize_f32(
    src: &[f32],
    src_h: usize,
    src_w: usize,
    rect: CropRect,
    flip: bool,
    out: &mut [f32],
    out_h: usize,
    out_w: usize,
) {
    crop_resize_with(src, src_h, src_w, rect, flip, out, out_h, out_w, |v| v);
}

/// `tf.image.flip_left_right`.
pub fn flip_left_right(img: &mut [f32], h: usize, w: usize) {
    check(img, h, w);
    for row in img.chunks_exact_mut(w) {
        row.reverse();
    }
}

/// `tf.image.adjust_brightness` on float images: `x + delta`.
pub fn tf_adjust_brightness(img: &mut [f32], delta: f32) {
    for v in img.iter_mut() {
        *v += delta;
    }
}

/// Sum of one plane in the order of TF's `AdjustContrastv2` CPU kernel, which folds the image
/// in halves (`x[:left] + x[left:]`, repeatedly) rather than summing left to right.
fn tf_fold_sum(plane: &[f32]) -> f32 {
    let n = plane.len();
    if n == 1 {
        return plane[0];
    }
    let mut stack = [0f32; 1024];
    let mut heap;
    let s: &mut [f32] = if n <= 1024 {
        &mut stack[..n]
    } else {
        heap = vec![0f32; n];
        &mut heap
    };
    let mut remaining = n;
    let mut round = 0;
    loop {
        let right = remaining / 2;
        let left = remaining - right;
        if round == 0 {
            for j in 0..right {
                s[j] = plane[left + j] + plane[j];
            }
            if left > right {
                s[right] = plane[right];
            }
        } else {
            for j in 0..right {
                s[j] += s[left + j];
            }
        }
        remaining = left;
        round += 1;
        if remaining <= 1 {
            break;
        }
    }
    s[0]
}

/// `tf.image.adjust_contrast`: per channel, `mean + factor * (x - mean)` with the mean over the
/// image (TF's kernel: folded sum times `1.0f / (h*w)`).
pub fn tf_adjust_contrast(img: &mut [f32], h: usize, w: usize, factor: f32) {
    let hw = check(img, h, w);
    let inv = 1.0f32 / hw as f32;
    for plane in img.chunks_exact_mut(hw) {
        let mean = tf_fold_sum(plane) * inv;
        for v in plane.iter_mut() {
            *v = mean + factor * (*v - mean);
        }
    }
}

#[inline]
fn per_pixel(img: &mut [f32], hw: usize, mut f: impl FnMut(f32, f32, f32) -> (f32, f32, f32)) {
    let (r, gb) = img.split_at_mut(hw);
    let (g, b) = gb.split_at_mut(hw);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (nr, ng, nb) = f(*r, *g, *b);
        *r = nr;
        *g = ng;
        *b = nb;
    }
}

/// One pixel of `adjust_saturation` in closed form. In TF's HSV round trip `v` and the hue are
/// kept and only `s` changes, so every channel moves along `x' = v - t * (v - x)` with
/// `t = s' * v / range`, `s = range / v` (0 when `v <= 0`, as TF), `s' = clamp(s * f, 0, 1)`.
/// Same values as the kernel up to float rounding (checked against TF and against the literal
/// port in [`literal`]), but branch-free, so the loop vectorizes.
#[inline(always)]
fn sat_px(r: f32, g: f32, b: f32, f: f32) -> (f32, f32, f32) {
    let v = r.max(g).max(b);
    let range = v - r.min(g).min(b);
    let s = if v > 0.0 { range / v } else { 0.0 };
    let s2 = (s * f).clamp(0.0, 1.0);
    let t = if range > 0.0 { s2 * v / range } else { 0.0 };
    (v - t * (v - r), v - t * (v - g), v - t * (v - b))
}

/// One pixel of `adjust_hue` in closed form: hue in sextants `[0, 6)` from the standard
/// formulas, shifted by `6 * delta`, wrapped, and rebuilt with `x = v_max - C * clamp(min(k,
/// 4 - k), 0, 1)`, `k = (n + h) mod 6` (`n` = 5, 3, 1 for R, G, B). `v_min`/`v_max` are kept, as
/// in TF's `hv_range` kernel; equal up to float rounding, branch-free.
#[inline(always)]
fn hue_px(r: f32, g: f32, b: f32, d6: f32) -> (f32, f32, f32) {
    let vmax = r.max(g).max(b);
    let vmin = r.min(g).min(b);
    let c = vmax - vmin;
    let inv = if c > 0.0 { 1.0 / c } else { 0.0 };
    let h = if vmax == r {
        (g - b) * inv
    } else if vmax == g {
        (b - r) * inv + 2.0
    } else {
        (r - g) * inv + 4.0
    };
    // h in [-1, 5], d6 in about [-1.2, 1.2]: one conditional step each way wraps into [0, 6).
    let mut h = h + d6;
    h = if h < 0.0 { h + 6.0 } else { h };
    h = if h >= 6.0 { h - 6.0 } else { h };
    let ch = |n: f32| {
        let k = n + h;
        let k = if k >= 6.0 { k - 6.0 } else { k };
        vmax - c * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    (ch(5.0), ch(3.0), ch(1.0))
}

/// `tf.image.adjust_saturation` (TF's CPU kernel semantics, including inputs outside `[0, 1]`).
pub fn tf_adjust_saturation(img: &mut [f32], h: usize, w: usize, factor: f32) {
    let hw = check(img, h, w);
    per_pixel(img, hw, |r, g, b| sat_px(r, g, b, factor));
}

/// `tf.image.adjust_hue` (TF's CPU kernel semantics); `delta` is a fraction of the hue circle,
/// `|delta| <= 0.5`.
pub fn tf_adjust_hue(img: &mut [f32], h: usize, w: usize, delta: f32) {
    let hw = check(img, h, w);
    assert!(delta.abs() <= 0.5, "hue delta {delta} outside [-0.5, 0.5]");
    let d6 = delta * 6.0;
    per_pixel(img, hw, |r, g, b| hue_px(r, g, b, d6));
}

/// `adjust_saturation` then `adjust_hue` in one pass over the pixels (the seed's order): the
/// same arithmetic as the two ops, one memory sweep instead of two.
pub fn tf_adjust_saturation_hue(img: &mut [f32], h: usize, w: usize, factor: f32, delta: f32) {
    let hw = check(img, h, w);
    assert!(delta.abs() <= 0.5, "hue delta {delta} outside [-0.5, 0.5]");
    let d6 = delta * 6.0;
    per_pixel(img, hw, |r, g, b| {
        let (r, g, b) = sat_px(r, g, b, factor);
        hue_px(r, g, b, d6)
    });
}

/// Line-by-line ports of TF's saturation and hue kernels (`adjust_saturation_op.cc`,
/// `adjust_hue_op.cc`), kept as the readable reference for the closed forms above; about 5x
/// slower because of their data-dependent branches.
pub mod literal {
    use super::{check, per_pixel};

    /// TF's `rgb_to_hsv` of `adjust_saturation_op.cc` (h in [0, 1)). The `2.0 / 6.0` constants
    /// are doubles in the C++ source, so those sums are rounded through f64 here as well.
    #[inline]
    fn tf_rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
        let vv = r.max(g.max(b));
        let range = vv - r.min(g.min(b));
        let s = if vv > 0.0 { range / vv } else { 0.0 };
        let norm = 1.0f32 / (6.0f32 * range);
        let mut hh = if r == vv {
            norm * (g - b)
        } else if g == vv {
            (((norm * (b - r)) as f64) + 2.0 / 6.0) as f32
        } else {
            (((norm * (r - g)) as f64) + 4.0 / 6.0) as f32
        };
        if range <= 0.0 {
            hh = 0.0;
        }
        if hh < 0.0 {
            hh += 1.0;
        }
        (hh, s, vv)
    }

    /// TF's `hsv_to_rgb` of `adjust_saturation_op.cc`.
    #[inline]
    fn tf_hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
        let c = s * v;
        let m = v - c;
        let dh = h * 6.0;
        let cat = dh as i32;
        let mut fmodu = dh;
        while fmodu <= 0.0 {
            fmodu += 2.0;
        }
        while fmodu >= 2.0 {
            fmodu -= 2.0;
        }
        let x = c * (1.0 - (fmodu - 1.0).abs());
        let (r, g, b) = match cat {
            0 => (c, x, 0.0),
            1 => (x, c, 0.0),
            2 => (0.0, c, x),
            3 => (0.0, x, c),
            4 => (x, 0.0, c),
            5 => (c, 0.0, x),
            _ => (0.0, 0.0, 0.0),
        };
        (r + m, g + m, b + m)
    }

    /// One pixel of `tf.image.adjust_saturation`: HSV round trip with `s = clamp(s * f, 0, 1)`.
    #[inline]
    fn tf_saturation_px(r: f32, g: f32, b: f32, factor: f32) -> (f32, f32, f32) {
        let (h, s, v) = tf_rgb_to_hsv(r, g, b);
        tf_hsv_to_rgb(h, (s * factor).clamp(0.0, 1.0), v)
    }

    /// One pixel of `tf.image.adjust_hue` (`adjust_hue_op.cc`: hue in [0, 6) with the value range,
    /// shifted by `delta * 6` and wrapped).
    #[inline]
    fn tf_hue_px(r: f32, g: f32, b: f32, delta6: f32) -> (f32, f32, f32) {
        let (vmax, vmid, vmin, cat): (f32, f32, f32, i32) = if r < g {
            if b < r {
                (g, r, b, 1)
            } else if b > g {
                (b, g, r, 3)
            } else {
                (g, b, r, 2)
            }
        } else if b < g {
            (r, g, b, 0)
        } else if b > r {
            (b, r, g, 4)
        } else {
            (r, b, g, 5)
        };
        if vmax == vmin {
            // Hue 0 shifted: still a gray pixel, v_mid = v_min = v_max.
            return (vmax, vmax, vmax);
        }
        let ratio = (vmid - vmin) / (vmax - vmin);
        let increase = cat & 1 == 0;
        let mut h = cat as f32 + if increase { ratio } else { 1.0 - ratio };
        h += delta6;
        while h < 0.0 {
            h += 6.0;
        }
        while h >= 6.0 {
            h -= 6.0;
        }
        let cat = h as i32;
        let mut ratio = h - cat as f32;
        if cat & 1 != 0 {
            ratio = 1.0 - ratio;
        }
        let vmid = vmin + ratio * (vmax - vmin);
        match cat {
            0 => (vmax, vmid, vmin),
            1 => (vmid, vmax, vmin),
            2 => (vmin, vmax, vmid),
            3 => (vmin, vmid, vmax),
            4 => (vmid, vmin, vmax),
            _ => (vmax, vmin, vmid),
        }
    }

    /// `tf.image.adjust_saturation`, literal port.
    pub fn tf_adjust_saturation(img: &mut [f32], h: usize, w: usize, factor: f32) {
        let hw = check(img, h, w);
        per_pixel(img, hw, |r, g, b| tf_saturation_px(r, g, b, factor));
    }

    /// `tf.image.adjust_hue`, literal port.
    pub fn tf_adjust_hue(img: &mut [f32], h: usize, w: usize, delta: f32) {
        let hw = check(img, h, w);
        let d6 = delta * 6.0;
        per_pixel(img, hw, |r, g, b| tf_hue_px(r, g, b, d6));
    }
}

/// The 3 taps of `tfa.image.gaussian_filter2d`'s 1-D kernel: `softmax(-x² / (2σ²))` for
/// `x = -1, 0, 1`, in float32. (tfa uses a softmax, not `exp / sum`; the 2-D kernel is the
/// outer product.) `sigma` must be `> 0`; tfa divides by zero at 0 as well.
pub fn tfa_gaussian_taps(sigma: f32) -> [f32; 3] {
    let d = 2.0f32 * (sigma * sigma);
    let a = -1.0f32 / d;
    // softmax subtracts the max (0, at the centre).
    let e = [a.exp(), 0f32.exp(), a.exp()];
    let s = e[0] + e[1] + e[2];
    [e[0] / s, e[1] / s, e[2] / s]
}

/// `tfa.image.gaussian_filter2d(img, (3, 3), sigma, padding="REFLECT")`: a 3x3 depthwise
/// convolution with the outer-product kernel over a reflect-padded image (`x[-1] = x[1]`).
pub fn tfa_gaussian_blur3x3(img: &mut [f32], h: usize, w: usize, sigma: f32) {
    let hw = check(img, h, w);
    assert!(h >= 2 && w >= 2, "reflect padding needs at least 2x2");
    let k = tfa_gaussian_taps(sigma);
    let mut k2 = [[0f32; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            k2[i][j] = k[i] * k[j];
        }
    }
    let (ph, pw) = (h + 2, w + 2);
    let mut stack = [0f32; 34 * 34];
    let mut heap;
    let pad: &mut [f32] = if ph * pw <= stack.len() {
        &mut stack[..ph * pw]
    } else {
        heap = vec![0f32; ph * pw];
        &mut heap
    };
    for plane in img.chunks_exact_mut(hw) {
        // Reflect padding (`x[-1] = x[1]`, `x[w] = x[w-2]`), built by row copies.
        for py in 0..ph {
            let sy = match py {
                0 => 1,
                _ if py == ph - 1 => h - 2,
                _ => py - 1,
            };
            let srow = &plane[sy * w..][..w];
            let prow = &mut pad[py * pw..][..pw];
            prow[1..=w].copy_from_slice(srow);
            prow[0] = srow[1];
            prow[pw - 1] = srow[w - 2];
        }
        for y in 0..h {
            let r0 = &pad[y * pw..][..pw];
            let r1 = &pad[(y + 1) * pw..][..pw];
            let r2 = &pad[(y + 2) * pw..][..pw];
            for x in 0..w {
                let mut acc = 0f32;
                acc += k2[0][0] * r0[x] + k2[0][1] * r0[x + 1] + k2[0][2] * r0[x + 2];
                acc += k2[1][0] * r1[x] + k2[1][1] * r1[x + 1] + k2[1][2] * r1[x + 2];
                acc += k2[2][0] * r2[x] + k2[2][1] * r2[x + 1] + k2[2][2] * r2[x + 2];
                plane[y * w + x] = acc;
            }
        }
    }
}

/// `tf.image.rgb_to_grayscale` (weights 0.2989, 0.5870, 0.1140) tiled back to 3 channels.
pub fn tf_grayscale(img: &mut [f32], h: usize, w: usize) {
    let hw = check(img, h, w);
    per_pixel(img, hw, |r, g, b| {
        let y = r * 0.2989 + g * 0.5870 + b * 0.1140;
        (y, y, y)
    });
}

/// The seed's solarize, verbatim: `tf.where(x < 10, x, 255 - x)`. On `[0, 1]` data it never
/// changes a pixel (the quirk), but it is applied literally so any input behaves like TF.
pub fn solarize_seed_quirk(img: &mut [f32]) {
    for v in img.iter_mut() {
        if *v >= 10.0 {
            *v = 255.0 - *v;
        }
    }
}

/// The usual solarize (torchvision `solarize`): `x >= threshold -> 1 - x`.
pub fn solarize(img: &mut [f32], threshold: f32) {
    for v in img.iter_mut() {
        if *v >= threshold {
            *v = 1.0 - *v;
        }
    }
}

/// `tf.clip_by_value(x, 0, 1)`.
pub fn clip01(img: &mut [f32]) {
    for v in img.iter_mut() {
        *v = v.clamp(0.0, 1.0);
    }
}

// ---------------------------------------------------------------- torchvision semantics

#[inline]
fn tv_gray(r: f32, g: f32, b: f32) -> f32 {
    r * 0.2989 + g * 0.587 + b * 0.114
}

/// torchvision `adjust_brightness` on floats: `clamp(x * f, 0, 1)`.
pub fn tv_adjust_brightness(img: &mut [f32], factor: f32) {
    for v in img.iter_mut() {
        *v = (*v * factor).clamp(0.0, 1.0);
    }
}

/// torchvision `_blend`: `clamp(f * a + (1 - f) * b, 0, 1)`, with `1 - f` rounded from f64 as
/// Python computes it before the tensor op.
#[inline]
fn tv_blend(a: f32, b: f32, f: f32, one_minus_f: f32) -> f32 {
    (a * f + b * one_minus_f).clamp(0.0, 1.0)
}

/// torchvision `adjust_contrast`: blend with the mean of the grayscale image.
pub fn tv_adjust_contrast(img: &mut [f32], h: usize, w: usize, factor: f64) {
    let hw = check(img, h, w);
    let (r, gb) = img.split_at(hw);
    let (g, b) = gb.split_at(hw);
    let sum: f64 = r.iter().zip(g).zip(b).map(|((&r, &g), &b)| tv_gray(r, g, b) as f64).sum();
    let mean = (sum / hw as f64) as f32;
    let (f, omf) = (factor as f32, (1.0 - factor) as f32);
    for v in img.iter_mut() {
        *v = tv_blend(*v, mean, f, omf);
    }
}

/// torchvision `adjust_saturation`: blend with the per-pixel grayscale.
pub fn tv_adjust_saturation(img: &mut [f32], h: usize, w: usize, factor: f64) {
    let hw = check(img, h, w);
    let (f, omf) = (factor as f32, (1.0 - factor) as f32);
    per_pixel(img, hw, |r, g, b| {
        let y = tv_gray(r, g, b);
        (tv_blend(r, y, f, omf), tv_blend(g, y, f, omf), tv_blend(b, y, f, omf))
    });
}

/// torchvision `adjust_hue` (v2 `_rgb_to_hsv` / `_hsv_to_rgb`) for images in `[0, 1]`.
pub fn tv_adjust_hue(img: &mut [f32], h: usize, w: usize, hue: f64) {
    let hw = check(img, h, w);
    if hue == 0.0 {
        return;
    }
    let hue = hue as f32;
    per_pixel(img, hw, |r, g, b| {
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let eqc = maxc == minc;
        let cr = maxc - minc;
        let s = cr / if eqc { 1.0 } else { maxc };
        let div = if eqc { 1.0 } else { cr };
        let (rc, gc, bc) = ((maxc - r) / div, (maxc - g) / div, (maxc - b) / div);
        let neq_r = maxc != r;
        let eq_g = maxc == g;
        let hg = if eq_g && neq_r { rc + 2.0 - bc } else { 0.0 };
        let hr = if !neq_r { bc - gc } else { 0.0 };
        let hb = if neq_r && !eq_g { gc + 4.0 - rc } else { 0.0 };
        let hh = ((hr + hg + hb) * (1.0f32 / 6.0) + 1.0) % 1.0;
        // Python-style remainder (result has the sign of the divisor).
        let mut hh = (hh + hue) % 1.0;
        if hh < 0.0 {
            hh += 1.0;
        }
        let h6 = hh * 6.0;
        let i = h6.floor();
        let f = h6 - i;
        let sxf = s * f;
        let oms = 1.0 - s;
        let q = ((1.0 - sxf) * maxc).clamp(0.0, 1.0);
        let t = ((sxf + oms) * maxc).clamp(0.0, 1.0);
        let p = (oms * maxc).clamp(0.0, 1.0);
        let v = maxc;
        match (i as i32).rem_euclid(6) {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SampleRng;

    fn random_image(seed: u64, lo: f64, hi: f64) -> Vec<f32> {
        let mut r = SampleRng::new(seed, 0, 0, 0);
        let mut v: Vec<f32> = (0..3072).map(|_| r.range(lo, hi) as f32).collect();
        // Ties (gray pixels, two equal channels) take special branches in TF's kernels.
        for i in 0..64 {
            v[i + 1024] = v[i];
            if i % 2 == 0 {
                v[i + 2048] = v[i];
            }
        }
        v
    }

    #[test]
    fn closed_form_saturation_and_hue_equal_the_literal_kernels() {
        for (seed, lo, hi) in [(1, 0.0, 1.0), (2, -0.8, 2.6), (3, -1.0, 0.0), (4, 0.9, 1.8)] {
            let img = random_image(seed, lo, hi);
            for f in [0.0f32, 0.4, 0.9, 1.0, 1.6] {
                let (mut a, mut b) = (img.clone(), img.clone());
                tf_adjust_saturation(&mut a, 32, 32, f);
                literal::tf_adjust_saturation(&mut b, 32, 32, f);
                let d = bt_testkit::max_abs_diff("saturation", &a, &b).unwrap().diff;
                assert!(d < 2e-6, "saturation f={f} [{lo},{hi}]: {d}");
            }
            for delta in [-0.5f32, -0.2, -0.01, 0.0, 0.13, 0.2, 0.5] {
                let (mut a, mut b) = (img.clone(), img.clone());
                tf_adjust_hue(&mut a, 32, 32, delta);
                literal::tf_adjust_hue(&mut b, 32, 32, delta);
                let d = bt_testkit::max_abs_diff("hue", &a, &b).unwrap().diff;
                assert!(d < 4e-6, "hue delta={delta} [{lo},{hi}]: {d}");
            }
        }
    }
}
