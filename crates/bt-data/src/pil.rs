//! Pillow's resampling and Gaussian blur on 8-bit planes, reproduced bit-exactly.
//!
//! torchvision's PIL path (the official Barlow Twins recipe) runs `RandomResizedCrop` as
//! `img.crop(box).resize(size, BICUBIC)` and its blur as `ImageFilter.GaussianBlur(sigma)`;
//! both are integer arithmetic in Pillow's C code (`libImaging/Resample.c`, `BoxBlur.c`), so
//! they can be matched exactly rather than approximately:
//!
//! - [`resize`]: Pillow's two-pass separable convolution. Per output pixel the filter
//!   (triangle for BILINEAR, Keys cubic `a = -0.5` for BICUBIC) is widened by the downscale
//!   factor (antialiasing), evaluated in f64, normalized, then rounded to fixed point with
//!   22 fractional bits; each pass accumulates in i32 and clips to u8, so the intermediate image
//!   is u8 exactly as in Pillow.
//! - [`gaussian_blur`]: Pillow's "extended box" approximation (Gwosdek et al. 2011): three
//!   passes of a box of fractional radius per axis, in 24-bit fixed point, horizontal first.
//!
//! `tests/pil_fixtures.rs` compares both with Pillow 13 outputs from
//! `scripts/fixtures/pil_ops.py`: **bit-exact** (max difference 0).
//!
//! Images are CHW planar u8 (see [`crate::Image`]); every function works plane by plane,
//! which is what Pillow does band by band.

/// A resampling filter of Pillow's `Image.resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.Resampling.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.Resampling.BICUBIC` (Keys, `a = -0.5`, support 2).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    #[inline]
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Pillow's `PRECISION_BITS` (32 - 8 - 2): coefficients are `round(w * 2^22)`.
const PRECISION_BITS: u32 = 22;

/// One axis of a resize: per output pixel the first input index and the fixed-point taps.
#[derive(Debug, Clone)]
struct Coeffs {
    ksize: usize,
    /// `(first input index, number of taps)` per output pixel.
    bounds: Vec<(usize, usize)>,
    /// `ksize` taps per output pixel (zero-padded).
    k: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` of `Resample.c`. `in0`/`in1` are the box
/// edges as Pillow stores them (C `float`).
fn coeffs(in_size: usize, in0: f32, in1: f32, out_size: usize, filter: Filter) -> Coeffs {
    // `(double)(in1 - in0)`: the difference is taken in float, as in C.
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero; negatives are clamped to 0 right after anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            *wx = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..xmax {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { ksize, bounds, k }
}

#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A sub-rectangle of a source image: the image Pillow sees (after `img.crop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First column.
    pub left: usize,
    /// First row.
    pub top: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// Pillow `region_image.resize((out_w, out_h), filter, box=bx)` where `region_image` is
/// `region` of the CHW u8 image `src` (`3 x src_h x src_w`) and `bx = (x0, y0, x1, y1)` is in
/// region coordinates; the result (optionally mirrored left-right, as a following
/// `ImageOps.mirror`) is written to `out` (`3 x out_h x out_w`).
///
/// torchvision's `resized_crop` on PIL is `region = crop, bx = (0, 0, w, h)`.
///
/// # Panics
/// When the sizes do not match or the region is outside the image.
// Explicit geometry, as Pillow's own signature (no image struct to hide it in).
#[allow(clippy::too_many_arguments)]
pub fn resize(
    src: &[u8],
    src_w: usize,
    src_h: usize,
    region: Region,
    bx: [f32; 4],
    filter: Filter,
    flip: bool,
    out: &mut [u8],
    out_w: usize,
    out_h: usize,
) {
    let args = (src, src_w, src_h, region, bx, filter, flip);
    avx2_or!(resize_avx2(args, out, out_w, out_h), resize_impl(args, out, out_w, out_h, false))
}

/// The arguments of [`resize`] before the output.
type ResizeArgs<'a> = (&'a [u8], usize, usize, Region, [f32; 4], Filter, bool);

/// [`resize_impl`] compiled for AVX2: integer arithmetic only, so the same bits as the
/// baseline build, with the inner loops twice as wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resize_avx2(args: ResizeArgs<'_>, out: &mut [u8], out_w: usize, out_h: usize) {
    resize_impl(args, out, out_w, out_h, true)
}

