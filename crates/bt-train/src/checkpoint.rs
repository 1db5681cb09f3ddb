//! Training checkpoints: one safetensors file holding the model (PyTorch state-dict names,
//! `encoder.*` / `projector.*`), the optimizer state (`optimizer/<key>`), and the run position
//! and config hash in the metadata; sealed with a payload CRC and written atomically
//! ([`store::write_atomic`](crate::store::write_atomic)).
//!
//! Why one file: a checkpoint is consistent by construction (model and optimizer from the same
//! step), and the atomic rename makes "the file exists" mean "the checkpoint is whole".
use crate::error::{Error, Result};
use crate::store::{self as ckpt_store, Position};
use crate::tensors::{read_safetensors, safetensors_bytes};
use bt_model::BarlowTwins;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

/// Metadata value of `format`.
pub const FORMAT: &str = "bt-train-checkpoint/1";
const OPT: &str = "optimizer/";

/// Writes a checkpoint atomically.
pub fn save(
    path: &Path,
    model: &BarlowTwins,
    optimizer_state: Vec<(String, Tensor)>,
    pos: Position,
    config_hash: &str,
    seed: u64,
    config_toml: &str,
) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> =
        model.variables().iter().map(|v| (v.name.clone(), v.tensor.shallow_clone())).collect();
    tensors.extend(optimizer_state.into_iter().map(|(k, t)| (format!("{OPT}{k}"), t)));
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("epochs_done".to_string(), pos.epochs_done.to_string()),
        ("batch_in_epoch".to_string(), pos.batch_in_epoch.to_string()),
        ("step".to_string(), pos.step.to_string()),
        ("config_hash".to_string(), config_hash.to_string()),
        ("seed".to_string(), seed.to_string()),
        // The config itself, so a refused resume can say which keys differ.
        ("config".to_string(), config_toml.to_string()),
        (ckpt_store::CRC_KEY.to_string(), ckpt_store::CRC_PLACEHOLDER.to_string()),
    ]);
    let mut bytes = safetensors_bytes(&tensors, meta)?;
    ckpt_store::seal(&mut bytes)?;
    ckpt_store::write_atomic(path, &bytes)?;
    Ok(())
}

/// A checkpoint read back.
pub struct Loaded {
    /// Model variables by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state, keys without the `optimizer/` prefix.
    pub optimizer: Vec<(String, Tensor)>,
    /// Position.
    pub position: Position,
    /// Config hash at save time.
    pub config_hash: String,
}

/// Reads a training checkpoint.
pub fn load(path: &Path) -> Result<Loaded> {
    // A damaged file is an error naming it, before anything is read into the model.
    ckpt_store::verify_file(path)?;
    let (tensors, meta) = read_safetensors(path)?;
    if meta.get("format").map(String::as_str) != Some(FORMAT) {
        return Err(Error::checkpoint(path, format!("not a training checkpoint (metadata format != {FORMAT})")));
    }
    let position = ckpt_store::position_of(path, &meta)?;
    let (optimizer, model): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(k, _)| k.starts_with(OPT));
    let optimizer = optimizer.into_iter().map(|(k, t)| (k[OPT.len()..].to_string(), t)).collect();
    Ok(Loaded { model, optimizer, position, config_hash: meta.get("config_hash").cloned().unwrap_or_default() })
}

/// Copies named tensors into the model, strictly: every model variable must be there with its
/// shape and dtype, and nothing else. The model is unchanged on error.
pub fn copy_into_model(model: &BarlowTwins, tensors: &[(String, Tensor)], origin: &Path) -> Result<()> {
    let by_name: HashMap<&str, &Tensor> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut pairs = Vec::new();
    for v in model.variables() {
        let t = by_name
            .get(v.name.as_str())
            .ok_or_else(|| Error::checkpoint(origin, format!("model variable `{}` missing", v.name)))?;
        if t.size() != v.tensor.size() || t.kind() != v.tensor.kind() {
            return Err(Error::checkpoint(
                origin,
                format!(
                    "`{}` is {:?} {:?}, the model expects {:?} {:?} (built from a different config?)",
                    v.name,
                    t.size(),
                    t.kind(),
                    v.tensor.size(),
                    v.tensor.kind()
                ),
            ));
        }
        pairs.push((v, *t));
    }
    if by_name.len() != pairs.len() {
        let known: std::collections::HashSet<&str> = model.variables().iter().map(|v| v.name.as_str()).collect();
        let extra: Vec<&&str> = by_name.keys().filter(|k| !known.contains(**k)).take(4).collect();
        return Err(Error::checkpoint(origin, format!("tensors the model does not have: {extra:?}")));
    }
    tch::no_grad(|| {
        for (v, t) in pairs {
            v.tensor.shallow_clone().f_copy_(t)?;
        }
        Ok(())
    })
}

/// What [`load_weights`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsKind {
    /// A training checkpoint (model + optimizer).
    Training,
    /// `model.safetensors`: encoder and projector.
    Full,
    /// `encoder.safetensors`: the encoder alone (the projector keeps its initial values).
    EncoderOnly,
}

/// Loads model weights from a training checkpoint, a full model file or an encoder file.
pub fn load_weights(model: &BarlowTwins, path: &Path) -> Result<WeightsKind> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "does not exist"));
    }
    if ckpt_store::sort_key(path).is_some() {
        ckpt_store::verify_file(path)?;
    }
    let (_, meta) = read_safetensors(path)?;
    if meta.get("format").map(String::as_str) == Some(FORMAT) {
        let l = load(path)?;
        copy_into_model(model, &l.model, path)?;
        return Ok(WeightsKind::Training);
    }
    Ok(match model.load(path)? {
        bt_model::CheckpointKind::Full => WeightsKind::Full,
        bt_model::CheckpointKind::EncoderOnly => WeightsKind::EncoderOnly,
    })
}
