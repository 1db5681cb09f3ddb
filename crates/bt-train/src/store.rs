//! Crash safety of the checkpoint folder, and where a run stands ([`Position`]): sealed files, names that order by position, finding
//! the newest *valid* checkpoint, and what a resume must put back (the metrics file).
//!
//! # Why a checksum on top of the atomic rename
//! `atomic_write` (temp file, fsync, rename, fsync of the folder) guarantees a checkpoint is
//! either absent or whole *as far as this process knows*. It cannot help against a file damaged
//! later (a full disk on a network filesystem, a bad sector, a partial copy by a person). So each
//! checkpoint carries `payload_crc32`, the CRC-32 of every byte after the safetensors header, and
//! loading re-checks it: a damaged file is an error naming the file, and auto-resume falls back
//! to the previous checkpoint. The CRC is patched into the already-serialized header (a fixed
//! width placeholder), so sealing costs one pass over the bytes and no second serialization.
//!
//! # Names
//! `epoch-NNNN.safetensors` at the end of epoch NNNN; `epoch-NNNN-bMMMMMM.safetensors` for a
//! mid-epoch checkpoint (NNNN epochs done, MMMMMM batches into the next one: a signal,
//! `run.max_steps`, `run.checkpoint_every_steps`). Ordering is numeric on `(NNNN, MMMMMM)`, not
//! lexicographic (`-` sorts before `.`).
//!
//! # Test-only fault hooks (environment variables; never set them in real runs)
//! - `BT_FAULT_CHECKPOINT_WRITE=after_bytes:N`: the checkpoint write fails with an I/O error
//!   after N bytes (simulates a full disk).
//! - `BT_FAULT_CHECKPOINT_SLOW=MS`: the checkpoint is written in 32 chunks with an MS ms pause
//!   after each, and `bt-fault: checkpoint write started <file>` is printed to stderr first, so
//!   a test can SIGKILL the process in the middle of a write.
//! - `BT_FAULT_CHECKPOINT_HANG=N`: the N-th checkpoint write of the process (1-based) writes half
//!   of its bytes, prints `bt-fault: checkpoint write hanging <file>` and then never finishes, so
//!   a test can interrupt a write without racing against its end.
use crate::error::{Error, Result};
use bt_config::Config;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Metadata key of the payload checksum (8 lowercase hex digits).
pub const CRC_KEY: &str = "payload_crc32";
/// What [`CRC_KEY`] holds until [`seal`] patches it; same width as the real value.
pub const CRC_PLACEHOLDER: &str = "00000000";

/// Where a run stands. The training loop is a function of (config, `Position`, weights,
/// optimizer state); everything random derives from `run.seed` and these coordinates, so a
/// run restarted from a checkpoint continues with the same batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Finished epochs.
    pub epochs_done: usize,
    /// Batches already consumed in epoch `epochs_done` (0 at an epoch boundary).
    pub batch_in_epoch: usize,
    /// Optimizer steps taken (the schedule's step index).
    pub step: usize,
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

/// `cfg` with the keys that do not change the training trajectory reset to their defaults:
/// they may differ between a run and its resumption (`run.max_steps` is how a run is stopped
/// early on purpose): `data.workers`, `data.queue_capacity`, `run.device`,
/// `run.checkpoint_every[_steps]`, `run.keep_checkpoints`, `run.knn_every`, `run.log_every`,
/// `run.max_steps`, `run.on_nonfinite`, `run.spike_*`, `run.tensorboard` and `[eval]`.
fn without_volatile(cfg: &Config) -> Config {
    let mut c = without_run_control(cfg);
    c.eval = Config::default().eval;
    c
}

