//! The run folder: every artifact of one pretraining run under one directory, and the one
//! primitive all of them are written with ([`atomic_write`]).
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
use anyhow::{bail, Context, Result};
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
        std::fs::create_dir_all(dir.join("checkpoints"))
            .with_context(|| format!("cannot create run folder {}", dir.display()))?;
        let probe = dir.join(".write-probe");
        File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .with_context(|| format!("run folder {} is not writable", dir.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(Self { dir })
    }

    /// An existing run folder (it must hold `config.toml`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        if !dir.join("config.toml").is_file() {
            bail!(
                "{} is not a run folder (no config.toml); run `bt-cli pretrain --out {}` first",
                dir.display(),
                dir.display()
            );
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

    /// Checkpoints present, oldest position first (mid-epoch ones included; see `ckpt_store`).
    pub fn list_checkpoints(&self) -> Vec<PathBuf> {
        crate::ckpt_store::list(&self.checkpoints())
    }

    /// Removes all but the newest `keep` checkpoints.
    pub fn prune_checkpoints(&self, keep: usize) -> Result<()> {
        let all = self.list_checkpoints();
        if all.len() > keep {
            for p in &all[..all.len() - keep] {
                std::fs::remove_file(p).with_context(|| format!("removing old checkpoint {}", p.display()))?;
            }
        }
        Ok(())
    }

    /// The config the run was made with.
    pub fn load_config(&self) -> Result<bt_config::Config> {
        let text = std::fs::read_to_string(self.config())
            .with_context(|| format!("reading {}", self.config().display()))?;
        let mut b = bt_config::ConfigBuilder::new();
        b.merge_str(&text, &self.config())?;
        Ok(b.build()?)
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees either the old file or the whole
/// new one: a temporary file in the same folder, `fsync`, `rename` over the target, then `fsync`
/// of the folder so the rename itself is durable. Same folder, because `rename` is only atomic
/// within one filesystem.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write_with(path, "", |f| f.write_all(bytes))
}

/// [`atomic_write`] with the file's contents produced by `fill` (which may fail: the temporary
/// file is then removed and `path` is untouched). `what` prefixes the path in the error context.
pub fn atomic_write_with(
    path: &Path,
    what: &str,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Directory fsync: without it the rename may be lost on power failure.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {what}{}", path.display()));
    }
    Ok(())
}

/// 64-bit FNV-1a of a string, as 16 hex digits: identifies a config in checkpoints (not a
/// security hash; it only has to change when the config does).
pub fn fnv1a_hex(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.bin");
        atomic_write(&p, b"first").unwrap();
        atomic_write(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn atomic_write_into_missing_folder_fails_with_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nope/x.bin");
        let e = format!("{:#}", atomic_write(&p, b"x").unwrap_err());
        assert!(e.contains("nope/x.bin"), "{e}");
    }

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

    #[test]
    fn fnv_matches_published_vectors() {
        // Test vectors from the FNV reference (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a_hex(""), "cbf29ce484222325");
        assert_eq!(fnv1a_hex("a"), "af63dc4c8601ec8c");
    }
}