#[inline(always)]
// `avx2`: the caller is `resize_avx2` (the CPU has it), so the explicit AVX2 kernel may run.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn resize_impl(args: ResizeArgs<'_>, out: &mut [u8], out_w: usize, out_h: usize, avx2: bool) {
    let (src, src_w, src_h, region, bx, filter, flip) = args;
    assert_eq!(src.len(), 3 * src_w * src_h, "pil::resize: source must be 3 x {src_h} x {src_w}");
    assert_eq!(out.len(), 3 * out_w * out_h, "pil::resize: out must be 3 x {out_h} x {out_w}");
    assert!(
        region.width > 0
            && region.height > 0
            && region.left + region.width <= src_w
            && region.top + region.height <= src_h,
        "pil::resize: region {region:?} outside {src_w}x{src_h}"
    );
    let ch = coeffs(region.width, bx[0], bx[2], out_w, filter);
    let cv = coeffs(region.height, bx[1], bx[3], out_h, filter);
    let (rw, rh) = (region.width as i64, region.height as i64);
    // Pillow >= 11 runs the vertical pass first when the height shrinks by more than twice
    // what the width does (`ImagingResampleInner`); the order changes the u8 intermediate.
    let vertical_first = rh - out_h as i64 > 0 && rh - out_h as i64 > (rw - out_w as i64) * 2;
    // The buffers of the previous resize on this thread (allocating and zeroing them per
    // view, about 100 KB at 224 px, was ~1.5% of the ImageNet pipeline with its page faults).
    // Taken out and put back rather than borrowed in a closure: a closure would not be
    // compiled with `resize_avx2`'s AVX2.
    let (mut tmp, mut hs) = SCRATCH.take();
    hs.fit(region.width, out_w);
    if vertical_first {
        tmp.resize(region.width * out_h, 0);
        for c in 0..3 {
            let plane = &src[c * src_w * src_h..(c + 1) * src_w * src_h];
            let cols = Columns { plane, stride: src_w, x0: region.left, y0: region.top as isize, width: region.width };
            for (yy, trow) in tmp.chunks_exact_mut(region.width).enumerate() {
                vpass_any(avx2, &cv, &mut hs.acc, cols, yy, trow);
            }
            let oplane = &mut out[c * out_w * out_h..(c + 1) * out_w * out_h];
            hpass_transposed(avx2, &ch, &mut hs, &tmp, region.width, out_h, flip, oplane, out_w);
        }
    } else {
        // Only the rows the vertical pass reads are resampled horizontally (Pillow's ybox).
        let y_first = cv.bounds.first().map_or(0, |b| b.0);
        let y_last = cv.bounds.last().map_or(0, |b| b.0 + b.1);
        let rows = y_last.saturating_sub(y_first);
        tmp.resize(rows * out_w, 0);
        for c in 0..3 {
            let plane = &src[c * src_w * src_h..(c + 1) * src_w * src_h];
            let block = &plane[(region.top + y_first) * src_w + region.left..];
            // Mirrored here already: the vertical pass treats every column alike.
            hpass_transposed(avx2, &ch, &mut hs, block, src_w, rows, flip, &mut tmp, out_w);
            let oplane = &mut out[c * out_w * out_h..(c + 1) * out_w * out_h];
            // `tmp` row 0 is region row `y_first`.
            let cols = Columns { plane: &tmp, stride: out_w, x0: 0, y0: -(y_first as isize), width: out_w };
            for (yy, orow) in oplane.chunks_exact_mut(out_w).enumerate() {
                vpass_any(avx2, &cv, &mut hs.acc, cols, yy, orow);
            }
        }
    }
    SCRATCH.set((tmp, hs));
}

thread_local! {
    /// [`resize`]'s intermediate image and [`HScratch`], reused from call to call. Every byte
    /// a pass reads was written earlier in the same call, except the lanes of a last, partial
    /// strip, which are never copied out (see [`hpass_transposed`]).
    static SCRATCH: std::cell::RefCell<(Vec<u8>, HScratch)> = std::cell::RefCell::default();
}

/// Input rows per strip of [`hpass_transposed`]: 4 AVX2 registers of i32 accumulators, and a
/// transposed strip (`width x STRIP` bytes, 10 KB at 300 columns) that stays in L1 while every
/// output pixel reads its window of it. (Transposing the whole block at once and running
/// [`vpass`] down it was measured ~1.3x slower: accumulators through memory, block in L2.)
const STRIP: usize = 32;

/// Scratch of [`hpass_transposed`] (and of [`vpass`]: `acc`), sized by [`HScratch::fit`] for
/// each [`resize`].
#[derive(Default)]
struct HScratch {
    /// Columns of the input block (the region's width).
    width: usize,
    /// One strip of the input block, transposed: `width x STRIP`.
    t: Vec<u8>,
    /// The strip's output, transposed: `out_w x STRIP`.
    ht: Vec<u8>,
    /// i32 accumulators of [`vpass`], as long as the longest row it runs over.
    acc: Vec<i32>,
}

impl HScratch {
    /// Sizes the buffers for a block `width` columns wide and `out_w` output columns (their
    /// old contents stay: every pass writes what it reads).
    fn fit(&mut self, width: usize, out_w: usize) {
        self.width = width;
        self.t.resize(width * STRIP, 0);
        self.ht.resize(out_w * STRIP, 0);
        self.acc.resize(width.max(out_w), 0);
    }
}

/// Pillow's horizontal pass (`ImagingResampleHorizontal_8bpc`) of the `rows x width` block
/// `inp` (rows `stride` bytes apart) into `out` (`rows x out_w`, rows `out_stride` apart),
/// mirrored left-right when `flip`, run as a vertical pass of the transposed block. Along a
/// row, each output pixel's taps start at a different input index, so pixels cannot share
/// vector lanes (the former kernel broadcast every input pixel of each 8-output window times
/// a row of 8 taps: ~14 uops per output at 300 -> 224 bicubic); down a transposed strip all
/// `STRIP` input rows take the same tap, so each tap is 4 contiguous multiply-adds per output
/// pixel for 32 rows. The SSE2 16 x 16 transposes in and out cost a few instructions per byte.
/// Same i32 products, sums (order-free) and clip8, so the same bits; 1.1x (strong upscales) to
/// 2.4x (large downscales) faster than the per-row kernel, measured on every shape tried, so
/// there is no per-call choice.
///
/// A last, partial strip computes all `STRIP` lanes: the lanes past `rows` hold stale bytes
/// of the scratch (u8, so the same bounded sums as real pixels) and are not copied out.
// Geometry spelled out, as the pass itself needs it.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn hpass_transposed(
    avx2: bool,
    ch: &Coeffs,
    hs: &mut HScratch,
    inp: &[u8],
    stride: usize,
    rows: usize,
    flip: bool,
    out: &mut [u8],
    out_stride: usize,
) {
    let out_w = ch.bounds.len();
    for r0 in (0..rows).step_by(STRIP) {
        let n = (rows - r0).min(STRIP);
        transpose_strided(&inp[r0 * stride..], stride, &mut hs.t, STRIP, n, hs.width);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: `avx2` is only true when the CPU has AVX2 (on the `resize_avx2` path, and in
            // tests after the check).
            unsafe { strip_avx2(ch, &hs.t, flip, &mut hs.ht) };
            transpose_strided(&hs.ht, STRIP, &mut out[r0 * out_stride..], out_stride, out_w, n);
            continue;
        }
        // Portable build: the same loops (correct everywhere; speed matters on AVX2 machines).
        for xx in 0..out_w {
            let (xmin, taps) = ch.bounds[xx];
            let mut acc = [1i32 << (PRECISION_BITS - 1); STRIP];
            for (j, &kk) in ch.k[xx * ch.ksize..][..taps].iter().enumerate() {
                let col = &hs.t[(xmin + j) * STRIP..][..STRIP];
                for (a, &p) in acc.iter_mut().zip(col) {
                    *a += p as i32 * kk;
                }
            }
            // Mirroring is which transposed row the output column lands in.
            let d = if flip { out_w - 1 - xx } else { xx };
            for (o, &a) in hs.ht[d * STRIP..][..STRIP].iter_mut().zip(&acc) {
                *o = clip8(a);
            }
        }
        transpose_strided(&hs.ht, STRIP, &mut out[r0 * out_stride..], out_stride, out_w, n);
    }
}

