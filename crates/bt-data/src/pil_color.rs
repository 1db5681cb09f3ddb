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
#[inline(always)]
fn blend(a: u8, b: u8, alpha: f32) -> u8 {
    let x = a as f32 + alpha * (b as i32 - a as i32) as f32;
    // `x as u8` (clip, then truncate) spelled as a clip and an i32 truncation: the same value,
    // but LLVM vectorizes this form (its saturating cast to u8 it does one value at a time).
    // `max` first: a NaN (impossible for finite factors) would become 0, as `as u8` makes it.
    #[allow(clippy::manual_clamp)] // `clamp` would keep a NaN, and NaN must not reach the cast
    let c = x.max(0.0).min(255.0);
    // SAFETY: `c` is finite and in [0, 255].
    unsafe { c.to_int_unchecked::<i32>() as u8 }
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

/// `blend(a, v, alpha)` for every value `v`: with AVX-512 VBMI, the 256 results as a byte
/// table ([`lookup_bytes_vbmi`]); else the per-value float expression, which vectorizes (8
/// values per instruction under AVX2) where a 256-entry table lookup without VBMI would not.
#[inline(always)]
fn blend_all(img: &mut [u8], a: u8, alpha: f32) {
    // With a fixed `a` the blend is a function of the value alone: on CPUs with AVX-512 VBMI
    // its 256 results are a table that `vpermi2b` applies to 64 values at a time.
    #[cfg(target_arch = "x86_64")]
    if img.len() >= 1024 && has_vbmi() {
        let t: [u8; 256] = std::array::from_fn(|v| blend(a, v as u8, alpha));
        // SAFETY: the CPU has AVX-512 F, BW and VBMI (checked just above).
        let done = unsafe { lookup_bytes_vbmi(img, &t) };
        for v in &mut img[done..] {
            *v = t[*v as usize];
        }
        return;
    }
    for v in img.iter_mut() {
        *v = blend(a, *v, alpha);
    }
}

/// `true` when the CPU has what [`lookup_bytes_vbmi`] needs.
#[cfg(target_arch = "x86_64")]
fn has_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi") && std::arch::is_x86_feature_detected!("avx512bw")
}

/// A 256-byte table in four AVX-512 registers, for [`table_lookup`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn table_registers(t: &[u8; 256]) -> [std::arch::x86_64::__m512i; 4] {
    // SAFETY: register `k` reads bytes `64k..64k + 64` of the 256.
    std::array::from_fn(|k| unsafe { std::arch::x86_64::_mm512_loadu_si512(t.as_ptr().add(64 * k).cast()) })
}

/// `t[idx]` for 64 byte indices: one `vpermi2b` for the indices below 128 (table bytes 0..128
/// in two registers), one for those above, and a select on each index's top bit (`high`,
/// `_mm512_movepi8_mask(idx)`, passed in so that lookups of one `idx` in several tables
/// share it).
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn table_lookup(
    t: &[std::arch::x86_64::__m512i; 4],
    idx: std::arch::x86_64::__m512i,
    high: std::arch::x86_64::__mmask64,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    // Index bits 0..=6 pick among 128 table bytes; bit 7 picks the table half.
    let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
    let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
    _mm512_mask_blend_epi8(high, lo, hi)
}

/// `v = t[v]` for the first `img.len() / 64 * 64` bytes (returned), 64 bytes per
/// [`table_lookup`].
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup_bytes_vbmi(img: &mut [u8], t: &[u8; 256]) -> usize {
    use std::arch::x86_64::*;
    let body = img.len() / 64 * 64;
    let t = table_registers(t);
    // SAFETY: each step reads and writes the 64 bytes at `j + 64 <= body <= img.len()`.
    unsafe {
        for j in (0..body).step_by(64) {
            let p = img.as_mut_ptr().add(j);
            let idx = _mm512_loadu_si512(p.cast());
            _mm512_storeu_si512(p.cast(), table_lookup(&t, idx, _mm512_movepi8_mask(idx)));
        }
    }
    body
}

avx2_dispatch! {
    /// `ImageEnhance.Brightness(img).enhance(factor)` (torchvision `adjust_brightness`).
    pub fn brightness => brightness_impl(img: &mut [u8], factor: f32)
}

