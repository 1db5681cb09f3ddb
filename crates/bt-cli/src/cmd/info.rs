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
    // Device details come from the C++ shim (tch has no device-properties API). A failure for
    // one device is printed, not fatal: `info` is what people run when something is wrong.
    for i in 0..usize::try_from(n).unwrap_or(0) {
        match bt_shim::cuda_device_properties(i) {
            Ok(p) => println!(
                "cuda:{i}: {} | compute capability {}.{} | {:.1} GiB | {} SMs",
                p.name,
                p.major,
                p.minor,
                p.total_memory as f64 / (1u64 << 30) as f64,
                p.multiprocessors
            ),
            Err(e) => println!("cuda:{i}: properties unavailable: {e}"),
        }
    }
    println!("cudnn available: {}", tch::Cuda::cudnn_is_available());
    if tch::Cuda::cudnn_is_available() {
        println!("cudnn version: {}", tch::utils::version_cudnn());
    }
    match bt_shim::CUDA_INCLUDE_DIR {
        Some(dir) => println!("bt-shim CUDA support: yes (built against {dir})"),
        None => {
            println!("bt-shim CUDA support: no (built without CUDA headers; CUDA fast paths off)")
        }
    }
    println!("cpu bf16: {}", bt_train::device::cpu_bf16().unwrap_or("none (neither AMX-BF16 nor AVX512-BF16)"));
    let cpu = tch::Device::Cpu;
    let auto = bt_train::device::resolve_precision(bt_config::Precision::Auto, cpu);
    println!("run.precision = \"auto\" on cpu: {}", bt_train::device::describe_auto(auto, cpu));
    println!("intra-op threads: {}", tch::get_num_threads());
    println!("interop threads: {}", tch::get_num_interop_threads());
    Ok(())
}