/// The taps of [`hpass_transposed`] over one transposed strip (`t`: `width x STRIP`) into `ht`
/// (`out_w x STRIP`), with intrinsics: left to itself LLVM unrolls the 32 lanes and vectorizes
/// the loop over the taps instead (gathers), so the lanes are spelled out as four registers of
/// i32 accumulators that stay in registers across the taps. The same products, sums and clip8.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn strip_avx2(ch: &Coeffs, t: &[u8], flip: bool, ht: &mut [u8]) {
    use std::arch::x86_64::*;
    const _: () = assert!(STRIP == 32, "strip_avx2 holds 4 x 8 lanes");
    let out_w = ch.bounds.len();
    assert!(ht.len() >= out_w * STRIP, "pil::strip_avx2: ht too small");
    for xx in 0..out_w {
        let (xmin, taps) = ch.bounds[xx];
        let k = &ch.k[xx * ch.ksize..][..taps];
        // One bounds check for the whole window, none per tap.
        let win = &t[xmin * STRIP..(xmin + taps) * STRIP];
        let mut acc = [_mm256_set1_epi32(1i32 << (PRECISION_BITS - 1)); 4];
        for (col, &kk) in win.chunks_exact(STRIP).zip(k) {
            let kv = _mm256_set1_epi32(kk);
            for (i, a) in acc.iter_mut().enumerate() {
                // SAFETY: `col` is STRIP = 32 bytes; 8 of them from offset 8i.
                let p = unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(col.as_ptr().add(8 * i).cast())) };
                *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(p, kv));
            }
        }
        let d = if flip { out_w - 1 - xx } else { xx };
        // SAFETY: row `d < out_w` of `ht` is STRIP = 32 bytes (length checked above).
        unsafe { _mm256_storeu_si256(ht.as_mut_ptr().add(d * STRIP).cast(), clip8_x32(acc)) };
    }
}

/// [`clip8`] of 32 i32 accumulators (4 registers, lanes in order) as 32 bytes in order:
/// arithmetic shift, then saturating packs (i32 -> i16 -> u8) clamp to 0..=255 exactly as
/// `clamp(0, 255)` does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn clip8_x32(acc: [std::arch::x86_64::__m256i; 4]) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // `packs`/`packus` work within 128-bit halves: 4-byte group g of the packed bytes holds
    // lanes 4(g / 4)..+4 of register g % 4; this permutation puts them back in lane order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let v = acc.map(|a| _mm256_srai_epi32::<{ PRECISION_BITS as i32 }>(a));
    let b8 = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
    _mm256_permutevar8x32_epi32(b8, order)
}

/// The input of a vertical pass: `width` columns from `x0` of `plane` (rows `stride` bytes
/// apart), where the pass's input row `r` is `plane` row `r + y0` (`y0` may be negative: the
/// horizontal-first intermediate starts at row `y_first`).
#[derive(Clone, Copy)]
struct Columns<'a> {
    plane: &'a [u8],
    stride: usize,
    x0: usize,
    y0: isize,
    width: usize,
}

/// [`vpass`], with [`vpass_avx2`] for the whole blocks of 32 columns when `avx2` (true only
/// on CPUs that have it).
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn vpass_any(avx2: bool, cv: &Coeffs, acc: &mut [i32], src: Columns<'_>, yy: usize, out_row: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is only true when the CPU has AVX2 (see `hpass_transposed`).
        let done = unsafe { vpass_avx2(cv, src, yy, out_row) };
        if done < src.width {
            let rest = Columns { x0: src.x0 + done, width: src.width - done, ..src };
            vpass(cv, acc, rest, yy, &mut out_row[done..]);
        }
        return;
    }
    vpass(cv, acc, src, yy, out_row);
}

/// [`vpass`] over the whole blocks of 32 columns (returns how many columns it wrote), with the
/// 32 accumulators in registers across all taps and clip8 on the way out: [`vpass`]'s
/// tap-by-tap loop over whole rows loads and stores its accumulators at every tap. The same
/// products and sums, so the same bits.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vpass_avx2(cv: &Coeffs, src: Columns<'_>, yy: usize, out_row: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let (ymin, n) = cv.bounds[yy];
    let k = &cv.k[yy * cv.ksize..yy * cv.ksize + n];
    let Columns { plane, stride, x0, y0, width } = src;
    let body = width / 32 * 32;
    if n == 0 || body == 0 {
        return 0;
    }
    let first = ((ymin as isize) + y0) as usize;
    // The window's last row ends inside the plane, and the output row holds `body` bytes.
    assert!((first + n - 1) * stride + x0 + width <= plane.len() && body <= out_row.len(), "pil::vpass_avx2: window");
    // SAFETY: every load is 8 bytes at `base + y * stride + x + 8i` with `y < n`,
    // `x + 8i + 8 <= body <= width`: inside the plane (asserted above); the stores are 32
    // bytes at `x + 32 <= body <= out_row.len()`.
    unsafe {
        let base = plane.as_ptr().add(first * stride + x0);
        for x in (0..body).step_by(32) {
            let mut acc = [_mm256_set1_epi32(1i32 << (PRECISION_BITS - 1)); 4];
            for (y, &kk) in k.iter().enumerate() {
                let kv = _mm256_set1_epi32(kk);
                let p = base.add(y * stride + x);
                for (i, a) in acc.iter_mut().enumerate() {
                    let px = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8 * i).cast()));
                    *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(px, kv));
                }
            }
            _mm256_storeu_si256(out_row.as_mut_ptr().add(x).cast(), clip8_x32(acc));
        }
    }
    body
}

