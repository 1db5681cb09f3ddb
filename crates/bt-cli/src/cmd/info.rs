//! `bt-cli info`: what this binary runs on.
use anyhow::Result;

pub fn run() -> Result<()> {
    println!("bt-cli {}", env!("CARGO_PKG_VERSION"));
    println!("libtorch version: {}", env!("BT_LIBTORCH_VERSION"));
    println!("libtorch lib dir (build time, rpath): {}", env!("BT_LIBTORCH_LIB"));
    let cuda = tch::Cuda::is_available();
    println!("cuda available: {cuda}");
    let n = tch::Cuda::device_count();
    println!("cuda devices: {n}");
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    if tch::Cuda::cudnn_is_available() {
        println!("cudnn version: {}", tch::utils::version_cudnn());
    }
    println!("intra-op threads: {}", tch::get_num_threads());
    println!("interop threads: {}", tch::get_num_interop_threads());
    Ok(())
}
