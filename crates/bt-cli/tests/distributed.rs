//! Issue 9: data-parallel pretraining with real processes over Gloo on 127.0.0.1.
//!
//! - Exactness: `bt-cli launch --nproc 2 -- pretrain` with global batch 2B (B per rank) ends with
//!   the same parameters as a single-process `bt-cli pretrain` with batch 2B, to 1e-5, for both
//!   loss implementations. Batch norm is per rank in data-parallel runs (no SyncBN), so the
//!   single process runs with `run.bn_batch = B` (batch-norm statistics over the same groups of B
//!   rows; see crates/bt-cli/src/dist.rs). The BN running statistics are left out of the
//!   comparison: a rank's are updated from its own rows only.
//! - Resume with another world size: a 2-rank checkpoint continued by one process equals one
//!   process throughout (to 1e-5).
//! - SyncBN (`model.projector_sync_bn`): 2 ranks equal one process whose projector normalizes
//!   over the whole global batch (encoder in groups of B), parameters and the projector's
//!   running statistics alike.
//! - Full SyncBN (`model.sync_bn = "all"`): 2 ranks equal one process on the global batch,
//!   parameters and every running statistic (encoder and projector) to 1e-5.
//! - A signal delivered to one rank only stops both at the same step, with a checkpoint.
//! - Ctrl-C as a terminal sends it (SIGINT to the launcher's process group as a whole, and a
//!   rank receiving it directly too) is one stop request: both ranks stop at the same step with
//!   a checkpoint, the launcher exits 130, and the same command resumes from that step.
//! - Failure: SIGKILL one worker mid-run; the launcher exits non-zero naming the lost rank well
//!   within the timeout, and nothing hangs (every wait has a deadline).
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const B: usize = 16;

fn bt_cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bt-cli"));
    c.env("RUST_LOG", "info").env("BT_DIST_TIMEOUT_S", "60");
    // A surrounding torchrun's variables must not leak into the single-process runs.
    for v in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"] {
        c.env_remove(v);
    }
    c
}

fn tiny(out: &Path, batch: usize, loss: &str, epochs: usize) -> Vec<String> {
    [
        "pretrain",
        "--preset",
        "demo",
        "--synthetic",
        "--device",
        "cpu",
        "--force",
        "--set",
        "model.width=4",
        "--set",
        "model.projector=[32, 32]",
        "--set",
        "data.synthetic_train=64",
        "--set",
        "data.synthetic_test=32",
        "--set",
        "data.workers=1",
        "--set",
        "run.knn_every=0",
        // LARS: its update is linear in the gradient. LAMB's Adam normalization g/(|g|+eps) turns
        // rounding noise on near-zero gradient elements (the reduction order differs between
        // one and two processes) into differences of ~lr x noise / eps (seen: 8e-4 after 4 steps
        // with eps 1e-6; 3.6e-7 with eps 1e-2, the same runs otherwise).
        "--set",
        "optim.name=lars",
        "--set",
        "optim.lr=0.05",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--set".into(),
        format!("data.batch_size={batch}"),
        "--set".into(),
        format!("run.epochs={epochs}"),
        "--set".into(),
        format!("loss.implementation={loss}"),
        "--out".into(),
        out.display().to_string(),
    ])
    .collect()
}