/// Vertical pass of output row `yy` over `src` (see [`Columns`]). Tap by tap over whole
/// rows (not pixel by pixel over taps) so the inner loop is contiguous and vectorizes; integer
/// sums do not depend on the order, so the result is Pillow's exactly. A function, not a
/// closure in [`resize_impl`]: closures are not compiled with the AVX2 of `resize_avx2`
/// (they stay separate SSE2 functions), inlined functions are.
#[inline(always)]
fn vpass(cv: &Coeffs, acc: &mut [i32], src: Columns<'_>, yy: usize, out_row: &mut [u8]) {
    let Columns { plane, stride, x0, y0, width } = src;
    let (ymin, n) = cv.bounds[yy];
    let k = &cv.k[yy * cv.ksize..yy * cv.ksize + n];
    let acc = &mut acc[..width];
    acc.fill(1i32 << (PRECISION_BITS - 1));
    for (y, &kk) in k.iter().enumerate() {
        let r = ((ymin + y) as isize + y0) as usize;
        let row = &plane[r * stride + x0..][..width];
        for (a, &p) in acc.iter_mut().zip(row) {
            *a += p as i32 * kk;
        }
    }
    for (o, &a) in out_row[..width].iter_mut().zip(acc.iter()) {
        *o = clip8(a);
    }
}

/// `_gaussian_blur_radius` of `BoxBlur.c`: the fractional box radius whose `passes`-fold
/// repetition has the variance of a Gaussian of `sigma` (C `float` arithmetic, with the
/// `sqrt`/`floor` in double as in the C source).
pub fn box_radius(sigma: f32, passes: u32) -> f32 {
    let sigma2 = sigma * sigma / passes as f32;
    let big_l = (12.0 * sigma2 as f64 + 1.0).sqrt() as f32;
    let l = ((big_l as f64 - 1.0) / 2.0).floor() as f32;
    let mut a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    l + a
}

/// `ImagingLineBoxBlur8`: one line, extended box of fractional radius, into `out`. The
/// transcription of the C source that [`box_rows`] (the one [`gaussian_blur`] runs) is tested
/// against.
#[cfg(test)]
// The loops mirror the C source index for index, which is what makes them auditable.
#[allow(clippy::needless_range_loop)]
fn box_line(inp: &[u8], out: &mut [u8], radius: usize, ww: u32, fw: u32) {
    let n = inp.len();
    let lastx = n - 1;
    let edge_a = (radius + 1).min(n);
    let edge_b = n.saturating_sub(radius + 1);
    let px = |i: usize| inp[i] as u32;
    // Pixels outside the line repeat the edge pixels.
    let mut acc: u32 = px(0) * (radius as u32 + 1);
    for x in 0..edge_a.saturating_sub(1) {
        acc = acc.wrapping_add(px(x));
    }
    acc = acc.wrapping_add(px(lastx).wrapping_mul((radius + 1 - edge_a) as u32));
    let save = |acc: u32, l: usize, r: usize| -> u8 {
        let bulk = acc.wrapping_mul(ww).wrapping_add((px(l) + px(r)).wrapping_mul(fw));
        (bulk.wrapping_add(1 << 23) >> 24) as u8
    };
    let mv = |acc: u32, sub: usize, add: usize| acc.wrapping_add(px(add)).wrapping_sub(px(sub));
    if edge_a <= edge_b {
        for x in 0..edge_a {
            acc = mv(acc, 0, x + radius);
            out[x] = save(acc, 0, x + radius + 1);
        }
        for x in edge_a..edge_b {
            acc = mv(acc, x - radius - 1, x + radius);
            out[x] = save(acc, x - radius - 1, x + radius + 1);
        }
        for x in edge_b..=lastx {
            acc = mv(acc, x - radius - 1, lastx);
            out[x] = save(acc, x - radius - 1, lastx);
        }
    } else {
        for x in 0..edge_b {
            acc = mv(acc, 0, x + radius);
            out[x] = save(acc, 0, x + radius + 1);
        }
        for x in edge_b..edge_a {
            acc = mv(acc, 0, lastx);
            out[x] = save(acc, 0, lastx);
        }
        for x in edge_a..=lastx {
            acc = mv(acc, x - radius - 1, lastx);
            out[x] = save(acc, x - radius - 1, lastx);
        }
    }
}

/// `ImagingHorizontalBoxBlur`'s fixed-point weights for a fractional radius.
fn box_weights(radius: f32) -> (usize, u32, u32) {
    let r = radius as usize;
    let ww = ((1u32 << 24) as f32 / (radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24) - (r as u32 * 2 + 1) * ww) / 2;
    (r, ww, fw)
}

avx2_dispatch! {
    /// `ImageFilter.GaussianBlur(radius=sigma)` on a CHW u8 image (`3 x h x w`), in place:
    /// Pillow's 3-pass extended box blur, all horizontal passes first, then all vertical ones.
    /// `sigma == 0` leaves the image unchanged (Pillow returns a copy).
    /// Compiled twice, the second time for AVX2 (integer arithmetic: the same bits).
    pub fn gaussian_blur => gaussian_blur_impl(img: &mut [u8], w: usize, h: usize, sigma: f32)
}

