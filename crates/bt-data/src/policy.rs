//! A view's augmentation policy: random parameters are *sampled* ([`ViewPolicy::sample`]) into
//! an explicit [`ViewParams`], which is then *applied* ([`apply`]) by the pure ops of
//! [`crate::ops`]. Splitting the two keeps every random choice visible (tests and previews can
//! apply chosen parameters) and keeps the hot loop free of RNG calls.
use crate::cifar::IMAGE_SIDE;
use crate::error::{DataError, Result};
use crate::ops::{self, CropRect};
use crate::pil;
use crate::rng::{stream, SampleRng};
use crate::source::{Image, LoadHint};
use bt_config::{BlurKind, ColorMath, CropKind, Interpolation, JitterStyle, ViewConfig};

/// Colour-jitter parameters of one view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JitterParams {
    /// The seed's `tf.image.random_*` chain, always in this order, no clipping between steps.
    Tf {
        /// Additive brightness delta.
        brightness_delta: f32,
        /// Contrast factor around the per-channel mean.
        contrast: f32,
        /// Saturation factor.
        saturation: f32,
        /// Hue delta (fraction of the circle).
        hue: f32,
    },
    /// torchvision `ColorJitter`: factors applied in `order` (0 brightness, 1 contrast,
    /// 2 saturation, 3 hue), each clamped to `[0, 1]`.
    Torchvision {
        /// Permutation of `0..4`.
        order: [u8; 4],
        /// Multiplicative brightness factor.
        brightness: f64,
        /// Contrast factor (around the grayscale mean).
        contrast: f64,
        /// Saturation factor (towards the per-pixel grayscale).
        saturation: f64,
        /// Hue shift (fraction of the circle).
        hue: f64,
    },
}

/// How a view solarizes, when it does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Solarize {
    /// The seed's `tf.where(x < 10, x, 255 - x)` (a no-op on `[0, 1]` data).
    SeedQuirk,
    /// `x >= 0.5 -> 1 - x`.
    Threshold,
}

/// Every random choice for one view of one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ViewParams {
    /// Crop rectangle in the source's native pixels.
    pub crop: CropRect,
    /// Mirror left-right.
    pub flip: bool,
    /// Colour jitter, when it fires.
    pub jitter: Option<JitterParams>,
    /// Gaussian blur sigma, when blur fires.
    pub blur_sigma: Option<f32>,
    /// Convert to grayscale.
    pub grayscale: bool,
    /// Solarize, when it fires.
    pub solarize: Option<Solarize>,
    /// Clip to `[0, 1]` at the end.
    pub clip: bool,
}

impl ViewParams {
    /// No augmentation at all (the full image, resized to itself, unchanged).
    pub fn identity() -> Self {
        Self {
            crop: CropRect { top: 0, left: 0, height: IMAGE_SIDE, width: IMAGE_SIDE },
            flip: false,
            jitter: None,
            blur_sigma: None,
            grayscale: false,
            solarize: None,
            clip: false,
        }
    }
}

/// A validated [`ViewConfig`], ready to sample [`ViewParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct ViewPolicy {
    cfg: ViewConfig,
    fixed_sigma: Option<f32>,
}

/// The seed quirk `blur_sigma_once`: the notebook's `np.random.random()` runs once when the
/// tf.function is traced, so one sigma serves the whole run (both views: they share one
/// augmentor). Drawn here from the run seed, uniform in `range`.
pub fn blur_sigma_once(run_seed: u64, range: [f64; 2]) -> f32 {
    SampleRng::new(run_seed, 0, 0, stream::BLUR_ONCE).range(range[0], range[1]) as f32
}

fn prob(key: &str, p: f64) -> Result<()> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(DataError::BadConfig { key: key.into(), reason: format!("probability {p} outside [0, 1]") })
    }
}

