//! Issue 7: crash-safe checkpoints, exact resume, graceful signals, the non-finite guard.
//!
//! Every test runs the real `bt-cli` on the tiny config of `reliability_util::TINY` (32 steps)
//! and, where a run is interrupted, compares its final checkpoint and model tensor by tensor,
//! bit for bit, with an uninterrupted run of the same config (computed once per test binary).
#[path = "reliability_util.rs"]
mod util;

use bt_e2e::text;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use util::*;

/// The uninterrupted reference run (in a scratch folder private to this process).
fn reference() -> &'static Path {
    static REF: OnceLock<PathBuf> = OnceLock::new();
    REF.get_or_init(|| {
        let dir = private_scratch("bt-reliability-reference");
        ok(&output(pretrain_cmd(&dir, &[])), "reference pretrain");
        dir
    })
}

fn final_ckpt(run: &Path) -> PathBuf {
    run.join("checkpoints/epoch-0008.safetensors")
}

/// The resumed run ends where the uninterrupted one does: every tensor of the last checkpoint
/// (model, BN statistics, optimizer moments and step) and of `model.safetensors` equal bit for
/// bit, and the metrics hold each step once with the same loss.
fn assert_matches_reference(run: &Path) {
    let r = reference();
    let n = assert_same_tensors(&final_ckpt(r), &final_ckpt(run));
    assert!(n > 50, "only {n} tensors in the checkpoint");
    assert!(tensors(&final_ckpt(run)).0.keys().any(|k| k.starts_with("optimizer/")), "no optimizer state");
    assert!(tensors(&final_ckpt(run)).0.keys().any(|k| k.ends_with("running_var")), "no BN statistics");
    assert_same_tensors(&r.join("model.safetensors"), &run.join("model.safetensors"));
    let (want, got) = (step_losses(r), step_losses(run));
    assert_eq!(
        got.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=TINY_STEPS as u64).collect::<Vec<_>>(),
        "steps in metrics"
    );
    assert_eq!(got, want, "per-step losses differ from the uninterrupted run");
}

/// Independent check of every visible checkpoint: it parses and its payload CRC-32 matches.
fn assert_all_checkpoints_valid(run: &Path) {
    for p in checkpoints(run) {
        let bytes = std::fs::read(&p).unwrap();
        let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let (_, meta) = tensors(&p);
        assert_eq!(
            meta.get("payload_crc32").map(String::as_str),
            Some(format!("{:08x}", crc32fast::hash(&bytes[8 + hlen..])).as_str()),
            "{} fails its checksum",
            p.display()
        );
    }
}

fn resume_line(log: &str) -> Option<String> {
    log.lines().find(|l| l.contains("resuming from")).map(String::from)
}

#[test]
fn sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Checkpoints every 3 steps (mid-epoch ones included), slow writes so the process is still
    // busy when the kill lands.
    let mut c = pretrain_cmd(&run, &["--set", "run.checkpoint_every_steps=3"]);
    c.env("BT_FAULT_CHECKPOINT_SLOW", "5");
    let mut live = Live::spawn(c);
    assert!(live.wait_for("(step 6)", 1).is_some(), "no checkpoint at step 6:\n{}", live.seen.join("\n"));
    live.kill9();
    let before = checkpoints(&run);
    assert!(!before.is_empty() && !before.contains(&final_ckpt(&run)), "{before:?}");

    let o = output(pretrain_cmd(&run, &[]));
    let log = ok(&o, "resume");
    let line = resume_line(&log).unwrap_or_else(|| panic!("the log does not say it resumes:\n{log}"));
    assert!(line.contains(before.last().unwrap().file_name().unwrap().to_str().unwrap()), "{line} vs {before:?}");
    assert!(!line.contains("step 0"), "{line}");
    assert_matches_reference(&run);
}

