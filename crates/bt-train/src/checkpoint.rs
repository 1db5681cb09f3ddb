//! Training checkpoints: one safetensors file holding the model (PyTorch state-dict names,
//! `encoder.*` / `projector.*`), the optimizer state (`optimizer/<key>`), and the run position
//! and config hash in the metadata; sealed with a payload CRC and written atomically
//! ([`store::write_atomic`](crate::store::write_atomic)).
//!
//! [`Writer`] does the same on a background thread (one write at a time), so a large checkpoint
//! does not stall training.
//!
//! Why one file: a checkpoint is consistent by construction (model and optimizer from the same
//! step), and the atomic rename makes "the file exists" mean "the checkpoint is whole".
use crate::error::{Error, Result};
use crate::store::{self as ckpt_store, Position};
use crate::tensors::{read_safetensors, HostTensors};
use bt_model::BarlowTwins;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use tch::Tensor;

/// Metadata value of `format`.
pub const FORMAT: &str = "bt-train-checkpoint/1";
const OPT: &str = "optimizer/";
/// Key prefix, within the optimizer state, of the online probe's state (`probe.rs`).
pub const PROBE: &str = "online_probe/";

fn metadata(pos: Position, id: &RunIdentity) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("epochs_done".to_string(), pos.epochs_done.to_string()),
        ("batch_in_epoch".to_string(), pos.batch_in_epoch.to_string()),
        ("step".to_string(), pos.step.to_string()),
        ("config_hash".to_string(), id.config_hash.clone()),
        ("seed".to_string(), id.seed.to_string()),
        // The config itself, so a refused resume can say which keys differ.
        ("config".to_string(), id.config_toml.clone()),
        (ckpt_store::CRC_KEY.to_string(), ckpt_store::CRC_PLACEHOLDER.to_string()),
    ])
}

fn named_tensors(model: &BarlowTwins, optimizer_state: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let mut tensors: Vec<(String, Tensor)> =
        model.variables().iter().map(|v| (v.name.clone(), v.tensor.shallow_clone())).collect();
    tensors.extend(optimizer_state.into_iter().map(|(k, t)| (format!("{OPT}{k}"), t)));
    tensors
}

/// Serializes, seals and writes a host copy (the part [`Writer`] runs on its thread).
fn write_host(path: &Path, host: HostTensors, meta: HashMap<String, String>) -> Result<()> {
    let mut bytes = host.serialize(meta)?;
    drop(host);
    ckpt_store::seal(&mut bytes)?;
    ckpt_store::write_atomic(path, &bytes)
}

/// Writes a checkpoint atomically, on this thread.
pub fn save(
    path: &Path,
    model: &BarlowTwins,
    optimizer_state: Vec<(String, Tensor)>,
    pos: Position,
    config_hash: &str,
    seed: u64,
    config_toml: &str,
) -> Result<()> {
    let id = RunIdentity { config_hash: config_hash.into(), seed, config_toml: config_toml.into() };
    let host = HostTensors::copy(&named_tensors(model, optimizer_state))?;
    write_host(path, host, metadata(pos, &id))
}

/// What every checkpoint of a run records besides its tensors and position.
#[derive(Debug, Clone)]
pub struct RunIdentity {
    /// [`store::config_hash`](crate::store::config_hash) of the run's config.
    pub config_hash: String,
    /// `run.seed`.
    pub seed: u64,
    /// The config as TOML.
    pub config_toml: String,
}

/// A checkpoint that is on disk (renamed into place, folder synced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The file.
    pub path: PathBuf,
    /// The position it holds.
    pub position: Position,
}

