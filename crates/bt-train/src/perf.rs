//! Model FLOPs for MFU accounting: what `bt-cli bench step` and `model-summary` report.
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
