//! LAMB on a small `tch::nn` model without the rest of the pipeline: the trainable variables of
//! a `VarStore` (BN running statistics excluded), the seed's optimizer, the official warmup +
//! cosine schedule, and a state save/restore.
//!
//! `cargo run --release -p bt-optim --example optim_demo`
//!
//! Expected: the regression loss falls from ~1 to well below it over 200 steps.
use bt_config::{OptimConfig, ScheduleConfig, ScheduleKind};
use bt_optim::{build, trainable_named, Schedule};
use tch::{nn, nn::Module, nn::ModuleT, Device, Kind, Tensor};

fn main() -> Result<(), bt_optim::OptimError> {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let l1 = nn::linear(&root / "l1", 16, 64, Default::default());
    let bn = nn::batch_norm1d(&root / "bn", 64, Default::default());
    let l2 = nn::linear(&root / "l2", 64, 1, Default::default());
    let x = Tensor::randn([256, 16], (Kind::Float, Device::Cpu));
    let y = x.narrow(1, 0, 4).sum_dim_intlist(1, true, Kind::Float).sin();

    let ocfg = OptimConfig { lr: 1e-2, ..OptimConfig::default() };
    let scfg = ScheduleConfig { kind: ScheduleKind::WarmupCosine, warmup_epochs: 1.0, ..ScheduleConfig::default() };
    let (steps_per_epoch, epochs) = (20, 10);
    let schedule = Schedule::from_config(&scfg, &ocfg, 256, steps_per_epoch, epochs);
    let mut opt = build(&ocfg, trainable_named(&vs))?;
    for step in 0..steps_per_epoch * epochs {
        let pred = l2.forward(&bn.forward_t(&l1.forward(&x), true).relu());
        let loss = (pred - &y).square().mean(Kind::Float);
        opt.zero_grad();
        loss.backward();
        opt.step(&schedule.lr_at(step))?;
        if step % 40 == 0 || step + 1 == steps_per_epoch * epochs {
            println!("step {step:>3}  lr {:.5}  loss {:.5}", schedule.lr_at(step).weights, loss.double_value(&[]));
        }
    }
    let state = opt.state();
    println!("state: {} tensors, step {}", state.len(), opt.step_count());
    opt.load_state(&state)?;
    Ok(())
}