impl ViewPolicy {
    /// Checks the ranges this crate relies on. The blur sigma of a
    /// `blur_sigma_once` policy is fixed later by [`ViewPolicy::for_run`]; until then it is
    /// drawn from seed 0.
    pub fn from_config(cfg: &ViewConfig) -> Result<Self> {
        let bad = |key: &str, reason: String| DataError::BadConfig { key: key.into(), reason };
        // Sides are source pixels clamped to the image's shorter side, so any ordered range
        // works at any size (at 32x32, a max above 33 behaves as 33).
        if cfg.crop == CropKind::KerasSquare && !(1 <= cfg.crop_min_side && cfg.crop_min_side < cfg.crop_max_side) {
            return Err(bad(
                "crop_min_side/crop_max_side",
                format!("need 1 <= min < max (max exclusive), got [{}, {})", cfg.crop_min_side, cfg.crop_max_side),
            ));
        }
        let [s0, s1] = cfg.crop_scale;
        if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
            return Err(bad("crop_scale", format!("need 0 < lo <= hi <= 1, got [{s0}, {s1}]")));
        }
        let [r0, r1] = cfg.crop_ratio;
        if !(0.0 < r0 && r0 <= r1) {
            return Err(bad("crop_ratio", format!("need 0 < lo <= hi, got [{r0}, {r1}]")));
        }
        for (k, p) in [
            ("flip_prob", cfg.flip_prob),
            ("jitter_prob", cfg.jitter_prob),
            ("blur_prob", cfg.blur_prob),
            ("grayscale_prob", cfg.grayscale_prob),
            ("solarize_prob", cfg.solarize_prob),
        ] {
            prob(k, p)?;
        }
        let [b0, b1] = cfg.blur_sigma;
        if cfg.blur_prob > 0.0 && !(0.0 <= b0 && b0 <= b1 && b1 > 0.0) {
            return Err(bad("blur_sigma", format!("need 0 <= lo <= hi, hi > 0, got [{b0}, {b1}]")));
        }
        if cfg.color_math == ColorMath::PilU8
            && (cfg.interpolation == Interpolation::TfBilinear
                || cfg.blur_kind != BlurKind::Pil
                || cfg.jitter_style != JitterStyle::Torchvision
                || cfg.solarize_noop_quirk)
        {
            return Err(bad(
                "color_math",
                "\"pil-u8\" needs a Pillow interpolation, blur_kind \"pil\", jitter_style \"torchvision\" and solarize_noop_quirk false".into(),
            ));
        }
        let mut p = Self { cfg: cfg.clone(), fixed_sigma: None };
        if cfg.blur_sigma_once {
            p.fixed_sigma = Some(blur_sigma_once(0, cfg.blur_sigma));
        }
        Ok(p)
    }

    /// The policy for a run with `run_seed`: fixes the one blur sigma of `blur_sigma_once`.
    pub fn for_run(mut self, run_seed: u64) -> Self {
        if self.cfg.blur_sigma_once {
            self.fixed_sigma = Some(blur_sigma_once(run_seed, self.cfg.blur_sigma));
        }
        self
    }

    /// The run-wide blur sigma, if this policy has one.
    pub fn fixed_blur_sigma(&self) -> Option<f32> {
        self.fixed_sigma
    }

    /// The config it was built from.
    pub fn config(&self) -> &ViewConfig {
        &self.cfg
    }

    /// Draws one view's parameters for a 32x32 image.
    pub fn sample(&self, rng: &mut SampleRng) -> ViewParams {
        self.sample_for(rng, IMAGE_SIDE, IMAGE_SIDE)
    }

    /// Draws one view's parameters for a `height x width` source image (crops in its pixels).
    pub fn sample_for(&self, rng: &mut SampleRng, height: usize, width: usize) -> ViewParams {
        let c = &self.cfg;
        let crop = match c.crop {
            CropKind::KerasSquare => {
                // tf.random.uniform([], min, max, int32): max exclusive.
                let side = c.crop_min_side as usize + rng.below((c.crop_max_side - c.crop_min_side) as u64) as usize;
                let side = side.min(height).min(width);
                let top = rng.below((height - side + 1) as u64) as usize;
                let left = rng.below((width - side + 1) as u64) as usize;
                CropRect { top, left, height: side, width: side }
            }
            CropKind::RandomResized => random_resized_crop(rng, height, width, c.crop_scale, c.crop_ratio),
        };
        let mut flip = rng.bernoulli(c.flip_prob);
        if c.flip_double_coin {
            // tf.image.random_flip_left_right inside the branch flips with its own 0.5.
            let coin = rng.bernoulli(0.5);
            flip = flip && coin;
        }
        let jitter = rng.bernoulli(c.jitter_prob).then(|| match c.jitter_style {
            JitterStyle::Tf => JitterParams::Tf {
                brightness_delta: rng.range(-c.brightness, c.brightness) as f32,
                contrast: rng.range(1.0 - c.contrast, 1.0 + c.contrast) as f32,
                saturation: rng.range(1.0 - c.saturation, 1.0 + c.saturation) as f32,
                hue: rng.range(-c.hue, c.hue) as f32,
            },
            JitterStyle::Torchvision => {
                let mut order = [0u8, 1, 2, 3];
                for i in (1..4).rev() {
                    let j = rng.below(i as u64 + 1) as usize;
                    order.swap(i, j);
                }
                JitterParams::Torchvision {
                    order,
                    brightness: rng.range((1.0 - c.brightness).max(0.0), 1.0 + c.brightness),
                    contrast: rng.range((1.0 - c.contrast).max(0.0), 1.0 + c.contrast),
                    saturation: rng.range((1.0 - c.saturation).max(0.0), 1.0 + c.saturation),
                    hue: rng.range(-c.hue, c.hue),
                }
            }
        });
        let blur_sigma = rng
            .bernoulli(c.blur_prob)
            .then(|| self.fixed_sigma.unwrap_or_else(|| rng.range(c.blur_sigma[0], c.blur_sigma[1]) as f32));
        let grayscale = rng.bernoulli(c.grayscale_prob);
        let solarize = rng.bernoulli(c.solarize_prob).then_some(if c.solarize_noop_quirk {
            Solarize::SeedQuirk
        } else {
            Solarize::Threshold
        });
        ViewParams { crop, flip, jitter, blur_sigma, grayscale, solarize, clip: c.clip }
    }
}

