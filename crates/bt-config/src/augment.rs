//! `[augment]`: the two views' augmentation policies.
use serde::{Deserialize, Serialize};

/// How a view is cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CropKind {
    /// The seed's: square side uniform integer in `[crop_min_side, crop_max_side)`, random
    /// position, `tf.image.resize` bilinear back to 32x32.
    KerasSquare,
    /// torchvision `RandomResizedCrop(32, scale=crop_scale, ratio=crop_ratio)`.
    RandomResized,
}

/// Semantics of the color-jitter numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JitterStyle {
    /// `tf.image.random_*` in fixed order, no clipping between steps: brightness is an
    /// additive delta in `[-b, b)`, contrast/saturation factors in `[1-c, 1+c)`, hue delta in
    /// `[-h, h]`.
    Tf,
    /// torchvision `ColorJitter`: multiplicative brightness `[1-b, 1+b]`, contrast around the
    /// grayscale mean, random order, clamped to [0,1] after each op.
    Torchvision,
}

/// How a crop is resized to the view size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interpolation {
    /// `tf.image.resize` bilinear (half-pixel centers, no antialias), in f32: the seed's.
    TfBilinear,
    /// Pillow `resize(BILINEAR)` (antialiased, u8 fixed point), as torchvision on PIL images.
    PilBilinear,
    /// Pillow `resize(BICUBIC)`: the official Barlow Twins ImageNet recipe.
    PilBicubic,
}

/// Which Gaussian blur a view applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlurKind {
    /// tfa `gaussian_filter2d` 3x3, reflect padding (the seed's), applied before grayscale.
    Tfa3x3,
    /// Pillow `ImageFilter.GaussianBlur(sigma)` (extended box blur on u8), applied after
    /// grayscale as in the official recipe.
    Pil,
}

/// The arithmetic of the colour ops after the crop (jitter, grayscale, blur, solarize).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColorMath {
    /// On f32 views, with TensorFlow's or torchvision's tensor arithmetic (per `jitter_style`):
    /// the seed's and the CIFAR presets'.
    F32,
    /// On u8 images with Pillow's integer arithmetic, what torchvision does to PIL images:
    /// `ImageEnhance` blends, HSV hue, `convert("L")`, `ImageOps.solarize`, then
    /// `ToTensor` + `Normalize` once at the end. The official ImageNet recipe's; needs a Pillow
    /// `interpolation`, `blur_kind = "pil"`, `jitter_style = "torchvision"` and no seed quirk.
    PilU8,
}

/// One view's augmentation policy (`[augment.view_a]`, `[augment.view_b]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewConfig {
    /// Crop style.
    pub crop: CropKind,
    /// `keras-square`: smallest crop side in source pixels (inclusive; sides are clamped to the
    /// source's shorter side, so at 32x32 this is the seed's crop).
    pub crop_min_side: u32,
    /// `keras-square`: crop side upper bound (exclusive, as `tf.random.uniform` with ints).
    pub crop_max_side: u32,
    /// `random-resized`: area fraction range.
    pub crop_scale: [f64; 2],
    /// `random-resized`: aspect ratio range.
    pub crop_ratio: [f64; 2],
    /// Probability of the horizontal-flip branch.
    pub flip_prob: f64,
    /// Seed quirk: inside the branch `tf.image.random_flip_left_right` flips with its own 0.5,
    /// so the effective probability is `flip_prob / 2`.
    pub flip_double_coin: bool,
    /// Probability of color jitter.
    pub jitter_prob: f64,
    /// Semantics of the four jitter strengths.
    pub jitter_style: JitterStyle,
    /// Brightness strength (see [`JitterStyle`]).
    pub brightness: f64,
    /// Contrast strength: factor in `[1-c, 1+c)`.
    pub contrast: f64,
    /// Saturation strength: factor in `[1-s, 1+s)`.
    pub saturation: f64,
    /// Hue strength: delta in `[-h, h]` (fraction of the hue circle).
    pub hue: f64,
    /// Probability of the 3x3 gaussian blur (reflect padding).
    pub blur_prob: f64,
    /// Blur sigma range `[lo, hi)`.
    pub blur_sigma: [f64; 2],
    /// Seed quirk: `np.random.random()` runs once when the tf.function is traced, so one sigma
    /// is drawn for the whole run (from the run seed).
    pub blur_sigma_once: bool,
    /// Probability of grayscale (TF weights 0.2989, 0.5870, 0.1140, replicated to 3 channels).
    pub grayscale_prob: f64,
    /// Probability of solarization.
    pub solarize_prob: f64,
    /// Seed quirk: `tf.where(x < 10, x, 255 - x)` on [0,1] data never changes a pixel. When
    /// false, the usual solarize: `x >= 0.5 -> 1 - x`.
    pub solarize_noop_quirk: bool,
    /// Clip to [0,1] at the end (the seed's `clip_by_value`).
    pub clip: bool,
    /// How the crop is resized to `data.image_size`.
    pub interpolation: Interpolation,
    /// Which Gaussian blur (and its place in the op order).
    pub blur_kind: BlurKind,
    /// The arithmetic of the colour ops (see [`ColorMath`]).
    pub color_math: ColorMath,
}

