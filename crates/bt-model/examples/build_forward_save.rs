//! Builds the model of a preset, runs a forward pass in both modes, and saves the encoder.
//!
//! ```text
//! cargo run --release -p bt-model --example build_forward_save -- [PRESET] [OUT.safetensors]
//! ```
//! PRESET defaults to `demo` (a narrow CIFAR ResNet-18); OUT to `target/encoder.safetensors`.
//! Expected output for `demo`: features 4 x 128, embeddings 4 x 512; encoder 700,176 trainable
//! parameters, whole model 1,292,048.
use bt_model::BarlowTwins;
use tch::{nn, Device, Kind, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset = args.next().unwrap_or_else(|| "demo".into());
    let out = args.next().unwrap_or_else(|| "target/encoder.safetensors".into());
    let cfg = bt_config::Config::preset(&preset)?;
    let vs = nn::VarStore::new(Device::cuda_if_available());
    let model = BarlowTwins::new(&vs.root(), &cfg.model);
    let c = model.param_counts();
    println!(
        "{preset}: {:?}, encoder {} + {} non-trainable, total {} + {}",
        cfg.model.arch,
        c.encoder_trainable,
        c.encoder_non_trainable,
        c.total_trainable(),
        c.total_non_trainable()
    );
    // A batch of images in [0, 1], channels-last (the layout the GPU path prefers).
    let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, vs.device()))
        .permute([0, 2, 3, 1])
        .contiguous()
        .permute([0, 3, 1, 2]);
    let z = model.forward(&x, true); // training mode: batch statistics, running stats updated
    let h = tch::no_grad(|| model.encode(&x, false)); // inference mode: running statistics
    println!("features {:?}, embeddings {:?}", h.size(), z.size());
    model.save_encoder(&out)?;
    println!("encoder saved to {out} (torchvision names; see docs/CHECKPOINTS.md)");
    Ok(())
}
