//! `bt-cli eval linear|knn`: evaluate a run folder or a checkpoint.
use super::config::{ConfigArgs, DataArgs};
use crate::observer::CliObserver;
use anyhow::{bail, Context, Result};
use bt_config::{Config, ConfigBuilder, LinearProtocol};
use bt_model::BarlowTwins;
use bt_train::checkpoint::{load_weights, WeightsKind};
use bt_train::eval::{finetune, knn_eval, linear_eval, linear_result_name, result_path, save_result, EvalControl};
use bt_train::{setup, RunFolder};
use clap::Subcommand;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// Evaluations of a pretrained encoder.
#[derive(Subcommand)]
pub enum EvalCmd {
    /// Linear probe: `keras-seed` (the notebook's) or `standard` (validation-tuned).
    Linear(LinearArgs),
    /// Weighted kNN (cosine, k and temperature from the config's eval section).
    Knn(KnnArgs),
}

/// Which weights, which config, which data.
#[derive(clap::Args, Clone, Debug)]
pub struct Source {
    /// A run folder (uses its config.toml and model.safetensors, else its newest checkpoint).
    #[arg(long, conflicts_with_all = ["checkpoint", "weights"])]
    pub run: Option<PathBuf>,
    /// A checkpoint, model.safetensors or encoder.safetensors. Its config is the config.toml of
    /// the run folder it sits in, if any, else --preset/--config.
    #[arg(long, conflicts_with = "weights")]
    pub checkpoint: Option<PathBuf>,
    /// Published PyTorch weights (torch.save .pth/.pt, Lightning .ckpt, safetensors): a
    /// torchvision/timm ResNet state dict, the official Barlow Twins resnet50.pth or full
    /// checkpoint, a solo-learn checkpoint. The model comes from --preset/--config (its
    /// model.arch must match the file); the projector is loaded when the file has one.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// auto, cpu, cuda or cuda:N (default: the config's run.device).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(clap::Args)]
pub struct LinearArgs {
    #[command(flatten)]
    pub src: Source,
    /// Protocol (default: the config's eval.linear_protocol).
    #[arg(long, value_enum)]
    pub protocol: Option<Protocol>,
    /// finetune: percent of the labeled training split, class-balanced by run.seed (the
    /// paper's 1 and 10; sets eval.finetune_train_percent).
    #[arg(long)]
    pub train_percent: Option<f64>,
    /// finetune: a file list of training images instead (SimCLR's 1percent.txt/10percent.txt
    /// format or class/file lines; sets eval.finetune_train_files).
    #[arg(long)]
    pub train_files: Option<PathBuf>,
    /// official/finetune: start over, ignoring the resume file a stopped run of the same
    /// evaluation left beside its result (it is overwritten after the first epoch).
    #[arg(long)]
    pub fresh: bool,
}

#[derive(clap::Args)]
pub struct KnnArgs {
    #[command(flatten)]
    pub src: Source,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Protocol {
    KerasSeed,
    Standard,
    /// evaluate.py --weights freeze: augmented training images through the frozen encoder.
    Official,
    /// evaluate.py --weights finetune: the whole encoder and a linear layer trained on a
    /// labeled subset (--train-percent, --train-files); writes the fine-tuned network too.
    Finetune,
}

impl From<Protocol> for LinearProtocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::KerasSeed => LinearProtocol::KerasSeed,
            Protocol::Standard => LinearProtocol::Standard,
            Protocol::Official => LinearProtocol::Official,
            Protocol::Finetune => LinearProtocol::Finetune,
        }
    }
}

/// A loaded model and everything around it.
pub struct Loaded {
    pub cfg: Config,
    pub device: Device,
    pub _vs: nn::VarStore,
    pub model: BarlowTwins,
    pub weights: PathBuf,
    pub kind: WeightsKind,
    /// Where results go: the run folder, when there is one.
    pub run: Option<RunFolder>,
}

/// The run folder a checkpoint belongs to: its folder or, for `checkpoints/x`, the one above.
fn run_of_checkpoint(ckpt: &Path) -> Option<RunFolder> {
    let dir = ckpt.parent()?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .find(|d| d.join("config.toml").is_file())
        .and_then(|d| RunFolder::open(d).ok())
}

