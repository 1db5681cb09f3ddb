//! [`Config::validate`]: range checks, one error per key.
use crate::{parse_device, Config, ConfigError, Result, SyncBn};

impl Config {
    /// Checks every range constraint; the error names the key, the value and what is allowed.
    pub fn validate(&self) -> Result<()> {
        fn range(key: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
            if !(v.is_finite() && v >= lo && v <= hi) {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: v.to_string(),
                    allowed: format!("a number in [{lo}, {hi}]"),
                });
            }
            Ok(())
        }
        fn positive(key: &str, v: f64) -> Result<()> {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: v.to_string(),
                    allowed: "a finite number > 0".into(),
                });
            }
            Ok(())
        }
        fn nonneg(key: &str, v: f64) -> Result<()> {
            range(key, v, 0.0, f64::MAX)
        }
        fn at_least(key: &str, v: usize, lo: usize) -> Result<()> {
            if v < lo {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: v.to_string(),
                    allowed: format!("an integer >= {lo}"),
                });
            }
            Ok(())
        }
        fn ordered(key: &str, v: [f64; 2], lo: f64, hi: f64) -> Result<()> {
            range(&format!("{key}[0]"), v[0], lo, hi)?;
            range(&format!("{key}[1]"), v[1], lo, hi)?;
            if v[0] > v[1] {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: format!("[{}, {}]", v[0], v[1]),
                    allowed: "[lo, hi] with lo <= hi".into(),
                });
            }
            Ok(())
        }

        let d = &self.data;
        at_least("data.batch_size", d.batch_size, 1)?;
        at_least("data.queue_capacity", d.queue_capacity, 1)?;
        at_least("data.synthetic_train", d.synthetic_train, 1)?;
        at_least("data.synthetic_test", d.synthetic_test, 1)?;
        if !(2..=4096).contains(&d.image_size) {
            return Err(ConfigError::OutOfRange {
                key: "data.image_size".into(),
                value: d.image_size.to_string(),
                allowed: "an integer in [2, 4096]".into(),
            });
        }
        for (key, v, lo) in [("data.mean", &d.mean, f64::MIN), ("data.std", &d.std, f64::MIN_POSITIVE)] {
            if !(v.is_empty() || v.len() == 3) || v.iter().any(|x| !(x.is_finite() && *x >= lo)) {
                return Err(ConfigError::OutOfRange {
                    key: key.into(),
                    value: format!("{v:?}"),
                    allowed: "[] (the dataset's default) or 3 finite numbers (std > 0)".into(),
                });
            }
        }
        if d.dataset == crate::DatasetKind::ImageFolder
            && d.dir.as_os_str().is_empty()
            && d.file_list.as_os_str().is_empty()
        {
            return Err(ConfigError::OutOfRange {
                key: "data.dir".into(),
                value: "\"\"".into(),
                allowed: "a folder of images (or set data.file_list)".into(),
            });
        }

        for (name, v) in [("augment.view_a", &self.augment.view_a), ("augment.view_b", &self.augment.view_b)] {
            for (k, p) in [
                ("flip_prob", v.flip_prob),
                ("jitter_prob", v.jitter_prob),
                ("blur_prob", v.blur_prob),
                ("grayscale_prob", v.grayscale_prob),
                ("solarize_prob", v.solarize_prob),
            ] {
                range(&format!("{name}.{k}"), p, 0.0, 1.0)?;
            }
            // Sides are in source pixels and clamped to the image, so only the order matters;
            // at 32x32 a max above 33 behaves as 33.
            if v.crop_min_side == 0 || v.crop_min_side >= v.crop_max_side {
                return Err(ConfigError::OutOfRange {
                    key: format!("{name}.crop_min_side"),
                    value: format!("{}..{}", v.crop_min_side, v.crop_max_side),
                    allowed: "1 <= crop_min_side < crop_max_side (max exclusive)".into(),
                });
            }
            ordered(&format!("{name}.crop_scale"), v.crop_scale, 1e-6, 1.0)?;
            ordered(&format!("{name}.crop_ratio"), v.crop_ratio, 1e-3, 1e3)?;
            range(&format!("{name}.brightness"), v.brightness, 0.0, 1.0)?;
            range(&format!("{name}.contrast"), v.contrast, 0.0, 1.0)?;
            range(&format!("{name}.saturation"), v.saturation, 0.0, 1.0)?;
            range(&format!("{name}.hue"), v.hue, 0.0, 0.5)?;
            ordered(&format!("{name}.blur_sigma"), v.blur_sigma, 0.0, 100.0)?;
            if v.color_math == crate::ColorMath::PilU8 {
                // The u8 path is torchvision-on-PIL only: the other semantics have no u8 form.
                let bad = if v.interpolation == crate::Interpolation::TfBilinear {
                    Some(("interpolation", "\"tf-bilinear\""))
                } else if v.blur_kind != crate::BlurKind::Pil {
                    Some(("blur_kind", "\"tfa3x3\""))
                } else if v.jitter_style != crate::JitterStyle::Torchvision {
                    Some(("jitter_style", "\"tf\""))
                } else if v.solarize_noop_quirk {
                    Some(("solarize_noop_quirk", "true"))
                } else {
                    None
                };
                if let Some((k, value)) = bad {
                    return Err(ConfigError::OutOfRange {
                        key: format!("{name}.{k}"),
                        value: value.into(),
                        allowed: "with color_math = \"pil-u8\": a Pillow interpolation, blur_kind \"pil\", jitter_style \"torchvision\", solarize_noop_quirk false".into(),
                    });
                }
            }
        }

        let m = &self.model;
        if !(1..=1024).contains(&m.width) {
            return Err(ConfigError::OutOfRange {
                key: "model.width".into(),
                value: m.width.to_string(),
                allowed: "an integer in [1, 1024]".into(),
            });
        }
        if m.projector.iter().any(|&w| w < 1) {
            return Err(ConfigError::OutOfRange {
                key: "model.projector".into(),
                value: format!("{:?}", m.projector),
                allowed: "a list of layer widths, each >= 1 (may be empty: no projector)".into(),
            });
        }
        if m.projector_sync_bn && m.sync_bn != SyncBn::Off {
            return Err(ConfigError::BadValue {
                key: "model.sync_bn".into(),
                value: format!("{:?} with model.projector_sync_bn = true", m.sync_bn),
                reason: "set one of the two keys (projector_sync_bn = true is sync_bn = \"projector\")".into(),
            });
        }
        if m.sync_bn_scope() == SyncBn::All && self.run.bn_batch > 0 {
            // run.bn_batch makes one process normalize like per-rank BN; synchronizing every BN
            // asks for global statistics: the two cannot both hold.
            return Err(ConfigError::BadValue {
                key: "model.sync_bn".into(),
                value: format!("\"all\" with run.bn_batch = {}", self.run.bn_batch),
                reason: "ghost batch norm (run.bn_batch > 0) contradicts synchronizing every batch norm".into(),
            });
        }

        nonneg("loss.lambda", self.loss.lambda)?;
        positive("loss.scale", self.loss.scale)?;

        let o = &self.optim;
        positive("optim.lr", o.lr)?;
        nonneg("optim.lr_bias", o.lr_bias)?;
        range("optim.beta1", o.beta1, 0.0, 0.999_999)?;
        range("optim.beta2", o.beta2, 0.0, 0.999_999_999)?;
        positive("optim.eps", o.eps)?;
        nonneg("optim.weight_decay", o.weight_decay)?;
        range("optim.momentum", o.momentum, 0.0, 0.999_999)?;
        positive("optim.eta", o.eta)?;

        nonneg("schedule.warmup_epochs", self.schedule.warmup_epochs)?;
        range("schedule.final_lr_fraction", self.schedule.final_lr_fraction, 0.0, 1.0)?;

        let r = &self.run;
        at_least("run.epochs", r.epochs, 1)?;
        at_least("run.checkpoint_every", r.checkpoint_every, 1)?;
        at_least("run.keep_checkpoints", r.keep_checkpoints, 1)?;
        at_least("run.log_every", r.log_every, 1)?;
        if r.spike_factor != 0.0 && !(r.spike_factor.is_finite() && r.spike_factor > 1.0) {
            return Err(ConfigError::OutOfRange {
                key: "run.spike_factor".into(),
                value: r.spike_factor.to_string(),
                allowed: "0 (off) or a finite number > 1".into(),
            });
        }
        at_least("run.spike_window", r.spike_window, 1)?;
        positive("run.online_probe_lr", r.online_probe_lr)?;
        at_least("eval.official_epochs", self.eval.official_epochs, 1)?;
        at_least("eval.official_batch_size", self.eval.official_batch_size, 1)?;
        positive("eval.official_lr", self.eval.official_lr)?;
        nonneg("eval.official_weight_decay", self.eval.official_weight_decay)?;
        at_least("eval.finetune_epochs", self.eval.finetune_epochs, 1)?;
        // Training-mode batch norm needs two rows per batch.
        at_least("eval.finetune_batch_size", self.eval.finetune_batch_size, 2)?;
        nonneg("eval.finetune_lr_backbone", self.eval.finetune_lr_backbone)?;
        positive("eval.finetune_lr_classifier", self.eval.finetune_lr_classifier)?;
        nonneg("eval.finetune_weight_decay", self.eval.finetune_weight_decay)?;
        if !(self.eval.finetune_train_percent > 0.0 && self.eval.finetune_train_percent <= 100.0) {
            return Err(ConfigError::OutOfRange {
                key: "eval.finetune_train_percent".into(),
                value: self.eval.finetune_train_percent.to_string(),
                allowed: "a number in (0, 100] (the paper's: 1 and 10)".into(),
            });
        }
        // Ghost batch norm: every chunk must have the same size, and batch norm needs more than
        // one row per chunk (a remainder chunk of one row fails, or normalizes to zero).
        if r.bn_batch != 0 && (r.bn_batch < 2 || !self.data.batch_size.is_multiple_of(r.bn_batch)) {
            return Err(ConfigError::OutOfRange {
                key: "run.bn_batch".into(),
                value: r.bn_batch.to_string(),
                allowed: format!("0 (the whole batch) or a divisor >= 2 of data.batch_size = {}", self.data.batch_size),
            });
        }
        at_least("run.spike_patience", r.spike_patience, 1)?;
        if parse_device(&r.device).is_none() {
            return Err(ConfigError::BadValue {
                key: "run.device".into(),
                value: format!("{:?}", r.device),
                reason: "expected auto, cpu, cuda or cuda:N".into(),
            });
        }

        let e = &self.eval;
        at_least("eval.linear_epochs", e.linear_epochs, 1)?;
        at_least("eval.linear_batch_size", e.linear_batch_size, 1)?;
        nonneg("eval.linear_l2", e.linear_l2)?;
        range("eval.val_fraction", e.val_fraction, 0.0, 0.9)?;
        at_least("eval.knn_k", e.knn_k, 1)?;
        positive("eval.knn_temperature", e.knn_temperature)?;
        // 0 is allowed: every chunk streams from the spill file.
        if e.feature_memory_mb > 1 << 30 {
            return Err(ConfigError::OutOfRange {
                key: "eval.feature_memory_mb".into(),
                value: e.feature_memory_mb.to_string(),
                allowed: format!("an integer in [0, {}] (MiB)", 1usize << 30),
            });
        }
        Ok(())
    }
    /// The checks that need the world size of a data-parallel run (known only at launch):
    /// `data.batch_size` is a multiple of `world`, and `run.bn_batch` splits a rank's share
    /// (`batch_size / world` rows) into equal chunks of two or more rows ([`Config::validate`]
    /// checks it against the global batch only, where a rank's share could end in a 1-row chunk).
    ///
    /// # Errors
    /// [`ConfigError::OutOfRange`] naming `data.batch_size` or `run.bn_batch`.
    pub fn validate_world(&self, world: usize) -> Result<()> {
        let b = self.data.batch_size;
        if world == 0 || !b.is_multiple_of(world) || b < world {
            return Err(ConfigError::OutOfRange {
                key: "data.batch_size".into(),
                value: b.to_string(),
                allowed: format!(
                    "a positive multiple of the world size {world} (each rank holds batch_size / world rows)"
                ),
            });
        }
        let share = b / world;
        let bn = self.run.bn_batch;
        if bn != 0 && bn < share && !share.is_multiple_of(bn) {
            return Err(ConfigError::OutOfRange {
                key: "run.bn_batch".into(),
                value: bn.to_string(),
                allowed: format!(
                    "0, a divisor >= 2 of a rank's share data.batch_size / world = {b} / {world} = {share}, or >= {share} \
                     (chunks of {bn} would leave a last chunk of {} row(s))",
                    share % bn
                ),
            });
        }
        Ok(())
    }
}