#[inline(always)]
fn gaussian_blur_impl(img: &mut [u8], w: usize, h: usize, sigma: f32) {
    assert_eq!(img.len(), 3 * w * h, "pil::gaussian_blur: image must be 3 x {h} x {w}");
    if sigma == 0.0 || w == 0 || h == 0 {
        return;
    }
    const PASSES: u32 = 3;
    let radius = box_radius(sigma, PASSES);
    if radius == 0.0 {
        return;
    }
    let (r, ww, fw) = box_weights(radius);
    let mut t = vec![0u8; w * h];
    let mut tmp = vec![0u8; w * h];
    let mut acc = vec![0u32; w.max(h)];
    for plane in img.chunks_exact_mut(w * h) {
        // Horizontal passes as column passes of the transposed plane: the same recurrence per
        // line, vectorized across lines. Three passes move the data to the other buffer, so
        // the buffers are chosen for the last pass to land in `plane` (no copies).
        transpose(plane, &mut t, h, w);
        three(&mut t, &mut tmp, w, h, (r, ww, fw), &mut acc);
        transpose(&tmp, &mut t, w, h);
        three(&mut t, plane, h, w, (r, ww, fw), &mut acc);
    }
}

/// Three box passes down the columns of `a` (`rows x cols`), ping-ponging with `b`; the result
/// ends in `b` (`a` is scratch). A function (inlined into the AVX2 build of `gaussian_blur`, so compiled
/// with AVX2), not a closure: closures are compiled without the caller's target features.
#[inline(always)]
fn three(a: &mut [u8], b: &mut [u8], rows: usize, cols: usize, wts: (usize, u32, u32), acc: &mut [u32]) {
    let (r, ww, fw) = wts;
    box_rows(a, b, cols, rows, r, ww, fw, &mut acc[..cols]);
    box_rows(b, a, cols, rows, r, ww, fw, &mut acc[..cols]);
    box_rows(a, b, cols, rows, r, ww, fw, &mut acc[..cols]);
}

/// `out` (`cols x rows`) = `inp` (`rows x cols`) transposed.
#[inline(always)]
fn transpose(inp: &[u8], out: &mut [u8], rows: usize, cols: usize) {
    transpose_strided(inp, cols, out, rows, rows, cols)
}

/// Row `c` of `out` (rows `out_stride` bytes apart) = column `c` of the `rows x cols` block of
/// `inp` whose rows are `in_stride` bytes apart: a sub-rectangle (a crop of a plane) in, or
/// out, without a copy.
#[inline(always)]
fn transpose_strided(inp: &[u8], in_stride: usize, out: &mut [u8], out_stride: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        cols <= in_stride && rows <= out_stride,
        "pil::transpose: rows of {cols} in a stride of {in_stride}, of {rows} in {out_stride}"
    );
    assert!(
        inp.len() >= (rows - 1) * in_stride + cols && out.len() >= (cols - 1) * out_stride + rows,
        "pil::transpose: buffers too small"
    );
    // 16 x 16 tiles: whole ones with SSE2 byte shuffles, the ragged edge value by value.
    const B: usize = 16;
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            #[cfg(target_arch = "x86_64")]
            if r0 + B <= rows && c0 + B <= cols {
                // SAFETY: the tile's 16 rows of 16 bytes are inside `inp` and its 16 columns
                // inside `out` (both checked above: the last row/column ends within the slice).
                unsafe {
                    transpose16(
                        inp.as_ptr().add(r0 * in_stride + c0),
                        in_stride,
                        out.as_mut_ptr().add(c0 * out_stride + r0),
                        out_stride,
                    )
                };
                continue;
            }
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * out_stride + r] = inp[r * in_stride + c];
                }
            }
        }
    }
}

/// One 16 x 16 byte tile transposed with SSE2 (part of x86-64, so no run-time check): rows
/// paired at 8-, 16-, 32- and 64-bit granularity, four unpack stages.
///
/// # Safety
/// `src + i * src_stride` and `dst + i * dst_stride` must be valid for 16 bytes, `i < 16`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose16(src: *const u8, src_stride: usize, dst: *mut u8, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees every row read and written here.
    unsafe {
        let r: [__m128i; 16] = std::array::from_fn(|i| _mm_loadu_si128(src.add(i * src_stride).cast()));
        // t[2k + h]: columns 8h..8h+8 of rows (2k, 2k+1), byte pairs.
        let mut t = [_mm_setzero_si128(); 16];
        for k in 0..8 {
            t[2 * k] = _mm_unpacklo_epi8(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm_unpackhi_epi8(r[2 * k], r[2 * k + 1]);
        }
        // u[4g + q]: columns 4q..4q+4 of rows 4g..4g+4, 4 bytes per column.
        let mut u = [_mm_setzero_si128(); 16];
        for g in 0..4 {
            for h in 0..2 {
                let (a, b) = (t[4 * g + h], t[4 * g + 2 + h]);
                u[4 * g + 2 * h] = _mm_unpacklo_epi16(a, b);
                u[4 * g + 2 * h + 1] = _mm_unpackhi_epi16(a, b);
            }
        }
        // v[8j + m]: columns 2m, 2m+1 of rows 8j..8j+8, 8 bytes per column.
        let mut v = [_mm_setzero_si128(); 16];
        for j in 0..2 {
            for q in 0..4 {
                let (a, b) = (u[8 * j + q], u[8 * j + 4 + q]);
                v[8 * j + 2 * q] = _mm_unpacklo_epi32(a, b);
                v[8 * j + 2 * q + 1] = _mm_unpackhi_epi32(a, b);
            }
        }
        for m in 0..8 {
            _mm_storeu_si128(dst.add(2 * m * dst_stride).cast(), _mm_unpacklo_epi64(v[m], v[8 + m]));
            _mm_storeu_si128(dst.add((2 * m + 1) * dst_stride).cast(), _mm_unpackhi_epi64(v[m], v[8 + m]));
        }
    }
}