/// Config: the run's config.toml (or the preset), then --config, then --set.
pub fn config_over(args: &ConfigArgs, base: Option<&Path>) -> Result<Config> {
    let mut b = ConfigBuilder::new();
    match base {
        Some(p) => {
            b.file(p)?;
        }
        None => {
            b.preset(&args.preset)?;
        }
    }
    if let Some(p) = &args.config {
        b.file(p)?;
    }
    for s in &args.sets {
        b.set(s)?;
    }
    Ok(b.build()?)
}

impl Source {
    /// Whether weights were named (`--run`, `--checkpoint` or `--weights`).
    pub fn given(&self) -> bool {
        self.run.is_some() || self.checkpoint.is_some() || self.weights.is_some()
    }

    /// A model from published weights (`--weights`): the config from --preset/--config/--set.
    fn load_foreign(&self, path: &Path) -> Result<Loaded> {
        let mut cfg = config_over(&self.cfg, None)?;
        self.data.apply(&mut cfg);
        if let Some(d) = &self.device {
            cfg.run.device = d.clone();
        }
        let device = setup::device(&cfg.run.device)?;
        let (vs, model) = setup::build_model(&cfg, device)?;
        let im = bt_model::foreign::import(path)?;
        // Features need the encoder alone: a projector of other widths than model.projector
        // is skipped with a warning here (pretrain --init refuses it).
        let loaded = match model.load_imported(&im, true) {
            Err(bt_model::ModelError::Import(m)) if m.part == "projector" => {
                tracing::warn!(
                    "{}: its projector does not match model.projector = {:?}; loaded the encoder only",
                    path.display(),
                    cfg.model.projector
                );
                model.load_imported(&im, false)?
            }
            r => r?,
        };
        tracing::info!("loaded {} ({:?} layout, {:?}, {:?})", path.display(), im.layout, im.format, loaded);
        for n in &im.notes {
            tracing::info!("{}: {n}", path.display());
        }
        let kind = match loaded {
            bt_model::foreign::Loaded::Encoder => WeightsKind::EncoderOnly,
            bt_model::foreign::Loaded::EncoderAndProjector => WeightsKind::Full,
        };
        Ok(Loaded { cfg, device, _vs: vs, model, weights: path.to_path_buf(), kind, run: None })
    }

    pub fn load(&self) -> Result<Loaded> {
        if let Some(w) = &self.weights {
            if !w.is_file() {
                bail!("weights file {} does not exist", w.display());
            }
            return self.load_foreign(w);
        }
        let (run, weights) = match (&self.run, &self.checkpoint) {
            (Some(dir), _) => {
                let run = RunFolder::open(dir)?;
                let w = if run.model().is_file() {
                    run.model()
                } else {
                    run.list_checkpoints().pop().with_context(|| {
                        format!(
                            "{} has no model.safetensors and no checkpoint: pretraining did not finish an epoch",
                            dir.display()
                        )
                    })?
                };
                (Some(run), w)
            }
            (None, Some(c)) => {
                if !c.is_file() {
                    bail!("checkpoint {} does not exist", c.display());
                }
                (run_of_checkpoint(c), c.clone())
            }
            (None, None) => bail!("pass --run DIR, --checkpoint FILE or --weights FILE"),
        };
        let mut cfg = config_over(&self.cfg, run.as_ref().map(|r| r.config()).as_deref())?;
        self.data.apply(&mut cfg);
        if let Some(d) = &self.device {
            cfg.run.device = d.clone();
        }
        let device = setup::device(&cfg.run.device)?;
        let (vs, model) = setup::build_model(&cfg, device)?;
        let kind = load_weights(&model, &weights)?;
        tracing::info!("loaded {} ({kind:?})", weights.display());
        Ok(Loaded { cfg, device, _vs: vs, model, weights, kind, run })
    }
}

/// An evaluation ended by Ctrl-C / SIGTERM: say where its progress is and how to continue,
/// then exit 130 / 143 as `pretrain` does; any other result passes through.
fn stopped<T>(r: bt_train::Result<T>) -> Result<T> {
    match r {
        Err(bt_train::Error::Stopped { interrupted, detail }) => {
            super::pretrain::exit_interrupted(format!("{interrupted} {detail}"), interrupted)
        }
        r => Ok(r?),
    }
}

/// Writes a result next to the run (or the checkpoint) and prints the one-line summary.
fn finish(l: &Loaded, name: &str, mut v: Value, summary: String) -> Result<()> {
    v["weights"] = json!("pretrained");
    v["checkpoint"] = json!(l.weights.display().to_string());
    v["checkpoint_kind"] = json!(format!("{:?}", l.kind));
    let path = save_result(l.run.as_ref(), &l.weights, name, &v)?;
    println!("{summary} -> {}", path.display());
    Ok(())
}

