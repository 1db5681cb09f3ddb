//! `bt-cli pretrain`: the whole pretraining run into a run folder (`bt_train::Trainer`).
use super::config::{ConfigArgs, DataArgs};
use crate::observer::CliObserver;
use anyhow::Result;
use bt_train::start::{self, Start, StartOptions};
use bt_train::{dist::Dist, setup, RunFolder, Stop, StopReason, Trainer};
use std::path::PathBuf;
use std::sync::Arc;

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
    /// Start a fresh run from published weights (torch.save/.ckpt/safetensors: torchvision,
    /// timm, official Barlow Twins, solo-learn, ours): the encoder, and the projector too when
    /// the file has one (its widths must then equal model.projector). Recorded as `model.init`
    /// in config.toml (and init.json); a resumed run continues from its checkpoint.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = a.cfg.load()?;
    a.data.apply(&mut cfg);
    if let Some(init) = &a.init {
        // Absolute, so that the recorded config names the file from anywhere.
        let abs = std::fs::canonicalize(init).map_err(|e| anyhow::anyhow!("--init {}: {e}", init.display()))?;
        cfg.model.init = abs.display().to_string();
    }
    if let Some(d) = &a.device {
        cfg.run.device = d.clone();
        cfg.validate()?;
    }
    let device = bt_train::dist::local_device(setup::device(&cfg.run.device)?);
    // Settings this device cannot run are refused before anything is written.
    bt_train::device::StepSettings::for_run(&cfg, device)?;
    // Data-parallel when launched by torchrun / bt-cli launch (WORLD_SIZE > 1).
    let dist = Dist::from_env(device)?.map(Arc::new);
    // Refused before the run folder is touched (the trainer checks it again).
    cfg.validate_world(dist.as_ref().map_or(1, |d| d.world()))?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&a.cfg.preset));
    // Data first: a missing dataset must not leave an empty run folder behind.
    let data = setup::load_data(&cfg)?;
    for w in &data.warnings {
        tracing::warn!("{w}");
    }
    if cfg.data.drop_remainder && data.train.len() < cfg.data.batch_size {
        anyhow::bail!(
            "data.batch_size = {} is larger than the training set ({} images) with drop_remainder: no step per epoch",
            cfg.data.batch_size,
            data.train.len()
        );
    }
    let run = RunFolder::create(&out)?;
    let opts = StartOptions {
        fresh: a.fresh,
        force: a.force,
        resume: a.resume.clone(),
        allow_config_change: a.allow_config_change,
    };
    let decision = start::decide(&opts, &cfg, &run, dist.as_deref())?;
    for n in &decision.notes {
        tracing::info!("{n}");
    }
    let resume = match decision.start {
        Start::Resume(p) => Some(p),
        Start::Fresh => None,
        Start::NothingToDo(msg) => {
            println!("{msg}");
            return Ok(());
        }
    };
    tracing::info!("data: {}", data.description);
    let token = crate::signals::install();
    let main = dist.as_ref().is_none_or(|d| d.rank() == 0);
    let o = Trainer::new(cfg, device)
        .with_observer(CliObserver::default())
        .with_stop_token(token)
        .with_dist(dist)
        .pretrain(&data, &run, resume.as_deref())?;
    if let Some(stop) = &o.stop {
        return finish_early(stop);
    }
    if !main {
        return Ok(());
    }
    bt_train::report::write(&run)?;
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

/// A signal stopped a command that keeps its progress (`what` says where): say so and how to
/// continue (the same command), then exit 130 / 143.
pub(crate) fn exit_interrupted(what: impl std::fmt::Display, i: bt_train::Interrupted) -> ! {
    crate::progress::say!("{what}.\nResume with:\n  {}", resume_command(false));
    std::process::exit(i.exit_code());
}

/// A run stopped early with a checkpoint: say so, and how to continue.
fn finish_early(stop: &Stop) -> Result<()> {
    match stop.reason {
        StopReason::Interrupted(i) => exit_interrupted(stop, i),
        StopReason::MaxSteps(_) => {
            println!("{stop}. Continue with:\n  {}", resume_command(true));
            Ok(())
        }
    }
}