/// `ImagingLineBoxBlur8`'s output value (`box_line`'s `save`): the window sum `acc` and the sum
/// `edges` of the two fractional edge pixels, weighted in 24-bit fixed point and rounded.
#[inline(always)]
fn box_value(acc: u32, edges: u32, ww: u32, fw: u32) -> u8 {
    (acc.wrapping_mul(ww).wrapping_add(edges.wrapping_mul(fw)).wrapping_add(1 << 23) >> 24) as u8
}

/// One output line of [`box_rows`]: `acc += add - sub`, then the fractional edge pixels
/// `l`, `r` weighted in. A function rather than a closure so that it is inlined into (and
/// compiled with the AVX2 of) the AVX2 build of `gaussian_blur`; closures stay SSE2.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn box_step(acc: &mut [u32], s: &[u8], ad: &[u8], lr: &[u8], rr: &[u8], ww: u32, fw: u32, o: &mut [u8]) {
    // Zipped iterators (no indexing): no bounds checks, so the loop vectorizes.
    for ((((a, o), &s), &ad), (&l, &r)) in acc.iter_mut().zip(o).zip(s).zip(ad).zip(lr.iter().zip(rr)) {
        let v = a.wrapping_add(ad as u32).wrapping_sub(s as u32);
        *a = v;
        *o = box_value(v, l as u32 + r as u32, ww, fw);
    }
}

/// [`box_line`] down the columns of an `h x w` plane, all columns at once: the same
/// recurrence with each "pixel" a whole row, so the inner loops run along contiguous rows
/// (vectorized) instead of gathering one column at a time. Same u32 arithmetic, same bits.
// Mirrors `box_line` index for index (see there), with the row width and scratch added.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn box_rows(inp: &[u8], out: &mut [u8], w: usize, h: usize, radius: usize, ww: u32, fw: u32, acc: &mut [u32]) {
    // Radius below 2 (every sigma below ~2.45: all of the official recipe's at 224 px): the window
    // sums in 16-bit lanes, when the CPU has AVX2.
    if radius <= 1
        && avx2_or!(
            {
                box_rows_window_avx2(inp, out, w, h, radius, ww, fw);
                true
            },
            false
        )
    {
        return;
    }
    let lastx = h - 1;
    let edge_a = (radius + 1).min(h);
    let edge_b = h.saturating_sub(radius + 1);
    let row = |i: usize| &inp[i * w..(i + 1) * w];
    for (a, &p) in acc.iter_mut().zip(row(0)) {
        *a = p as u32 * (radius as u32 + 1);
    }
    for x in 0..edge_a.saturating_sub(1) {
        for (a, &p) in acc.iter_mut().zip(row(x)) {
            *a = a.wrapping_add(p as u32);
        }
    }
    let m = (radius + 1 - edge_a) as u32;
    for (a, &p) in acc.iter_mut().zip(row(lastx)) {
        *a = a.wrapping_add((p as u32).wrapping_mul(m));
    }
    for (y, o) in out.chunks_exact_mut(w).enumerate() {
        let (sub, add, l, r) = if edge_a <= edge_b {
            if y < edge_a {
                (0, y + radius, 0, y + radius + 1)
            } else if y < edge_b {
                (y - radius - 1, y + radius, y - radius - 1, y + radius + 1)
            } else {
                (y - radius - 1, lastx, y - radius - 1, lastx)
            }
        } else if y < edge_b {
            (0, y + radius, 0, y + radius + 1)
        } else if y < edge_a {
            (0, lastx, 0, lastx)
        } else {
            (y - radius - 1, lastx, y - radius - 1, lastx)
        };
        box_step(acc, row(sub), row(add), row(l), row(r), ww, fw, o);
    }
}