#[inline(always)]
fn brightness_impl(img: &mut [u8], factor: f32) {
    blend_all(img, 0, factor);
}

avx2_dispatch! {
    /// `ImageEnhance.Contrast(img).enhance(factor)` (torchvision `adjust_contrast`).
    pub fn contrast => contrast_impl(img: &mut [u8], factor: f32)
}

#[inline(always)]
fn contrast_impl(img: &mut [u8], factor: f32) {
    let (r, g, b) = planes(img);
    // ImageStat's mean comes from the histogram: an exact integer sum, divided in double.
    let sum: u64 = r.iter().zip(g.iter()).zip(b.iter()).map(|((&r, &g), &b)| luma(r, g, b) as u32 as u64).sum();
    let mean = (sum as f64 / r.len() as f64 + 0.5) as u8;
    blend_all(img, mean, factor);
}

avx2_dispatch! {
    /// `ImageEnhance.Color(img).enhance(factor)` (torchvision `adjust_saturation`): blends with
    /// the image's own `L` conversion.
    pub fn saturation => saturation_impl(img: &mut [u8], factor: f32)
}

#[inline(always)]
fn saturation_impl(img: &mut [u8], factor: f32) {
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

#[cfg(test)]
fn round_nonneg(x: f64) -> i32 {
    let i = x as i32;
    i + (x - i as f64 >= 0.5) as i32
}

/// Pillow's `rgb2hsv` of one pixel (`Convert.c`, after Python's `colorsys`): with
/// [`hsv_to_rgb`], the transcription [`hue_pixel`] is tested against.
#[cfg(test)]
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

/// `x as i32` for an `x` in `[0, 256]`, which every float-to-int conversion of [`hue_pixel`]
/// has (the divisors are never zero, so no NaN either): Rust's saturating `as` costs compares
/// and blends per vector that can never fire there. Same truncation, same bits.
#[inline(always)]
fn trunc_small(x: f64) -> i32 {
    debug_assert!((0.0..=256.0).contains(&x), "{x}");
    // SAFETY: `x` is finite and far inside the i32 range (see above; checked in debug builds,
    // and every RGB value is run through `hue_pixel` by the tests).
    unsafe { x.to_int_unchecked() }
}

/// [`rgb_to_hsv`] + hue shift + [`hsv_to_rgb`] of one pixel, as straight-line arithmetic
/// (no branches, no tables) so that [`hue`]'s loop vectorizes. The same IEEE operations in
/// the same order as the two transcriptions, with their branches turned into selects:
///
/// - the three hue branches are one expression `(off + q(x) as f64 - q(y) as f64) as f32`;
///   for the red branch (`off = 0`) that is the f32 `q(b) - q(g)` exactly, because the
///   difference of two f32 in `[0, 1]` that are multiples of at least `2^-32` is exact in
///   f64, and the one rounding to f32 is then the f32 subtraction's;
/// - grays (`maxc == minc`) need no branch: `s = 0`, so `fs = 0` and `p = q = t = v`,
///   which is `hsv2rgb`'s `s == 0` result (the divisors are kept non-zero so no NaN arises);
/// - `hsv2rgb`'s `i % 6` only matters for hue byte 255 (`hh == 6.0`, `i = 6`, `f = 0`).
///
/// `tests` checks it against the transcriptions on every RGB value.
#[inline(always)]
fn hue_pixel(r: u8, g: u8, b: u8, shift: u8) -> (u8, u8, u8) {
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    // rgb2hsv's branches test R, then G: the first channel equal to the max decides.
    let (x, y, branch) = if r == maxc {
        (b, g, 0)
    } else if g == maxc {
        (r, b, 1)
    } else {
        (g, r, 2)
    };
    let uh = hue_byte(branch, maxc - x, maxc - y);
    let us = saturation_byte(maxc - minc, maxc);
    hsv_to_rgb_bytes(uh.wrapping_add(shift), us, maxc)
}

/// `rgb2hsv`'s hue byte from the sextant `branch` (0: R is the max, 1: G, 2: B) and the
/// distances `mx = maxc - x`, `my = maxc - y` of the branch's two channels from the max. The
/// channel range `maxc - minc` is `max(mx, my)`: the min is always `x` or `y`.
#[inline(always)]
fn hue_byte(branch: u8, mx: u8, my: u8) -> u8 {
    let off = if branch == 0 {
        0.0f64
    } else if branch == 1 {
        2.0
    } else {
        4.0
    };
    let crf = mx.max(my).max(1) as f32;
    let qx = mx as f32 / crf;
    let qy = my as f32 / crf;
    let h = (off + qx as f64 - qy as f64) as f32;
    // fmod(x, 1.0) for x = h / 6 + 1 in [5/6, 11/6]: subtracting 1 is exact there.
    let xh = h as f64 / 6.0 + 1.0;
    let h = (if xh >= 1.0 { xh - 1.0 } else { xh }) as f32;
    trunc_small(h as f64 * 255.0).clamp(0, 255) as u8
}

/// `rgb2hsv`'s saturation byte from the channel range `cr` and the max.
#[inline(always)]
fn saturation_byte(cr: u8, maxc: u8) -> u8 {
    let s = cr as f32 / maxc.max(1) as f32;
    trunc_small(s as f64 * 255.0).clamp(0, 255) as u8
}

/// `hsv2rgb`'s sextant (0..=5; 6 wraps to 0 after `f` is taken) and fraction of a hue byte.
#[inline(always)]
fn sextant(h: u8) -> (i32, f32) {
    let hh = h as f32 as f64 * 6.0 / 255.0;
    let i = trunc_small(hh);
    let f = (hh - i as f32 as f64) as f32;
    (if i == 6 { 0 } else { i }, f)
}

/// `hsv2rgb`'s `s / 255` as C float.
#[inline(always)]
fn saturation_unit(us: u8) -> f32 {
    (us as f32 as f64 / 255.0) as f32
}

/// `hsv2rgb`'s rounding of a product in `[0, 255]`: C `round` (halves up for `x >= 0`),
/// clipped.
#[inline(always)]
fn round_byte(x: f64) -> u8 {
    let i = trunc_small(x);
    (i + (x - i as f64 >= 0.5) as i32).clamp(0, 255) as u8
}

/// `hsv2rgb`'s `p = v (1 - s)`.
#[inline(always)]
fn hsv_p(us: u8, v: u8) -> u8 {
    round_byte(v as f64 * (1.0 - saturation_unit(us) as f64))
}

/// `hsv2rgb` of `(h, us, v)` bytes.
#[inline(always)]
fn hsv_to_rgb_bytes(h: u8, us: u8, v: u8) -> (u8, u8, u8) {
    let (i, f) = sextant(h);
    let fs = saturation_unit(us);
    let vf = v as f64;
    let p = hsv_p(us, v);
    let q = round_byte(vf * (1.0 - (fs * f) as f64));
    let t = round_byte(vf * (1.0 - fs as f64 * (1.0 - f as f64)));
    // hsv2rgb's table by sextant 0..=5: R = v q p p t v, G = t v v q p p, B = p p t v v q.
    let ro = if i == 0 || i == 5 {
        v
    } else if i == 1 {
        q
    } else if i == 4 {
        t
    } else {
        p
    };
    let go = if i == 1 || i == 2 {
        v
    } else if i == 0 {
        t
    } else if i == 3 {
        q
    } else {
        p
    };
    let bo = if i == 3 || i == 4 {
        v
    } else if i == 2 {
        t
    } else if i == 5 {
        q
    } else {
        p
    };
    (ro, go, bo)
}

/// torchvision's `adjust_hue` on a PIL RGB image (`hue` in `[-0.5, 0.5]`).
pub fn hue(img: &mut [u8], hue: f64) {
    // np.int32(hue * 255) truncates toward zero; .astype(uint8) wraps.
    let shift = (hue * 255.0) as i32 as u8;
    avx2_or!(hue_avx2(img, shift), hue_impl(img, shift))
}

fn hue_impl(img: &mut [u8], shift: u8) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        (*r, *g, *b) = hue_pixel(*r, *g, *b, shift);
    }
}

