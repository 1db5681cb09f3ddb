//! Helpers of the issue 7 tests (`reliability.rs`, `bad_input.rs`): a tiny, fast, deterministic
//! pretraining config, live stderr of a running `bt-cli`, and tensor-by-tensor comparison of
//! checkpoint files.
#![allow(dead_code)]
use bt_e2e::{bt_cli, text};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A width-2 CIFAR ResNet-18 with a 16-16 projector on 64 synthetic images, batch 16: 4 steps
/// per epoch, 8 epochs = 32 steps, about 2 s on one core. One intra-op thread (see [`cmd`]).
pub const TINY: &[&str] = &[
    "--preset",
    "demo",
    "--synthetic",
    "--set",
    "model.width=2",
    "--set",
    "model.projector=[16, 16]",
    "--set",
    "data.synthetic_train=64",
    "--set",
    "data.synthetic_test=32",
    "--set",
    "data.batch_size=16",
    "--set",
    "run.epochs=8",
    "--set",
    "data.workers=1",
    // Every step's record: the reference comparisons and the signal tests count step lines.
    "--set",
    "run.log_every=1",
    "--device",
    "cpu",
];
/// Total steps of [`TINY`].
pub const TINY_STEPS: usize = 32;

/// `bt-cli pretrain TINY --out DIR EXTRA...`, with one OpenMP thread: the same thread count on
/// every run (CPU kernels are deterministic for a fixed count) and no spin-waiting against the
/// other test processes on a small machine.
pub fn pretrain_cmd(out: &Path, extra: &[&str]) -> Command {
    let mut c = bt_cli();
    c.arg("pretrain").args(TINY).arg("--out").arg(out).args(extra);
    c.env("OMP_NUM_THREADS", "1").env("RUST_LOG", "info");
    for k in ["BT_FAULT_CHECKPOINT_WRITE", "BT_FAULT_CHECKPOINT_SLOW", "BT_FAULT_CHECKPOINT_HANG", "BT_FAULT_NONFINITE"]
    {
        c.env_remove(k);
    }
    c
}

/// Runs a command to completion.
pub fn output(mut c: Command) -> Output {
    c.output().expect("spawn bt-cli")
}

/// Asserts success and returns stdout + stderr.
pub fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({:?}):\n{}", o.status, text(o));
    text(o)
}

/// A running process whose stderr lines arrive on a channel.
pub struct Live {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Live {
    pub fn spawn(mut c: Command) -> Self {
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn bt-cli");
        let err = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { child, lines: rx, seen: Vec::new() }
    }

    /// Waits for a stderr line containing `needle` (the `n`-th such line); `None` if the process
    /// ended first or 60 s passed.
    pub fn wait_for(&mut self, needle: &str, n: usize) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut count = self.seen.iter().filter(|l| l.contains(needle)).count();
        if count >= n {
            return self.seen.iter().filter(|l| l.contains(needle)).nth(n - 1).cloned();
        }
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let hit = l.contains(needle);
                    self.seen.push(l.clone());
                    if hit {
                        count += 1;
                        if count >= n {
                            return Some(l);
                        }
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Sends a signal by name (`INT`, `TERM`).
    pub fn signal(&self, sig: &str) {
        let s = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(s.success());
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.drain()
    }

    /// Waits for exit; returns the exit code (None if killed by a signal) and all stderr lines.
    pub fn finish(mut self) -> (Option<i32>, Vec<String>) {
        let st = self.child.wait().unwrap();
        (st.code(), self.drain())
    }

    /// Like [`Live::finish`], but SIGKILLs the process and panics with `why` and its stderr if it
    /// has not exited within `limit`.
    pub fn finish_within(mut self, limit: Duration, why: &str) -> (Option<i32>, Vec<String>) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.code(), self.drain());
            }
            if t0.elapsed() > limit {
                let lines = self.kill9();
                panic!("{why} (still running after {limit:?}):\n{}", lines.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn drain(mut self) -> Vec<String> {
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        self.seen
    }
}

/// Checkpoint files of a run folder, oldest position first (numeric order of
/// `epoch-NNNN[-bMMMMMM]`).
pub fn checkpoints(run: &Path) -> Vec<PathBuf> {
    let key = |p: &PathBuf| -> (usize, usize) {
        let s = p
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_start_matches("epoch-")
            .trim_end_matches(".safetensors")
            .to_string();
        match s.split_once("-b") {
            Some((e, b)) => (e.parse().unwrap(), b.parse().unwrap()),
            None => (s.parse().unwrap(), 0),
        }
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect())
        .unwrap_or_default();
    v.sort_by_key(key);
    v
}

/// Every tensor of a safetensors file: name -> (dtype, shape, raw bytes); and the metadata.
/// Tensors by name as `(dtype, shape, bytes)`, and the metadata, of a safetensors file.
pub type RawTensors = (BTreeMap<String, (String, Vec<usize>, Vec<u8>)>, BTreeMap<String, String>);

pub fn tensors(path: &Path) -> RawTensors {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
    let map = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (format!("{:?}", v.dtype()), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (map, meta.metadata().clone().unwrap_or_default().into_iter().collect())
}

/// Asserts two safetensors files hold the same tensors, bit for bit; returns how many.
pub fn assert_same_tensors(a: &Path, b: &Path) -> usize {
    let (ta, _) = tensors(a);
    let (tb, _) = tensors(b);
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "{} vs {}: tensor names",
        a.display(),
        b.display()
    );
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!((&va.0, &va.1), (&vb.0, &vb.1), "{k}: dtype/shape");
        assert!(va.2 == vb.2, "{k} differs between {} and {}", a.display(), b.display());
    }
    ta.len()
}

/// Every file under `dir` (relative path -> bytes): "nothing was overwritten" is equality.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(dir, dir, &mut m);
    m
}

/// `(step, loss)` of every `kind = step` line of a run's metrics.
pub fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "step")
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .collect()
}

/// A small deterministic generator for "random" kill moments (reproducible failures).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A scratch folder `<cargo tmp>/<prefix>-<pid>` private to this test process (several
/// `cargo test` runs may share the target folder), after removing the ones of processes that
/// are gone.
pub fn private_scratch(prefix: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(&format!("{prefix}-")).and_then(|p| p.parse::<u32>().ok()) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = root.join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
