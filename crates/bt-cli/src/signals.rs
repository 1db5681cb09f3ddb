//! Graceful SIGINT/SIGTERM for long runs, through the library's [`StopToken`].
//!
//! The first signal asks the run to stop: the handler calls [`StopToken::request`] (one atomic
//! store, async-signal-safe) and the trainer finishes the step it is in, writes a checkpoint and
//! returns; `pretrain` prints how to resume and exits 130 (SIGINT) or 143 (SIGTERM). A second
//! signal calls `_exit(128 + signo)` inside the handler, at once: the checkpoint being written
//! is a temporary file, so the previous checkpoint is untouched (see `bt_train::store`).
//!
//! Under `bt-cli launch` (`BT_LAUNCHER_PID` names the launcher, checked against the parent pid)
//! a worker may receive one stop twice: directly (a signal sent to a whole process tree, such as
//! a service manager's) and again as the launcher's forwarded copy. The launcher's copy of a
//! signal the worker already got directly is that same stop request and is ignored; any other
//! repeat (a second Ctrl-C, which the launcher forwards again) exits at once as before.
//!
//! The token holds the signal number itself (one atomic, set once), so a reader never sees
//! "requested" without the number: the exit status is always 130 or 143, never 128.
//!
//! Why a hand-written `sigaction` rather than a crate: the handler is a few async-signal-safe
//! lines (atomics and `_exit`), and `libc` is already in the dependency tree.
use bt_train::StopToken;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::OnceLock;

/// Environment variable the launcher sets in its workers: its own pid.
pub const LAUNCHER_PID: &str = "BT_LAUNCHER_PID";

static TOKEN: OnceLock<StopToken> = OnceLock::new();
static SEEN: AtomicBool = AtomicBool::new(false);
/// The launcher's pid (0: not launched, or the variable does not name our parent).
static LAUNCHER: AtomicI32 = AtomicI32::new(0);
/// The first signal came from elsewhere than the launcher, whose echo is still to come.
static ECHO_PENDING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe operations here: atomic loads/stores and _exit.
    // SAFETY: the kernel passes a valid siginfo_t with SA_SIGINFO.
    let sender = if info.is_null() { 0 } else { unsafe { (*info).si_pid() } };
    let launcher = LAUNCHER.load(Ordering::SeqCst);
    let from_launcher = launcher != 0 && sender == launcher;
    if SEEN.swap(true, Ordering::SeqCst) {
        if from_launcher && ECHO_PENDING.swap(false, Ordering::SeqCst) {
            // The launcher forwarding the stop this worker already received: the same request.
            return;
        }
        unsafe { libc::_exit(128 + signo) };
    }
    ECHO_PENDING.store(launcher != 0 && !from_launcher, Ordering::SeqCst);
    if let Some(t) = TOKEN.get() {
        t.request(signo);
    }
}

/// Installs the handler for SIGINT and SIGTERM (idempotent) and returns the token it triggers.
pub fn install() -> StopToken {
    let token = TOKEN.get_or_init(StopToken::new).clone();
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    let launcher = std::env::var(LAUNCHER_PID).ok().and_then(|v| v.trim().parse::<i32>().ok());
    LAUNCHER.store(if launcher == Some(parent) { parent } else { 0 }, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a siginfo handler, an empty mask and valid flags is
        // valid; the handler only touches atomics and calls _exit.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            // SA_RESTART: a blocking read in the data pipeline resumes instead of failing EINTR.
            sa.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    token
}
