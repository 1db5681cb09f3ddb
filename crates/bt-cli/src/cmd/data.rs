//! `bt-cli preview-augment` and `bt-cli bench data` (filled by the data issue).
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct PreviewArgs {}
#[derive(clap::Args)]
pub struct BenchArgs {}

pub fn preview(_a: PreviewArgs) -> Result<()> {
    bail!("preview-augment: not implemented yet")
}
pub fn bench(_a: BenchArgs) -> Result<()> {
    bail!("bench data: not implemented yet")
}