fn output_with_deadline(mut c: Command, limit: Duration) -> Output {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn bt-cli");
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "no exit within {limit:?}:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Trainable tensors of a model.safetensors (BN running statistics and counters left out).
fn params(path: &Path) -> Vec<(String, Vec<f32>)> {
    tensors(path, |n| !(n.contains("running_") || n.contains("num_batches_tracked")))
}

/// The f32 tensors of a model.safetensors whose name passes `keep`, sorted by name.
fn tensors(path: &Path, keep: impl Fn(&str) -> bool) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{n}");
            (n, t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The largest difference over every tensor and the tensor it is in; panics (the workspace's
/// comparison, `bt_testkit`) on a different tensor list, a length mismatch, a NaN or an infinity.
fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> (f64, String) {
    assert_eq!(a.iter().map(|x| &x.0).collect::<Vec<_>>(), b.iter().map(|x| &x.0).collect::<Vec<_>>());
    let mut worst = (0.0f64, String::new());
    for ((n, x), (_, y)) in a.iter().zip(b) {
        let d = bt_testkit::max_abs_diff(n, x, y).unwrap_or_else(|e| panic!("{e}")).diff;
        if d > worst.0 {
            worst = (d, n.clone());
        }
    }
    worst
}

#[test]
fn two_ranks_equal_one_process_with_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    for loss in ["reference", "fused"] {
        let single = dir.path().join(format!("single-{loss}"));
        let dp = dir.path().join(format!("dp-{loss}"));
        // 64 images, global batch 32: 2 steps per epoch, 2 epochs = 4 steps.
        let mut c = bt_cli();
        c.args(tiny(&single, 2 * B, loss, 2)).args(["--set", &format!("run.bn_batch={B}")]);
        let o = output_with_deadline(c, Duration::from_secs(300));
        assert!(o.status.success(), "single process ({loss}):\n{}", text(&o));
        let mut c = bt_cli();
        c.args(["launch", "--nproc", "2", "--"]).args(tiny(&dp, 2 * B, loss, 2));
        let o = output_with_deadline(c, Duration::from_secs(300));
        assert!(o.status.success(), "launch --nproc 2 ({loss}):\n{}", text(&o));
        let (a, b) = (params(&single.join("model.safetensors")), params(&dp.join("model.safetensors")));
        let (d, name) = max_diff(&a, &b);
        eprintln!("{loss}: max |single - 2 ranks| = {d:.3e} ({name})");
        assert!(d < 1e-5, "{loss}: parameters differ by {d:e} at {name}");
        // Control: the comparison can fail. Without the BN groups the single process normalizes
        // over all 2B rows and ends elsewhere.
        if loss == "reference" {
            let plain = dir.path().join("single-plain");
            let o = output_with_deadline(
                {
                    let mut c = bt_cli();
                    c.args(tiny(&plain, 2 * B, loss, 2));
                    c
                },
                Duration::from_secs(300),
            );
            assert!(o.status.success(), "{}", text(&o));
            let (d, _) = max_diff(&params(&plain.join("model.safetensors")), &b);
            assert!(d > 1e-4, "control: whole-batch BN should differ from per-rank BN, got {d:e}");
        }
        // Only rank 0 wrote the run folder: one metrics file, in the given folder.
        assert!(dp.join("metrics.jsonl").is_file());
    }
}

/// Runs a `bt-cli launch --nproc 2` command; once rank 0 has logged two step records, calls
/// `act` with the launcher's and rank 1's pids. Returns the launcher's status, its stderr lines
/// and whether `act` ran. Panics when the launcher is still running 60 s after `act` or 300 s
/// after the start.
fn launch_and_act(mut c: Command, out: &Path, act: impl Fn(i32, i32)) -> (std::process::ExitStatus, Vec<String>, bool) {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let t0 = Instant::now();
    let mut log = Vec::new();
    let mut pid1: Option<i32> = None;
    let mut acted_at = None;
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            if let Some(rest) = l.strip_prefix("launch: rank 1 pid ") {
                pid1 = rest.split_whitespace().next().and_then(|p| p.parse().ok());
            }
            log.push(l);
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        // Act once the run is training (rank 0 has written step metrics).
        let steps = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|s| s.matches("\"kind\":\"step\"").count())
            .unwrap_or(0);
        if acted_at.is_none() && steps >= 2 {
            act(child.id() as i32, pid1.expect("the launcher printed rank 1's pid"));
            acted_at = Some(Instant::now());
        }
        if acted_at.is_some_and(|k| k.elapsed() > Duration::from_secs(60)) {
            let _ = child.kill();
            panic!("the launcher did not exit within 60 s:\n{}", log.join("\n"));
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no training progress in 300 s:\n{}", log.join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    log.extend(rx.try_iter());
    (status, log, acted_at.is_some())
}

fn kill(signal: &str, pid: i32) {
    // `--` so that a negative pid (a process group) is not read as an option.
    assert!(Command::new("kill").args([signal, "--", &pid.to_string()]).status().unwrap().success());
}

/// The step of each `interrupted by SIGINT ... after step N` line (one per rank).
fn stop_steps(log: &[String]) -> Vec<usize> {
    log.iter()
        .filter(|l| l.contains("interrupted by SIGINT"))
        .filter_map(|l| l.split(" after step ").nth(1)?.split(';').next()?.trim().parse().ok())
        .collect()
}

#[test]
fn ctrl_c_to_the_launchers_process_group_is_one_stop_and_the_rerun_resumes_from_it() {
    // What a terminal does on Ctrl-C: SIGINT to the foreground process group as a whole. The
    // launcher runs in its own group here, as a shell job does. Rank 1 also gets the SIGINT
    // directly (as from a signal to the whole process tree), so it receives the stop twice: its
    // own and the launcher's forwarded copy. Both must be one stop request: every rank stops at
    // the same step with a checkpoint, the launcher exits 130, and the same command resumes.
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dp-int");
    let args = tiny(&out, 2 * B, "reference", 500);
    let mut c = bt_cli();
    c.args(["launch", "--nproc", "2", "--grace-s", "60", "--"]).args(&args).process_group(0);
    // Rank 1's own copy first (a terminal delivers to the whole group at once, before the
    // launcher can forward anything), then the launcher's group.
    let (status, log, sent) = launch_and_act(c, &out, |launcher, pid1| {
        kill("-INT", pid1);
        kill("-INT", -launcher);
    });
    let all = log.join("\n");
    assert!(sent, "the run finished before the signal:\n{all}");
    assert_eq!(status.code(), Some(130), "the launcher exits 130 after Ctrl-C:\n{all}");
    for r in 0..2 {
        let line = log
            .iter()
            .find(|l| l.starts_with(&format!("launch: rank {r} (pid")))
            .unwrap_or_else(|| panic!("rank {r} exit line:\n{all}"));
        assert!(line.ends_with("stopped: exit code 130"), "rank {r} stopped with a checkpoint: {line}\n{all}");
    }
    let steps = stop_steps(&log);
    assert_eq!(steps.len(), 2, "one stop line per rank:\n{all}");
    assert_eq!(steps[0], steps[1], "both ranks stopped at the same step:\n{all}");
    let stop = steps[0];
    assert!(!all.contains("terminating them"), "nobody needed terminating:\n{all}");

    // The same command again (without --force): it resumes from the stop step.
    let mut c = bt_cli();
    let rerun: Vec<String> = args.into_iter().filter(|a| a != "--force").collect();
    let max = format!("run.max_steps={}", stop + 1);
    c.args(["launch", "--nproc", "2", "--"]).args(&rerun).args(["--set", &max]);
    let o = output_with_deadline(c, Duration::from_secs(300));
    let t = text(&o);
    assert!(o.status.success(), "the rerun:\n{t}");
    assert!(t.contains("resuming from") && t.contains(&format!("(step {stop})")), "resumed at {stop}:\n{t}");
    // One step later it stops at run.max_steps: it continued from the stop step, not from 0.
    assert!(t.contains(&format!("stopped at step {} (run.max_steps", stop + 1)), "one step after {stop}:\n{t}");
}

#[test]
fn a_killed_rank_makes_the_launcher_fail_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dp-kill");
    let mut c = bt_cli();
    // Long enough that it is still running when rank 1 is killed.
    c.args(["launch", "--nproc", "2", "--grace-s", "20", "--"]).args(tiny(&out, 2 * B, "reference", 500));
    let (status, log, killed) = launch_and_act(c, &out, |_, pid| kill("-9", pid));
    let all = log.join("\n");
    assert!(killed, "the run finished before the kill:\n{all}");
    assert!(!status.success(), "launcher exited 0 after a lost rank:\n{all}");
    assert!(all.contains("rank 1 of 2 failed first"), "the launcher names the lost rank:\n{all}");
    // The survivor stopped on its own (error naming the lost peer) or was terminated after the
    // grace period; either way it is not running any more (the launcher waited for it).
    assert!(all.contains("launch: rank 0"), "{all}");
}

#[test]
fn a_two_rank_checkpoint_resumes_in_one_process() {
    // Checkpoints hold the global position: 2 ranks stop after 2 of 4 steps, one process finishes
    // the run, and the result equals one process doing all 4 steps. `run.bn_batch = B` in every
    // run keeps the config (and its hash) the same; with 2 ranks of B rows it changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let (split, whole) = (dir.path().join("split"), dir.path().join("whole"));
    let bn = format!("run.bn_batch={B}");
    let no_force = |out: &Path| -> Vec<String> {
        tiny(out, 2 * B, "reference", 2).into_iter().filter(|a| a != "--force").collect()
    };
    let mut c = bt_cli();
    c.args(["launch", "--nproc", "2", "--"]).args(tiny(&split, 2 * B, "reference", 2)).args([
        "--set",
        &bn,
        "--set",
        "run.max_steps=2",
    ]);
    let o = output_with_deadline(c, Duration::from_secs(300));
    assert!(o.status.success(), "2 ranks, first half:\n{}", text(&o));
    assert!(!split.join("model.safetensors").exists(), "stopped early: no final model yet");
    let mut c = bt_cli();
    c.args(no_force(&split)).args(["--set", &bn]);
    let o = output_with_deadline(c, Duration::from_secs(300));
    assert!(o.status.success(), "1 process, second half:\n{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming"), "it resumed:\n{}", text(&o));
    let mut c = bt_cli();
    c.args(tiny(&whole, 2 * B, "reference", 2)).args(["--set", &bn]);
    let o = output_with_deadline(c, Duration::from_secs(300));
    assert!(o.status.success(), "1 process, whole run:\n{}", text(&o));
    let (d, name) = max_diff(&params(&split.join("model.safetensors")), &params(&whole.join("model.safetensors")));
    eprintln!("resumed with another world size: max diff {d:.3e} ({name})");
    assert!(d < 1e-5, "resumed run differs by {d:e} at {name}");
}