/// `hsv2rgb`'s third value besides `v` and `p` at hue byte `h`: `t` in the even sextants, `q`
/// in the odd ones (each sextant uses only one of them), as its multiplier of `v`:
/// `w = round(v * hsv_w_factor(h, us))`, the f64 product and C `round` of [`hsv_to_rgb_bytes`].
#[inline(always)]
fn hsv_w_factor(h: u8, us: u8) -> f64 {
    let (i, f) = sextant(h);
    let fs = saturation_unit(us);
    if i % 2 == 1 {
        1.0 - (fs * f) as f64
    } else {
        1.0 - fs as f64 * (1.0 - f as f64)
    }
}

/// Fractional bits of [`HueTables::w`]'s fixed-point factors.
const W_BITS: u32 = 23;
/// The factor's bits in a [`HueTables::w`] entry (0..=23: the factor reaches `2^23` at 1.0).
const W_MASK: u32 = (1 << (W_BITS + 1)) - 1;
/// [`HueTables::w`]: bits of the output selectors (R, G, B each take `v`, `w` or else `p`).
const SEL_RV: u32 = 24;
const SEL_RW: u32 = 25;
const SEL_GV: u32 = 26;
const SEL_GW: u32 = 27;
const SEL_BV: u32 = 28;
const SEL_BW: u32 = 29;

