//! `bt-cli bench ...`: dispatch to the benchmark of each crate.
use clap::Subcommand;

/// Benchmarks. Each prints human-readable lines and ends with one `key=value` line.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Twin-augmentation pipeline throughput (last line `pairs_per_s=`).
    Data(super::data::BenchArgs),
    /// Reference vs fused loss (last line `fused_speedup=`).
    Loss(super::loss::BenchArgs),
    /// One optimizer step: grouped vs per-tensor.
    Optim(super::optim::BenchArgs),
    /// Forward + backward of both views and the loss.
    Step(super::step::BenchStepArgs),
}

pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Data(a) => super::data::bench(a),
        BenchCmd::Loss(a) => super::loss::bench(a),
        BenchCmd::Optim(a) => super::optim::bench(a),
        BenchCmd::Step(a) => super::step::bench_step(a),
    }
}