/// torchvision `RandomResizedCrop.get_params`: up to 10 tries of (area fraction in `scale`,
/// log-uniform aspect ratio in `ratio`), rounding `w = round(sqrt(area * r))`,
/// `h = round(sqrt(area / r))`; then the central-crop fallback.
pub fn random_resized_crop(
    rng: &mut SampleRng,
    height: usize,
    width: usize,
    scale: [f64; 2],
    ratio: [f64; 2],
) -> CropRect {
    let area = (height * width) as f64;
    let (lr0, lr1) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target = area * rng.range(scale[0], scale[1]);
        let ar = rng.range(lr0, lr1).exp();
        let w = (target * ar).sqrt().round() as usize;
        let h = (target / ar).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.below((height - h + 1) as u64) as usize;
            let left = rng.below((width - w + 1) as u64) as usize;
            return CropRect { top, left, height: h, width: w };
        }
    }
    let in_ratio = width as f64 / height as f64;
    let (w, h) = if in_ratio < ratio[0] {
        (width, ((width as f64 / ratio[0]).round() as usize).max(1))
    } else if in_ratio > ratio[1] {
        (((height as f64 * ratio[1]).round() as usize).max(1), height)
    } else {
        (width, height)
    };
    CropRect { top: (height - h) / 2, left: (width - w) / 2, height: h, width: w }
}