/// `cfg` without the keys that do not change what a run computes (workers, device, logging,
/// checkpoint cadence...); `[eval]` kept.
fn without_run_control(cfg: &Config) -> Config {
    let d = Config::default();
    let mut c = cfg.clone();
    c.data.workers = d.data.workers;
    c.data.queue_capacity = d.data.queue_capacity;
    c.run.device = d.run.device;
    c.run.checkpoint_every = d.run.checkpoint_every;
    c.run.checkpoint_every_steps = d.run.checkpoint_every_steps;
    c.run.keep_checkpoints = d.run.keep_checkpoints;
    c.run.knn_every = d.run.knn_every;
    c.run.log_every = d.run.log_every;
    c.run.tensorboard = d.run.tensorboard;
    c.run.max_steps = d.run.max_steps;
    c.run.on_nonfinite = d.run.on_nonfinite;
    c.run.spike_factor = d.run.spike_factor;
    c.run.spike_window = d.run.spike_window;
    c.run.spike_patience = d.run.spike_patience;
    c
}

/// Hash of everything in `cfg` that shapes the trajectory (model, data, augmentation, loss,
/// optimizer, schedule, seed, epochs, precision); run-control keys and `[eval]` are left out.
pub fn config_hash(cfg: &Config) -> String {
    fnv1a_hex(&without_volatile(cfg).to_toml())
}

/// `key: old -> new` for every trajectory key that differs between two configs (TOML texts).
pub fn config_diff(old_toml: &str, new: &Config) -> Vec<String> {
    diff_of(old_toml, new, without_volatile)
}

/// Hash of what an evaluation's result depends on: [`config_hash`]'s keys and `[eval]`.
pub fn eval_config_hash(cfg: &Config) -> String {
    fnv1a_hex(&without_run_control(cfg).to_toml())
}

/// [`config_diff`] over [`eval_config_hash`]'s keys.
pub fn eval_config_diff(old_toml: &str, new: &Config) -> Vec<String> {
    diff_of(old_toml, new, without_run_control)
}

fn diff_of(old_toml: &str, new: &Config, keep: fn(&Config) -> Config) -> Vec<String> {
    let Ok(old) = Config::from_toml_str(old_toml) else {
        return vec!["<the checkpoint's config does not parse with this version>".into()];
    };
    let flat = |c: &Config| -> Vec<(String, String)> {
        let v = serde_json::to_value(keep(c)).expect("config serializes");
        let mut out = Vec::new();
        flatten(&v, String::new(), &mut out);
        out
    };
    let a: HashMap<String, String> = flat(&old).into_iter().collect();
    let mut diffs: Vec<String> = flat(new)
        .into_iter()
        .filter(|(k, v)| a.get(k) != Some(v))
        .map(|(k, v)| format!("{k}: {} -> {v}", a.get(&k).map(String::as_str).unwrap_or("<absent>")))
        .collect();
    diffs.sort();
    diffs
}

fn flatten(v: &serde_json::Value, prefix: String, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(t) => {
            for (k, v) in t {
                flatten(v, if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, out);
            }
        }
        other => out.push((prefix, other.to_string())),
    }
}

/// File name of the checkpoint at `pos` (see the module doc).
pub fn file_name(pos: Position) -> String {
    if pos.batch_in_epoch == 0 {
        format!("epoch-{:04}.safetensors", pos.epochs_done)
    } else {
        format!("epoch-{:04}-b{:06}.safetensors", pos.epochs_done, pos.batch_in_epoch)
    }
}

/// `(epochs done, batches into the next epoch)` from a checkpoint file name.
pub fn sort_key(path: &Path) -> Option<(usize, usize)> {
    let stem = path.file_name()?.to_str()?.strip_prefix("epoch-")?.strip_suffix(".safetensors")?;
    match stem.split_once("-b") {
        Some((e, b)) => Some((e.parse().ok()?, b.parse().ok()?)),
        None => Some((stem.parse().ok()?, 0)),
    }
}

/// Checkpoint files in `dir`, oldest position first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(usize, usize, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| sort_key(&p).map(|(e, b)| (e, b, p)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, p)| p).collect()
}

/// Patches the CRC-32 of the payload (everything after the header) into a serialized
/// safetensors image whose metadata holds [`CRC_KEY`] = [`CRC_PLACEHOLDER`].
pub fn seal(bytes: &mut [u8]) -> Result<()> {
    let bad = |why: String| Error::checkpoint("<being written>", format!("cannot seal: {why}"));
    let (hlen, header) = header_of(bytes).map_err(bad)?;
    let needle = format!("\"{CRC_KEY}\":\"{CRC_PLACEHOLDER}\"");
    let at = header.find(&needle).ok_or_else(|| bad("no checksum placeholder in its header".into()))?;
    let crc = crc32fast::hash(&bytes[8 + hlen..]);
    let start = 8 + at + needle.len() - 1 - CRC_PLACEHOLDER.len();
    bytes[start..start + 8].copy_from_slice(format!("{crc:08x}").as_bytes());
    Ok(())
}