#[test]
fn sigkill_at_20_random_moments_of_checkpoint_writes_always_leaves_a_valid_checkpoint() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut rng = Lcg(0x5eed);
    let mut kills = 0;
    let mut newest_before: Option<PathBuf> = None;
    for i in 0..20 {
        // A checkpoint after every step, each write 32 chunks x 6 ms: kill inside the k-th write.
        let mut c = pretrain_cmd(&run, &["--set", "run.checkpoint_every_steps=1"]);
        c.env("BT_FAULT_CHECKPOINT_SLOW", "6");
        let mut live = Live::spawn(c);
        let k = 1 + rng.below(2) as usize;
        if live.wait_for("bt-fault: checkpoint write started", k).is_none() {
            panic!("iteration {i}: the run ended before a checkpoint write:\n{}", live.seen.join("\n"));
        }
        // Started from the newest valid checkpoint of the previous kill (if any).
        if let Some(prev) = &newest_before {
            let resumed = live.seen.iter().find(|l| l.contains("resuming from")).cloned().unwrap_or_default();
            assert!(
                resumed.contains(prev.file_name().unwrap().to_str().unwrap()),
                "iteration {i}: expected to resume from {}, log:\n{}",
                prev.display(),
                live.seen.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(rng.below(150)));
        let lines = live.kill9();
        kills += 1;
        assert!(!lines.iter().any(|l| l.contains("corrupt")), "iteration {i}:\n{}", lines.join("\n"));
        assert_all_checkpoints_valid(&run);
        newest_before = checkpoints(&run).last().cloned();
    }
    assert_eq!(kills, 20);
    let log = ok(&output(pretrain_cmd(&run, &[])), "final resume");
    assert!(!log.contains("corrupt"), "{log}");
    assert_matches_reference(&run);
}

#[test]
fn sigint_writes_a_checkpoint_exits_130_and_resume_continues_from_it() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let live = Live::spawn(pretrain_cmd(&run, &[]));
    // Interrupt after a few steps (mid-epoch most likely).
    let t0 = Instant::now();
    while step_count(&run) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    live.signal("INT");
    let (code, lines) = live.finish();
    let log = lines.join("\n");
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("interrupted by SIGINT") && log.contains("bt-cli pretrain"), "no resume hint:\n{log}");
    let newest = checkpoints(&run).last().cloned().expect("a checkpoint was written");
    assert_ne!(newest, final_ckpt(&run));
    assert!(log.contains(newest.file_name().unwrap().to_str().unwrap()), "the message names the checkpoint:\n{log}");
    assert_all_checkpoints_valid(&run);

    let log = ok(&output(pretrain_cmd(&run, &[])), "resume");
    let line = resume_line(&log).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains(newest.file_name().unwrap().to_str().unwrap()), "{line}");
    assert_matches_reference(&run);
}

fn step_count(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.matches("\"kind\":\"step\"").count()).unwrap_or(0)
}

#[test]
fn a_second_sigterm_exits_at_once_and_the_previous_checkpoint_survives() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // The second checkpoint write of the process (the graceful one) never finishes on its own, so
    // only the second signal can end the process, whatever the machine's load.
    let mut c = pretrain_cmd(&run, &[]);
    c.env("BT_FAULT_CHECKPOINT_HANG", "2");
    let mut live = Live::spawn(c);
    assert!(live.wait_for("epoch-0001.safetensors written", 1).is_some(), "{}", live.seen.join("\n"));
    // Signal once epoch 2 is under way: a signal right at the epoch boundary stops on the
    // epoch-1 checkpoint just written, with no second write to interrupt.
    let t0 = Instant::now();
    while step_count(&run) < 5 {
        assert!(t0.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    live.signal("TERM");
    // The graceful checkpoint starts and stalls half-written; interrupt it.
    assert!(live.wait_for("bt-fault: checkpoint write hanging", 1).is_some(), "{}", live.seen.join("\n"));
    live.signal("TERM");
    let (code, lines) = live.finish_within(Duration::from_secs(60), "the second SIGTERM did not end the process");
    assert_eq!(code, Some(143), "{}", lines.join("\n"));
    // The interrupted write never replaced anything: the newest checkpoint is still epoch 1.
    let all = checkpoints(&run);
    assert_eq!(all.last().unwrap().file_name().unwrap(), "epoch-0001.safetensors", "{all:?}");
    assert_all_checkpoints_valid(&run);
    let log = ok(&output(pretrain_cmd(&run, &[])), "resume");
    assert!(resume_line(&log).unwrap_or_default().contains("epoch-0001.safetensors"), "{log}");
    // The stale temporary file of the aborted write is gone.
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_matches_reference(&run);
}

#[test]
fn non_finite_loss_or_gradient_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    for (fault, needles) in
        [("loss@6", &["step 6", "invariance = NaN"][..]), ("grad@6", &["step 6", "gradient of `"][..])]
    {
        let run = tmp.path().join(fault.replace('@', "-"));
        let mut c = pretrain_cmd(&run, &[]);
        c.env("BT_FAULT_NONFINITE", fault);
        let o = output(c);
        let t = text(&o);
        assert!(!o.status.success(), "{fault}: should fail\n{t}");
        assert!(!t.contains("panicked"), "{t}");
        for n in needles {
            assert!(t.contains(n), "{fault}: message lacks `{n}`:\n{t}");
        }
        // Step 4 ended epoch 1 (checkpointed); nothing after the bad step was written.
        let all = checkpoints(&run);
        assert_eq!(
            all.iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect::<Vec<_>>(),
            ["epoch-0001.safetensors"]
        );
        assert!(!run.join("model.safetensors").exists());
        assert_all_checkpoints_valid(&run);
    }
    // Skip policy: the run completes; the step is reported and recorded.
    let run = tmp.path().join("skip");
    let mut c = pretrain_cmd(&run, &["--set", "run.on_nonfinite=skip"]);
    c.env("BT_FAULT_NONFINITE", "loss@6");
    let t = ok(&output(c), "skip run");
    assert!(t.contains("skipping step 6") && t.contains("invariance = NaN"), "{t}");
    let m = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(m.lines().any(|l| l.contains("\"kind\":\"skip\"") && l.contains("\"step\":6")), "{m}");
    assert!(run.join("model.safetensors").is_file());
}

