//! `report.md`: the page a person reads first. Regenerated from the folder's own files
//! (config, metrics, eval results) after pretraining and after every evaluation, so it is
//! always a function of what the folder holds.
use crate::atomic::atomic_write;
use crate::error::Result;
use crate::metrics;
use crate::runfolder::RunFolder;
use serde_json::Value;
use std::fmt::Write as _;

fn pct(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
}

fn dur(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.0} h {:.0} min", (s / 3600.0).floor(), (s % 3600.0) / 60.0)
    } else if s >= 60.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// All `eval_*.json` of the folder, sorted by file name.
pub fn evals(run: &RunFolder) -> Vec<(String, Value)> {
    let mut v: Vec<(String, Value)> = std::fs::read_dir(run.dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            if !(name.starts_with("eval_") && name.ends_with(".json")) {
                return None;
            }
            let v = serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()?;
            Some((name, v))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes `report.md`.
pub fn write(run: &RunFolder) -> Result<()> {
    let cfg = run.load_config().ok();
    let recs = metrics::read_all(&run.metrics()).unwrap_or_default();
    let start = metrics::of_kind(&recs, "run").filter(|r| r["event"] == "start").last().cloned();
    let end = metrics::of_kind(&recs, "run").filter(|r| r["event"] == "end").last().cloned();
    let epochs: Vec<&Value> = metrics::of_kind(&recs, "epoch").collect();
    let knn: Vec<&Value> = metrics::of_kind(&recs, "knn").collect();
    let name = run.dir().file_name().and_then(|n| n.to_str()).unwrap_or("run");

    let mut s = String::new();
    let _ = writeln!(s, "# Barlow Twins run `{name}`\n");
    let _ = writeln!(s, "## What ran\n");
    if let Some(c) = &cfg {
        let data = match c.data.dataset {
            bt_config::DatasetKind::Cifar10 => format!("CIFAR-10 ({})", c.data.dir.display()),
            bt_config::DatasetKind::Synthetic => {
                format!("synthetic shapes ({} train / {} test)", c.data.synthetic_train, c.data.synthetic_test)
            }
            bt_config::DatasetKind::Stl10 => format!("STL-10 {:?} ({})", c.data.stl10_split, c.data.dir.display()),
            bt_config::DatasetKind::ImageFolder => {
                let test = if c.data.test_dir.as_os_str().is_empty() {
                    String::new()
                } else {
                    format!(", evaluation {}", c.data.test_dir.display())
                };
                format!("image folder {}{test}", c.data.dir.display())
            }
        };
        let _ =
            writeln!(s, "- data: {data}, {} px crops, augmentation policy `{}`", c.data.image_size, c.augment.policy);
        let _ = writeln!(s, "- model: `{:?}` width {}, projector {:?}", c.model.arch, c.model.width, c.model.projector);
        let _ = writeln!(
            s,
            "- loss: λ = {}, normalization `{:?}`; optimizer `{:?}` lr {} ({:?} schedule)",
            c.loss.lambda, c.loss.normalization, c.optim.name, c.optim.lr, c.schedule.kind
        );
        let _ = writeln!(s, "- {} epochs of batch {}, seed {}", c.run.epochs, c.data.batch_size, c.run.seed);
    }
    if let Some(st) = &start {
        let _ = writeln!(
            s,
            "- device `{}`, {} pipeline threads, {} intra-op threads, {} trainable parameters",
            st["device"].as_str().unwrap_or("?"),
            st["pipeline_threads"],
            st["intra_op_threads"],
            st["trainable_params"]
        );
    }
    let _ = writeln!(s, "- full config: [config.toml](config.toml)\n");

    let _ = writeln!(s, "## How long\n");
    match &end {
        Some(e) => {
            let _ = writeln!(
                s,
                "{} steps in {}; data wait {:.2}% of step time.\n",
                e["steps"],
                dur(e["wall_s"].as_f64().unwrap_or(0.0)),
                100.0 * e["data_wait_fraction"].as_f64().unwrap_or(0.0)
            );
        }
        None => {
            let _ = writeln!(s, "The run has not finished (no end record in metrics.jsonl).\n");
        }
    }
    if let (Some(first), Some(last)) = (epochs.first(), epochs.last()) {
        let _ = writeln!(
            s,
            "Loss (epoch mean): {:.2} after epoch {} -> {:.2} after epoch {}; {:.0} pairs/s in the last epoch.\n",
            first["loss"].as_f64().unwrap_or(f64::NAN),
            first["epoch"],
            last["loss"].as_f64().unwrap_or(f64::NAN),
            last["epoch"],
            last["pairs_per_s"].as_f64().unwrap_or(0.0)
        );
    }
    let skipped = epochs.last().and_then(|e| e["skipped_images"].as_u64()).unwrap_or(0);
    if skipped > 0 {
        let _ = writeln!(
            s,
            "{skipped} unreadable image(s) skipped (`data.skip_bad_images = true`); each was replaced by another image of the set.\n"
        );
    }
    let _ = writeln!(s, "## Curves\n\n![loss curve](loss.png)\n\nAugmented views (original | view A | view B):\n\n![augmentations](augment.png)\n");
    if !knn.is_empty() {
        let _ = writeln!(
            s,
            "kNN monitor: {}\n",
            knn.iter().map(|r| format!("epoch {}: {}", r["epoch"], pct(&r["top1"]))).collect::<Vec<_>>().join(", ")
        );
    }

    let _ = writeln!(s, "## Accuracies (test set)\n");
    let ev = evals(run);
    if ev.is_empty() {
        let _ = writeln!(
            s,
            "No evaluation yet: `bt-cli eval linear --run {0}` and `bt-cli eval knn --run {0}`.\n",
            run.dir().display()
        );
    } else {
        let _ = writeln!(s, "| evaluation | weights | top-1 | top-5 | details | file |\n|---|---|---|---|---|---|");
        for (file, v) in &ev {
            let what = match v["eval"].as_str() {
                Some("knn") => format!("kNN (k={}, T={})", v["k"], v["temperature"]),
                _ => format!("linear `{}`", v["protocol"].as_str().unwrap_or("?")),
            };
            let details = match v["protocol"].as_str() {
                Some("standard") => format!(
                    "{} epochs, lr {}, wd {}, val {}",
                    v["epochs"],
                    v["lr"],
                    v["weight_decay"],
                    pct(&v["val_top1"])
                ),
                Some("official") => format!(
                    "evaluate.py: {} epochs, batch {}, lr {}; best epoch {} / {}",
                    v["epochs"],
                    v["batch_size"],
                    v["lr"],
                    pct(&v["best_top1"]),
                    pct(&v["best_top5"])
                ),
                Some("keras-seed") => format!("{} epochs, batch {}, L2 {}", v["epochs"], v["batch_size"], v["l2"]),
                _ => format!("{} features", v["features"].as_str().unwrap_or("encoder")),
            };
            let _ = writeln!(
                s,
                "| {what} | {} | {} | {} | {details} | [{file}]({file}) |",
                v["weights"].as_str().unwrap_or("pretrained"),
                pct(&v["test_top1"]),
                pct(&v["test_top5"])
            );
        }
        let _ = writeln!(s);
        for (file, v) in &ev {
            let Some(c) = crate::classification::Classification::from_json(v) else { continue };
            let names: Vec<String> = serde_json::from_value(v["class_names"].clone()).unwrap_or_default();
            let name = |i: usize| names.get(i).map_or(format!("class {i}"), |n| format!("{i} {n}"));
            let per: Vec<(usize, f64)> =
                c.per_class().iter().enumerate().filter_map(|(i, a)| a.map(|a| (i, a))).collect();
            let mut sorted = per.clone();
            sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
            let show = |it: &[(usize, f64)]| {
                it.iter().map(|&(i, a)| format!("{} {:.1}%", name(i), 100.0 * a)).collect::<Vec<_>>().join(", ")
            };
            let png = crate::classification::confusion_png(std::path::Path::new(file));
            let png = png.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let _ = writeln!(s, "### Per class: {file}\n");
            if per.len() <= 20 {
                let _ = writeln!(s, "Accuracy per true class: {}.\n", show(&per));
            } else {
                let k = 5.min(sorted.len());
                let _ = writeln!(
                    s,
                    "{} classes; lowest: {}; highest: {}.\n",
                    per.len(),
                    show(&sorted[..k]),
                    show(&sorted[sorted.len() - k..])
                );
            }
            if run.dir().join(png).exists() {
                let _ = writeln!(s, "![confusion matrix]({png})\n");
            }
        }
    }
    let _ = writeln!(
        s,
        "## Files\n\n- `metrics.jsonl`: per-step and per-epoch metrics (JSON lines)\n- `model.safetensors`: encoder + projector; `encoder.safetensors`: encoder alone (torchvision names)\n- `checkpoints/`: training checkpoints (model + optimizer + position)"
    );
    atomic_write(&run.report(), s.as_bytes())
}
