//! Fresh start or resume, and from which checkpoint: [`decide`]. Everything that refuses to
//! start does so here, before the run folder is touched, and the refusal says what to do.
use crate::dist::Dist;
use crate::error::{refuse, Error, Result, ResultExt};
use crate::runfolder::RunFolder;
use crate::store;
use bt_config::Config;
use std::path::PathBuf;

/// How the caller wants the run folder treated.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Start a new run instead of resuming; refused on a folder that holds a run unless
    /// `force` is set too.
    pub fresh: bool,
    /// Overwrite a folder that already holds a run (implies `fresh`).
    pub force: bool,
    /// Continue from this training checkpoint instead of the folder's newest valid one.
    pub resume: Option<PathBuf>,
    /// Resume even though the checkpoint was written with a different (trajectory) config.
    pub allow_config_change: bool,
}

/// What [`decide`] chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// A new run (the folder's previous artifacts, if any, are gone).
    Fresh,
    /// Continue from this checkpoint.
    Resume(PathBuf),
    /// The checkpoint already reached `run.max_steps`: nothing to do (the message says so).
    NothingToDo(String),
}

/// The decision plus what the caller should tell the user (checkpoints skipped as damaged, a
/// resume under a changed config, metrics records rolled back).
#[derive(Debug, Clone)]
pub struct Decision {
    /// Fresh, resume or nothing to do.
    pub start: Start,
    /// Human-readable notes, in order.
    pub notes: Vec<String>,
}

/// Removes the artifacts of a previous run (not the folder itself: it may be a mount point).
pub fn clear_run(run: &RunFolder) -> Result<()> {
    for p in [run.metrics(), run.model(), run.encoder(), run.report(), run.loss_png(), run.augment_png()] {
        let _ = std::fs::remove_file(p);
    }
    for p in run.list_checkpoints() {
        std::fs::remove_file(&p).map_err(|e| Error::io("removing", &p, e))?;
    }
    for (name, _) in crate::report::evals(run) {
        let _ = std::fs::remove_file(run.dir().join(name));
    }
    for e in std::fs::read_dir(run.dir()).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with("events.out.tfevents.") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// Decides how a pretraining run into `run` starts, and prepares the folder for it (rank 0 /
/// single process: clears it for `--force`, rolls `metrics.jsonl` back to the checkpoint,
/// removes temporary files of interrupted writes).
///
/// Data-parallel: the ranks > 0 decide read-only (the checkpoint rank 0 will pick) before rank 0
/// prepares the folder, and all start once it has (two barriers order this). Every rank calls
/// this.
pub fn decide(opts: &StartOptions, cfg: &Config, run: &RunFolder, dist: Option<&Dist>) -> Result<Decision> {
    let follower = dist.is_some_and(|d| d.rank() > 0);
    let follower_start = follower.then(|| follower_choice(opts, run));
    if let Some(d) = dist {
        d.pg.barrier()?;
    }
    let decision = match follower_start {
        Some(s) => Decision { start: s, notes: Vec::new() },
        None => choose(opts, cfg, run)?,
    };
    if let Some(d) = dist {
        d.pg.barrier()?;
    }
    Ok(decision)
}

/// A rank > 0: the checkpoint rank 0's [`choose`] picks, without touching the folder.
fn follower_choice(opts: &StartOptions, run: &RunFolder) -> Start {
    if opts.fresh || opts.force {
        return Start::Fresh;
    }
    if let Some(p) = &opts.resume {
        return Start::Resume(p.clone());
    }
    match store::latest_valid(&run.checkpoints()).0 {
        Some(p) => Start::Resume(p),
        None => Start::Fresh,
    }
}

fn choose(a: &StartOptions, cfg: &Config, run: &RunFolder) -> Result<Decision> {
    let mut notes = Vec::new();
    let out = run.dir().display();
    let existing = run.list_checkpoints();
    let has_run = !existing.is_empty() || run.model().exists();
    if a.fresh || a.force {
        if has_run {
            if !a.force {
                refuse!("{out} already holds a run; --fresh would overwrite it: add --force, or choose another --out");
            }
            clear_run(run)?;
        } else {
            let _ = std::fs::remove_file(run.metrics());
        }
        return Ok(Decision { start: Start::Fresh, notes });
    }
    let ckpt = match &a.resume {
        Some(p) => {
            store::verify_file(p)?;
            p.clone()
        }
        None if !has_run => {
            let _ = std::fs::remove_file(run.metrics());
            return Ok(Decision { start: Start::Fresh, notes });
        }
        None => {
            let (best, rejected) = store::latest_valid(&run.checkpoints());
            for (p, why) in &rejected {
                notes.push(format!("skipping {}: {why}", p.display()));
            }
            match best {
                Some(p) => p,
                None if !existing.is_empty() => refuse!(
                    "{out} holds {} checkpoint(s) but none is valid ({}); pass --fresh --force to start over",
                    existing.len(),
                    rejected.iter().map(|(_, w)| w.as_str()).collect::<Vec<_>>().join("; ")
                ),
                None => refuse!(
                    "{out} holds a finished model but no training checkpoint to continue from; \
                     pass --fresh --force to start over, or choose another --out"
                ),
            }
        }
    };
    let meta = store::read_meta(&ckpt)?;
    let pos = store::position_of(&ckpt, &meta)?;
    let hash = store::config_hash(cfg);
    if meta.get("config_hash") != Some(&hash) {
        let diff = meta.get("config").map(|old| store::config_diff(old, cfg)).unwrap_or_default();
        let diff = if diff.is_empty() {
            "  (keys unknown: an older checkpoint)".to_string()
        } else {
            format!("  {}", diff.join("\n  "))
        };
        if !a.allow_config_change {
            refuse!(
                "{} was written with a different config:\n{diff}\nresume with the original --preset/--config/--set, \
                 pass --allow-config-change to continue anyway (the result is then not that of either config), \
                 or --fresh --force to start over",
                ckpt.display()
            );
        }
        notes.push(format!("resuming {} under a changed config (--allow-config-change):\n{diff}", ckpt.display()));
    }
    if pos.epochs_done >= cfg.run.epochs {
        refuse!(
            "{out} already holds a finished run ({} of {} epochs, {}); pass --fresh --force to start over, or choose another --out",
            pos.epochs_done,
            cfg.run.epochs,
            ckpt.display()
        );
    }
    if cfg.run.max_steps > 0 && pos.step >= cfg.run.max_steps {
        let msg =
            format!("{} is at step {}, run.max_steps = {}: nothing to do", ckpt.display(), pos.step, cfg.run.max_steps);
        return Ok(Decision { start: Start::NothingToDo(msg), notes });
    }
    // Work after the checkpoint was lost with the crash: its metrics go, the resumed run logs
    // those steps again. Temporary files of interrupted writes go too.
    let dropped = store::rollback_metrics(&run.metrics(), pos.step).context("rolling back metrics.jsonl")?;
    store::remove_stale_temps(&run.checkpoints());
    store::remove_stale_temps(run.dir());
    notes.push(format!(
        "{out} holds a run: resuming from {} (step {}); {dropped} metrics record(s) after it dropped",
        ckpt.display(),
        pos.step
    ));
    Ok(Decision { start: Start::Resume(ckpt), notes })
}