/// [`HueTables::w`]'s entry for hue byte `h` and saturation byte `us`: [`hsv_w_factor`] in
/// fixed point (`round(factor * 2^23)`, bits 0..=23) and the sextant's output selectors.
/// `(v * k + 2^22) >> 23` is then exactly `round(v * factor)` for every `v` (the fixed-point
/// error stays far from the rounding boundaries of these factors; a test checks all `h`, `us`,
/// `v`), so [`hue_avx2`] computes `q`/`t` in 32-bit integers instead of f64.
fn w_entry(h: u8, us: u8) -> u32 {
    let k = (hsv_w_factor(h, us) * (1u32 << W_BITS) as f64).round() as u32;
    // hsv2rgb's table by sextant: R = v q p p t v, G = t v v q p p, B = p p t v v q.
    let sel = |on: bool, bit: u32| (on as u32) << bit;
    let i = sextant(h).0;
    k | sel(i == 0 || i == 5, SEL_RV)
        | sel(i == 1 || i == 4, SEL_RW)
        | sel(i == 1 || i == 2, SEL_GV)
        | sel(i == 0 || i == 3, SEL_GW)
        | sel(i == 3 || i == 4, SEL_BV)
        | sel(i == 2 || i == 5, SEL_BW)
}

/// The parts of [`hue_pixel`] that depend on at most two bytes, tabulated by the scalar
/// functions themselves (so the same values), for [`hue_avx2`]'s gathers.
struct HueTables {
    /// [`hue_byte`] at `branch << 16 | mx << 8 | my` (+3 bytes: gathers read 4).
    hue: Vec<u8>,
    /// [`saturation_byte`] at `cr << 8 | maxc` (+3).
    sat: Vec<u8>,
    /// [`hsv_p`] at `us << 8 | v` (+3).
    p: Vec<u8>,
    /// [`w_entry`] at `us << 8 | h`.
    w: Vec<u32>,
}

fn hue_tables() -> &'static HueTables {
    static T: std::sync::OnceLock<HueTables> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let pairs = || (0..=255u8).flat_map(|a| (0..=255u8).map(move |b| (a, b)));
        let two = |f: &dyn Fn(u8, u8) -> u8| -> Vec<u8> {
            let mut v: Vec<u8> = pairs().map(|(a, b)| f(a, b)).collect();
            v.extend([0; 3]);
            v
        };
        let mut hue = Vec::with_capacity(3 << 16);
        for branch in 0..3u8 {
            let t = two(&|mx, my| hue_byte(branch, mx, my));
            hue.extend_from_slice(&t[..1 << 16]);
        }
        hue.extend([0; 3]);
        HueTables {
            hue,
            sat: two(&saturation_byte),
            p: two(&hsv_p),
            w: pairs().map(|(us, h)| w_entry(h, us)).collect(),
        }
    })
}