/// Applies `p` to a 32x32 u8 CHW image, writing the f32 CHW view into `out` (3072 values).
///
/// Order (the seed's): crop + resize (+ flip, fused), colour jitter, blur, grayscale,
/// solarize, clip.
pub fn apply(src: &[u8], p: &ViewParams, out: &mut [f32]) {
    let n = IMAGE_SIDE;
    ops::crop_resize_u8(src, n, n, p.crop, p.flip, out, n, n);
    apply_after_crop(out, p);
}

/// The steps of [`apply`] after the crop, on an f32 CHW 32x32 image.
pub fn apply_after_crop(out: &mut [f32], p: &ViewParams) {
    apply_after_crop_sized(out, p, IMAGE_SIDE, BlurKind::Tfa3x3);
}

/// The largest JPEG DCT reduction (1, 2, 4 or 8) at which both crops still have at least
/// `size` source pixels per side, so decoding at that scale never upsamples what the full
/// image would have downsampled.
pub fn max_reduction(crops: &[CropRect], size: usize) -> u32 {
    let min_side = crops.iter().map(|c| c.width.min(c.height)).min().unwrap_or(0);
    [8u32, 4, 2].into_iter().find(|&k| min_side / k as usize >= size).unwrap_or(1)
}

/// The least a decode must deliver for views with these crops (sampled on the native image)
/// at `size`: the largest DCT reduction [`max_reduction`] allows, and only the rows down to
/// the lowest crop's bottom (Pillow's crop reads nothing outside its box).
pub fn load_hint(crops: &[CropRect], size: usize) -> LoadHint {
    let rows = crops.iter().map(|c| c.top + c.height).max().unwrap_or(usize::MAX);
    LoadHint { max_reduction: max_reduction(crops, size), rows }
}

impl ViewPolicy {
    /// Renders view `p` of `img` into `out` (`3 x size x size` f32 CHW): crop + resize (+ flip)
    /// with this policy's interpolation, then the colour ops (with [`ColorMath::PilU8`]:
    /// [`ViewPolicy::render_u8`], then `x / 255`). `native = (width, height)` is the
    /// size the crop was sampled on; `img` may be smaller (a reduced decode), and the crop is
    /// then scaled into its coordinates.
    pub fn render(&self, img: &Image, native: (usize, usize), p: &ViewParams, out: &mut [f32], size: usize) {
        let same = full_scale(img, native, p.crop);
        match self.cfg.interpolation {
            Interpolation::TfBilinear => {
                let crop = if same { p.crop } else { scale_rect(p.crop, native, img) };
                ops::crop_resize_u8(&img.data, img.height, img.width, crop, p.flip, out, size, size);
            }
            Interpolation::PilBilinear | Interpolation::PilBicubic => {
                if self.cfg.color_math == ColorMath::PilU8 {
                    let mut u8out = vec![0u8; 3 * size * size];
                    self.render_u8(img, native, p, &mut u8out, size);
                    crate::pil_color::to_tensor(&u8out, out, None);
                    return;
                }
                let mut u8out = vec![0u8; 3 * size * size];
                self.pil_crop(img, native, p, &mut u8out, size);
                let lut = ops::u8_to_unit();
                for (o, &v) in out.iter_mut().zip(&u8out) {
                    *o = lut[v as usize];
                }
            }
        }
        apply_after_crop_sized(out, p, size, self.cfg.blur_kind);
    }
}

impl ViewPolicy {
    /// `true` when views are made on u8 images with Pillow's arithmetic
    /// ([`ColorMath::PilU8`]): render them with [`ViewPolicy::render_u8`].
    pub fn renders_u8(&self) -> bool {
        self.cfg.color_math == ColorMath::PilU8
    }