impl ViewConfig {
    /// The seed notebook's policy, quirks included.
    pub fn keras_seed() -> Self {
        Self {
            crop: CropKind::KerasSquare,
            crop_min_side: 24,
            crop_max_side: 32,
            crop_scale: [0.08, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip_prob: 0.5,
            flip_double_coin: true,
            jitter_prob: 0.8,
            jitter_style: JitterStyle::Tf,
            brightness: 0.8,
            contrast: 0.6,
            saturation: 0.6,
            hue: 0.2,
            blur_prob: 0.2,
            blur_sigma: [0.0, 1.0],
            blur_sigma_once: true,
            grayscale_prob: 0.2,
            solarize_prob: 0.2,
            solarize_noop_quirk: true,
            clip: true,
            interpolation: Interpolation::TfBilinear,
            blur_kind: BlurKind::Tfa3x3,
            color_math: ColorMath::F32,
        }
    }

    /// solo-learn's CIFAR recipe for one view; `solarize_prob` is 0.0 for view A, 0.2 for B.
    pub fn cifar_asymmetric(solarize_prob: f64) -> Self {
        Self {
            crop: CropKind::RandomResized,
            crop_min_side: 24,
            crop_max_side: 32,
            crop_scale: [0.08, 1.0],
            crop_ratio: [0.75, 4.0 / 3.0],
            flip_prob: 0.5,
            flip_double_coin: false,
            jitter_prob: 0.8,
            jitter_style: JitterStyle::Torchvision,
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            blur_prob: 0.0,
            blur_sigma: [0.1, 2.0],
            blur_sigma_once: false,
            grayscale_prob: 0.2,
            solarize_prob,
            solarize_noop_quirk: false,
            clip: true,
            interpolation: Interpolation::TfBilinear,
            blur_kind: BlurKind::Tfa3x3,
            color_math: ColorMath::F32,
        }
    }

    /// The official Barlow Twins ImageNet view (facebookresearch/barlowtwins `main.py`):
    /// `RandomResizedCrop(bicubic)`, flip 0.5, jitter 0.4/0.4/0.2/0.1 with p 0.8, grayscale 0.2,
    /// PIL Gaussian blur sigma U(0.1, 2.0) with `blur_prob` (1.0 / 0.1), solarize
    /// `solarize_prob` (0.0 / 0.2).
    pub fn imagenet_official(blur_prob: f64, solarize_prob: f64) -> Self {
        // solo-learn's asymmetric CIFAR view is this recipe at 32 px with blur off; here: Pillow's
        // bicubic resize and Pillow's blur, with the blur probability of each view.
        Self {
            blur_prob,
            interpolation: Interpolation::PilBicubic,
            blur_kind: BlurKind::Pil,
            color_math: ColorMath::PilU8,
            ..Self::cifar_asymmetric(solarize_prob)
        }
    }

    /// The official linear evaluation's training transform (facebookresearch/barlowtwins
    /// `evaluate.py`: `RandomResizedCrop(224)` with torchvision's defaults (scale (0.08, 1),
    /// ratio (3/4, 4/3), bilinear) and `RandomHorizontalFlip()`, on PIL images; no colour
    /// change, no blur.
    pub fn official_linear_train() -> Self {
        Self {
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            interpolation: Interpolation::PilBilinear,
            ..Self::imagenet_official(0.0, 0.0)
        }
    }
}

impl Default for ViewConfig {
    fn default() -> Self {
        Self::keras_seed()
    }
}

/// Both views' policies (`[augment]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// A label for logs and previews (`keras-seed`, `cifar-asymmetric`, ...).
    pub policy: String,
    /// Policy of the first view.
    pub view_a: ViewConfig,
    /// Policy of the second view.
    pub view_b: ViewConfig,
}

impl AugmentConfig {
    /// [`ViewConfig::official_linear_train`] on both views (the official linear protocol
    /// reads the first).
    pub fn official_linear() -> Self {
        let v = ViewConfig::official_linear_train();
        Self { policy: "official-linear".into(), view_a: v.clone(), view_b: v }
    }
    /// The seed's symmetric policy.
    pub fn keras_seed() -> Self {
        Self { policy: "keras-seed".into(), view_a: ViewConfig::keras_seed(), view_b: ViewConfig::keras_seed() }
    }
    /// solo-learn's asymmetric CIFAR policy (solarize 0.0 on A, 0.2 on B).
    pub fn cifar_asymmetric() -> Self {
        Self {
            policy: "cifar-asymmetric".into(),
            view_a: ViewConfig::cifar_asymmetric(0.0),
            view_b: ViewConfig::cifar_asymmetric(0.2),
        }
    }
    /// The official Barlow Twins ImageNet policy (blur 1.0 / 0.1, solarize 0.0 / 0.2).
    pub fn imagenet_official() -> Self {
        Self {
            policy: "imagenet-official".into(),
            view_a: ViewConfig::imagenet_official(1.0, 0.0),
            view_b: ViewConfig::imagenet_official(0.1, 0.2),
        }
    }
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self::keras_seed()
    }
}