/// [`box_rows`] for `radius <= 1` with AVX2: each output row straight from its window of input
/// rows instead of a running sum. `box_line`'s accumulator is always the sum of the `2r + 1`
/// pixels around `y` with indices clamped to the plane (edge pixels repeat) and its fractional
/// edge pixels are those at `y - r - 1` and `y + r + 1`, clamped the same way, so each output
/// is `(inner * ww + outer * fw + 2^23) >> 24` of window sums that fit 16-bit lanes. The
/// products go through `vpmaddwd` on (inner, outer) word pairs, the weights split into their
/// bits above and below bit 9 (each part fits an i16; the two partial sums recombine exactly,
/// and the total stays below 2^32 as in the u32 original): 16 outputs per step, no
/// accumulator row, no 32-bit multiplies. The same integers, so the same bits (tested against
/// `box_line` on every column, short planes and both radii included).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn box_rows_window_avx2(inp: &[u8], out: &mut [u8], w: usize, h: usize, radius: usize, ww: u32, fw: u32) {
    use std::arch::x86_64::*;
    debug_assert!(radius <= 1 && ww < 1 << 24 && fw < 1 << 24);
    let row = |i: isize| {
        let i = i.clamp(0, h as isize - 1) as usize;
        &inp[i * w..(i + 1) * w]
    };
    let body = w / 16 * 16;
    // Low word: the inner sum's weight, high word: the outer pair's (vpmaddwd multiplies pairs).
    let pair = |a: u32, b: u32| _mm256_set1_epi32((b << 16 | a) as i32);
    let (whi, wlo) = (pair(ww >> 9, fw >> 9), pair(ww & 511, fw & 511));
    let half = _mm256_set1_epi32(1 << 23);
    let r = radius as isize;
    for (y, o) in out.chunks_exact_mut(w).enumerate() {
        let y = y as isize;
        let rows3 = [row(y - 1), row(y), row(y + 1)];
        let inner = &rows3[(1 - r) as usize..(2 + r) as usize];
        let outer = [row(y - r - 1), row(y + r + 1)];
        for j in (0..body).step_by(16) {
            // SAFETY: `j + 16 <= w`, the length of every row and of `o`.
            unsafe {
                let ld = |x: &[u8]| _mm256_cvtepu8_epi16(_mm_loadu_si128(x.as_ptr().add(j).cast()));
                let mut isum = ld(inner[0]);
                for x in &inner[1..] {
                    isum = _mm256_add_epi16(isum, ld(x));
                }
                let osum = _mm256_add_epi16(ld(outer[0]), ld(outer[1]));
                let dot = |pairs: __m256i| {
                    let hi = _mm256_slli_epi32::<9>(_mm256_madd_epi16(pairs, whi));
                    let v = _mm256_add_epi32(_mm256_add_epi32(hi, _mm256_madd_epi16(pairs, wlo)), half);
                    _mm256_srli_epi32::<24>(v)
                };
                // Within each 128-bit half: unpacklo pairs values 0-3, unpackhi 4-7, and packus
                // puts them back in order.
                let a = dot(_mm256_unpacklo_epi16(isum, osum));
                let b = dot(_mm256_unpackhi_epi16(isum, osum));
                let w16 = _mm256_packus_epi32(a, b);
                let b8 = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(w16, w16));
                _mm_storeu_si128(o.as_mut_ptr().add(j).cast(), _mm256_castsi256_si128(b8));
            }
        }
        for j in body..w {
            let acc: u32 = inner.iter().map(|x| x[j] as u32).sum();
            o[j] = box_value(acc, outer[0][j] as u32 + outer[1][j] as u32, ww, fw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_is_exact_and_flip_mirrors() {
        let (w, h) = (7, 5);
        let src: Vec<u8> = (0..3 * w * h).map(|i| (i * 37 % 256) as u8).collect();
        let full = Region { left: 0, top: 0, width: w, height: h };
        for f in [Filter::Bilinear, Filter::Bicubic] {
            let mut out = vec![0u8; src.len()];
            resize(&src, w, h, full, [0.0, 0.0, w as f32, h as f32], f, false, &mut out, w, h);
            assert_eq!(out, src);
            resize(&src, w, h, full, [0.0, 0.0, w as f32, h as f32], f, true, &mut out, w, h);
            assert_eq!(out[..w].iter().rev().copied().collect::<Vec<_>>(), src[..w]);
        }
    }

    /// Pillow's definition of one pass over one line: per output pixel, the dot product of its
    /// taps with its input window, rounded by clip8 (`ImagingResampleHorizontal_8bpc`).
    fn per_pixel(c: &Coeffs, line: &[u8]) -> Vec<u8> {
        (0..c.bounds.len())
            .map(|xx| {
                let (xmin, n) = c.bounds[xx];
                let mut ss = 1i32 << (PRECISION_BITS - 1);
                for (&p, &kk) in line[xmin..xmin + n].iter().zip(&c.k[xx * c.ksize..][..n]) {
                    ss += p as i32 * kk;
                }
                clip8(ss)
            })
            .collect()
    }

    /// [`resize`] by the definition: both passes pixel by pixel, in Pillow's order, then the
    /// mirror.
    #[allow(clippy::too_many_arguments)]
    fn resize_by_definition(
        src: &[u8],
        src_w: usize,
        src_h: usize,
        region: Region,
        bx: [f32; 4],
        filter: Filter,
        flip: bool,
        out_w: usize,
        out_h: usize,
    ) -> Vec<u8> {
        let ch = coeffs(region.width, bx[0], bx[2], out_w, filter);
        let cv = coeffs(region.height, bx[1], bx[3], out_h, filter);
        let (rw, rh) = (region.width as i64, region.height as i64);
        let vertical_first = rh - out_h as i64 > 0 && rh - out_h as i64 > (rw - out_w as i64) * 2;
        // Columns of a `rows x cols` plane as lines, and back.
        let cols_of = |p: &[u8], rows: usize, cols: usize| -> Vec<Vec<u8>> {
            (0..cols).map(|x| (0..rows).map(|y| p[y * cols + x]).collect()).collect()
        };
        let from_cols =
            |cs: &[Vec<u8>], rows: usize| -> Vec<u8> { (0..rows).flat_map(|y| cs.iter().map(move |c| c[y])).collect() };
        let mut out = Vec::new();
        for c in 0..3 {
            let plane: Vec<u8> = (0..region.height)
                .flat_map(|y| {
                    let r = (c * src_h + region.top + y) * src_w + region.left;
                    src[r..r + region.width].iter().copied()
                })
                .collect();
            let h = |p: &[u8], rows: usize| -> Vec<u8> {
                p.chunks_exact(region.width).take(rows).flat_map(|l| per_pixel(&ch, l)).collect()
            };
            let v = |p: &[u8], cols: usize, rows: usize| -> Vec<u8> {
                let cs: Vec<Vec<u8>> = cols_of(p, rows, cols).iter().map(|l| per_pixel(&cv, l)).collect();
                from_cols(&cs, out_h)
            };
            let mut o = if vertical_first {
                h(&v(&plane, region.width, region.height), out_h)
            } else {
                v(&h(&plane, region.height), out_w, region.height)
            };
            if flip {
                o.chunks_exact_mut(out_w).for_each(|r| r.reverse());
            }
            out.extend(o);
        }
        out
    }

    #[test]
    fn resize_equals_the_two_pass_definition_in_both_orders() {
        // Down- and upscales, ragged sizes (not multiples of 8 or 16), boxes off the grid, both
        // filters, flip on and off, both pass orders (the last column: vertical first).
        let (src_w, src_h) = (331, 287);
        let src: Vec<u8> = (0..3 * src_w * src_h).map(|i| ((i * 7919) >> 3) as u8).collect();
        let cases = [
            // (left, top, width, height, box, out_w, out_h, vertical first)
            (7, 5, 300, 280, None, 224, 224, false),
            (0, 0, 331, 287, None, 96, 96, false),
            (13, 9, 57, 41, None, 224, 200, false),
            (3, 2, 33, 17, None, 35, 19, false),
            (11, 4, 229, 250, Some([3.5, 2.25, 220.75, 243.5]), 101, 117, false),
            (1, 1, 9, 9, None, 3, 5, false),
            (20, 0, 100, 287, None, 90, 61, true),
            (2, 3, 45, 283, Some([0.5, 1.5, 44.0, 280.25]), 37, 50, true),
        ];
        for (left, top, width, height, bx, out_w, out_h, vfirst) in cases {
            let region = Region { left, top, width, height };
            let bx = bx.unwrap_or([0.0, 0.0, width as f32, height as f32]);
            let (dh, dw) = (height as i64 - out_h as i64, width as i64 - out_w as i64);
            assert_eq!(dh > 0 && dh > 2 * dw, vfirst, "case {region:?} meant to test the other order");
            for f in [Filter::Bilinear, Filter::Bicubic] {
                for flip in [false, true] {
                    let want = resize_by_definition(&src, src_w, src_h, region, bx, f, flip, out_w, out_h);
                    let mut got = vec![0u8; 3 * out_w * out_h];
                    resize(&src, src_w, src_h, region, bx, f, flip, &mut got, out_w, out_h);
                    assert!(got == want, "{region:?} {bx:?} -> {out_w}x{out_h} {f:?} flip {flip}");
                    // The baseline (non-AVX2) build too.
                    got.fill(0);
                    resize_impl((&src, src_w, src_h, region, bx, f, flip), &mut got, out_w, out_h, false);
                    assert!(got == want, "baseline {region:?} {bx:?} -> {out_w}x{out_h} {f:?} flip {flip}");
                }
            }
        }
    }

    #[test]
    fn strip_horizontal_pass_equals_per_pixel_dot_products() {
        // Down- and upscales, boxes off the grid, row counts below, at and past one strip and
        // ragged (the stale lanes of a partial strip must not leak), rows in a wider stride
        // (a crop of a plane), flip on and off, the AVX2 and the portable kernels.
        #[cfg(target_arch = "x86_64")]
        let avx2_cpu = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2_cpu = false;
        let stride = 640;
        let block: Vec<u8> = (0..stride * 70).map(|i| (i * 131 + i / 613) as u8).collect();
        for (in_w, in0, in1, out_w) in [
            (613, 0.0, 613.0, 224),
            (57, 0.0, 57.0, 224),
            (300, 3.5, 290.25, 101),
            (9, 0.0, 9.0, 3),
            (224, 0.0, 224.0, 224),
            (33, 0.0, 33.0, 17),
        ] {
            for f in [Filter::Bilinear, Filter::Bicubic] {
                let c = coeffs(in_w, in0, in1, out_w, f);
                for rows in [1, 31, 32, 33, 70] {
                    for flip in [false, true] {
                        let want: Vec<u8> = (0..rows)
                            .flat_map(|r| {
                                let mut o = per_pixel(&c, &block[r * stride..][..in_w]);
                                if flip {
                                    o.reverse();
                                }
                                o
                            })
                            .collect();
                        for avx2 in [false, avx2_cpu] {
                            let mut hs = HScratch::default();
                            hs.fit(in_w, out_w);
                            // Stale bytes in the scratch, as a previous strip or call leaves them.
                            hs.t.fill(255);
                            hs.ht.fill(255);
                            let mut got = vec![0u8; rows * out_w];
                            // `avx2` is true only when the CPU has it (`avx2_cpu`).
                            hpass_transposed(avx2, &c, &mut hs, &block, stride, rows, flip, &mut got, out_w);
                            assert!(got == want, "{in_w} -> {out_w} {f:?} rows {rows} flip {flip} avx2 {avx2}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn column_box_blur_equals_the_per_line_transcription() {
        // `box_rows` must give `box_line` on every column, short columns (radius >= height,
        // the second branch) included.
        // Widths below and past the 16 lanes of the radius <= 1 AVX2 kernel (and its scalar
        // tail), values up to 255 (the largest window sums).
        for (h, w) in (1..14).flat_map(|h| [(h, 5), (h, 37)]) {
            for radius in [0.05f32, 0.4, 0.99, 1.0, 1.375, 1.9, 2.7, 6.3, 15.0] {
                let (r, ww, fw) = box_weights(radius);
                let inp: Vec<u8> = (0..w * h).map(|i| if i % 7 < 3 { 255 } else { (i * 97 % 251) as u8 }).collect();
                let mut got = vec![0u8; w * h];
                box_rows(&inp, &mut got, w, h, r, ww, fw, &mut vec![0u32; w]);
                for x in 0..w {
                    let col: Vec<u8> = (0..h).map(|y| inp[y * w + x]).collect();
                    let mut want = vec![0u8; h];
                    box_line(&col, &mut want, r, ww, fw);
                    let g: Vec<u8> = (0..h).map(|y| got[y * w + x]).collect();
                    assert_eq!(g, want, "h {h} radius {radius} column {x}");
                }
            }
        }
    }

    #[test]
    fn transpose_matches_the_definition_on_ragged_shapes() {
        // Whole 16 x 16 tiles (SSE2) and ragged edges (scalar) in one image.
        for (rows, cols) in [(1, 1), (16, 16), (17, 33), (224, 224), (40, 7), (3, 50)] {
            let inp: Vec<u8> = (0..rows * cols).map(|i| (i * 31 + i / 7) as u8).collect();
            let mut out = vec![0u8; rows * cols];
            transpose(&inp, &mut out, rows, cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(out[c * rows + r], inp[r * cols + c], "{rows}x{cols} at {r},{c}");
                }
            }
        }
    }

    #[test]
    fn blur_keeps_a_constant_image() {
        let mut img = vec![77u8; 3 * 9 * 4];
        gaussian_blur(&mut img, 9, 4, 1.7);
        assert!(img.iter().all(|&v| v == 77));
    }
}