    /// The official recipe on a PIL image: `3 x size x size` u8 CHW view `p` of `img` into
    /// `out`: Pillow crop + resize (+ mirror), then torchvision's `ColorJitter` (random order),
    /// `RandomGrayscale`, Pillow `GaussianBlur` and `ImageOps.solarize`, each on u8 exactly as
    /// Pillow computes it ([`crate::pil_color`]). `ToTensor`/`Normalize` are left to the caller
    /// ([`crate::pil_color::to_tensor`]). `native` as in [`ViewPolicy::render`].
    ///
    /// # Panics
    /// When the policy resizes with `tf-bilinear` (validation rejects `pil-u8` with it).
    pub fn render_u8(&self, img: &Image, native: (usize, usize), p: &ViewParams, out: &mut [u8], size: usize) {
        use crate::pil_color as pc;
        self.pil_crop(img, native, p, out, size);
        if let Some(JitterParams::Torchvision { order, brightness, contrast, saturation, hue }) = p.jitter {
            pc::color_jitter(out, order, brightness, contrast, saturation, hue);
        }
        if p.grayscale {
            pc::grayscale(out);
        }
        if let Some(s) = p.blur_sigma {
            if s > 0.0 {
                pil::gaussian_blur(out, size, size, s);
            }
        }
        if p.solarize.is_some() {
            pc::solarize(out, 128);
        }
    }

    /// Pillow crop + resize (+ mirror) of view `p` into the u8 `out`: `img.crop(box).resize`
    /// on the native image, or the crop as a fractional box of a reduced decode.
    fn pil_crop(&self, img: &Image, native: (usize, usize), p: &ViewParams, out: &mut [u8], size: usize) {
        let filter = match self.cfg.interpolation {
            Interpolation::PilBilinear => pil::Filter::Bilinear,
            Interpolation::PilBicubic => pil::Filter::Bicubic,
            Interpolation::TfBilinear => panic!("pil_crop: the policy resizes with tf-bilinear"),
        };
        let (nw, nh) = native;
        let c = p.crop;
        let (region, bx) = if full_scale(img, native, c) {
            // torchvision on PIL: `img.crop(box).resize(size)`.
            let r = pil::Region { left: c.left, top: c.top, width: c.width, height: c.height };
            (r, [0.0, 0.0, c.width as f32, c.height as f32])
        } else {
            // Reduced decode: the crop as a fractional box of the smaller image.
            let (sx, sy) = (img.width as f64 / nw as f64, img.height as f64 / nh as f64);
            let r = pil::Region { left: 0, top: 0, width: img.width, height: img.height };
            let bx = [
                (c.left as f64 * sx) as f32,
                (c.top as f64 * sy) as f32,
                (((c.left + c.width) as f64 * sx) as f32).min(img.width as f32),
                (((c.top + c.height) as f64 * sy) as f32).min(img.height as f32),
            ];
            (r, bx)
        };
        pil::resize(&img.data, img.width, img.height, region, bx, filter, p.flip, out, size, size);
    }
}

/// `true` when `img` is at the native scale: the whole native image, or its top rows (a
/// decode stopped early, [`crate::LoadHint::rows`]), which must then hold all of `crop`.
/// `false` for a DCT-reduced decode, whose width is `ceil(native / k) < native` (a reduction
/// is only chosen for crops of at least `2 * image_size` pixels per side).
fn full_scale(img: &Image, native: (usize, usize), crop: CropRect) -> bool {
    let same = img.width == native.0 && img.height <= native.1;
    assert!(
        !same || crop.top + crop.height <= img.height,
        "crop rows {}..{} beyond the {} rows decoded",
        crop.top,
        crop.top + crop.height,
        img.height
    );
    same
}

/// `crop` (in `native` pixels) in the pixels of the smaller `img`, rounded, at least 1x1.
fn scale_rect(crop: CropRect, native: (usize, usize), img: &Image) -> CropRect {
    let (sx, sy) = (img.width as f64 / native.0 as f64, img.height as f64 / native.1 as f64);
    let left = ((crop.left as f64 * sx).round() as usize).min(img.width - 1);
    let top = ((crop.top as f64 * sy).round() as usize).min(img.height - 1);
    let width = ((crop.width as f64 * sx).round() as usize).clamp(1, img.width - left);
    let height = ((crop.height as f64 * sy).round() as usize).clamp(1, img.height - top);
    CropRect { top, left, height, width }
}

