//! The run folder: every artifact of one pretraining run under one directory. Every file is
//! written whole through [`atomic_write`] (a reader never sees a torn file), except the
//! append-only logs `metrics.jsonl` and `events.out.tfevents.*`: one flushed write per
//! record, a torn last record skipped by readers and rolled back on resume.
//!
//! ```text
//! runs/NAME/
//!   config.toml            effective config, written before step 0 (reloads to the same run)
//!   metrics.jsonl          one JSON object per line: kind = step | epoch | knn | run
//!   augment.png            original | view A | view B preview grid, written at start
//!   loss.png               loss curve, refreshed every epoch
//!   checkpoints/epoch-0001.safetensors ...   model + optimizer + position (last K kept)
//!   model.safetensors      final full model (encoder.* + projector.*)
//!   encoder.safetensors    final encoder alone, torchvision names
//!   eval_linear_<protocol>.json, eval_knn.json
//!   report.md              the page a person reads first
//! ```
use crate::error::{refuse, Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Handle on a run folder; knows the name of every artifact.
#[derive(Debug, Clone)]
pub struct RunFolder {
    dir: PathBuf,
}

impl RunFolder {
    /// Creates the folder (and `checkpoints/`) if needed and checks that it is writable.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("checkpoints")).map_err(|e| Error::io("cannot create run folder", &dir, e))?;
        let probe = dir.join(".write-probe");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(|e| Error::io("checking that it can write into run folder", &dir, e))?;
        let _ = std::fs::remove_file(probe);
        Ok(Self { dir })
    }

    /// An existing run folder (it must hold `config.toml`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.join("config.toml").is_file() {
            refuse!("{} is not a run folder (no config.toml): pretrain into it first", dir.display());
        }
        Ok(Self { dir })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    /// `loss.png`.
    pub fn loss_png(&self) -> PathBuf {
        self.dir.join("loss.png")
    }
    /// `augment.png`.
    pub fn augment_png(&self) -> PathBuf {
        self.dir.join("augment.png")
    }
    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join("checkpoints")
    }
    /// `checkpoints/epoch-NNNN.safetensors` (epochs counted from 1: the number of finished epochs).
    pub fn checkpoint(&self, epochs_done: usize) -> PathBuf {
        self.checkpoints().join(format!("epoch-{epochs_done:04}.safetensors"))
    }
    /// `model.safetensors`: the final full model.
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
    /// `encoder.safetensors`: the final encoder, torchvision names.
    pub fn encoder(&self) -> PathBuf {
        self.dir.join("encoder.safetensors")
    }
    /// `eval_<name>.json`.
    pub fn eval(&self, name: &str) -> PathBuf {
        self.dir.join(format!("eval_{name}.json"))
    }
    /// `report.md`.
    pub fn report(&self) -> PathBuf {
        self.dir.join("report.md")
    }

    /// Checkpoints present, oldest position first (mid-epoch ones included; see `store`).
    pub fn list_checkpoints(&self) -> Vec<PathBuf> {
        crate::store::list(&self.checkpoints())
    }

    /// Removes all but the newest `keep` checkpoints.
    pub fn prune_checkpoints(&self, keep: usize) -> Result<()> {
        crate::store::prune(&self.checkpoints(), keep)
    }

    /// The config the run was made with.
    pub fn load_config(&self) -> Result<bt_config::Config> {
        let text = std::fs::read_to_string(self.config()).map_err(|e| Error::io("reading", self.config(), e))?;
        let mut b = bt_config::ConfigBuilder::new();
        b.merge_str(&text, &self.config())?;
        Ok(b.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_newest() {
        let d = tempfile::tempdir().unwrap();
        let r = RunFolder::create(d.path()).unwrap();
        for e in 1..=5 {
            std::fs::write(r.checkpoint(e), b"x").unwrap();
        }
        r.prune_checkpoints(2).unwrap();
        assert_eq!(r.list_checkpoints(), vec![r.checkpoint(4), r.checkpoint(5)]);
    }
}
