//! Stopping and resuming the evaluations that train for epochs (the official linear protocol's
//! 100, fine-tuning's 20), as `evaluate.py` resumes from its `checkpoint.pth`.
//!
//! After every epoch but the last, [`EvalControl`] writes the evaluation's whole state to its
//! resume file (beside the result: `eval_linear_official.state.safetensors`): the classifier,
//! the SGD momentum buffers, for fine-tuning the encoder with its batch-norm statistics, the
//! epochs done and the records so far (best top-1/top-5, history). The file is sealed with a
//! CRC and written atomically like a training checkpoint ([`crate::store::write_atomic`]), so a
//! process killed at any moment leaves the previous epoch's state whole. The same evaluation
//! started again continues after the last finished epoch, with the result an uninterrupted run
//! gives (the training views of epoch `e` are drawn from the seed and `e` alone).
//!
//! The file records the config it belongs to ([`store::eval_config_hash`]: the model, data,
//! augmentation, seed, precision and `[eval]` keys) and the weights evaluated; an evaluation
//! with other settings or other weights refuses it, naming what differs, rather than resume
//! someone else's progress or overwrite it ([`EvalControl::fresh`] starts over). The caller
//! removes it with [`EvalControl::finish`] once the result is saved.
//!
//! The [`StopToken`] is polled after every batch: a stop request ends the evaluation with
//! [`Error::Stopped`] (the partial epoch is dropped; the file holds the last whole one).
use crate::control::StopToken;
use crate::error::{Error, Result};
use crate::store;
use crate::tensors::{read_safetensors, HostTensors};
use bt_config::Config;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Metadata value of `format` in a resume file.
pub const FORMAT: &str = "bt-train-eval-state/1";

/// Where an epoch-based evaluation keeps its progress and how it is stopped.
#[derive(Debug, Clone, Default)]
pub struct EvalControl {
    /// The resume file; `None` keeps no state (a library call that runs to the end).
    pub state: Option<PathBuf>,
    /// The weights being evaluated, as the caller names them (recorded and checked on resume).
    pub weights: String,
    /// Ignore an existing resume file and start over (it is overwritten after the first epoch).
    pub fresh: bool,
    /// Polled after every batch.
    pub stop: StopToken,
}

/// What a resume file gives back.
pub(crate) struct Resumed {
    /// Epochs finished.
    pub epochs_done: usize,
    /// The evaluation's tensors by name.
    pub tensors: HashMap<String, Tensor>,
    /// The records of the finished epochs.
    pub records: Value,
}

impl EvalControl {
    /// Keeps state in `state` for the weights `weights`, stopped by `stop`.
    pub fn resumable(state: PathBuf, weights: impl Into<String>, fresh: bool, stop: StopToken) -> Self {
        Self { state: Some(state), weights: weights.into(), fresh, stop }
    }

    /// The resume file of the result file `result_json` (same folder and stem).
    pub fn state_path(result_json: &Path) -> PathBuf {
        result_json.with_extension("state.safetensors")
    }

    /// Removes the resume file (call once the result is saved).
    ///
    /// # Errors
    /// The removal failing for another reason than the file being absent.
    pub fn finish(&self) -> Result<()> {
        match &self.state {
            Some(p) => match std::fs::remove_file(p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("removing", p, e)),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// The progress of `protocol` saved for `cfg`, if any (none without a file or with `fresh`).
    pub(crate) fn load(&self, cfg: &Config, protocol: &str) -> Result<Option<Resumed>> {
        let Some(path) = &self.state else { return Ok(None) };
        if self.fresh || !path.exists() {
            return Ok(None);
        }
        let hint = "pass --fresh to start over (the file is then overwritten)";
        store::verify_file(path).map_err(|e| Error::Refused(format!("{e}; {hint}")))?;
        let (tensors, meta) = read_safetensors(path)?;
        let get = |k: &str| -> Result<&String> {
            meta.get(k).ok_or_else(|| Error::checkpoint(path, format!("metadata `{k}` missing; {hint}")))
        };
        if get("format")? != FORMAT {
            return Err(Error::checkpoint(path, format!("format {:?}, not {FORMAT:?}; {hint}", get("format")?)));
        }
        let mismatch = |what: String| {
            Error::Refused(format!(
                "{} holds the progress of {what}; rerun with the same settings to resume it, or {hint}",
                path.display()
            ))
        };
        if get("protocol")? != protocol {
            return Err(mismatch(format!("a {} evaluation, not {protocol}", get("protocol")?)));
        }
        if get("weights")? != &self.weights {
            return Err(mismatch(format!("the weights {}, not {}", get("weights")?, self.weights)));
        }
        if get("config_hash")? != &store::eval_config_hash(cfg) {
            let diff = store::eval_config_diff(get("config")?, cfg);
            return Err(mismatch(format!("another configuration ({})", diff.join(", "))));
        }
        let epochs_done: usize = get("epochs_done")?
            .parse()
            .map_err(|_| Error::checkpoint(path, format!("metadata `epochs_done` is not a number; {hint}")))?;
        let records = serde_json::from_str(get("records")?)?;
        tracing::info!("resuming {protocol} from {} ({epochs_done} epochs done)", path.display());
        Ok(Some(Resumed { epochs_done, tensors: tensors.into_iter().collect(), records }))
    }

    /// Writes the state after `epochs_done` epochs (atomically; no-op without a file).
    pub(crate) fn save(
        &self,
        cfg: &Config,
        protocol: &str,
        epochs_done: usize,
        tensors: &[(String, Tensor)],
        records: &Value,
    ) -> Result<()> {
        let Some(path) = &self.state else { return Ok(()) };
        let meta = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("protocol".to_string(), protocol.to_string()),
            ("weights".to_string(), self.weights.clone()),
            ("epochs_done".to_string(), epochs_done.to_string()),
            ("config_hash".to_string(), store::eval_config_hash(cfg)),
            ("config".to_string(), cfg.to_toml()),
            ("records".to_string(), records.to_string()),
            (store::CRC_KEY.to_string(), store::CRC_PLACEHOLDER.to_string()),
        ]);
        let mut bytes = HostTensors::copy(tensors)?.serialize(meta)?;
        store::seal(&mut bytes)?;
        store::write_atomic(path, &bytes)
    }

