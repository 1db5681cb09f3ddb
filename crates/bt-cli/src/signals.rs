//! Graceful SIGINT/SIGTERM for long runs.
//!
//! The first signal only sets a flag: the trainer finishes the step it is in, writes a
//! checkpoint, prints how to resume and exits 130 (SIGINT) or 143 (SIGTERM). A second signal
//! calls `_exit(128 + signo)` inside the handler, at once: the checkpoint being written is a
//! temporary file, so the previous checkpoint is untouched (see `ckpt_store`).
//!
//! Why a hand-written `sigaction` rather than a crate: the handler is four async-signal-safe
//! lines (atomics and `_exit`), and `libc` is already in the dependency tree via libtorch's
//! bindings.
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static SIGNO: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: libc::c_int) {
    // Only async-signal-safe operations here: atomics and _exit.
    if REQUESTED.swap(true, Ordering::SeqCst) {
        unsafe { libc::_exit(128 + signo) };
    }
    SIGNO.store(signo, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM (idempotent).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a plain handler, an empty mask and no flags is valid;
        // the handler only touches atomics and calls _exit.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            // SA_RESTART: a blocking read in the data pipeline resumes instead of failing EINTR.
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<Interrupted> {
    if REQUESTED.load(Ordering::SeqCst) {
        Some(Interrupted { signo: SIGNO.load(Ordering::SeqCst), from_peer: false })
    } else {
        None
    }
}

/// A run stopped by SIGINT/SIGTERM after writing its checkpoint; carried as an error so every
/// caller unwinds normally, and turned into the exit status by `cmd::pretrain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// The signal number.
    pub signo: i32,
    /// Data-parallel runs: the signal reached another rank, and this one stops with it.
    pub from_peer: bool,
}

impl Interrupted {
    /// The conventional shell status: 128 + signal (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(&self) -> i32 {
        128 + self.signo
    }
    /// `SIGINT` / `SIGTERM`.
    pub fn name(&self) -> &'static str {
        match self.signo {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "signal",
        }
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.name())?;
        if self.from_peer {
            write!(f, " (delivered to another rank of the data-parallel run)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Interrupted {}
