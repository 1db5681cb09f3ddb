//! `bt-cli`: the barlow-twins-rs command line. A shell over the library crates: it parses
//! arguments, installs the signal handlers, tunes the allocator, prints; every capability lives
//! in a library crate (`bt-train` for the loop, evaluation and run folders).
use clap::{Parser, Subcommand};
use std::io::IsTerminal;

mod cmd;
mod observer;
mod progress;
mod signals;

/// Barlow Twins self-supervised pretraining in Rust, on libtorch (CPU or CUDA).
#[derive(Parser)]
#[command(name = "bt-cli", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Versions, libtorch location, CUDA/cuDNN availability, threads.
    Info,
    /// Print the effective config (preset + file + --set overrides) as TOML.
    Config(cmd::config::Args),
    /// Write a PNG grid of originals and their two augmented views.
    PreviewAugment(cmd::data::PreviewArgs),
    /// Per-layer table and parameter totals of a preset's model.
    ModelSummary(cmd::model::SummaryArgs),
    /// Benchmarks: data pipeline, loss, optimizer step, train step.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCmd),
    /// Pretrain into a run folder (config, metrics, curves, checkpoints, encoder).
    Pretrain(cmd::pretrain::Args),
    /// Evaluate a run or checkpoint: linear probe or kNN.
    #[command(subcommand)]
    Eval(cmd::eval::EvalCmd),
    /// Write frozen embeddings and labels of a split (.npy or .safetensors).
    Embed(cmd::embed::Args),
    /// Pretrain the demo preset, then compare pretrained vs random-init encoders.
    Demo(cmd::demo::Args),
    /// Run N local data-parallel workers of a subcommand (torchrun env, no Python):
    /// `bt-cli launch --nproc 2 -- pretrain ...`.
    Launch(cmd::launch::Args),
    /// Check a device (CUDA) against the CPU: loss, optimizer, input upload, training steps.
    Selftest(cmd::selftest::Args),
    /// Convert published PyTorch weights (torch.save, Lightning .ckpt, safetensors) into our
    /// encoder checkpoint, with a strict key check.
    Import(cmd::weights::ImportArgs),
    /// Export the encoder for serving: TorchScript, or ONNX (needs the provisioned Python).
    Export(cmd::weights::ExportArgs),
    /// The k nearest images of a query by cosine similarity of embeddings, and a contact sheet.
    Neighbors(cmd::weights::NeighborsArgs),
    /// Groups of near-duplicate images by cosine similarity of embeddings (CSV/JSON).
    Duplicates(cmd::weights::DuplicatesArgs),
}

/// glibc malloc, tuned for a training loop before anything allocates: libtorch's CPU tensors
/// come from `malloc`/`posix_memalign`, and by default every buffer above the mmap threshold is
/// a fresh `mmap` (and the heap top is trimmed back to the OS), so each step page-faults its
/// activations in again (~365k extra faults in a 5-step cifar-resnet18 batch-64 bench, half of all
/// faults). `M_MMAP_MAX = 0` serves every size from the heap and `M_TRIM_THRESHOLD = -1` never
/// gives it back: freed activations are reused by the next step, as a caching allocator would.
/// Cost: some fragmentation, peak RSS +5% (keras-seed, batch 512, real CIFAR-10, 3 steps:
/// 6.43 GB vs 6.11 GB, with 1.54M vs 2.56M page faults). `BT_MALLOC=default` skips this.
/// A process-wide choice, so it lives in the binary, never in a library.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var("BT_MALLOC").as_deref() != Ok("default") {
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        }
    }
}

/// Colour in log lines only on a terminal, and never with `NO_COLOR` set (no-color.org).
fn use_ansi() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> std::process::ExitCode {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(use_ansi())
        .with_writer(progress::LogWriter)
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Info => cmd::info::run(),
        Cmd::Config(a) => cmd::config::run(a),
        Cmd::PreviewAugment(a) => cmd::data::preview(a),
        Cmd::ModelSummary(a) => cmd::model::summary(a),
        Cmd::Bench(b) => cmd::bench::run(b),
        Cmd::Pretrain(a) => cmd::pretrain::run(a),
        Cmd::Eval(e) => cmd::eval::run(e),
        Cmd::Embed(a) => cmd::embed::run(a),
        Cmd::Demo(a) => cmd::demo::run(a),
        Cmd::Launch(a) => cmd::launch::run(a),
        Cmd::Selftest(a) => cmd::selftest::run(a),
        Cmd::Import(a) => cmd::weights::import(a),
        Cmd::Export(a) => cmd::weights::export(a),
        Cmd::Neighbors(a) => cmd::weights::neighbors(a),
        Cmd::Duplicates(a) => cmd::weights::duplicates(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            crate::progress::say!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
