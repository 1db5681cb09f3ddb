//! Export for serving: the encoder as a TorchScript module any libtorch program loads
//! (`torch.jit.load` in Python, `tch::CModule::load`, C++ `torch::jit::load`).
//!
//! The module is *traced*: one inference-mode forward (batch norm on its running statistics)
//! of an example batch is recorded with the weights baked in as constants, so the file needs
//! nothing from this crate. Input: `N x 3 x H x W` f32 images, already normalized the way the
//! model was trained (`(x / 255 - mean) / std` per channel, the config's `data.mean`/`data.std`;
//! ImageNet's for the ImageNet presets). Output: `N x F` features (the encoder without `fc`).
//! The torchvision ResNets accept any `H x W` after tracing (adaptive pooling); the
//! `keras-resnet34` traces its TF `same` padding for the example size only.
use crate::layers::Role;
use crate::{Encoder, ModelError, Result};
use std::path::Path;
use tch::{CModule, Device, Kind, Tensor};

impl Encoder {
    /// Traces an inference-mode forward of a `1 x 3 x h x w` example and writes the TorchScript
    /// module to `path` (method `forward`). The encoder must be on the CPU in f32.
    pub fn export_torchscript(&self, path: impl AsRef<Path>, h: i64, w: i64) -> Result<()> {
        let path = path.as_ref();
        let fail =
            |e: tch::TchError| ModelError::Foreign { path: path.into(), reason: format!("TorchScript export: {e}") };
        if self.bf16 {
            return Err(ModelError::Foreign { path: path.into(), reason: "export needs the f32 encoder".into() });
        }
        // The tracer bakes untraced tensors in as constants, which it refuses for tensors that
        // require grad: switch that off for the trace and back on after, whatever happens.
        let trainable: Vec<&Tensor> =
            self.vars.iter().filter(|v| v.role == Role::Trainable).map(|v| &v.tensor).collect();
        for t in &trainable {
            let _ = t.set_requires_grad(false);
        }
        // The constants are the live variables (no copy): save before they require grad again,
        // or the file holds tensor constants that require grad, which no loader accepts.
        let example = Tensor::zeros([1, 3, h, w], (Kind::Float, Device::Cpu));
        let saved = tch::no_grad(|| {
            CModule::create_by_tracing("BarlowTwinsEncoder", "forward", &[example], &mut |xs| {
                vec![self.forward(&xs[0], false)]
            })
        })
        .and_then(|mut m| {
            m.set_eval();
            m.save(path)
        });
        for t in &trainable {
            let _ = t.set_requires_grad(true);
        }
        saved.map_err(fail)
    }
}
