//! safetensors checkpoints under PyTorch state-dict names.
//!
//! A full checkpoint holds every variable (`encoder.*`, `projector.*`); an encoder checkpoint
//! holds the encoder's variables with the `encoder.` prefix stripped, i.e. exactly a torchvision
//! `ResNet.state_dict()` without `fc` (see docs/CHECKPOINTS.md). Tensors are written as stored
//! (f32 weights and buffers, int64 `num_batches_tracked`), so save -> load is bit-exact.
//! Every libtorch call is a fallible `f_` one: a failure (out of memory while copying to the
//! CPU, ...) is a [`ModelError`], not a panic.
use crate::layers::NamedVar;
use crate::{BarlowTwins, Encoder, ModelError, Result};
use std::collections::{HashMap, HashSet};
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

pub(crate) const ENC: &str = "encoder.";
const PROJ: &str = "projector.";

fn describe(t: &Tensor) -> String {
    format!("{:?} {:?}", t.size(), t.kind())
}

/// Writes `(file name, tensor)` pairs as safetensors (CPU, contiguous copies).
fn write<'a>(path: &Path, tensors: impl Iterator<Item = (String, &'a Tensor)>) -> Result<()> {
    let tensors = tensors
        .map(|(name, t)| {
            let t = t
                .detach()
                .f_to_device(Device::Cpu)
                .and_then(|t| t.f_contiguous())
                .map_err(|source| ModelError::Torch { op: "copying for saving", name: name.clone(), source })?;
            Ok((name, t))
        })
        .collect::<Result<Vec<(String, Tensor)>>>()?;
    Tensor::write_safetensors(&tensors, path).map_err(|source| ModelError::Io {
        path: path.into(),
        op: "write",
        source,
    })
}

fn read(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(Tensor::read_safetensors(path)
        .map_err(|source| ModelError::Io { path: path.into(), op: "read", source })?
        .into_iter()
        .collect())
}

/// Strict load of `expected` (`(file name, variable)` pairs) from `file`: every name present
/// with the variable's shape and dtype, and no file tensor outside `expected` except those for
/// which `ignore` holds. Nothing is copied unless everything matches.
fn load_strict(
    path: &Path,
    kind: CheckpointKind,
    file: &HashMap<String, Tensor>,
    expected: Vec<(String, &NamedVar)>,
    ignore: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut pairs = Vec::new();
    let mut missing = Vec::new();
    for (key, v) in &expected {
        match file.get(key) {
            Some(t) if t.size() == v.tensor.size() && t.kind() == v.tensor.kind() => pairs.push((*v, t)),
            Some(t) => {
                return Err(ModelError::Mismatch {
                    path: path.into(),
                    key: key.clone(),
                    expected: describe(&v.tensor),
                    found: describe(t),
                })
            }
            None => missing.push(key.clone()),
        }
    }
    let names: HashSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
    let mut unexpected: Vec<String> =
        file.keys().filter(|k| !names.contains(k.as_str()) && !ignore(k)).cloned().collect();
    unexpected.sort();
    if !missing.is_empty() || !unexpected.is_empty() {
        return Err(ModelError::Keys { path: path.into(), kind, missing, unexpected });
    }
    tch::no_grad(|| {
        for (v, t) in pairs {
            v.tensor.shallow_clone().f_copy_(t).map_err(|source| ModelError::Torch {
                op: "loading",
                name: v.name.clone(),
                source,
            })?;
        }
        Ok(())
    })
}

fn kind_of(file: &HashMap<String, Tensor>) -> CheckpointKind {
    if file.keys().any(|k| k.starts_with(ENC) || k.starts_with(PROJ)) {
        CheckpointKind::Full
    } else {
        CheckpointKind::EncoderOnly
    }
}

impl BarlowTwins {
    /// Writes every variable (encoder and projector) to a safetensors file.
    pub fn save_full(&self, path: impl AsRef<Path>) -> Result<()> {
        write(path.as_ref(), self.vars.iter().map(|v| (v.name.clone(), &v.tensor)))
    }

    /// Writes the encoder alone, under torchvision's names (`conv1.weight`, `bn1.running_mean`,
    /// `layer1.0.conv1.weight`, ...): for a CIFAR ResNet, a state dict that torchvision's
    /// `resnet18` with the CIFAR stem loads with `strict=True`. Same as
    /// [`Encoder::save`] on [`encoder`](Self::encoder).
    pub fn save_encoder(&self, path: impl AsRef<Path>) -> Result<()> {
        self.encoder.save(path)
    }

    /// Loads a checkpoint written by [`save_full`](Self::save_full) (all variables) or
    /// [`save_encoder`](Self::save_encoder) (the encoder; the projector is left as it is),
    /// told apart by the `encoder.` prefix. Strict: every expected name must be present with
    /// the same shape and dtype, and no other name may be; the model is unchanged on error
    /// (except after a libtorch failure half-way through the copy, [`ModelError::Torch`]).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<CheckpointKind> {
        let path = path.as_ref();
        let file = read(path)?;
        let kind = kind_of(&file);
        let expected = match kind {
            CheckpointKind::Full => self.vars.iter().map(|v| (v.name.clone(), v)).collect(),
            CheckpointKind::EncoderOnly => self.encoder.named(),
        };
        load_strict(path, kind, &file, expected, |_| false)?;
        Ok(kind)
    }
}

impl Encoder {
    fn named(&self) -> Vec<(String, &NamedVar)> {
        self.vars.iter().map(|v| (v.name.clone(), v)).collect()
    }

    /// Writes the encoder's variables under torchvision's names (as
    /// [`BarlowTwins::save_encoder`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path, &[])
    }

    /// [`save`](Self::save) with more tensors in the same file, e.g. a classifier head as
    /// `fc.weight`/`fc.bias`: a torchvision `ResNet.state_dict()` with its `fc`.
    pub fn save_with(&self, path: impl AsRef<Path>, extra: &[(&str, &Tensor)]) -> Result<()> {
        let named = self.named().into_iter().map(|(n, v)| (n, &v.tensor));
        write(path.as_ref(), named.chain(extra.iter().map(|&(n, t)| (n.to_string(), t))))
    }

    /// Loads an encoder checkpoint ([`save`](Self::save), [`BarlowTwins::save_encoder`]) or the
    /// `encoder.*` tensors of a full one ([`BarlowTwins::save_full`]; its `projector.*` tensors
    /// are skipped). Strict otherwise, as [`BarlowTwins::load`].
    pub fn load(&self, path: impl AsRef<Path>) -> Result<CheckpointKind> {
        let path = path.as_ref();
        let file = read(path)?;
        let kind = kind_of(&file);
        let expected = match kind {
            CheckpointKind::EncoderOnly => self.named(),
            CheckpointKind::Full => self.vars.iter().map(|v| (format!("{ENC}{}", v.name), v)).collect(),
        };
        let full = kind == CheckpointKind::Full;
        load_strict(path, kind, &file, expected, |k| full && k.starts_with(PROJ))?;
        Ok(kind)
    }
}
