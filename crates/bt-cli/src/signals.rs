//! Graceful SIGINT/SIGTERM for long runs, through the library's [`StopToken`].
//!
//! The first signal asks the run to stop: the handler calls [`StopToken::request`] (one atomic
//! store, async-signal-safe) and the trainer finishes the step it is in, writes a checkpoint and
//! returns; `pretrain` prints how to resume and exits 130 (SIGINT) or 143 (SIGTERM). A second
//! signal calls `_exit(128 + signo)` inside the handler, at once: the checkpoint being written
//! is a temporary file, so the previous checkpoint is untouched (see `bt_train::store`).
//!
//! The token holds the signal number itself (one atomic, set once), so a reader never sees
//! "requested" without the number: the exit status is always 130 or 143, never 128.
//!
//! Why a hand-written `sigaction` rather than a crate: the handler is a few async-signal-safe
//! lines (atomics and `_exit`), and `libc` is already in the dependency tree.
use bt_train::StopToken;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static TOKEN: OnceLock<StopToken> = OnceLock::new();
static SEEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signo: libc::c_int) {
    // Only async-signal-safe operations here: atomic loads/stores and _exit.
    if SEEN.swap(true, Ordering::SeqCst) {
        unsafe { libc::_exit(128 + signo) };
    }
    if let Some(t) = TOKEN.get() {
        t.request(signo);
    }
}

/// Installs the handler for SIGINT and SIGTERM (idempotent) and returns the token it triggers.
pub fn install() -> StopToken {
    let token = TOKEN.get_or_init(StopToken::new).clone();
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
    token
}