/// [`hue_pixel`] on 8 pixels per step with AVX2, in 32-bit integers only: the hue and
/// saturation bytes and `p` come from [`HueTables`] by `vpgatherdd`, `q`/`t` (whichever the
/// sextant uses) is `v` times [`HueTables::w`]'s fixed-point factor, and the same entry's
/// selector bits pick each output among `v`, `p` and that value. 4 gathers per 8 pixels and
/// no division or float; every RGB value is checked by the tests.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hue_avx2(img: &mut [u8], shift: u8) {
    use std::arch::x86_64::*;
    let t = hue_tables();
    let (r, g, b) = planes(img);
    let n = r.len();
    let body = n / 8 * 8;
    let byte = _mm256_set1_epi32(0xFF);
    let (zero, one, two) = (_mm256_setzero_si256(), _mm256_set1_epi32(1), _mm256_set1_epi32(2));
    let sh = _mm256_set1_epi32(shift as i32);
    let kmask = _mm256_set1_epi32(W_MASK as i32);
    let half = _mm256_set1_epi32(1 << (W_BITS - 1));
    let halves = |v: __m256i| (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    for j in (0..body).step_by(8) {
        // SAFETY: `j + 8 <= n` for each plane; gathers index tables of the sizes built above
        // (indices are bytes combined as documented on `HueTables`, +3 bytes of padding).
        unsafe {
            let ld = |p: &[u8]| _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.as_ptr().add(j).cast()));
            let (rv, gv, bv) = (ld(r), ld(g), ld(b));
            let maxc = _mm256_max_epi32(rv, _mm256_max_epi32(gv, bv));
            let minc = _mm256_min_epi32(rv, _mm256_min_epi32(gv, bv));
            let rmax = _mm256_cmpeq_epi32(rv, maxc);
            let gmax = _mm256_andnot_si256(rmax, _mm256_cmpeq_epi32(gv, maxc));
            // Blue's branch by default, then green's, then red's (the first max wins).
            let x = _mm256_blendv_epi8(_mm256_blendv_epi8(gv, rv, gmax), bv, rmax);
            let y = _mm256_blendv_epi8(_mm256_blendv_epi8(rv, bv, gmax), gv, rmax);
            let branch = _mm256_blendv_epi8(_mm256_blendv_epi8(two, one, gmax), zero, rmax);
            let hi = _mm256_or_si256(
                _mm256_slli_epi32::<16>(branch),
                _mm256_or_si256(_mm256_slli_epi32::<8>(_mm256_sub_epi32(maxc, x)), _mm256_sub_epi32(maxc, y)),
            );
            let uh = _mm256_and_si256(_mm256_i32gather_epi32::<1>(t.hue.as_ptr().cast(), hi), byte);
            let si = _mm256_or_si256(_mm256_slli_epi32::<8>(_mm256_sub_epi32(maxc, minc)), maxc);
            let us = _mm256_and_si256(_mm256_i32gather_epi32::<1>(t.sat.as_ptr().cast(), si), byte);
            let h = _mm256_and_si256(_mm256_add_epi32(uh, sh), byte);
            let us8 = _mm256_slli_epi32::<8>(us);
            let e = _mm256_i32gather_epi32::<4>(t.w.as_ptr().cast(), _mm256_or_si256(us8, h));
            let p =
                _mm256_and_si256(_mm256_i32gather_epi32::<1>(t.p.as_ptr().cast(), _mm256_or_si256(us8, maxc)), byte);
            let v = maxc;
            let w = _mm256_srli_epi32::<{ W_BITS as i32 }>(_mm256_add_epi32(
                _mm256_mullo_epi32(v, _mm256_and_si256(e, kmask)),
                half,
            ));
            // Each selector bit moved to the sign bit, which `blendv_ps` tests per lane.
            let pick = |acc: __m256i, val: __m256i, sel: __m256i| {
                _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(acc),
                    _mm256_castsi256_ps(val),
                    _mm256_castsi256_ps(sel),
                ))
            };
            let out = |vbit: __m256i, wbit: __m256i| pick(pick(p, v, vbit), w, wbit);
            let ro =
                out(_mm256_slli_epi32::<{ 31 - SEL_RV as i32 }>(e), _mm256_slli_epi32::<{ 31 - SEL_RW as i32 }>(e));
            let go =
                out(_mm256_slli_epi32::<{ 31 - SEL_GV as i32 }>(e), _mm256_slli_epi32::<{ 31 - SEL_GW as i32 }>(e));
            let bo =
                out(_mm256_slli_epi32::<{ 31 - SEL_BV as i32 }>(e), _mm256_slli_epi32::<{ 31 - SEL_BW as i32 }>(e));
            let st = |dst: &mut [u8], x: __m256i| {
                let (lo, hi) = halves(x);
                let w = _mm_packus_epi32(lo, hi);
                _mm_storel_epi64(dst.as_mut_ptr().add(j).cast(), _mm_packus_epi16(w, w));
            };
            st(r, ro);
            st(g, go);
            st(b, bo);
        }
    }
    for ((r, g), b) in r[body..].iter_mut().zip(&mut g[body..]).zip(&mut b[body..]) {
        (*r, *g, *b) = hue_pixel(*r, *g, *b, shift);
    }
}