/// Pillow's blur on an f32 view: quantized to u8 (`round(x * 255)`, what a PIL image holds),
/// blurred exactly as Pillow, read back as `x / 255`.
fn pil_blur_f32(out: &mut [f32], n: usize, sigma: f32) {
    let mut q: Vec<u8> = out.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    pil::gaussian_blur(&mut q, n, n, sigma);
    let lut = ops::u8_to_unit();
    for (o, &v) in out.iter_mut().zip(&q) {
        *o = lut[v as usize];
    }
}

/// The steps after the crop on an f32 CHW `n x n` view. With [`BlurKind::Tfa3x3`] the seed's
/// order (jitter, blur, grayscale, solarize, clip); with [`BlurKind::Pil`] the official
/// recipe's (jitter, grayscale, blur, solarize, clip).
pub fn apply_after_crop_sized(out: &mut [f32], p: &ViewParams, n: usize, blur: BlurKind) {
    match p.jitter {
        None => {}
        Some(JitterParams::Tf { brightness_delta, contrast, saturation, hue }) => {
            ops::tf_adjust_brightness(out, brightness_delta);
            ops::tf_adjust_contrast(out, n, n, contrast);
            ops::tf_adjust_saturation_hue(out, n, n, saturation, hue);
        }
        Some(JitterParams::Torchvision { order, brightness, contrast, saturation, hue }) => {
            for op in order {
                match op {
                    0 => ops::tv_adjust_brightness(out, brightness as f32),
                    1 => ops::tv_adjust_contrast(out, n, n, contrast),
                    2 => ops::tv_adjust_saturation(out, n, n, saturation),
                    _ => ops::tv_adjust_hue(out, n, n, hue),
                }
            }
        }
    }
    match blur {
        BlurKind::Tfa3x3 => {
            if let Some(s) = p.blur_sigma {
                // sigma 0 is a delta kernel in the limit; tfa would produce NaN (0/0), so skip it.
                if s > 0.0 {
                    ops::tfa_gaussian_blur3x3(out, n, n, s);
                }
            }
            if p.grayscale {
                ops::tf_grayscale(out, n, n);
            }
        }
        BlurKind::Pil => {
            if p.grayscale {
                ops::tf_grayscale(out, n, n);
            }
            if let Some(s) = p.blur_sigma {
                if s > 0.0 {
                    pil_blur_f32(out, n, s);
                }
            }
        }
    }
    match p.solarize {
        None => {}
        Some(Solarize::SeedQuirk) => ops::solarize_seed_quirk(out),
        Some(Solarize::Threshold) => ops::solarize(out, 0.5),
    }
    if p.clip {
        ops::clip01(out);
    }
}

/// The two views' policies of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TwinPolicy {
    /// View A.
    pub a: ViewPolicy,
    /// View B.
    pub b: ViewPolicy,
}

impl TwinPolicy {
    /// Both views from `[augment]`, with the run-wide blur sigma drawn from `run_seed`.
    pub fn from_config(cfg: &bt_config::AugmentConfig, run_seed: u64) -> Result<Self> {
        Ok(Self {
            a: ViewPolicy::from_config(&cfg.view_a)?.for_run(run_seed),
            b: ViewPolicy::from_config(&cfg.view_b)?.for_run(run_seed),
        })
    }

    /// Both views' parameters of dataset image `index` in `epoch`: each from its own stream
    /// keyed by `(seed, epoch, index, view)`, independent of thread and batch.
    pub fn sample_pair(&self, seed: u64, epoch: u64, index: u64) -> (ViewParams, ViewParams) {
        self.sample_pair_for(seed, epoch, index, IMAGE_SIDE, IMAGE_SIDE)
    }