/// Checkpoints written in the background: [`Writer::save`] copies the model and optimizer state
/// to host memory on the caller's thread (the state is consistent: training has not moved on),
/// then a thread serializes, seals (CRC), writes, fsyncs, renames and prunes while training
/// continues. A keras-seed checkpoint is ~0.9 GB; only the host copy stays on the critical path.
///
/// Guarantees, the same as the synchronous [`save`]: at most one write is in flight (a new
/// `save` first waits for the previous one); old checkpoints are pruned only by the writer
/// thread after its own file is renamed into place, so the newest valid checkpoint is never
/// removed while a write is in flight, and a SIGKILL mid-write leaves a temp file (removed at the
/// next start) next to the previous checkpoints. A failed write is returned, naming its file, by
/// the next [`save`](Writer::save), [`poll`](Writer::poll) or [`wait`](Writer::wait). Dropping
/// the writer waits for the write in flight (its error is then lost: drop happens on error
/// paths, where another error is already being returned).
pub struct Writer {
    dir: PathBuf,
    keep: usize,
    id: RunIdentity,
    in_flight: Option<(Written, JoinHandle<Result<()>>)>,
}

impl Writer {
    /// A writer for the checkpoint folder `dir`, keeping the newest `keep` checkpoints.
    pub fn new(dir: impl Into<PathBuf>, keep: usize, id: RunIdentity) -> Self {
        Self { dir: dir.into(), keep, id, in_flight: None }
    }

    /// Waits for the previous write, copies the state to host memory and starts writing `path`.
    /// Returns the previous checkpoint if one completed since the last call.
    pub fn save(
        &mut self,
        path: &Path,
        model: &BarlowTwins,
        optimizer_state: Vec<(String, Tensor)>,
        pos: Position,
    ) -> Result<Option<Written>> {
        let done = self.wait()?;
        let host = HostTensors::copy(&named_tensors(model, optimizer_state))?;
        let meta = metadata(pos, &self.id);
        let (p, dir, keep) = (path.to_path_buf(), self.dir.clone(), self.keep);
        let handle = std::thread::Builder::new()
            .name("bt-checkpoint".into())
            .spawn(move || {
                write_host(&p, host, meta)?;
                ckpt_store::prune(&dir, keep)
            })
            .map_err(|e| Error::io("starting the checkpoint writer thread for", path, e))?;
        self.in_flight = Some((Written { path: path.to_path_buf(), position: pos }, handle));
        Ok(done)
    }

