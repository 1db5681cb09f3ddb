//! The Barlow Twins loss without the rest of the pipeline: two views' embeddings in, loss and
//! its terms out, reference vs fused, and one gradient step on the embeddings.
//!
//! `cargo run --release -p bt-loss --example loss_demo`
//!
//! Expected: both implementations print the same loss (to ~1e-6 relative); the second view
//! being a noisy copy of the first, the invariance term is small and the loss falls after the
//! step.
// Everything comes through bt-loss (its re-exports of tch and the config types): a project using
// the loss needs no other dependency.
use bt_loss::tch::{self, Device, Kind, Tensor};
use bt_loss::{barlow_twins_loss, resolve_impl, LossConfig, LossImpl, LossNorm, LossOptions};

fn main() -> Result<(), bt_loss::LossError> {
    tch::manual_seed(0);
    let (n, d) = (256, 1024);
    let z = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
    let za = (&z + Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.3).set_requires_grad(true);
    let zb = &z + Tensor::randn([n, d], (Kind::Float, Device::Cpu)) * 0.3;
    // The official recipe's loss section: BN normalization, lambda 0.0051.
    let cfg = LossConfig { lambda: 0.0051, normalization: LossNorm::Batchnorm, ..LossConfig::default() };
    let opts = LossOptions::from_config(&cfg);
    println!("N={n} D={d}: auto selects {:?}", resolve_impl(opts.implementation, n, d));
    for imp in [LossImpl::Reference, LossImpl::Fused] {
        let out = barlow_twins_loss(&za, &zb, &opts.clone().with_implementation(imp))?;
        println!(
            "{imp:?}: loss {:.6} = {:.6} + {} x {:.6}",
            out.loss.double_value(&[]),
            out.invariance.double_value(&[]),
            opts.lambda,
            out.redundancy.double_value(&[])
        );
    }
    let out = barlow_twins_loss(&za, &zb, &opts)?;
    out.loss.backward();
    let za2 = tch::no_grad(|| &za - za.grad() * 10.0);
    let after = barlow_twins_loss(&za2, &zb, &opts)?;
    println!("after one gradient step on z_a: {:.6}", after.loss.double_value(&[]));
    Ok(())
}
