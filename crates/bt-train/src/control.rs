//! Stopping a run from outside: the [`StopToken`] the caller owns, and what a stop looks like
//! ([`Stop`]).
//!
//! The library installs no signal handler. A caller that wants SIGINT/SIGTERM to stop a run
//! gracefully (as `bt-cli` does) calls [`StopToken::request`] from its handler: the token is one
//! atomic integer, so that is async-signal-safe. The trainer polls the token after every step;
//! when it is set, the trainer writes a checkpoint at the current position and returns an
//! [`Outcome`](crate::Outcome) whose `stop` says so.
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// A cloneable handle through which the caller asks a running trainer to stop.
#[derive(Debug, Clone, Default)]
pub struct StopToken(Arc<AtomicI32>);

impl StopToken {
    /// A token nobody has triggered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop after the current step. `code` is reported back in
    /// [`Interrupted::signo`] (by convention the signal number; any non-zero value works).
    /// Only an atomic store: callable from a signal handler. The first request wins.
    pub fn request(&self, code: i32) {
        let code = if code == 0 { -1 } else { code };
        let _ = self.0.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The request, if one was made.
    pub fn requested(&self) -> Option<Interrupted> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signo => Some(Interrupted { signo, from_peer: false }),
        }
    }
}

/// A stop request, as the trainer saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted {
    /// The code passed to [`StopToken::request`] (a signal number for signal-driven stops;
    /// -1 when the caller passed 0).
    pub signo: i32,
    /// Data-parallel runs: the request reached another rank, and this one stops with it.
    pub from_peer: bool,
}

impl Interrupted {
    /// The conventional shell status: 128 + signal (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(&self) -> i32 {
        if self.signo > 0 {
            128 + self.signo
        } else {
            1
        }
    }
    /// `SIGINT`, `SIGTERM`, or `stop request`.
    pub fn name(&self) -> &'static str {
        match self.signo {
            2 => "SIGINT",
            15 => "SIGTERM",
            _ => "stop request",
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

/// Why a run stopped before its last epoch (with a checkpoint written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The [`StopToken`] was triggered (SIGINT/SIGTERM in bt-cli).
    Interrupted(Interrupted),
    /// `run.max_steps` reached.
    MaxSteps(usize),
}

/// The run stopped early at `step`; `checkpoint` holds that position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Why.
    pub reason: StopReason,
    /// The checkpoint written at the stop.
    pub checkpoint: PathBuf,
    /// Optimizer steps done.
    pub step: usize,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            StopReason::Interrupted(i) => write!(f, "{i} after step {}", self.step)?,
            StopReason::MaxSteps(n) => write!(f, "stopped at step {} (run.max_steps = {n})", self.step)?,
        }
        write!(f, "; checkpoint {} holds this position", self.checkpoint.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins_and_clones_share_it() {
        let t = StopToken::new();
        assert_eq!(t.requested(), None);
        let c = t.clone();
        c.request(15);
        t.request(2);
        let i = t.requested().unwrap();
        assert_eq!((i.signo, i.name(), i.exit_code()), (15, "SIGTERM", 143));
        let z = StopToken::new();
        z.request(0);
        assert_eq!(z.requested().unwrap().exit_code(), 1);
    }
}