fn header_of(bytes: &[u8]) -> std::result::Result<(usize, &str), String> {
    if bytes.len() < 8 {
        return Err(format!("{} bytes: shorter than a safetensors header length", bytes.len()));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if hlen > bytes.len() - 8 {
        return Err(format!(
            "truncated: header claims {hlen} bytes, the file has {} after the length",
            bytes.len() - 8
        ));
    }
    let header = std::str::from_utf8(&bytes[8..8 + hlen]).map_err(|_| "header is not UTF-8".to_string())?;
    Ok((hlen, header))
}

/// Checks that `bytes` (the content of `path`) is a whole, unmodified checkpoint: a parseable
/// header, every tensor inside the file, and the payload CRC equal to the one recorded.
pub fn verify_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let bad = |why: String| Error::checkpoint(path, format!("corrupt or truncated: {why}"));
    let (hlen, _) = header_of(bytes).map_err(bad)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("bad header ({e:?})")))?;
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("bad layout ({e:?})")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let Some(want) = meta.get(CRC_KEY) else {
        return Err(bad(format!("no `{CRC_KEY}` in its metadata (written by an older version?)")));
    };
    let got = format!("{:08x}", crc32fast::hash(&bytes[8 + hlen..]));
    if &got != want {
        return Err(bad(format!("payload CRC-32 is {got}, the header records {want}")));
    }
    Ok(())
}

/// [`verify_bytes`] of a file.
pub fn verify_file(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("reading checkpoint", path, e))?;
    verify_bytes(path, &bytes)
}

/// The newest checkpoint in `dir` that verifies, and the newer ones that did not (with why).
pub fn latest_valid(dir: &Path) -> (Option<PathBuf>, Vec<(PathBuf, String)>) {
    let mut rejected = Vec::new();
    for p in list(dir).into_iter().rev() {
        match verify_file(&p) {
            Ok(()) => return (Some(p), rejected),
            Err(e) => rejected.push((p, e.to_string())),
        }
    }
    (None, rejected)
}

/// Removes all but the newest `keep` checkpoints of `dir` (by position, see [`list`]).
pub fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir);
    if all.len() > keep {
        for p in &all[..all.len() - keep] {
            std::fs::remove_file(p).map_err(|e| Error::io("removing old checkpoint", p, e))?;
        }
    }
    Ok(())
}