#[test]
fn sync_bn_two_ranks_equal_one_process_normalizing_the_projector_over_the_global_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (single, dp, grouped) = (dir.path().join("single"), dir.path().join("dp"), dir.path().join("grouped"));
    let sync = "model.projector_sync_bn=true";
    let bn = format!("run.bn_batch={B}");
    let run = |c: Command, what: &str| {
        let o = output_with_deadline(c, Duration::from_secs(300));
        assert!(o.status.success(), "{what}:\n{}", text(&o));
    };
    let mut c = bt_cli();
    c.args(tiny(&single, 2 * B, "reference", 2)).args(["--set", &bn, "--set", sync]);
    run(c, "single process, encoder BN in groups of B, projector BN over 2B");
    let mut c = bt_cli();
    c.args(["launch", "--nproc", "2", "--"]).args(tiny(&dp, 2 * B, "reference", 2)).args(["--set", sync]);
    run(c, "launch --nproc 2 with SyncBN");
    let (a, b) = (params(&single.join("model.safetensors")), params(&dp.join("model.safetensors")));
    let (d, name) = max_diff(&a, &b);
    eprintln!("sync BN: max |single - 2 ranks| = {d:.3e} ({name})");
    assert!(d < 1e-5, "parameters differ by {d:e} at {name}");
    // Rank 0's projector running statistics were updated from the global batch's moments.
    let proj_stats =
        |p: &Path| tensors(&p.join("model.safetensors"), |n| n.starts_with("projector.") && n.contains("running_"));
    let (sa, sb) = (proj_stats(&single), proj_stats(&dp));
    assert!(!sa.is_empty());
    let (d, name) = max_diff(&sa, &sb);
    assert!(d < 1e-5, "projector running statistics differ by {d:e} at {name}");
    // Control: per-rank projector BN (no SyncBN) ends elsewhere.
    let mut c = bt_cli();
    c.args(tiny(&grouped, 2 * B, "reference", 2)).args(["--set", &bn]);
    run(c, "single process, all BN in groups of B");
    let (d, _) = max_diff(&params(&grouped.join("model.safetensors")), &b);
    assert!(d > 1e-4, "control: per-rank projector BN should differ from SyncBN, got {d:e}");
}