    /// As [`TwinPolicy::sample_pair`] for a `height x width` source.
    pub fn sample_pair_for(
        &self,
        seed: u64,
        epoch: u64,
        index: u64,
        height: usize,
        width: usize,
    ) -> (ViewParams, ViewParams) {
        let mut ra = SampleRng::new(seed, epoch, index, stream::VIEW_A);
        let mut rb = SampleRng::new(seed, epoch, index, stream::VIEW_B);
        (self.a.sample_for(&mut ra, height, width), self.b.sample_for(&mut rb, height, width))
    }

    /// `true` when a view resizes with Pillow (so a reduced JPEG decode is allowed).
    pub fn allows_reduced_decode(&self) -> bool {
        [&self.a, &self.b].iter().all(|v| v.cfg.interpolation != Interpolation::TfBilinear)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freq(policy: &ViewPolicy, f: impl Fn(&ViewParams) -> bool) -> f64 {
        let n = 20_000;
        (0..n).filter(|&i| f(&policy.sample(&mut SampleRng::new(1, 0, i, 0)))).count() as f64 / n as f64
    }

    #[test]
    fn keras_seed_probabilities_and_ranges() {
        let p = ViewPolicy::from_config(&ViewConfig::keras_seed()).unwrap().for_run(1024);
        // The quirk: flip 0.5 x 0.5.
        assert!((freq(&p, |v| v.flip) - 0.25).abs() < 0.015);
        assert!((freq(&p, |v| v.jitter.is_some()) - 0.8).abs() < 0.015);
        assert!((freq(&p, |v| v.blur_sigma.is_some()) - 0.2).abs() < 0.015);
        assert!((freq(&p, |v| v.grayscale) - 0.2).abs() < 0.015);
        assert!((freq(&p, |v| v.solarize == Some(Solarize::SeedQuirk)) - 0.2).abs() < 0.015);
        let sides: std::collections::BTreeSet<usize> =
            (0..5000).map(|i| p.sample(&mut SampleRng::new(2, 0, i, 0)).crop.height).collect();
        assert_eq!(sides, (24..32).collect());
        // One sigma for the whole run.
        let sig: std::collections::BTreeSet<u32> =
            (0..2000).filter_map(|i| p.sample(&mut SampleRng::new(3, 0, i, 0)).blur_sigma.map(f32::to_bits)).collect();
        assert_eq!(sig.len(), 1);
        let no_quirk = ViewConfig { flip_double_coin: false, ..ViewConfig::keras_seed() };
        let p = ViewPolicy::from_config(&no_quirk).unwrap();
        assert!((freq(&p, |v| v.flip) - 0.5).abs() < 0.015);
    }

    #[test]
    fn asymmetric_solarize_and_rrc_scale() {
        let t = TwinPolicy::from_config(&bt_config::AugmentConfig::cifar_asymmetric(), 5).unwrap();
        assert_eq!(freq(&t.a, |v| v.solarize.is_some()), 0.0);
        assert!((freq(&t.b, |v| v.solarize == Some(Solarize::Threshold)) - 0.2).abs() < 0.015);
        for i in 0..2000 {
            let c = t.a.sample(&mut SampleRng::new(9, 0, i, 0)).crop;
            let frac = (c.height * c.width) as f64 / 1024.0;
            assert!(c.top + c.height <= 32 && c.left + c.width <= 32);
            // Rounding of w and h can move the area a little outside the range.
            assert!(frac > 0.05 && frac <= 1.0, "{c:?}");
        }
    }

    #[test]
    fn bad_config_is_named() {
        let c = ViewConfig { crop_min_side: 30, crop_max_side: 30, ..ViewConfig::keras_seed() };
        let e = ViewPolicy::from_config(&c).unwrap_err().to_string();
        assert!(e.contains("crop_min_side"), "{e}");
    }
}
