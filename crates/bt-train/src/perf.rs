//! Model FLOPs for MFU accounting (what `bt-cli bench step` and `model-summary` report), and the
//! operators one trainer step dispatches ([`step_op_counts`], for docs/GPU.md).
use bt_model::BarlowTwins;

/// Forward FLOPs of one image through the convolution and linear layers, from the model's
/// layer table: a conv or linear layer does one multiply-add per weight per output position
/// (`weights x H_out x W_out`), 2 FLOPs each. Biases, batch norm, activations, pools and the
/// loss are left out (standard MFU accounting; see docs/GPU.md).
pub fn forward_flops_per_image(model: &BarlowTwins, cfg: &bt_config::ModelConfig, side: i64) -> f64 {
    let keras = cfg.arch == bt_config::Arch::KerasResnet34;
    model
        .layer_table(side, side)
        .iter()
        .map(|r| {
            let out = &r.output_shape;
            if r.kind.starts_with("Conv2d") {
                // Keras convs have a bias (one per output channel); torchvision's do not.
                let weights = r.trainable - if keras { out[1] } else { 0 };
                2.0 * weights as f64 * (out[2] * out[3]) as f64
            } else if r.kind.starts_with("Linear") {
                let weights = r.trainable - if cfg.projector_bias { out[1] } else { 0 };
                2.0 * weights as f64
            } else {
                0.0
            }
        })
        .sum()
}

/// Model FLOPs of one train step on `batch` pairs of `side x side` images: forward of both
/// views, backward = 2x forward (input and weight gradients).
pub fn train_step_flops(model: &BarlowTwins, cfg: &bt_config::ModelConfig, batch: i64, side: i64) -> f64 {
    3.0 * 2.0 * batch as f64 * forward_flops_per_image(model, cfg, side)
}

/// The measured bf16 dense matrix-product peak of the H200 the GPU check runs on
/// (../shared/GPU.md), the MFU denominator.
pub const PEAK_FLOPS: f64 = 790e12;

/// The ATen operators one step of [`Trainer::pretrain`](crate::Trainer::pretrain) dispatches,
/// averaged over steps: the kernels and host syncs a GPU step would launch (docs/GPU.md).
#[derive(Debug, Clone)]
pub struct StepOpCounts {
    /// Steps the average is over.
    pub steps: usize,
    /// Operators of every depth per step.
    pub ops: f64,
    /// Kernel operators per step ([`bt_shim::OpCounts::kernels`]).
    pub kernels: f64,
    /// `.item()`-style scalar reads per step (`aten::_local_scalar_dense`): each is a blocking
    /// device-to-host sync on CUDA.
    pub scalar_reads: f64,
    /// `aten::copy_` per step (device-to-device, and the host-device copies on CUDA).
    pub copies: f64,
    /// The most frequent kernel operators per step, most frequent first.
    pub top: Vec<(String, f64)>,
}

/// Counts what one trainer step dispatches: the whole `pretrain` loop runs twice on `data`, for
/// `n` and `3n` steps (`n` = `2 * run.log_every`), and the difference is divided by `2n`, so
/// model construction, the first-step warm-up and the final checkpoint cancel and what is left is
/// the steady-state step, logging included at its `log_every` rate. Run with data whose epoch
/// is longer than `3n` steps (an epoch end inside the window would be counted too).
pub fn step_op_counts(
    cfg: &bt_config::Config,
    data: &crate::setup::Data,
    device: tch::Device,
) -> crate::Result<StepOpCounts> {
    let n = 2 * cfg.run.log_every.max(1);
    let run = |steps: usize| -> crate::Result<bt_shim::OpCounts> {
        let mut c = cfg.clone();
        (c.run.max_steps, c.run.knn_every, c.run.tensorboard) = (steps, 0, false);
        // A scratch run folder, removed afterwards (its checkpoints are not wanted).
        let dir = std::env::temp_dir().join(format!("bt-step-op-counts-{}-{steps}", std::process::id()));
        let folder = crate::RunFolder::create(&dir)?;
        let (out, counts) = bt_shim::count_ops(|| crate::Trainer::new(c, device).pretrain(data, &folder, None))?;
        let _ = std::fs::remove_dir_all(&dir);
        out?;
        Ok(counts)
    };
    let (a, b) = (run(n)?, run(3 * n)?);
    let per = |x: u64, y: u64| (y as f64 - x as f64) / (2 * n) as f64;
    let mut top: Vec<(String, f64)> =
        b.leaves.iter().map(|(name, cb)| (name.clone(), per(a.count(name), *cb))).filter(|(_, v)| *v > 0.0).collect();
    top.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    top.truncate(15);
    Ok(StepOpCounts {
        steps: 2 * n,
        ops: per(a.ops, b.ops),
        kernels: per(a.kernels(), b.kernels()),
        scalar_reads: per(a.count("aten::_local_scalar_dense"), b.count("aten::_local_scalar_dense")),
        copies: per(a.count("aten::copy_"), b.count("aten::copy_")),
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    /// The MFU numerator against PyTorch's FlopCounterMode on bench/step_torch.py's mirror of the
    /// same models (scripts/fixtures/flops.py).
    #[test]
    fn forward_flops_match_torch_flop_counter() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flops.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for c in v["cases"].as_array().unwrap() {
            let cfg = bt_config::ModelConfig {
                arch: if c["arch"] == "KerasResnet34" {
                    bt_config::Arch::KerasResnet34
                } else {
                    bt_config::Arch::CifarResnet18
                },
                width: c["width"].as_i64().unwrap(),
                projector: c["projector"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect(),
                projector_bias: c["projector_bias"].as_bool().unwrap(),
                ..Default::default()
            };
            let vs = nn::VarStore::new(Device::Cpu);
            let model = BarlowTwins::try_new(&vs.root(), &cfg).unwrap();
            let ours = forward_flops_per_image(&model, &cfg, 32);
            let torch = c["forward_flops_per_image"].as_f64().unwrap();
            assert_eq!(ours, torch, "{c}");
            assert_eq!(train_step_flops(&model, &cfg, 10, 32), 60.0 * torch);
        }
    }
}
