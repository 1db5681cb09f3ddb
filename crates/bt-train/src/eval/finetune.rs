//! Semi-supervised fine-tuning, as facebookresearch/barlowtwins `evaluate.py --weights
//! finetune` runs it (the line of each setting in `docs/USAGE.md`):
//!
//! - a labeled subset of the training split: `--train-percent 1|10` reads SimCLR's published
//!   file lists (`eval.finetune_train_files`, same format), or here a class-balanced
//!   `eval.finetune_train_percent` drawn by `run.seed` ([`bt_data::balanced_subset`]);
//! - the whole encoder trained, batch norm in training mode (batch statistics, running
//!   statistics updated), and a linear layer on the pooled features (`fc.weight ~ N(0, 0.01)`,
//!   `fc.bias = 0`);
//! - training images through `RandomResizedCrop` + `RandomHorizontalFlip` (the official linear
//!   protocol's Pillow-exact views, [`bt_config::AugmentConfig::official_linear`]); test images
//!   `Resize(256)` + `CenterCrop(224)` (same ratios at other sizes), the encoder in eval mode;
//! - `CrossEntropyLoss`; `SGD(momentum 0.9, weight_decay)` with two parameter groups, the
//!   classifier at `eval.finetune_lr_classifier` and the encoder at `eval.finetune_lr_backbone`
//!   ([`bt_optim::Sgd`], PyTorch's update), both scaled by `CosineAnnealingLR(epochs)` stepped once
//!   per epoch; no dropped remainder (a last batch of one image is skipped: training-mode batch
//!   norm cannot normalize one row at a 1x1 map);
//! - after every epoch top-1/top-5 on the test split; the best of each over the epochs
//!   (`best_acc1`/`best_acc5`, what the paper quotes) beside the last epoch's;
//! - its state (encoder, classifier, momentum) saved after every epoch and picked up again, as
//!   `evaluate.py` does with its `checkpoint.pth` ([`super::resume`]).
//!
//! Unlike the frozen protocols, this changes the model: [`finetune`] trains `model`'s encoder
//! in place, and [`Finetuner::save`] writes it with the classifier as a torchvision state dict.
use super::official;
use super::resume::{copy_into, EvalControl};
use crate::error::Result;
use crate::observer::Observer;
use crate::setup::Data;
use bt_config::{Config, EvalConfig};
use bt_data::ImageSource;
use bt_model::{BarlowTwins, Role};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// Group of the classifier's parameters in the optimizer (the first, as in `evaluate.py`).
const CLASSIFIER: usize = 0;
/// Group of the encoder's trainable parameters.
const BACKBONE: usize = 1;
/// Prefix of the encoder's tensors in the optimizer and the resume file.
const ENCODER: &str = "encoder.";
/// The protocol's name in resume files.
const PROTOCOL: &str = "finetune";

/// The classifier and one SGD optimizer over it and the encoder's trainable parameters.
pub struct Finetuner {
    _vs: nn::VarStore,
    lin: nn::Linear,
    opt: bt_optim::Sgd,
    lr_backbone: f64,
    lr_classifier: f64,
    epochs: usize,
}

impl Finetuner {
    /// A classifier `features -> classes` ([`official::fc_layer`]: `fc.weight ~ N(0, 0.01)` from
    /// libtorch's generator seeded with `seed`, zero bias) on `device`, and the optimizer over it
    /// and `model`'s encoder, with the `eval.finetune_*` settings.
    pub fn new(model: &BarlowTwins, classes: i64, e: &EvalConfig, seed: u64, device: Device) -> Result<Self> {
        let (vs, lin) = official::fc_layer(model.feature_dim(), classes, seed, device);
        Self::with_layer(model, vs, lin, e)
    }

    /// A classifier from given weights (`classes x features`) and bias (tests).
    pub fn from_weights(model: &BarlowTwins, weight: &Tensor, bias: &Tensor, e: &EvalConfig) -> Result<Self> {
        let (vs, lin) = official::fc_from(weight, bias);
        Self::with_layer(model, vs, lin, e)
    }

    fn with_layer(model: &BarlowTwins, vs: nn::VarStore, lin: nn::Linear, e: &EvalConfig) -> Result<Self> {
        let backbone: Vec<(String, Tensor)> = model
            .encoder()
            .variables()
            .iter()
            .filter(|v| v.role == Role::Trainable)
            .map(|v| (format!("{ENCODER}{}", v.name), v.tensor.shallow_clone()))
            .collect();
        let mut groups = vec![Vec::new(), Vec::new()];
        (groups[CLASSIFIER], groups[BACKBONE]) = (official::fc_params(&lin), backbone);
        let lrs = [e.finetune_lr_classifier, e.finetune_lr_backbone];
        let opt = bt_optim::Sgd::new(groups, &lrs, 0.9, e.finetune_weight_decay)?;
        let mut f = Self {
            _vs: vs,
            lin,
            opt,
            lr_backbone: e.finetune_lr_backbone,
            lr_classifier: e.finetune_lr_classifier,
            epochs: e.finetune_epochs,
        };
        f.set_epoch(0)?;
        Ok(f)
    }