pub fn run(cmd: EvalCmd) -> Result<()> {
    match cmd {
        EvalCmd::Linear(a) => {
            let mut l = a.src.load()?;
            let protocol: LinearProtocol = a.protocol.map(Into::into).unwrap_or(l.cfg.eval.linear_protocol);
            if protocol == LinearProtocol::KerasSeed && l.kind == WeightsKind::EncoderOnly {
                bail!("the keras-seed protocol probes the projector output, but {} holds the encoder alone: pass model.safetensors or a training checkpoint", l.weights.display());
            }
            if (a.train_percent.is_some() || a.train_files.is_some()) && protocol != LinearProtocol::Finetune {
                bail!("--train-percent and --train-files belong to --protocol finetune");
            }
            if let Some(p) = a.train_percent {
                l.cfg.eval.finetune_train_percent = p;
            }
            if let Some(f) = &a.train_files {
                l.cfg.eval.finetune_train_files = f.clone();
            }
            l.cfg.validate()?;
            let data = setup::load_data(&l.cfg)?;
            for w in &data.warnings {
                tracing::warn!("{w}");
            }
            let name = linear_result_name(protocol, &l.cfg.eval);
            let mut obs = CliObserver::default();
            let json_path = result_path(l.run.as_ref(), &l.weights, &name);
            // The epoch-based protocols keep their progress beside the result and stop on
            // Ctrl-C / SIGTERM after the batch in flight; the others are short and keep none.
            let epochs = matches!(protocol, LinearProtocol::Official | LinearProtocol::Finetune);
            if a.fresh && !epochs {
                bail!("--fresh belongs to --protocol official or finetune (the others keep no progress)");
            }
            let ctl = if epochs {
                let state = EvalControl::state_path(&json_path);
                EvalControl::resumable(state, l.weights.display().to_string(), a.fresh, crate::signals::install())
            } else {
                EvalControl::default()
            };
            let (mut v, tuned) = if protocol == LinearProtocol::Finetune {
                let (v, ft) = stopped(finetune::finetune(&l.cfg, &l.model, &data, l.device, &mut obs, &ctl))?;
                let weights = finetune::network_path(&json_path);
                ft.save(&l.model, &weights)?;
                (v, Some(weights))
            } else {
                (stopped(linear_eval(&l.cfg, &l.model, &data, l.device, protocol, &mut obs, &ctl))?, None)
            };
            let best = match protocol {
                LinearProtocol::Official | LinearProtocol::Finetune => format!(
                    ", best epoch top-1 {:.2}% / top-5 {:.2}% (evaluate.py's best_acc)",
                    100.0 * v["best_top1"].as_f64().unwrap_or(f64::NAN),
                    100.0 * v["best_top5"].as_f64().unwrap_or(f64::NAN)
                ),
                _ => String::new(),
            };
            let mut summary = format!(
                "linear ({}): test top-1 {:.2}%, top-5 {:.2}% ({} epochs, {} training images, {} features){best}",
                v["protocol"].as_str().unwrap_or("?"),
                100.0 * v["test_top1"].as_f64().unwrap_or(f64::NAN),
                100.0 * v["test_top5"].as_f64().unwrap_or(f64::NAN),
                v["epochs"],
                v["n_train"],
                v["feature_dim"]
            );
            if let Some(w) = tuned {
                summary.push_str(&format!("; fine-tuned network: {}", w.display()));
                v["finetuned_weights"] = json!(w.display().to_string());
            }
            finish(&l, &name, v, summary)?;
            Ok(ctl.finish()?)
        }
        EvalCmd::Knn(a) => {
            let l = a.src.load()?;
            let data = setup::load_data(&l.cfg)?;
            for w in &data.warnings {
                tracing::warn!("{w}");
            }
            let v = knn_eval(&l.cfg, &l.model, &data, l.device, &mut CliObserver::default())?;
            let summary = format!(
                "knn (k={}, T={}): test top-1 {:.2}%",
                l.cfg.eval.knn_k,
                l.cfg.eval.knn_temperature,
                100.0 * v["test_top1"].as_f64().unwrap_or(f64::NAN)
            );
            finish(&l, "knn", v, summary)
        }
    }
}
