//! `bt-cli pretrain`: the whole pretraining run into a run folder.
use super::config::ConfigArgs;
use crate::ckpt_store::{self, StopReason};
use crate::runfolder::RunFolder;
use crate::setup::{self, DataArgs};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// auto, cpu, cuda or cuda:N (default: the config's run.device).
    #[arg(long)]
    pub device: Option<String>,
    /// Run folder (default: runs/<preset>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite a folder that already holds a run (implies --fresh).
    #[arg(long)]
    pub force: bool,
    /// Start a new run instead of resuming the folder's newest checkpoint; refused on a folder
    /// that holds a run unless --force is given too.
    #[arg(long)]
    pub fresh: bool,
    /// Continue from this training checkpoint instead of the folder's newest valid one.
    #[arg(long, value_name = "CHECKPOINT", conflicts_with_all = ["fresh", "force"])]
    pub resume: Option<PathBuf>,
    /// Resume even though the checkpoint was written with a different (trajectory) config.
    #[arg(long)]
    pub allow_config_change: bool,
}

/// Removes the artifacts of a previous run (not the folder itself: it may be a mount point).
pub fn clear_run(run: &RunFolder) -> Result<()> {
    for p in [run.metrics(), run.model(), run.encoder(), run.report(), run.loss_png(), run.augment_png()] {
        let _ = std::fs::remove_file(p);
    }
    for p in run.list_checkpoints() {
        std::fs::remove_file(&p)?;
    }
    for (name, _) in crate::report::evals(run) {
        let _ = std::fs::remove_file(run.dir().join(name));
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = a.cfg.load()?;
    a.data.apply(&mut cfg);
    if let Some(d) = &a.device {
        cfg.run.device = d.clone();
        cfg.validate()?;
    }
    let device = crate::dist::local_device(setup::device(&cfg.run.device)?);
    // Settings this device cannot run are refused before anything is written.
    crate::device::StepSettings::for_run(&cfg, device)?;
    // Data-parallel when launched by torchrun / bt-cli launch (WORLD_SIZE > 1): see dist.rs.
    crate::dist::init(device)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&a.cfg.preset));
    // Data first: a missing dataset must not leave an empty run folder behind.
    let data = setup::load_data(&cfg)?;
    if cfg.data.drop_remainder && data.train.len() < cfg.data.batch_size {
        bail!(
            "data.batch_size = {} is larger than the training set ({} images) with drop_remainder: no step per epoch",
            cfg.data.batch_size,
            data.train.len()
        );
    }
    let run = RunFolder::create(&out)?;
    // Data-parallel: the other ranks decide read-only (the checkpoint rank 0 will pick) before
    // rank 0 prepares the folder, and start once it has (the two barriers order this).
    let follower = crate::dist::current().is_some_and(|d| d.rank() > 0);
    let follower_resume = follower.then(|| follower_start(&a, &run));
    if let Some(d) = crate::dist::current() {
        d.pg.barrier()?;
    }
    let resume = match follower_resume {
        Some(r) => r,
        None => match choose_start(&a, &cfg, &run)? {
            Start::Resume(p) => Some(p),
            Start::Fresh => None,
            Start::NothingToDo(msg) => {
                println!("{msg}");
                return Ok(());
            }
        },
    };
    if let Some(d) = crate::dist::current() {
        d.pg.barrier()?;
    }
    tracing::info!("data: {}", data.description);
    crate::signals::install();
    let o = match crate::train::pretrain(&cfg, data.train, data.test, device, &run, resume.as_deref()) {
        Ok(o) => o,
        Err(e) => match e.downcast_ref::<ckpt_store::Stop>() {
            Some(stop) => return finish_early(stop, &run),
            None => return Err(e),
        },
    };
    if !crate::dist::is_main() {
        return Ok(());
    }
    crate::report::write(&run)?;
    println!(
        "pretrained {} steps in {:.1}s, final loss {:.3}, data wait {:.2}%; run folder: {}",
        o.steps,
        o.wall_s,
        o.final_loss,
        100.0 * o.data_wait_fraction,
        run.dir().display()
    );
    Ok(())
}

/// A data-parallel rank > 0: the checkpoint rank 0's [`choose_start`] picks, without touching
/// the folder (only rank 0 writes it).
fn follower_start(a: &Args, run: &RunFolder) -> Option<PathBuf> {
    if a.fresh || a.force {
        return None;
    }
    if let Some(p) = &a.resume {
        return Some(p.clone());
    }
    ckpt_store::latest_valid(&run.checkpoints()).0
}

enum Start {
    Fresh,
    Resume(PathBuf),
    NothingToDo(String),
}