    /// `CosineAnnealingLR(optimizer, epochs)`'s factor after `epoch` scheduler steps (closed
    /// form), applied to each group's learning rate.
    pub fn factor(&self, epoch: usize) -> f64 {
        0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / self.epochs.max(1) as f64).cos())
    }

    /// `(classifier, backbone)` learning rates of 0-based `epoch`.
    pub fn lrs_at(&self, epoch: usize) -> (f64, f64) {
        let f = self.factor(epoch);
        (self.lr_classifier * f, self.lr_backbone * f)
    }

    /// Sets the learning rates of 0-based `epoch`.
    pub fn set_epoch(&mut self, epoch: usize) -> Result<()> {
        let (c, b) = self.lrs_at(epoch);
        self.opt.set_lr(CLASSIFIER, c);
        self.opt.set_lr(BACKBONE, b);
        Ok(())
    }

    /// One step on images `x` (`N x 3 x H x W`, normalized) and labels `y` (`N`, int64): the
    /// encoder in training mode, cross-entropy, backward, SGD on both groups. The batch's loss.
    pub fn step(&mut self, model: &BarlowTwins, x: &Tensor, y: &Tensor, channels_last: bool) -> Result<f64> {
        // bf16 runs: the copies the forward uses are cast from the weights of the last step.
        model.refresh_low_precision_weights(channels_last)?;
        let h = model.encode(x, true);
        let loss = h.apply(&self.lin).f_cross_entropy_loss::<Tensor>(y, None, tch::Reduction::Mean, -100, 0.0)?;
        self.opt.zero_grad();
        loss.f_backward()?;
        self.opt.step()?;
        Ok(bt_host::read_f64(&loss)?)
    }

    /// Logits of features `h`.
    pub fn logits(&self, h: &Tensor) -> Tensor {
        tch::no_grad(|| h.apply(&self.lin))
    }

    /// The classifier's weight (`classes x features`) and bias.
    pub fn parameters(&self) -> (Tensor, Tensor) {
        (self.lin.ws.shallow_clone(), self.lin.bs.as_ref().expect("a bias").shallow_clone())
    }

    /// The classifier, the momentum buffers and `model`'s encoder (every variable, batch-norm
    /// statistics included, under `encoder.`), copies, for a resume file.
    ///
    /// # Errors
    /// libtorch failing to copy.
    pub fn state(&self, model: &BarlowTwins) -> Result<Vec<(String, Tensor)>> {
        let encoder =
            model.encoder().variables().iter().map(|v| (format!("{ENCODER}{}", v.name), v.tensor.shallow_clone()));
        let mut out = official::fc_params(&self.lin)
            .into_iter()
            .chain(encoder)
            .map(|(n, t)| Ok((n, t.f_detach_copy()?)))
            .collect::<Result<Vec<_>>>()?;
        out.extend(self.opt.state()?);
        Ok(out)
    }

    /// Restores what [`state`](Self::state) returned, into this classifier and `model`.
    ///
    /// # Errors
    /// A missing or misshapen entry.
    pub fn load_state(&mut self, model: &BarlowTwins, tensors: &HashMap<String, Tensor>) -> Result<()> {
        official::load_fc(&self.lin, tensors)?;
        for v in model.encoder().variables() {
            copy_into(tensors, &format!("{ENCODER}{}", v.name), &v.tensor, "encoder")?;
        }
        self.opt.load_state(&official::momentum_of(tensors))?;
        Ok(())
    }

    /// Writes `model`'s encoder under torchvision's names with this classifier as `fc.weight`
    /// and `fc.bias`: for an ImageNet ResNet, a state dict that torchvision's
    /// `resnet50(num_classes=C)` loads with `strict=True`; `bt-cli eval --weights` and
    /// `pretrain --init` read it too (the `fc` pair is skipped there). Atomic: a crash leaves
    /// the old file or the new one.
    pub fn save(&self, model: &BarlowTwins, path: &Path) -> Result<()> {
        let (w, b) = self.parameters();
        crate::atomic::atomic_via(path, |tmp| {
            Ok(model.encoder().save_with(tmp, &[("fc.weight", &w), ("fc.bias", &b)])?)
        })
    }
}