    /// The write in flight if it has finished (without blocking), else `None`.
    pub fn poll(&mut self) -> Result<Option<Written>> {
        match &self.in_flight {
            Some((_, h)) if h.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    /// Blocks until the write in flight (if any) is on disk, and returns it.
    pub fn wait(&mut self) -> Result<Option<Written>> {
        let Some((w, h)) = self.in_flight.take() else { return Ok(None) };
        match h.join() {
            Ok(r) => r.map(|()| Some(w)),
            Err(_) => Err(Error::checkpoint(&w.path, "the checkpoint writer thread panicked")),
        }
    }

    /// Whether `path` is the checkpoint being written now.
    pub fn in_flight(&self, path: &Path) -> bool {
        self.in_flight.as_ref().is_some_and(|(w, _)| w.path == path)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.wait();
    }
}

/// A checkpoint read back.
pub struct Loaded {
    /// Model variables by name.
    pub model: Vec<(String, Tensor)>,
    /// Optimizer state, keys without the `optimizer/` prefix.
    pub optimizer: Vec<(String, Tensor)>,
    /// The online probe's state ([`crate::probe::OnlineProbe::state`]), keys without the
    /// `optimizer/online_probe/` prefix; empty when the run had no probe.
    pub probe: Vec<(String, Tensor)>,
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
    let (probe, optimizer): (Vec<_>, Vec<_>) =
        optimizer.into_iter().map(|(k, t)| (k[OPT.len()..].to_string(), t)).partition(|(k, _)| k.starts_with(PROBE));
    let probe = probe.into_iter().map(|(k, t)| (k[PROBE.len()..].to_string(), t)).collect();
    let config_hash = meta.get("config_hash").cloned().unwrap_or_default();
    Ok(Loaded { model, optimizer, probe, position, config_hash })
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

#[cfg(test)]
mod tests {
    use super::*;
    use bt_config::{Arch, ModelConfig};
    use tch::{nn, Device, Kind};

    fn model() -> (nn::VarStore, BarlowTwins) {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig { arch: Arch::CifarResnet18, width: 4, projector: vec![16, 16], ..Default::default() };
        let m = BarlowTwins::new(&vs.root(), &cfg);
        (vs, m)
    }

    fn id() -> RunIdentity {
        RunIdentity { config_hash: "abc".into(), seed: 7, config_toml: "x = 1".into() }
    }

    fn pos(step: usize) -> Position {
        Position { epochs_done: step, batch_in_epoch: 0, step }
    }

    fn opt_state() -> Vec<(String, Tensor)> {
        vec![("lamb.m.w".into(), Tensor::arange(6, (Kind::Float, Device::Cpu)))]
    }

    #[test]
    fn background_write_equals_the_synchronous_one_and_holds_the_state_at_save_time() {
        let d = tempfile::tempdir().unwrap();
        let (_vs, m) = model();
        let (a, b) = (d.path().join("epoch-0001.safetensors"), d.path().join("sync/epoch-0001.safetensors"));
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        save(&b, &m, opt_state(), pos(1), "abc", 7, "x = 1").unwrap();
        let mut w = Writer::new(d.path(), 3, id());
        assert_eq!(w.save(&a, &m, opt_state(), pos(1)).unwrap(), None);
        // Training goes on while the file is written: the checkpoint must not see it.
        tch::no_grad(|| {
            for v in m.variables() {
                let _ = v.tensor.shallow_clone().fill_(123.0);
            }
        });
        assert_eq!(w.wait().unwrap(), Some(Written { path: a.clone(), position: pos(1) }));
        // The same tensors and metadata as the synchronous save (the header's key order may
        // differ: the metadata is a HashMap).
        let ((ta, ma), (tb, mb)) = (read_safetensors(&a).unwrap(), read_safetensors(&b).unwrap());
        assert_eq!(ma, mb);
        assert_eq!(ta.len(), tb.len());
        for ((na, xa), (nb, xb)) in ta.iter().zip(&tb) {
            assert!(na == nb && xa.equal(xb), "{na} vs {nb}");
        }
        let l = load(&a).unwrap();
        assert_eq!(l.position, pos(1));
        assert!(l.model.iter().all(|(_, t)| t.numel() == 0 || t.abs().max().double_value(&[]) != 123.0));
        assert_eq!(w.wait().unwrap(), None, "nothing in flight");
    }

    #[test]
    fn one_write_in_flight_prunes_after_its_rename_and_reports_completions() {
        let d = tempfile::tempdir().unwrap();
        let (_vs, m) = model();
        let mut w = Writer::new(d.path(), 2, id());
        let mut done = Vec::new();
        for s in 1..=4 {
            let p = d.path().join(ckpt_store::file_name(pos(s)));
            done.extend(w.save(&p, &m, opt_state(), pos(s)).unwrap());
            assert!(w.in_flight(&p));
            // The previous write is complete and still there (pruning keeps the newest two).
            let names = ckpt_store::list(d.path());
            assert!(names.len() <= 2 && (s == 1 || names.contains(&d.path().join(ckpt_store::file_name(pos(s - 1))))));
        }
        while done.len() < 4 {
            done.extend(w.poll().unwrap());
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(done.iter().map(|w| w.position.step).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let left: Vec<_> = ckpt_store::list(d.path()).iter().map(|p| ckpt_store::sort_key(p).unwrap().0).collect();
        assert_eq!(left, [3, 4]);
    }

    #[test]
    fn a_failed_write_is_returned_by_the_next_call_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let (_vs, m) = model();
        let mut w = Writer::new(d.path(), 2, id());
        let bad = d.path().join("missing-folder/epoch-0001.safetensors");
        w.save(&bad, &m, opt_state(), pos(1)).unwrap();
        let ok = d.path().join("epoch-0002.safetensors");
        let e = w.save(&ok, &m, opt_state(), pos(2)).unwrap_err().to_string();
        assert!(e.contains("missing-folder/epoch-0001.safetensors"), "{e}");
        assert!(!w.in_flight(&ok), "the failed save started nothing");
    }
}
