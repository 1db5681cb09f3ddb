//! Lets this crate's examples and tests run the first time, as `bt-cli`'s build script does for
//! the binary: an rpath to the libtorch lib dir (no `LD_LIBRARY_PATH` needed on the build
//! machine) and `libtorch_cuda` forced into the examples' DT_NEEDED (`--no-as-needed`: nothing
//! references its symbols, so the linker would drop it and CUDA would be silently unavailable).
//! The library itself links nothing: a user's binary decides.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = std::path::PathBuf::from(lib);
    for kind in ["examples", "tests"] {
        if lib.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg-{kind}=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg-{kind}=-ltorch_cuda");
            println!("cargo:rustc-link-arg-{kind}=-Wl,--as-needed");
        }
        println!("cargo:rustc-link-arg-{kind}=-Wl,-rpath,{}", lib.display());
    }
}