avx2_dispatch! {
    /// torchvision `Grayscale(3)` / `RandomGrayscale` on PIL: `convert("L")` in every band.
    pub fn grayscale => grayscale_impl(img: &mut [u8])
}

#[inline(always)]
fn grayscale_impl(img: &mut [u8]) {
    let (r, g, b) = planes(img);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let l = luma(*r, *g, *b);
        (*r, *g, *b) = (l, l, l);
    }
}

avx2_dispatch! {
    /// `ImageOps.solarize(img, threshold)`: values `>= threshold` are inverted.
    pub fn solarize => solarize_impl(img: &mut [u8], threshold: u8)
}

#[inline(always)]
fn solarize_impl(img: &mut [u8], threshold: u8) {
    for v in img.iter_mut() {
        // `255 - v` is `v ^ 0xFF`: a mask instead of a branch, so the loop vectorizes.
        *v ^= ((*v >= threshold) as u8).wrapping_neg();
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
        lookup(plane, o, &lut);
    }
}

/// `out[j] = lut[img[j]]`: with AVX-512 VBMI, 64 values per step as byte-table lookups
/// ([`lookup_vbmi`]); else with AVX2, 8 values per `vpgatherdd` from the (L1-resident) table.
fn lookup(img: &[u8], out: &mut [f32], lut: &[f32; 256]) {
    #[cfg(target_arch = "x86_64")]
    let done = if has_vbmi() {
        // SAFETY: the CPU has AVX-512 F, BW and VBMI (checked just above).
        unsafe { lookup_vbmi(img, out, lut) }
    } else {
        avx2_or!(lookup_avx2(img, out, lut), 0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = 0;
    for (o, &v) in out[done..].iter_mut().zip(&img[done..]) {
        *o = lut[v as usize];
    }
}

/// The whole blocks of 8 of [`lookup`]; returns how many values it wrote.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lookup_avx2(img: &[u8], out: &mut [f32], lut: &[f32; 256]) -> usize {
    use std::arch::x86_64::*;
    let body = img.len().min(out.len()) / 8 * 8;
    for j in (0..body).step_by(8) {
        // SAFETY: `j + 8 <= body` for both slices; the indices are bytes, inside the table.
        unsafe {
            let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(img.as_ptr().add(j).cast()));
            _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_i32gather_ps::<4>(lut.as_ptr(), idx));
        }
    }
    body
}