#[test]
fn max_steps_fallback_over_a_truncated_checkpoint_config_mismatch_and_fresh() {
    reference();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let t = ok(
        &output(pretrain_cmd(&run, &["--set", "run.max_steps=6", "--set", "run.checkpoint_every_steps=3"])),
        "max_steps",
    );
    assert!(t.contains("run.max_steps"), "{t}");
    let names: Vec<String> =
        checkpoints(&run).iter().map(|p| p.file_name().unwrap().to_str().unwrap().into()).collect();
    assert_eq!(names, ["epoch-0000-b000003.safetensors", "epoch-0001.safetensors", "epoch-0001-b000002.safetensors"]);

    // Damage the newest: loading it names it; auto-resume falls back to the previous one.
    let newest = run.join("checkpoints/epoch-0001-b000002.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let o = output({
        let mut c = bt_e2e::bt_cli();
        c.args(["eval", "knn", "--checkpoint"]).arg(&newest);
        c
    });
    assert!(!o.status.success());
    assert!(
        text(&o).contains("epoch-0001-b000002.safetensors") && text(&o).contains("corrupt or truncated"),
        "{}",
        text(&o)
    );

    // A different trajectory config is refused, naming the key; nothing is touched.
    let snap = snapshot(&run);
    let o = output(pretrain_cmd(&run, &["--set", "optim.lr=0.0123"]));
    let t = text(&o);
    assert!(!o.status.success() && t.contains("optim.lr") && t.contains("--allow-config-change"), "{t}");
    // --fresh on a folder with a run needs --force.
    let o = output(pretrain_cmd(&run, &["--fresh"]));
    assert!(!o.status.success() && text(&o).contains("--force"), "{}", text(&o));
    assert_eq!(snapshot(&run).keys().collect::<Vec<_>>(), snap.keys().collect::<Vec<_>>());
    assert!(snapshot(&run) == snap, "a refused start changed the run folder");

    let log = ok(&output(pretrain_cmd(&run, &[])), "resume after damage");
    assert!(
        log.contains("epoch-0001-b000002.safetensors") && log.contains("corrupt"),
        "no warning about the damaged file:\n{log}"
    );
    assert!(resume_line(&log).unwrap_or_default().contains("epoch-0001.safetensors"), "{log}");
    assert_matches_reference(&run);

    // A finished run is not silently redone.
    let o = output(pretrain_cmd(&run, &[]));
    assert!(!o.status.success() && text(&o).contains("--force"), "{}", text(&o));
    // --fresh --force starts over.
    ok(&output(pretrain_cmd(&run, &["--fresh", "--force", "--set", "run.max_steps=2"])), "fresh");
    assert_eq!(step_losses(&run).len(), 2);
}