/// The labeled training images fine-tuning uses: `eval.finetune_train_files` when set, else
/// the class-balanced `eval.finetune_train_percent` of `train` drawn by `run.seed` (all of it at
/// 100). Returns the subset and how it was chosen, for the result.
pub fn labeled_subset(cfg: &Config, train: &Arc<dyn ImageSource>) -> Result<(Arc<dyn ImageSource>, Value)> {
    let e = &cfg.eval;
    let (indices, how) = if !e.finetune_train_files.as_os_str().is_empty() {
        let idx = bt_data::listed_subset(train.as_ref(), &e.finetune_train_files)?;
        (idx, json!({"train_files": e.finetune_train_files.display().to_string()}))
    } else if e.finetune_train_percent >= 100.0 {
        return Ok((train.clone(), json!({"train_percent": 100.0})));
    } else {
        let idx = bt_data::balanced_subset(train.as_ref(), e.finetune_train_percent, cfg.run.seed)?;
        (idx, json!({"train_percent": e.finetune_train_percent, "subset_seed": cfg.run.seed}))
    };
    Ok((Arc::new(bt_data::Subset::new(train.clone(), indices)?), how))
}

/// The result name of a fine-tuning run (`linear_finetune_10pct`, `linear_finetune_list`), so
/// that the 1% and 10% results of one run sit side by side.
pub fn result_name(e: &EvalConfig) -> String {
    if !e.finetune_train_files.as_os_str().is_empty() {
        "linear_finetune_list".into()
    } else {
        format!("linear_finetune_{}pct", e.finetune_train_percent)
    }
}

/// Where the fine-tuned network of the result file `json` goes: beside it, same stem
/// (`eval_linear_finetune_10pct.json` -> `eval_linear_finetune_10pct.safetensors`).
pub fn network_path(json: &Path) -> std::path::PathBuf {
    json.with_extension("safetensors")
}