/// The whole blocks of 64 of [`lookup`]; returns how many values it wrote. The table is
/// split into its four byte planes (byte `b` of every f32, 256 bytes each, four registers
/// each); per 64 values, each plane is looked up by [`table_lookup`] (two `vpermi2b` and a
/// select on the index's top bit), and the four planes' bytes are interleaved back into
/// f32s by two rounds of unpacks. Unpacks work within 128-bit lanes: register `m`, lane `q`
/// of the result holds the values at positions `16q + 4m .. +4`, so the indices are first
/// permuted (`vpermb`) to put value `16m + 4q + i` there, and each register stores 16
/// consecutive values. No gathers: ~27 instructions per 64 values.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn lookup_vbmi(img: &[u8], out: &mut [f32], lut: &[f32; 256]) -> usize {
    use std::arch::x86_64::*;
    let body = img.len().min(out.len()) / 64 * 64;
    let planes: [[u8; 256]; 4] = std::array::from_fn(|b| std::array::from_fn(|v| lut[v].to_le_bytes()[b]));
    // Position 16q + 4m + i takes value 16m + 4q + i (swapping m and q: its own inverse).
    let order: [u8; 64] = std::array::from_fn(|j| (16 * ((j / 4) % 4) + 4 * (j / 16) + j % 4) as u8);
    let t = planes.each_ref().map(|p| table_registers(p));
    // SAFETY: the load of `order` reads its 64 bytes; each step reads 64 bytes at `j` and
    // writes 64 f32 at `j`, with `j + 64 <= body` for both slices.
    unsafe {
        let order = _mm512_loadu_si512(order.as_ptr().cast());
        for j in (0..body).step_by(64) {
            let idx = _mm512_permutexvar_epi8(order, _mm512_loadu_si512(img.as_ptr().add(j).cast()));
            let high = _mm512_movepi8_mask(idx);
            let [b0, b1, b2, b3] = t.each_ref().map(|t| table_lookup(t, idx, high));
            let (lo01, hi01) = (_mm512_unpacklo_epi8(b0, b1), _mm512_unpackhi_epi8(b0, b1));
            let (lo23, hi23) = (_mm512_unpacklo_epi8(b2, b3), _mm512_unpackhi_epi8(b2, b3));
            let o = out.as_mut_ptr().add(j).cast::<__m512i>();
            _mm512_storeu_si512(o, _mm512_unpacklo_epi16(lo01, lo23));
            _mm512_storeu_si512(o.add(1), _mm512_unpackhi_epi16(lo01, lo23));
            _mm512_storeu_si512(o.add(2), _mm512_unpacklo_epi16(hi01, hi23));
            _mm512_storeu_si512(o.add(3), _mm512_unpackhi_epi16(hi01, hi23));
        }
    }
    body
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
    fn hue_pixel_equals_the_transcription_on_every_color() {
        // All 2^24 RGB values, the shift varying with the pixel so every shift is seen on
        // every hue region; plus the shifts the recipe can draw on a coarser grid.
        for r in 0..=255u8 {
            for g in 0..=255u8 {
                for b in 0..=255u8 {
                    let shift = (r as u32 * 7 + g as u32 * 13 + b as u32 * 29) as u8;
                    let (h, s, v) = rgb_to_hsv(r, g, b);
                    let want = hsv_to_rgb(h.wrapping_add(shift), s, v);
                    assert_eq!(hue_pixel(r, g, b, shift), want, "{r} {g} {b} shift {shift}");
                }
            }
        }
        let levels: Vec<u8> = (0..=255u8).step_by(3).chain([1, 254, 255]).collect();
        for shift in [0u8, 1, 12, 127, 128, 243, 255] {
            for &r in &levels {
                for &g in &levels {
                    for &b in &levels {
                        let (h, s, v) = rgb_to_hsv(r, g, b);
                        assert_eq!(hue_pixel(r, g, b, shift), hsv_to_rgb(h.wrapping_add(shift), s, v));
                    }
                }
            }
        }
    }

    #[test]
    fn fixed_point_w_and_selectors_equal_hsv2rgb_for_every_h_s_v() {
        // `hue_avx2`'s integer form of hsv2rgb against `hsv_to_rgb_bytes` on every (h, s, v),
        // so every shift is covered, not only the pixels a test image reaches.
        for h in 0..=255u8 {
            for us in 0..=255u8 {
                let e = w_entry(h, us);
                let k = (e & W_MASK) as u64;
                let bit = |b: u32| e >> b & 1 == 1;
                for v in 0..=255u8 {
                    let w = ((v as u64 * k + (1 << (W_BITS - 1))) >> W_BITS) as u8;
                    let p = hsv_p(us, v);
                    let ch = |vb: u32, wb: u32| {
                        if bit(wb) {
                            w
                        } else if bit(vb) {
                            v
                        } else {
                            p
                        }
                    };
                    let got = (ch(SEL_RV, SEL_RW), ch(SEL_GV, SEL_GW), ch(SEL_BV, SEL_BW));
                    assert_eq!(got, hsv_to_rgb_bytes(h, us, v), "h {h} s {us} v {v}");
                }
            }
        }
    }

    #[test]
    fn hue_on_an_image_equals_per_pixel() {
        // The dispatched (AVX2) loop against the scalar function, on a CHW image holding every
        // RGB value (plus 3 pixels, so the loop has a remainder).
        let hw = (1 << 24) + 3;
        let mut img = vec![0u8; 3 * hw];
        for j in 0..hw {
            (img[j], img[hw + j], img[2 * hw + j]) = ((j >> 16) as u8, (j >> 8) as u8, j as u8);
        }
        for hue_f in [-0.5, -0.05, 0.05, 0.5] {
            let mut got = img.clone();
            hue(&mut got, hue_f);
            let shift = (hue_f * 255.0) as i32 as u8;
            for j in 0..hw {
                let want = hue_pixel(img[j], img[hw + j], img[2 * hw + j], shift);
                assert_eq!((got[j], got[hw + j], got[2 * hw + j]), want, "pixel {j} hue {hue_f}");
            }
        }
    }

    #[test]
    fn dispatched_blends_equal_the_scalar_expression_on_every_value() {
        // The AVX2 builds of brightness/contrast/saturation against `blend` per value, for
        // interpolating and extrapolating factors (the clip), on an image holding every value
        // in every band.
        let hw = 256 * 3 + 5;
        let img: Vec<u8> = (0..3 * hw).map(|j| (j * 7 + j / 256) as u8).collect();
        for f in [0.0f32, 0.2, 0.5, 0.99, 1.0, 1.01, 1.37, 1.8, 2.5] {
            let mut got = img.clone();
            brightness(&mut got, f);
            assert!(got.iter().zip(&img).all(|(&g, &v)| g == blend(0, v, f)), "brightness {f}");
            let (r, gb) = img.split_at(hw);
            let (g, b) = gb.split_at(hw);
            let sum: u64 = (0..hw).map(|j| luma(r[j], g[j], b[j]) as u64).sum();
            let mean = (sum as f64 / hw as f64 + 0.5) as u8;
            let mut got = img.clone();
            contrast(&mut got, f);
            assert!(got.iter().zip(&img).all(|(&g, &v)| g == blend(mean, v, f)), "contrast {f}");
            let mut got = img.clone();
            saturation(&mut got, f);
            for j in 0..3 * hw {
                let p = j % hw;
                assert_eq!(got[j], blend(luma(r[p], g[p], b[p]), img[j], f), "saturation {f} value {j}");
            }
        }
    }

    #[test]
    fn gathered_lookup_equals_indexing() {
        // Every byte value at every position of a 64-value block, and lengths that leave
        // remainders for the scalar tail; a table whose four bytes all vary.
        let lut: [f32; 256] = std::array::from_fn(|v| (v as f32 / 255.0 - 0.485) / 0.229);
        for len in [7, 64, 256 * 64 + 7, 3 * 256 + 63] {
            let img: Vec<u8> = (0..len).map(|j| (j * 101 + j / 256) as u8).collect();
            let mut out = vec![f32::NAN; img.len()];
            lookup(&img, &mut out, &lut);
            for (j, (&o, &v)) in out.iter().zip(&img).enumerate() {
                assert_eq!(o.to_bits(), lut[v as usize].to_bits(), "value {j} of {len}");
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
    fn fixed_blends_are_the_per_value_blend_on_every_value_and_length() {
        // Lengths around the 64-byte steps and the table path's 1024-byte threshold; every
        // value, in a shuffled order, at factors that clip at both ends.
        for len in [5, 1023, 1024, 1024 + 63, 3 * 1000] {
            let src: Vec<u8> = (0..len).map(|i| ((i * 151 + 7) % 256) as u8).collect();
            for (a, alpha) in [(0u8, 1.7f32), (0, 0.3), (97, 2.9), (200, -0.4), (128, 1.0)] {
                let mut img = src.clone();
                blend_all(&mut img, a, alpha);
                let want: Vec<u8> = src.iter().map(|&v| blend(a, v, alpha)).collect();
                assert_eq!(img, want, "len {len}, a {a}, alpha {alpha}");
            }
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