    /// [`Error::Stopped`] once a stop was requested: `epochs_done` whole epochs are kept.
    pub(crate) fn check_stop(&self, protocol: &str, epochs_done: usize, epochs: usize) -> Result<()> {
        let Some(interrupted) = self.stop.requested() else { return Ok(()) };
        let detail = match &self.state {
            Some(p) if epochs_done > 0 => {
                format!(
                    "during {protocol} epoch {} of {epochs}; {} holds epoch {epochs_done}",
                    epochs_done + 1,
                    p.display()
                )
            }
            _ => format!("during {protocol} epoch {} of {epochs}; nothing to resume from yet", epochs_done + 1),
        };
        Err(Error::Stopped { interrupted, detail })
    }
}

/// Copies the resume file's `name` into `dst` (the `what`'s tensor of the same shape), or an
/// error naming the entry that is missing or misshapen.
pub(crate) fn copy_into(tensors: &HashMap<String, Tensor>, name: &str, dst: &Tensor, what: &str) -> Result<()> {
    let src = take(tensors, name)?;
    if src.size() != dst.size() {
        crate::error::refuse!(
            "the resume file's `{name}` is {:?}, the {what}'s {:?}; pass --fresh to start over",
            src.size(),
            dst.size()
        );
    }
    tch::no_grad(|| dst.shallow_clone().f_copy_(&src))?;
    Ok(())
}

/// `tensors[name]`, or an error naming the resume file's missing entry.
pub(crate) fn take(tensors: &HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    tensors
        .get(name)
        .map(Tensor::shallow_clone)
        .ok_or_else(|| Error::Refused(format!("the resume file has no `{name}`; pass --fresh to start over")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The records come back bit for bit: values whose shortest decimal form the default
    /// serde_json parser reads 1 ulp off (seen in a 100-epoch CIFAR-10 run's history) need its
    /// `float_roundtrip` feature.
    #[test]
    fn records_and_tensors_survive_the_file_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let ctl = EvalControl::resumable(tmp.path().join("x.state.safetensors"), "w", false, StopToken::new());
        let cfg = Config::default();
        let losses: [f64; 5] =
            [1.9199903802490235, 1.8673827780151366, 1.8486025646591187, 0.09911436253643445, 0.09879583809693737];
        let history: Vec<Value> = losses.iter().map(|l| json!({"loss": l, "lr": l / 3.0})).collect();
        let records = json!({"best_top1": 0.4183, "best_top5": f64::NAN, "history": history});
        let t = Tensor::from_slice(&[1.5f32, -2.25]);
        ctl.save(&cfg, "official linear", 3, &[("fc.bias".into(), t.shallow_clone())], &records).unwrap();
        let r = ctl.load(&cfg, "official linear").unwrap().expect("a resume file");
        assert_eq!(r.epochs_done, 3);
        let got: Vec<f64> =
            r.records["history"].as_array().unwrap().iter().map(|h| h["loss"].as_f64().unwrap()).collect();
        for (g, w) in got.iter().zip(&losses) {
            assert_eq!(g.to_bits(), w.to_bits(), "{g:e} read back for {w:e}");
        }
        assert_eq!(r.records, records);
        assert!(take(&r.tensors, "fc.bias").unwrap().equal(&t));
        assert!(take(&r.tensors, "fc.weight").is_err());
        // Another protocol's evaluation does not take it.
        assert!(ctl.load(&cfg, "finetune").is_err());
        let fresh = EvalControl { fresh: true, ..ctl.clone() };
        assert!(fresh.load(&cfg, "official linear").unwrap().is_none(), "--fresh ignores the file");
        ctl.finish().unwrap();
        assert!(ctl.load(&cfg, "official linear").unwrap().is_none());
    }
}
