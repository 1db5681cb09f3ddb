//! Counts the ATen operators one trainer step dispatches (kernels, scalar reads, copies) and
//! prints them as the table docs/GPU.md records: `bt_train::perf::step_op_counts` on the
//! embedded synthetic data, on CPU (the operator sequence of a step is the one a CUDA step
//! dispatches; kernel counts do not depend on batch size or layer widths).
//!
//! Run: `eval "$(cargo xtask env)"; cargo run --release -p bt-train --example count_step -- keras-seed [KEY=VALUE ...]`
//! (the preset, then `--set`-style overrides; batch 16 by default, to keep it quick on a CPU).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let preset = args.next().unwrap_or_else(|| "keras-seed".into());
    let mut b = bt_config::ConfigBuilder::new();
    b.preset(&preset)?;
    b.set("data.dataset=\"synthetic\"")?;
    b.set("data.batch_size=16")?;
    b.set("run.epochs=1000")?;
    for a in args {
        b.set(&a)?;
    }
    let cfg = b.build()?;
    tch::set_num_threads(2);
    let data = bt_train::setup::load_data(&cfg)?;
    let c = bt_train::perf::step_op_counts(&cfg, &data, tch::Device::Cpu)?;
    println!("preset {preset}, log_every {}, averaged over {} steps:", cfg.run.log_every, c.steps);
    println!("| per step | count |\n|---|---|");
    println!("| operators (all depths) | {:.1} |", c.ops);
    println!("| kernel operators | {:.1} |", c.kernels);
    println!("| scalar reads (`_local_scalar_dense`, each a sync on CUDA) | {:.2} |", c.scalar_reads);
    println!("| `copy_` | {:.2} |", c.copies);
    println!("\nmost frequent kernel operators per step:");
    for (name, n) in &c.top {
        println!("  {n:8.2}  {name}");
    }
    Ok(())
}
