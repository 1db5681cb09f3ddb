//! The encoder as a model of its own: the backbone without the projector.
use crate::layers::{output_f32, refresh_all, Ctx, LowPrecision, NamedVar, Registry, Scope};
use crate::resnet::{KerasResnet34, Stem, TorchResnet};
use crate::{Arch, LayerRow, ModelConfig, ModelError, Precision, Result};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use tch::{nn, Tensor};

enum Net {
    Keras(KerasResnet34),
    Torch(TorchResnet),
}

/// The encoder of [`ModelConfig::arch`] (the projector is not built): `N x 3 x H x W` images
/// to `N x F` features, F = [`feature_dim`](Self::feature_dim).
///
/// Built alone ([`Encoder::new`]) its variables are named like torchvision's `ResNet` without
/// `fc` (`conv1.weight`, `layer1.0.bn1.running_var`) relative to the given `nn::Path`, so
/// [`save`](Self::save) writes a torchvision state dict and [`load`](Self::load) reads one (or
/// the `encoder.*` part of a full Barlow Twins checkpoint). Inside a [`crate::BarlowTwins`] it
/// is the same type, under `encoder.` ([`crate::BarlowTwins::encoder`]).
///
/// Implements [`nn::ModuleT`]: `forward_t(x, train)` is [`forward`](Self::forward).
///
/// # Panics
/// A training-mode forward panics (libtorch error) on a batch of one: batch norm needs more than
/// one value per channel.
pub struct Encoder {
    net: Net,
    /// Names relative to the encoder (torchvision names).
    pub(crate) vars: Vec<NamedVar>,
    feature_dim: i64,
    pub(crate) bf16: bool,
    /// The bf16 weight slots of the convolutions (see [`Encoder::refresh_low_precision_weights`]).
    pub(crate) low: Vec<Arc<LowPrecision>>,
    arch: Arch,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("arch", &self.arch)
            .field("feature_dim", &self.feature_dim)
            .field("variables", &self.vars.len())
            .finish()
    }
}

/// `model.width` must be positive (every architecture scales its channels by it).
pub(crate) fn check_width(cfg: &ModelConfig) -> Result<()> {
    if cfg.width <= 0 {
        return Err(ModelError::Config { key: "model.width", reason: format!("{} is not positive", cfg.width) });
    }
    Ok(())
}

/// The libtorch error a build recorded, if any (see [`Registry`]).
pub(crate) fn take_error(reg: &RefCell<Registry>) -> Result<()> {
    match reg.borrow_mut().error.take() {
        Some((name, source)) => Err(ModelError::Torch { op: "allocating", name, source }),
        None => Ok(()),
    }
}

impl Encoder {
    /// Builds the encoder under `vs` (variables named as torchvision's, relative to `vs`).
    ///
    /// # Panics
    /// Where [`try_new`](Self::try_new) returns an error.
    pub fn new(vs: &nn::Path, cfg: &ModelConfig) -> Encoder {
        Self::try_new(vs, cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Builds the encoder, or says which config key is unusable or which variable libtorch could
    /// not allocate ([`ModelError::Torch`]: out of memory, an unavailable device). After an
    /// allocation error `vs` may hold some of the encoder's variables.
    pub fn try_new(vs: &nn::Path, cfg: &ModelConfig) -> Result<Encoder> {
        check_width(cfg)?;
        let reg = Rc::new(RefCell::new(Registry::default()));
        let mut enc = Self::build(&Scope::root(vs, reg.clone()), cfg);
        take_error(&reg)?;
        enc.vars = std::mem::take(&mut reg.borrow_mut().vars);
        enc.low = std::mem::take(&mut reg.borrow_mut().low);
        Ok(enc)
    }

    /// The network under `s` (its variables go to `s`'s registry; `vars` is left empty for the
    /// caller to fill).
    pub(crate) fn build(s: &Scope, cfg: &ModelConfig) -> Encoder {
        let (net, feature_dim) = match cfg.arch {
            Arch::KerasResnet34 => {
                let e = KerasResnet34::new(s, cfg.width);
                let f = e.features();
                (Net::Keras(e), f)
            }
            Arch::CifarResnet18
            | Arch::CifarResnet34
            | Arch::CifarResnet50
            | Arch::Resnet18
            | Arch::Resnet34
            | Arch::Resnet50 => {
                let (stem, depth) = match cfg.arch {
                    Arch::CifarResnet18 => (Stem::Cifar, 18),
                    Arch::CifarResnet34 => (Stem::Cifar, 34),
                    Arch::CifarResnet50 => (Stem::Cifar, 50),
                    Arch::Resnet18 => (Stem::ImageNet, 18),
                    Arch::Resnet34 => (Stem::ImageNet, 34),
                    _ => (Stem::ImageNet, 50),
                };
                let e = TorchResnet::new(s, stem, depth, cfg.width, cfg.zero_init_residual);
                let f = e.features();
                (Net::Torch(e), f)
            }
        };
        Encoder { net, vars: Vec::new(), feature_dim, bf16: false, low: Vec::new(), arch: cfg.arch }
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// Output width F (512 for ResNet-18/34 at width 64, 2048 for ResNet-50).
    pub fn feature_dim(&self) -> i64 {
        self.feature_dim
    }

    /// As [`crate::BarlowTwins::set_precision`].
    pub fn set_precision(&mut self, p: Precision) {
        self.bf16 = p == Precision::Bf16;
        if !self.bf16 {
            // Nothing fails when clearing.
            let _ = refresh_all(&self.low, None);
        }
    }

    /// As [`crate::BarlowTwins::refresh_low_precision_weights`], for the encoder's convolutions.
    pub fn refresh_low_precision_weights(&self, channels_last: bool) -> Result<()> {
        if self.bf16 {
            refresh_all(&self.low, Some(channels_last))?;
        }
        Ok(())
    }

    /// Every variable in creation order, under its torchvision name (no `encoder.` prefix).
    pub fn variables(&self) -> &[NamedVar] {
        &self.vars
    }

    pub(crate) fn forward_ctx(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        match &self.net {
            Net::Keras(e) => e.forward(x, ctx),
            Net::Torch(e) => e.forward(x, ctx),
        }
    }

    /// Features `N x F`. `train`: batch norm uses batch statistics and updates its running
    /// statistics.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        output_f32(self.forward_ctx(x, &Ctx::plain(train, self.bf16)))
    }

    /// Per-layer rows traced by an inference-mode forward of one `3 x h x w` zero image.
    pub fn layer_table(&self, h: i64, w: i64) -> Vec<LayerRow> {
        crate::trace_layers(&self.vars, h, w, |x, ctx| {
            let _ = self.forward_ctx(x, ctx);
        })
    }
}

impl nn::ModuleT for Encoder {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.forward(xs, train)
    }
}
