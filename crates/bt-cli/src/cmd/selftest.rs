//! `bt-cli selftest --device cuda`: `bt_train::selftest` (the device under test against the
//! CPU). Prints `PASS`/`FAIL` per check and exits non-zero on any failure.
use anyhow::{bail, Result};
use tch::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Device under test (compared against the CPU).
    #[arg(long, default_value = "cuda")]
    pub device: String,
}

pub fn run(a: Args) -> Result<()> {
    let dev = bt_train::setup::device(&a.device)?;
    println!(
        "selftest: device under test {dev:?} against the CPU{}",
        if dev.is_cuda() {
            format!(
                " ({})",
                bt_shim::cuda_device_properties(match dev {
                    Device::Cuda(i) => i,
                    _ => 0,
                })
                .map(|p| p.name)
                .unwrap_or_default()
            )
        } else {
            " (CPU against itself: checks that the paths run)".into()
        }
    );
    let checks = bt_train::selftest::run(dev)?;
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    for c in &checks {
        println!("{} {}: {}", if c.ok { "PASS" } else { "FAIL" }, c.name, c.detail);
    }
    let passed = checks.len() - failed.len();
    println!("selftest: {passed} passed, {} failed", failed.len());
    println!("selftest_passed={passed} selftest_failed={}", failed.len());
    if !failed.is_empty() {
        bail!("selftest failed: {}", failed.join(", "));
    }
    Ok(())
}
