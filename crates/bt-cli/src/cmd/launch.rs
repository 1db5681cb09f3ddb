//! `bt-cli launch --nproc N -- <subcommand> ...`: N local data-parallel workers without Python.
//!
//! Each worker is this binary re-executed with the torchrun (`env://`) variables: `RANK`,
//! `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1` and a free
//! `MASTER_PORT` (rank 0 hosts the TCPStore), so a worker cannot tell it from torchrun.
//!
//! `OMP_NUM_THREADS` is the user's, or the cores shared out among the workers (torchrun sets 1).
//!
//! Supervision, like torchrun's agent: SIGINT/SIGTERM/SIGHUP received by the launcher are
//! forwarded to every live worker. Each worker runs in its own process group, so a terminal's
//! Ctrl-C (sent to the foreground process group) reaches the launcher alone and each worker gets
//! it once, as the forwarded copy: one stop request, every rank checkpoints at the same step
//! (a second Ctrl-C is forwarded again and stops the workers at once). A worker also ignores the
//! forwarded copy of a signal it received directly (`signals.rs`), and gets SIGTERM if the
//! launcher dies (`PR_SET_PDEATHSIG`). After a forwarded signal the launcher exits `128 + signo`
//! (130 for Ctrl-C) when every worker stopped with that signal's status. When a worker fails, the others get `--grace-s` seconds to
//! fail on their own (their message names the lost rank, from bt-dist's heartbeat post-mortem),
//! then are terminated (SIGTERM, then SIGKILL after 5 s). The launcher exits non-zero naming the
//! first rank that failed, and with 0 only when every worker did.
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Number of worker processes (one per GPU on CUDA: worker i uses cuda:i).
    #[arg(long, default_value_t = 2)]
    pub nproc: usize,
    /// Rendezvous port on 127.0.0.1 (default: a free one).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// After a worker fails, how long the others may take to stop on their own before they are
    /// terminated, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub grace_s: f64,
    /// The bt-cli subcommand and its arguments, after `--` (e.g. `-- pretrain --preset demo`).
    #[arg(last = true, required = true, num_args = 1..)]
    pub command: Vec<String>,
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

fn install_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}{}", if s == libc::SIGKILL { " (SIGKILL)" } else { "" }),
        _ => "unknown status".into(),
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?.local_addr()?.port())
}

struct Worker {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

fn signal_all(ws: &[Worker], sig: libc::c_int) {
    for w in ws.iter().filter(|w| w.status.is_none()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(w.child.id() as libc::pid_t, sig) };
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.nproc == 0 {
        bail!("--nproc must be at least 1");
    }
    if a.command.first().map(String::as_str) == Some("launch") {
        bail!("`bt-cli launch -- launch ...` would launch launchers; give a training subcommand such as `pretrain`");
    }
    let port = match a.master_port {
        Some(p) => p,
        None => free_port()?,
    };
    let exe = std::env::current_exe().context("locating the bt-cli binary")?;
    install_handlers();
    // As torchrun: OpenMP threads per worker unless the user set them. N workers that each spin
    // up one thread per core oversubscribe the CPU, and oneDNN's barrier-heavy kernels then run
    // many times slower. Cores are shared out (torchrun uses 1; on a CPU-only machine that leaves
    // cores idle).
    let omp = std::env::var("OMP_NUM_THREADS").ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / a.nproc).max(1).to_string()
    });
    crate::progress::say!("launch: {} workers, OMP_NUM_THREADS={omp} each", a.nproc);
    let mut ws = Vec::with_capacity(a.nproc);
    for rank in 0..a.nproc {
        let mut cmd = Command::new(&exe);
        // Its own process group: a terminal's Ctrl-C reaches the launcher only, which forwards it.
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // The worker gets SIGTERM (a checkpointed stop) if the launcher dies.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .args(&a.command)
            .env(crate::signals::LAUNCHER_PID, std::process::id().to_string())
            .env("OMP_NUM_THREADS", &omp)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", a.nproc.to_string())
            .env("LOCAL_WORLD_SIZE", a.nproc.to_string())
            .env("GROUP_RANK", "0")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            // A stale value from a surrounding torchrun would make the workers look for an agent.
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .spawn()
            .with_context(|| format!("spawning rank {rank}"));
        match child {
            Ok(child) => {
                crate::progress::say!("launch: rank {rank} pid {} (127.0.0.1:{port})", child.id());
                ws.push(Worker { rank, child, status: None });
            }
            Err(e) => {
                signal_all(&ws, libc::SIGTERM);
                return Err(e);
            }
        }
    }

    let mut first_failure: Option<(usize, String)> = None;
    let mut failed_at: Option<Instant> = None;
    let mut terminated_at: Option<Instant> = None;
    let mut forwarded: Option<i32> = None;
    loop {
        let sig = SIGNAL.swap(0, Ordering::SeqCst);
        if sig != 0 {
            crate::progress::say!("launch: forwarding signal {sig} to the workers");
            signal_all(&ws, sig);
            forwarded.get_or_insert(sig);
        }
        for w in ws.iter_mut().filter(|w| w.status.is_none()) {
            if let Some(st) = w.child.try_wait().with_context(|| format!("waiting for rank {}", w.rank))? {
                w.status = Some(st);
                if forwarded.is_some_and(|s| st.code() == Some(128 + s)) {
                    // The stop the launcher forwarded: a checkpointed stop, not a failure.
                    crate::progress::say!("launch: rank {} (pid {}) stopped: {}", w.rank, w.child.id(), describe(st));
                } else if !st.success() {
                    crate::progress::say!("launch: rank {} (pid {}) failed: {}", w.rank, w.child.id(), describe(st));
                    if first_failure.is_none() {
                        first_failure = Some((w.rank, describe(st)));
                        failed_at = Some(Instant::now());
                    }
                }
            }
        }
        if ws.iter().all(|w| w.status.is_some()) {
            break;
        }
        if let Some(t) = failed_at {
            if terminated_at.is_none() && t.elapsed() > Duration::from_secs_f64(a.grace_s) {
                crate::progress::say!("launch: the other workers did not stop within {}s; terminating them", a.grace_s);
                signal_all(&ws, libc::SIGTERM);
                terminated_at = Some(Instant::now());
            }
        }
        if let Some(t) = terminated_at {
            if t.elapsed() > Duration::from_secs(5) {
                signal_all(&ws, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some((rank, what)) = first_failure {
        bail!("rank {rank} of {} failed first ({what}); see its output above", a.nproc);
    }
    if let Some(sig) = forwarded {
        // Every worker stopped with the signal's status (or finished): the run stopped cleanly
        // with a checkpoint; exit as the workers did (130 for Ctrl-C), as `pretrain` does.
        crate::progress::say!(
            "launch: stopped by signal {sig} (forwarded once to every worker); rerun the same command (without --fresh/--force) to resume from that checkpoint"
        );
        std::process::exit(128 + sig);
    }
    crate::progress::say!("launch: all {} workers finished", a.nproc);
    Ok(())
}