/// Fine-tunes `model`'s encoder in place with a new classifier on the labeled subset; the JSON
/// result and the classifier ([`Finetuner::save`] writes both). `ctl` keeps its progress after
/// every epoch and stops it on request ([`EvalControl`]).
pub fn finetune(
    cfg: &Config,
    model: &BarlowTwins,
    data: &Data,
    device: Device,
    obs: &mut dyn Observer,
    ctl: &EvalControl,
) -> Result<(Value, Finetuner)> {
    let t = Instant::now();
    let e = &cfg.eval;
    let test_src = data.test()?.clone();
    let (train, subset) = labeled_subset(cfg, &data.train)?;
    let classes = official::class_count(data.train.as_ref(), test_src.as_ref());
    let needs = "fine-tuning needs a labeled training split";
    let views = official::LabeledViews::new(
        cfg,
        train.clone(),
        e.finetune_batch_size,
        0x6669_6e65_7475_6e65,
        classes,
        needs,
        "finetune",
    )?;
    let mut ft = Finetuner::new(model, classes, e, cfg.run.seed, device)?;
    let epochs = e.finetune_epochs;
    let (mut records, mut skipped, mut start) = (official::EpochRecords::new(), 0usize, 0);
    if let Some(r) = ctl.load(cfg, PROTOCOL)? {
        ft.load_state(model, &r.tensors)?;
        (records, start) = (official::EpochRecords::from_json(&r.records), r.epochs_done);
        skipped = r.records["skipped_single_rows"].as_u64().unwrap_or(0) as usize;
    }
    for epoch in start..epochs {
        ft.set_epoch(epoch)?;
        let loss = views.epoch(epoch, epochs, device, obs, |x, y, i| {
            ctl.check_stop(PROTOCOL, epoch, epochs)?;
            let n = x.size()[0];
            if n < 2 {
                skipped += n as usize;
                return Ok(None);
            }
            let loss = ft.step(model, x, y, cfg.run.channels_last)?;
            if !loss.is_finite() {
                return Err(crate::error::Error::Diverged(format!(
                    "fine-tuning diverged at epoch {} batch {}: loss {loss} (lower eval.finetune_lr_backbone or eval.finetune_lr_classifier)",
                    epoch + 1,
                    i + 1
                )));
            }
            Ok(Some(loss))
        })?;
        // The encoder changed: the test features are recomputed (eval mode) every epoch.
        let test = crate::eval::test_store(cfg, model, &test_src, device, &mut ())?;
        let c = crate::eval::classify_store(&test, classes, device, |x| ft.logits(x))?;
        let (lr_c, lr_b) = ft.lrs_at(epoch);
        records.push(
            c,
            json!({"epoch": epoch + 1, "lr_classifier": lr_c, "lr_backbone": lr_b, "loss": loss}),
            "finetune",
        );
        if epoch + 1 < epochs {
            let mut saved = records.to_json();
            saved["skipped_single_rows"] = json!(skipped);
            ctl.save(cfg, PROTOCOL, epoch + 1, &ft.state(model)?, &saved)?;
        }
    }
    let mut v = json!({
        "eval": "linear",
        "protocol": "finetune",
        "features": "encoder",
        "feature_dim": model.feature_dim(),
        "epochs": epochs,
        "batch_size": e.finetune_batch_size,
        "lr_backbone": e.finetune_lr_backbone,
        "lr_classifier": e.finetune_lr_classifier,
        "weight_decay": e.finetune_weight_decay,
        "optimizer": "SGD momentum 0.9 (classifier and backbone groups), CosineAnnealingLR per epoch (evaluate.py --weights finetune)",
        "train_transform": "RandomResizedCrop + RandomHorizontalFlip (Pillow bilinear)",
        "test_transform": format!("Resize({}) + CenterCrop({})", bt_data::eval::resize_side(cfg.data.image_size), cfg.data.image_size),
        "n_train": train.len(),
        "n_train_full": data.train.len(),
        "skipped_single_rows": skipped,
    });
    crate::eval::linear::merge(&mut v, subset);
    records.finish(&mut v);
    v["wall_s"] = json!(t.elapsed().as_secs_f64());
    crate::eval::name_classes(&mut v, data);
    Ok((v, ft))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bt_config::{Arch, ModelConfig};
    use std::collections::HashMap;

    fn fixture() -> HashMap<String, Tensor> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/finetune.safetensors");
        Tensor::read_safetensors(&p).unwrap().into_iter().collect()
    }

    /// Against `scripts/fixtures/finetune.py`: timm's ResNet-18 at width 2 in training mode,
    /// torch.optim.SGD with a classifier and a backbone group (momentum 0.9, weight decay) +
    /// CosineAnnealingLR(2) stepped per epoch, 2 epochs of 2 batches, from the same weights:
    /// every loss, learning rate, weight and running statistic within 1e-5.
    #[test]
    fn finetuning_steps_match_pytorch() {
        let t = fixture();
        let cfg = ModelConfig { arch: Arch::Resnet18, width: 2, projector: vec![8], ..Default::default() };
        let vs = nn::VarStore::new(Device::Cpu);
        let model = BarlowTwins::new(&vs.root(), &cfg);
        tch::no_grad(|| {
            for v in model.encoder().variables() {
                let src =
                    t.get(&format!("init.{}", v.name)).unwrap_or_else(|| panic!("no init.{} in the fixture", v.name));
                v.tensor.shallow_clone().copy_(src);
            }
        });
        let e = EvalConfig {
            finetune_epochs: 2,
            finetune_lr_classifier: 0.5,
            finetune_lr_backbone: 0.05,
            finetune_weight_decay: 1e-3,
            ..Default::default()
        };
        let mut ft = Finetuner::from_weights(&model, &t["init.fc.weight"], &t["init.fc.bias"], &e).unwrap();
        let want_lrs = Vec::<f64>::try_from(&t["lrs"].reshape([-1])).unwrap();
        let mut lrs = Vec::new();
        for epoch in 0..2 {
            ft.set_epoch(epoch).unwrap();
            let (c, b) = ft.lrs_at(epoch);
            lrs.extend([c, b]);
            for b in 0..2 {
                let (x, y) = (&t[&format!("x_{epoch}_{b}")], &t[&format!("y_{epoch}_{b}")]);
                let loss = ft.step(&model, x, y, false).unwrap();
                let want = t[&format!("loss_{epoch}_{b}")].double_value(&[0]);
                assert!((loss - want).abs() <= 1e-5 * want.abs().max(1.0), "loss {epoch}/{b}: {loss} vs {want}");
            }
        }
        assert_eq!(lrs.len(), want_lrs.len());
        for (a, b) in lrs.iter().zip(&want_lrs) {
            assert!((a - b).abs() < 1e-12, "learning rates {lrs:?} vs {want_lrs:?}");
        }
        let (w, b) = ft.parameters();
        let mut compared = 0;
        let finals = model.encoder().variables().iter().map(|v| (v.name.clone(), v.tensor.shallow_clone()));
        for (name, got) in finals.chain([("fc.weight".to_string(), w), ("fc.bias".to_string(), b)]) {
            let want = &t[&format!("final.{name}")];
            let d = (got.to_kind(tch::Kind::Double) - want.to_kind(tch::Kind::Double)).abs().max().double_value(&[]);
            let scale = want.to_kind(tch::Kind::Double).abs().max().double_value(&[]).max(1.0);
            assert!(d <= 1e-5 * scale, "{name} differs from PyTorch by {d}");
            compared += 1;
        }
        // The steps moved the weights and statistics well past the tolerance.
        for name in ["conv1.weight", "layer4.1.bn2.running_var", "fc.weight"] {
            let moved = (&t[&format!("init.{name}")] - &t[&format!("final.{name}")]).abs().max().double_value(&[]);
            assert!(moved > 1e-3, "{name} moved by {moved} only");
        }
        let n_state = t.keys().filter(|k| k.starts_with("final.")).count();
        assert_eq!(compared, n_state, "every tensor of PyTorch's final state dict compared");
    }
}