#[test]
fn a_signal_to_one_rank_stops_both_at_the_same_step_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dp-term");
    let mut c = bt_cli();
    c.args(["launch", "--nproc", "2", "--grace-s", "60", "--"]).args(tiny(&out, 2 * B, "reference", 500));
    // SIGTERM to rank 1 only (not through the launcher): rank 0 learns of it from rank 1.
    let (status, log, sent) = launch_and_act(c, &out, |_, pid| kill("-TERM", pid));
    let all = log.join("\n");
    assert!(sent, "the run finished before the signal:\n{all}");
    assert!(!status.success(), "{all}");
    // Both ranks stopped on their own with the SIGTERM status: no lost-peer error, no kill.
    for r in 0..2 {
        let line = log
            .iter()
            .find(|l| l.starts_with(&format!("launch: rank {r} (pid")))
            .unwrap_or_else(|| panic!("rank {r} exit line:\n{all}"));
        assert!(line.ends_with("exit code 143"), "rank {r}: {line}\n{all}");
    }
    assert!(all.contains("delivered to another rank"), "rank 0 names why it stopped:\n{all}");
    assert!(!all.contains("terminating them"), "nobody needed terminating:\n{all}");
    let ckpts: Vec<_> = std::fs::read_dir(out.join("checkpoints")).unwrap().filter_map(|e| e.ok()).collect();
    assert!(!ckpts.is_empty(), "rank 0 wrote the stop checkpoint:\n{all}");
}

