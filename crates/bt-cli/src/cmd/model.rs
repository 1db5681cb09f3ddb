//! `bt-cli model-summary` and `bt-cli bench step` (filled by the model issue).
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct SummaryArgs {}
#[derive(clap::Args)]
pub struct BenchStepArgs {}

pub fn summary(_a: SummaryArgs) -> Result<()> {
    bail!("model-summary: not implemented yet")
}
pub fn bench_step(_a: BenchStepArgs) -> Result<()> {
    bail!("bench step: not implemented yet")
}