/// Removes temporary files of interrupted writes (`.NAME.tmp-PID`) from `dir`.
pub fn remove_stale_temps(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Drops the `step`/`epoch`/`knn` records after `step` from `metrics.jsonl` (they belong to
/// work the crash discarded and the resumed run will log again), keeping everything else, and
/// appends nothing. The file is rewritten atomically. Returns the number of records dropped.
pub fn rollback_metrics(path: &Path, step: usize) -> Result<usize> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(0) };
    let mut kept = String::with_capacity(text.len());
    let mut dropped = 0;
    for line in text.lines() {
        let v: Option<serde_json::Value> = serde_json::from_str(line).ok();
        let Some(v) = v else {
            // A torn last line from the crash.
            dropped += 1;
            continue;
        };
        let beyond = matches!(v["kind"].as_str(), Some("step" | "epoch" | "knn"))
            && v["step"].as_u64().is_some_and(|s| s as usize > step);
        if beyond {
            dropped += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if dropped > 0 {
        crate::atomic::atomic_write(path, kept.as_bytes())?;
    }
    Ok(dropped)
}

/// The metadata of a safetensors file, reading only its header.
pub fn read_meta(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |why: String| Error::checkpoint(path, format!("corrupt or truncated: {why}"));
    let mut f = File::open(path).map_err(|e| Error::io("opening checkpoint", path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(format!("no header length ({e})")))?;
    let hlen = u64::from_le_bytes(len);
    if hlen > 100 << 20 {
        return Err(bad(format!("header length {hlen} is implausible")));
    }
    let mut header = vec![0u8; hlen as usize];
    f.read_exact(&mut header).map_err(|e| bad(format!("header cut short ({e})")))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON ({e})")))?;
    Ok(v["__metadata__"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default())
}

/// The position recorded in a checkpoint's metadata.
pub fn position_of(path: &Path, meta: &HashMap<String, String>) -> Result<Position> {
    let num = |k: &str| -> Result<usize> {
        let v = meta.get(k).ok_or_else(|| Error::checkpoint(path, format!("metadata `{k}` missing")))?;
        v.parse().map_err(|_| Error::checkpoint(path, format!("metadata `{k}` = {v:?} is not a number")))
    };
    Ok(Position { epochs_done: num("epochs_done")?, batch_in_epoch: num("batch_in_epoch")?, step: num("step")? })
}

enum Fault {
    None,
    FailAfter(usize),
    Slow(u64),
    Hang,
}

/// Checkpoint writes started by this process (for `BT_FAULT_CHECKPOINT_HANG`).
static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn fault() -> Fault {
    let nth = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if std::env::var("BT_FAULT_CHECKPOINT_HANG").ok().and_then(|v| v.parse().ok()) == Some(nth) {
        return Fault::Hang;
    }
    if let Ok(v) = std::env::var("BT_FAULT_CHECKPOINT_WRITE") {
        if let Some(n) = v.strip_prefix("after_bytes:").and_then(|n| n.parse().ok()) {
            return Fault::FailAfter(n);
        }
    }
    if let Some(ms) = std::env::var("BT_FAULT_CHECKPOINT_SLOW").ok().and_then(|v| v.parse().ok()) {
        return Fault::Slow(ms);
    }
    Fault::None
}

/// Writes a sealed checkpoint image like `runfolder::atomic_write` (temp file in the same
/// folder, fsync, rename, fsync of the folder), with the test-only fault hooks of the module
/// doc. On error the temporary file is removed and the previous checkpoint is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic::atomic_write_with(path, "writing checkpoint", |f| {
        match fault() {
            Fault::None => f.write_all(bytes)?,
            Fault::FailAfter(n) => {
                f.write_all(&bytes[..n.min(bytes.len())])?;
                return Err(std::io::Error::other(format!(
                    "injected write failure after {n} bytes (BT_FAULT_CHECKPOINT_WRITE)"
                )));
            }
            Fault::Slow(ms) => {
                eprintln!("bt-fault: checkpoint write started {}", path.display());
                for chunk in bytes.chunks(bytes.len().div_ceil(32).max(1)) {
                    f.write_all(chunk)?;
                    f.flush()?;
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
            }
            Fault::Hang => {
                f.write_all(&bytes[..bytes.len() / 2])?;
                f.flush()?;
                eprintln!("bt-fault: checkpoint write hanging {}", path.display());
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(meta: HashMap<String, String>) -> Vec<u8> {
        let data: Vec<u8> = (0..64u8).collect();
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16], &data).unwrap();
        safetensors::tensor::serialize(vec![("w", view)], &Some(meta)).unwrap()
    }

    fn sealed() -> Vec<u8> {
        let mut b = image(HashMap::from([(CRC_KEY.to_string(), CRC_PLACEHOLDER.to_string())]));
        seal(&mut b).unwrap();
        b
    }

    #[test]
    fn sealed_file_verifies_and_any_flipped_or_missing_byte_is_caught() {
        let p = Path::new("ck/epoch-0001.safetensors");
        let b = sealed();
        verify_bytes(p, &b).unwrap();
        // The recorded CRC equals crc32fast of the payload, computed independently here.
        let hlen = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&b).unwrap();
        let want = format!("{:08x}", crc32fast::hash(&b[8 + hlen..]));
        assert_eq!(meta.metadata().as_ref().unwrap()[CRC_KEY], want);
        for i in [8 + hlen, b.len() - 1] {
            let mut c = b.clone();
            c[i] ^= 1;
            let e = verify_bytes(p, &c).unwrap_err().to_string();
            assert!(e.contains("epoch-0001.safetensors") && e.contains("CRC"), "{e}");
        }
        for cut in [0, 7, 20, b.len() - 1] {
            let e = verify_bytes(p, &b[..cut]).unwrap_err().to_string();
            assert!(e.contains("epoch-0001.safetensors") && e.contains("corrupt or truncated"), "{cut}: {e}");
        }
        let unsealed = image(HashMap::new());
        assert!(verify_bytes(p, &unsealed).unwrap_err().to_string().contains(CRC_KEY));
    }

    #[test]
    fn names_order_by_position_not_by_text() {
        let names = [
            "epoch-0002.safetensors",
            "epoch-0001-b000003.safetensors",
            "epoch-0001.safetensors",
            "epoch-0010.safetensors",
        ];
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::write(d.path().join(".epoch-0003.safetensors.tmp-1"), b"x").unwrap();
        let got: Vec<String> =
            list(d.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            got,
            [
                "epoch-0001.safetensors",
                "epoch-0001-b000003.safetensors",
                "epoch-0002.safetensors",
                "epoch-0010.safetensors"
            ]
        );
        let pos = Position { epochs_done: 1, batch_in_epoch: 3, step: 11 };
        assert_eq!(file_name(pos), "epoch-0001-b000003.safetensors");
        remove_stale_temps(d.path());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 4);
    }

    #[test]
    fn latest_valid_falls_back_over_damaged_files() {
        let d = tempfile::tempdir().unwrap();
        let b = sealed();
        std::fs::write(d.path().join("epoch-0001.safetensors"), &b).unwrap();
        std::fs::write(d.path().join("epoch-0002.safetensors"), &b[..b.len() / 2]).unwrap();
        let (best, rejected) = latest_valid(d.path());
        assert_eq!(best.unwrap(), d.path().join("epoch-0001.safetensors"));
        assert_eq!(rejected.len(), 1);
        assert!(rejected[0].1.contains("epoch-0002.safetensors"), "{}", rejected[0].1);
    }

    #[test]
    fn injected_write_failure_keeps_the_previous_file_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("epoch-0001.safetensors");
        write_atomic(&p, b"old").unwrap();
        std::env::set_var("BT_FAULT_CHECKPOINT_WRITE", "after_bytes:2");
        let e = write_atomic(&p, b"new contents").unwrap_err().to_string();
        std::env::remove_var("BT_FAULT_CHECKPOINT_WRITE");
        assert!(e.contains("epoch-0001.safetensors") && e.contains("injected"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn trajectory_hash_ignores_run_control_keys_and_diff_names_the_rest() {
        let a = Config::default();
        let mut b = a.clone();
        b.run.max_steps = 7;
        b.data.workers = 3;
        b.run.log_every = 9;
        assert_eq!(config_hash(&a), config_hash(&b));
        b.optim.lr = 0.5;
        b.run.seed = 1;
        assert_ne!(config_hash(&a), config_hash(&b));
        let diff = config_diff(&a.to_toml(), &b);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(
            diff[0].starts_with("optim.lr: 0.001 -> 0.5") && diff[1].starts_with("run.seed: 1024 -> 1"),
            "{diff:?}"
        );
    }

    #[test]
    fn fnv_matches_published_vectors() {
        // Test vectors from the FNV reference (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a_hex(""), "cbf29ce484222325");
        assert_eq!(fnv1a_hex("a"), "af63dc4c8601ec8c");
    }

    #[test]
    fn metrics_rollback_drops_only_discarded_work() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            "{\"kind\":\"run\",\"event\":\"start\"}\n{\"kind\":\"step\",\"step\":1}\n{\"kind\":\"step\",\"step\":2}\n\
             {\"kind\":\"epoch\",\"step\":2}\n{\"kind\":\"step\",\"step\":3}\n{\"kind\":\"st",
        )
        .unwrap();
        assert_eq!(rollback_metrics(&p, 2).unwrap(), 2);
        let t = std::fs::read_to_string(&p).unwrap();
        assert_eq!(t.lines().count(), 4, "{t}");
        assert!(!t.contains("\"step\":3"));
    }
}
