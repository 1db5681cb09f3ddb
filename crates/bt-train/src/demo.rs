//! The demo: pretrain, then put the linear-probe and kNN accuracy of the pretrained encoder
//! next to those of the same architecture at its random initialization (the very weights
//! pretraining started from, since both come from `run.seed`).
use crate::error::Result;
use crate::eval::{encoder_evals, save_result};
use crate::observer::Observer;
use crate::runfolder::RunFolder;
use crate::setup::{build_model, Data};
use crate::train::{Outcome, Trainer};
use bt_config::Config;
use serde_json::{json, Value};
use std::path::Path;
use tch::Device;

/// The demo's results: the pretraining outcome and, for `pretrained` and `random`, the
/// standard linear probe and kNN results (also written as `eval_*.json` into the run folder).
pub struct DemoResult {
    /// The pretraining run.
    pub outcome: Outcome,
    /// `(weights, linear, knn)` for `pretrained` then `random`.
    pub rows: Vec<(&'static str, Value, Value)>,
}

/// Pretrains `cfg` on `data` into `run` (cleared first), then evaluates both encoders.
pub fn run(cfg: &Config, data: &Data, device: Device, run: &RunFolder, observer: impl Observer) -> Result<DemoResult> {
    crate::start::clear_run(run)?;
    let outcome = Trainer::new(cfg.clone(), device).with_observer(observer).pretrain(data, run, None)?;
    let mut rows = Vec::new();
    let random = build_model(cfg, device)?;
    for (weights, model) in [("pretrained", &outcome.model), ("random", &random.1)] {
        let (mut lin, mut knn) = encoder_evals(cfg, model, data, device)?;
        let prefix = if weights == "random" { "random_" } else { "" };
        for (v, name) in [(&mut lin, "linear_standard"), (&mut knn, "knn")] {
            v["weights"] = json!(weights);
            save_result(Some(run), Path::new(""), &format!("{prefix}{name}"), v)?;
        }
        rows.push((weights, lin, knn));
    }
    Ok(DemoResult { outcome, rows })
}
