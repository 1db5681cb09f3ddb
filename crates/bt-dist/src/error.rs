//! The crate's error type.

use crate::Backend;

/// What the post-mortem after a failed collective found out about the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// No post-mortem ran (the failure was not a communication error) or it found nothing.
    Unknown,
    /// Every other rank's heartbeat still moves: the failure is a timeout of a live peer (slow,
    /// or stuck in a different collective) rather than a lost process.
    NoneLost {
        /// The group's timeout, in milliseconds.
        timeout_ms: u128,
    },
    /// These ranks' heartbeats stopped: their processes (or hosts) are gone.
    Ranks(Vec<usize>),
    /// The rendezvous store itself is unreachable.
    Store {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// Rank 0 hosts the store (plain launch); otherwise the torchrun agent does.
        hosted_by_rank0: bool,
        /// The store client's error.
        message: String,
    },
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Unknown => Ok(()),
            Lost::NoneLost { timeout_ms } => write!(
                f,
                "; every peer's heartbeat is alive: a peer stalled or called a different \
                 collective for the whole timeout ({timeout_ms} ms); no rank is lost"
            ),
            Lost::Ranks(r) => {
                let list: Vec<String> = r.iter().map(|x| x.to_string()).collect();
                write!(f, "; lost rank(s): {} (heartbeat stopped)", list.join(", "))
            }
            Lost::Store { addr, hosted_by_rank0: true, message } => {
                write!(f, "; lost rank(s): 0 (the rendezvous store it hosts at {addr} is unreachable: {message})")
            }
            Lost::Store { addr, hosted_by_rank0: false, message } => write!(
                f,
                "; the torchrun agent's rendezvous store at {addr} is unreachable (agent or node lost): {message}"
            ),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A torchrun environment variable is missing or malformed.
    #[error("environment variable {var}={}: {reason}", value.as_deref().unwrap_or("<unset>"))]
    Env {
        /// The variable, e.g. `RANK`.
        var: &'static str,
        /// Its value, if set.
        value: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Rendezvous or process-group construction failed (store unreachable, timeout, NCCL
    /// unavailable).
    #[error("rendezvous at {addr} as rank {rank} of {world} ({backend:?}) failed: {message}")]
    Init {
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// This process's rank.
        rank: usize,
        /// World size.
        world: usize,
        /// The requested backend.
        backend: Backend,
        /// c10d's message.
        message: String,
    },
    /// A collective failed: a peer died, timed out, or the arguments were rejected by c10d.
    #[error("{op} on rank {rank} of {world} failed: {message}{lost}")]
    Collective {
        /// The operation, e.g. `"all_reduce"`.
        op: &'static str,
        /// This process's rank.
        rank: usize,
        /// World size.
        world: usize,
        /// c10d's message (without the C++ backtrace).
        message: String,
        /// Which peers the post-mortem found lost.
        lost: Lost,
    },
    /// An argument this crate rejects before calling c10d.
    #[error("{op}: {message}")]
    Usage {
        /// The operation.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with this crate's [`DistError`].
pub type Result<T> = std::result::Result<T, DistError>;