/// Fresh start or resume, and from which checkpoint. Everything that refuses to start does so
/// here, before the run folder is touched.
fn choose_start(a: &Args, cfg: &bt_config::Config, run: &RunFolder) -> Result<Start> {
    let out = run.dir().display();
    let existing = run.list_checkpoints();
    let has_run = !existing.is_empty() || run.model().exists();
    if a.fresh || a.force {
        if has_run {
            if !a.force {
                bail!("{out} already holds a run; --fresh would overwrite it: add --force, or choose another --out");
            }
            clear_run(run)?;
        } else {
            let _ = std::fs::remove_file(run.metrics());
        }
        return Ok(Start::Fresh);
    }
    let ckpt = match &a.resume {
        Some(p) => {
            ckpt_store::verify_file(p)?;
            p.clone()
        }
        None if !has_run => {
            let _ = std::fs::remove_file(run.metrics());
            return Ok(Start::Fresh);
        }
        None => {
            let (best, rejected) = ckpt_store::latest_valid(&run.checkpoints());
            for (p, why) in &rejected {
                tracing::warn!("skipping {}: {why}", p.display());
            }
            match best {
                Some(p) => p,
                None if !existing.is_empty() => bail!(
                    "{out} holds {} checkpoint(s) but none is valid (see the warnings above); \
                     pass --fresh --force to start over",
                    existing.len()
                ),
                None => bail!(
                    "{out} holds a finished model but no training checkpoint to continue from; \
                     pass --fresh --force to start over, or choose another --out"
                ),
            }
        }
    };
    let meta = ckpt_store::read_meta(&ckpt)?;
    let pos = ckpt_store::position_of(&ckpt, &meta)?;
    let hash = ckpt_store::config_hash(cfg);
    if meta.get("config_hash") != Some(&hash) {
        let diff = meta.get("config").map(|old| ckpt_store::config_diff(old, cfg)).unwrap_or_default();
        let diff = if diff.is_empty() { "  (keys unknown: an older checkpoint)".to_string() } else { format!("  {}", diff.join("\n  ")) };
        if !a.allow_config_change {
            bail!(
                "{} was written with a different config:\n{diff}\nresume with the original --preset/--config/--set, \
                 pass --allow-config-change to continue anyway (the result is then not that of either config), \
                 or --fresh --force to start over",
                ckpt.display()
            );
        }
        tracing::warn!("resuming {} under a changed config (--allow-config-change):\n{diff}", ckpt.display());
    }
    if pos.epochs_done >= cfg.run.epochs {
        bail!(
            "{out} already holds a finished run ({} of {} epochs, {}); pass --fresh --force to start over, or choose another --out",
            pos.epochs_done,
            cfg.run.epochs,
            ckpt.display()
        );
    }
    if cfg.run.max_steps > 0 && pos.step >= cfg.run.max_steps {
        return Ok(Start::NothingToDo(format!(
            "{} is at step {}, run.max_steps = {}: nothing to do",
            ckpt.display(),
            pos.step,
            cfg.run.max_steps
        )));
    }
    // Work after the checkpoint was lost with the crash: its metrics go, the resumed run logs
    // those steps again. Temporary files of interrupted writes go too.
    let dropped = ckpt_store::rollback_metrics(&run.metrics(), pos.step).context("rolling back metrics.jsonl")?;
    ckpt_store::remove_stale_temps(&run.checkpoints());
    ckpt_store::remove_stale_temps(run.dir());
    tracing::info!(
        "{out} holds a run: resuming from {} (step {}); {dropped} metrics record(s) after it dropped",
        ckpt.display(),
        pos.step
    );
    Ok(Start::Resume(ckpt))
}

/// The command line that continues this run: ours without --fresh/--force/--resume (and
/// without `--set run.max_steps=N` when that is what stopped it).
fn resume_command(drop_max_steps: bool) -> String {
    let mut out = vec!["bt-cli".to_string()];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut skip = false;
    for (i, a) in args.iter().cloned().enumerate() {
        if skip {
            skip = false;
            continue;
        }
        let next_is_max_steps = args.get(i + 1).is_some_and(|n| n.starts_with("run.max_steps="));
        if drop_max_steps && (a.starts_with("--set=run.max_steps=") || (a == "--set" && next_is_max_steps)) {
            skip = a == "--set";
            continue;
        }
        match a.as_str() {
            "--fresh" | "--force" => continue,
            "--resume" => {
                skip = true;
                continue;
            }
            s if s.starts_with("--resume=") => continue,
            _ => {}
        }
        let plain = a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c));
        out.push(if plain { a } else { format!("'{}'", a.replace('\'', "'\\''")) });
    }
    out.join(" ")
}

/// A run stopped early with a checkpoint: say so, and how to continue.
fn finish_early(stop: &ckpt_store::Stop, _run: &RunFolder) -> Result<()> {
    match stop.reason {
        StopReason::Signal(sig) => {
            eprintln!("{stop}.\nResume with:\n  {}", resume_command(false));
            std::process::exit(sig.exit_code());
        }
        StopReason::MaxSteps(_) => {
            println!("{stop}. Continue with:\n  {}", resume_command(true));
            Ok(())
        }
    }
}
