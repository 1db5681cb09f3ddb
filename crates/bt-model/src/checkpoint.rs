//! safetensors checkpoints under PyTorch state-dict names.
//!
//! A full checkpoint holds every variable (`encoder.*`, `projector.*`); an encoder checkpoint
//! holds the encoder's variables with the `encoder.` prefix stripped, i.e. exactly a torchvision
//! `ResNet.state_dict()` without `fc` (see docs/CHECKPOINTS.md). Tensors are written as stored
//! (f32 weights and buffers, int64 `num_batches_tracked`), so save -> load is bit-exact.
use crate::{BarlowTwins, ModelError, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Device, Tensor};

/// What a checkpoint file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// Every variable, names starting `encoder.` / `projector.`.
    Full,
    /// The encoder alone, torchvision names (no prefix).
    EncoderOnly,
}

const ENC: &str = "encoder.";

fn describe(t: &Tensor) -> String {
    format!("{:?} {:?}", t.size(), t.kind())
}

impl BarlowTwins {
    fn write(&self, path: &Path, encoder_only: bool) -> Result<()> {
        let tensors: Vec<(String, Tensor)> = self
            .vars
            .iter()
            .filter_map(|v| {
                let name = if encoder_only {
                    v.name.strip_prefix(ENC)?.to_string()
                } else {
                    v.name.clone()
                };
                Some((name, v.tensor.detach().to_device(Device::Cpu).contiguous()))
            })
            .collect();
        Tensor::write_safetensors(&tensors, path).map_err(|source| ModelError::Io {
            path: path.into(),
            op: "write",
            source,
        })
    }

    /// Writes every variable (encoder and projector) to a safetensors file.
    pub fn save_full(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write(path.as_ref(), false)
    }

    /// Writes the encoder alone, under torchvision's names (`conv1.weight`, `bn1.running_mean`,
    /// `layer1.0.conv1.weight`, ...): for a CIFAR ResNet, a state dict that torchvision's
    /// `resnet18` with the CIFAR stem loads with `strict=True`.
    pub fn save_encoder(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write(path.as_ref(), true)
    }

    /// Loads a checkpoint written by [`save_full`](Self::save_full) (all variables) or
    /// [`save_encoder`](Self::save_encoder) (the encoder; the projector is left as it is),
    /// told apart by the `encoder.` prefix. Strict: every expected name must be present with
    /// the same shape and dtype, and no other name may be; the model is unchanged on error.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<CheckpointKind> {
        let path = path.as_ref();
        let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|source| ModelError::Io {
                path: path.into(),
                op: "read",
                source,
            })?
            .into_iter()
            .collect();
        let kind = if file
            .keys()
            .any(|k| k.starts_with(ENC) || k.starts_with("projector."))
        {
            CheckpointKind::Full
        } else {
            CheckpointKind::EncoderOnly
        };
        let file_name = |model_name: &str| -> Option<String> {
            match kind {
                CheckpointKind::Full => Some(model_name.to_string()),
                CheckpointKind::EncoderOnly => model_name.strip_prefix(ENC).map(str::to_string),
            }
        };
        let mut pairs = Vec::new();
        let mut missing = Vec::new();
        for v in &self.vars {
            let Some(key) = file_name(&v.name) else {
                continue;
            };
            match file.get(&key) {
                Some(t) if t.size() == v.tensor.size() && t.kind() == v.tensor.kind() => {
                    pairs.push((v, t))
                }
                Some(t) => {
                    return Err(ModelError::Mismatch {
                        path: path.into(),
                        key,
                        expected: describe(&v.tensor),
                        found: describe(t),
                    })
                }
                None => missing.push(key),
            }
        }
        let expected: std::collections::HashSet<String> = self
            .vars
            .iter()
            .filter_map(|v| file_name(&v.name))
            .collect();
        let mut unexpected: Vec<String> = file
            .keys()
            .filter(|k| !expected.contains(*k))
            .cloned()
            .collect();
        unexpected.sort();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(ModelError::Keys {
                path: path.into(),
                kind,
                missing,
                unexpected,
            });
        }
        tch::no_grad(|| {
            for (v, t) in pairs {
                v.tensor.shallow_clone().copy_(t);
            }
        });
        Ok(kind)
    }
}
