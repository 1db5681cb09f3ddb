//! `bt-cli bench optim` (filled by the optimizer issue).
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_a: BenchArgs) -> Result<()> {
    bail!("bench optim: not implemented yet")
}