#[test]
fn full_sync_bn_two_ranks_equal_one_process_on_the_global_batch() {
    // `model.sync_bn = "all"` (the official recipe's convert_sync_batchnorm): every batch norm,
    // encoder included, normalizes over the global batch, so 2 ranks of B rows equal one process
    // with the whole 2B batch: parameters and *all* running statistics.
    let dir = tempfile::tempdir().unwrap();
    let (single, dp, plain) = (dir.path().join("single"), dir.path().join("dp"), dir.path().join("plain"));
    let sync = "model.sync_bn=\"all\"";
    let run = |c: Command, what: &str| {
        let o = output_with_deadline(c, Duration::from_secs(300));
        assert!(o.status.success(), "{what}:\n{}", text(&o));
    };
    let mut c = bt_cli();
    c.args(tiny(&single, 2 * B, "reference", 2)).args(["--set", sync]);
    run(c, "single process, global batch 2B");
    let mut c = bt_cli();
    c.args(["launch", "--nproc", "2", "--"]).args(tiny(&dp, 2 * B, "reference", 2)).args(["--set", sync]);
    run(c, "launch --nproc 2 with every BN synchronized");
    let (d, name) = max_diff(&params(&single.join("model.safetensors")), &params(&dp.join("model.safetensors")));
    eprintln!("full sync BN: max |single - 2 ranks| = {d:.3e} ({name})");
    assert!(d < 1e-5, "parameters differ by {d:e} at {name}");
    let stats = |p: &Path| tensors(&p.join("model.safetensors"), |n| n.contains("running_"));
    let (sa, sb) = (stats(&single), stats(&dp));
    assert!(sa.iter().any(|(n, _)| n.starts_with("encoder.")) && sa.iter().any(|(n, _)| n.starts_with("projector.")));
    let (d, name) = max_diff(&sa, &sb);
    eprintln!("full sync BN: running statistics max diff {d:.3e} ({name})");
    assert!(d < 1e-5, "running statistics differ by {d:e} at {name}");
    // Control: without SyncBN each rank normalizes its own B rows and the run ends elsewhere.
    let mut c = bt_cli();
    c.args(["launch", "--nproc", "2", "--"]).args(tiny(&plain, 2 * B, "reference", 2));
    run(c, "launch --nproc 2 without SyncBN");
    let (d, _) = max_diff(&params(&plain.join("model.safetensors")), &params(&single.join("model.safetensors")));
    assert!(d > 1e-4, "control: per-rank BN should differ from one process on 2B, got {d:e}");
}
