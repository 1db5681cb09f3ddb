//! `bt-cli bench loss` (filled by the loss issue).
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn bench(_a: BenchArgs) -> Result<()> {
    bail!("bench loss: not implemented yet")
}
