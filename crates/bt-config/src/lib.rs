//! The shared configuration of a Barlow Twins run.
//!
//! One struct tree ([`Config`]: `data`, `augment`, `model`, `loss`, `optim`, `schedule`, `run`,
//! `eval`) that every crate reads its part of, so that a run folder's `config.toml` alone
//! reproduces the run. It is assembled in layers, each layer a TOML table merged over the
//! previous one:
//!
//! 1. the built-in defaults ([`Config::default`], the `keras-seed` recipe),
//! 2. a preset shipped in this crate's `configs/` ([`PRESETS`]),
//! 3. an optional user file (`--config FILE`),
//! 4. `--set dotted.key=value` overrides.
//!
//! # Why layers are merged leaf by leaf
//! A config error must name the key, the bad value and what is allowed. serde errors from a
//! merged document often lose the key path, so [`ConfigBuilder`] merges one leaf at a time
//! against the schema (the serialized defaults): an unknown key, a wrong type or an unknown enum
//! variant is reported with its dotted path. Range checks ([`Config::validate`]) name the key too.
//!
//! The crate has no dependency on libtorch or on the data pipeline.
#![deny(missing_docs)]

mod augment;
mod builder;
mod data;
mod error;
mod eval;
mod loss;
mod model;
mod optim;
mod run;
mod validate;

pub use augment::*;
pub use builder::ConfigBuilder;
pub use data::*;
pub use error::{ConfigError, Result};
pub use eval::*;
pub use loss::*;
pub use model::*;
pub use optim::*;
pub use run::*;

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The presets shipped in this crate's `configs/`, embedded at compile time: `(name, TOML text)`.
pub const PRESETS: &[(&str, &str)] = &[
    ("keras-seed", include_str!("../configs/keras-seed.toml")),
    ("cifar-resnet18", include_str!("../configs/cifar-resnet18.toml")),
    ("demo", include_str!("../configs/demo.toml")),
    ("imagenet-resnet50", include_str!("../configs/imagenet-resnet50.toml")),
    ("imagenet100-resnet18", include_str!("../configs/imagenet100-resnet18.toml")),
];

/// Names of the shipped presets.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

/// A complete run configuration. `Default` is the `keras-seed` recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Dataset and batching.
    pub data: DataConfig,
    /// The two views' augmentation policies.
    pub augment: AugmentConfig,
    /// Encoder and projector.
    pub model: ModelConfig,
    /// The cross-correlation loss.
    pub loss: LossConfig,
    /// Optimizer.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Run control: epochs, seed, device, checkpoints.
    pub run: RunConfig,
    /// Evaluation protocols.
    pub eval: EvalConfig,
}

impl Config {
    /// The effective config as TOML text (what `bt-cli config` prints and run folders keep).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }

    /// Parses a complete or partial TOML document over the defaults (no preset).
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let mut b = ConfigBuilder::new();
        b.merge_str(text, Path::new("<string>"))?;
        b.build()
    }

    /// A shipped preset by name.
    pub fn preset(name: &str) -> Result<Self> {
        let mut b = ConfigBuilder::new();
        b.preset(name)?;
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bn_batch_must_divide_the_batch_into_chunks_of_two_or_more() {
        for (bn, ok) in [(0usize, true), (16, true), (2, true), (1, false), (12, false)] {
            let mut c = Config::preset("demo").unwrap();
            c.data.batch_size = 64;
            c.run.bn_batch = bn;
            let r = c.validate();
            assert_eq!(r.is_ok(), ok, "bn_batch {bn}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("run.bn_batch") && e.to_string().contains("64"), "{e}");
            }
        }
    }

    #[test]
    fn bn_batch_is_checked_against_a_ranks_share() {
        let mut c = Config::preset("demo").unwrap();
        c.data.batch_size = 36;
        c.run.bn_batch = 4;
        // 4 divides the global 36 but not a rank's 9: chunks 4, 4, 1.
        c.validate().unwrap();
        c.validate_world(1).unwrap();
        let e = c.validate_world(4).unwrap_err().to_string();
        assert!(e.contains("run.bn_batch") && e.contains("= 9") && e.contains("1 row"), "{e}");
        c.run.bn_batch = 12; // >= the share: one group per rank
        c.validate_world(4).unwrap();
        c.run.bn_batch = 3;
        c.validate_world(4).unwrap();
        let e = c.validate_world(5).unwrap_err().to_string();
        assert!(e.contains("data.batch_size") && e.contains("world size 5"), "{e}");
    }

    #[test]
    fn every_preset_loads_and_validates() {
        for name in preset_names() {
            let cfg = Config::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            cfg.validate().unwrap();
            // The printed config reloads to the same value: a run folder reproduces the run.
            assert_eq!(Config::from_toml_str(&cfg.to_toml()).unwrap(), cfg, "{name}");
        }
    }

    #[test]
    fn keras_seed_preset_has_the_notebook_values() {
        let c = Config::preset("keras-seed").unwrap();
        assert_eq!(c.data.batch_size, 512);
        assert_eq!(c.run.epochs, 160);
        assert_eq!(c.loss.lambda, 5e-3);
        assert_eq!(c.model.projector, vec![5000, 5000, 5000]);
        assert_eq!(c.optim.name, OptimKind::Lamb);
        assert_eq!(c.augment.view_a.crop_max_side, 32);
        assert!(c.augment.view_a.flip_double_coin);
    }

    #[test]
    fn unknown_key_is_named() {
        let mut b = ConfigBuilder::new();
        let e = b.set("nosuch.key=1").unwrap_err().to_string();
        assert!(e.contains("nosuch.key"), "{e}");
        let e = b.set("optim.nosuch=1").unwrap_err().to_string();
        assert!(e.contains("optim.nosuch") && e.contains("lr"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let mut b = ConfigBuilder::new();
        let e = b.set("optim.lr=abc").unwrap_err().to_string();
        assert!(e.contains("optim.lr") && e.contains("abc") && e.contains("number"), "{e}");
        let e = b.set("model.arch=resnet9000").unwrap_err().to_string();
        assert!(e.contains("model.arch") && e.contains("cifar-resnet18"), "{e}");
        let e = b.set("data.batch_size=-3").unwrap_err().to_string();
        assert!(e.contains("data.batch_size"), "{e}");
    }

    #[test]
    fn out_of_range_is_named() {
        for (set, key) in [
            ("data.batch_size=0", "data.batch_size"),
            ("optim.lr=-0.1", "optim.lr"),
            ("loss.lambda=-1", "loss.lambda"),
            ("augment.view_b.solarize_prob=1.5", "augment.view_b.solarize_prob"),
            ("run.device=gpu", "run.device"),
            ("eval.feature_memory_mb=9999999999", "eval.feature_memory_mb"),
        ] {
            let mut b = ConfigBuilder::new();
            b.set(set).unwrap();
            let e = b.build().unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn feature_store_keys_parse() {
        let c = Config::default();
        assert_eq!((c.eval.feature_memory_mb, c.eval.feature_precision), (2048, FeaturePrecision::Auto));
        let mut b = ConfigBuilder::new();
        b.set("eval.feature_precision=f16").unwrap().set("eval.feature_dir=/scratch/x").unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.eval.feature_precision, FeaturePrecision::F16);
        assert_eq!(c.eval.feature_dir, Path::new("/scratch/x"));
        assert_eq!(Config::from_toml_str(&c.to_toml()).unwrap(), c);
        let e = ConfigBuilder::new().set("eval.feature_memory_mb=-1").unwrap_err().to_string();
        assert!(e.contains("eval.feature_memory_mb"), "{e}");
        let e = ConfigBuilder::new().set("eval.feature_precision=bf16").unwrap_err().to_string();
        assert!(e.contains("eval.feature_precision") && e.contains("f16"), "{e}");
    }

    #[test]
    fn overrides_apply_with_coercion() {
        let mut b = ConfigBuilder::new();
        b.preset("keras-seed").unwrap();
        b.set("optim.lr=2").unwrap().set("model.projector=[64, 32]").unwrap();
        b.set("model.arch=cifar-resnet18").unwrap();
        let c = b.build().unwrap();
        assert_eq!(c.optim.lr, 2.0);
        assert_eq!(c.model.projector, vec![64, 32]);
        assert_eq!(c.model.arch, Arch::CifarResnet18);
    }

    #[test]
    fn malformed_file_names_the_file() {
        let mut b = ConfigBuilder::new();
        let e = b.merge_str("[optim\nlr=1", Path::new("my.toml")).unwrap_err().to_string();
        assert!(e.contains("my.toml"), "{e}");
        let e = b.merge_str("[optim]\nlrr = 1.0", Path::new("my.toml")).unwrap_err().to_string();
        assert!(e.contains("optim.lrr"), "{e}");
    }

    #[test]
    fn reliability_keys_default_off_and_are_checked() {
        let c = Config::default();
        assert_eq!((c.run.max_steps, c.run.checkpoint_every_steps, c.run.spike_factor), (0, 0, 0.0));
        assert_eq!(c.run.on_nonfinite, NonFinitePolicy::Stop);
        let mut b = ConfigBuilder::new();
        b.set("run.on_nonfinite=skip").unwrap().set("run.spike_factor=4").unwrap();
        let c = b.build().unwrap();
        assert_eq!((c.run.on_nonfinite, c.run.spike_factor), (NonFinitePolicy::Skip, 4.0));
        let e = ConfigBuilder::new().set("run.on_nonfinite=ignore").unwrap_err().to_string();
        assert!(e.contains("run.on_nonfinite") && e.contains("skip"), "{e}");
        for (set, key) in [("run.spike_factor=0.5", "run.spike_factor"), ("run.spike_window=0", "run.spike_window")] {
            let mut b = ConfigBuilder::new();
            b.set(set).unwrap();
            let e = b.build().unwrap_err().to_string();
            assert!(e.contains(key), "{set}: {e}");
        }
    }

    #[test]
    fn imagenet_resnets_parse_with_torchvision_names() {
        for (name, arch) in [("resnet18", Arch::Resnet18), ("resnet34", Arch::Resnet34), ("resnet50", Arch::Resnet50)] {
            let mut b = ConfigBuilder::new();
            b.set(&format!("model.arch={name}")).unwrap();
            assert_eq!(b.build().unwrap().model.arch, arch);
        }
        let e = ConfigBuilder::new().set("model.arch=resnet_50").unwrap_err().to_string();
        assert!(e.contains("model.arch") && e.contains("resnet50"), "{e}");
    }

    #[test]
    fn sync_bn_defaults_off_and_is_checked() {
        assert_eq!(Config::default().model.sync_bn_scope(), SyncBn::Off);
        let build = |sets: &[&str]| {
            let mut b = ConfigBuilder::new();
            for s in sets {
                b.set(s).unwrap();
            }
            b.build()
        };
        let c = build(&["model.sync_bn=all"]).unwrap();
        assert_eq!(c.model.sync_bn_scope(), SyncBn::All);
        // The older key still means "projector".
        let c = build(&["model.projector_sync_bn=true"]).unwrap();
        assert_eq!(c.model.sync_bn_scope(), SyncBn::Projector);
        let e = build(&["model.projector_sync_bn=true", "model.sync_bn=all"]).unwrap_err().to_string();
        assert!(e.contains("model.sync_bn") && e.contains("projector_sync_bn"), "{e}");
        let e = build(&["model.sync_bn=all", "run.bn_batch=64"]).unwrap_err().to_string();
        assert!(e.contains("model.sync_bn") && e.contains("bn_batch = 64"), "{e}");
        // Projector-only sync leaves the encoder per rank, which ghost BN reproduces.
        build(&["model.sync_bn=projector", "run.bn_batch=64"]).unwrap();
        let e = ConfigBuilder::new().set("model.sync_bn=encoder").unwrap_err().to_string();
        assert!(e.contains("model.sync_bn") && e.contains("all"), "{e}");
    }

    #[test]
    fn unknown_preset_lists_available() {
        let e = Config::preset("nope").unwrap_err().to_string();
        assert!(e.contains("keras-seed") && e.contains("nope"), "{e}");
    }
}
