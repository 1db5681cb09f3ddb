//! The torchrun (`env://`) rendezvous environment.

use crate::error::{DistError, Result};

/// Where and as whom this process joins a run: what torchrun (or `bt-cli launch`) exports.
///
/// Read by [`DistEnv::from_env`]; build one by hand for a launcher of your own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    /// Global rank (`RANK`).
    pub rank: usize,
    /// Number of processes (`WORLD_SIZE`).
    pub world_size: usize,
    /// Rank on this node (`LOCAL_RANK`): the CUDA device index of an NCCL group.
    pub local_rank: usize,
    /// Rendezvous host (`MASTER_ADDR`).
    pub master_addr: String,
    /// Rendezvous port (`MASTER_PORT`).
    pub master_port: u16,
    /// `TORCHELASTIC_USE_AGENT_STORE=True`: torchrun's agent already hosts the TCPStore at
    /// `MASTER_ADDR:MASTER_PORT`, so every rank is a client (torch's `env://` does the same).
    pub use_agent_store: bool,
    /// `TORCHELASTIC_RESTART_COUNT` (0 when unset): with the agent store, keys live under
    /// `/worker/attempt_<n>` so that a restarted attempt never reads a dead attempt's keys.
    pub restart_count: u32,
}

impl DistEnv {
    /// Reads the process environment (see the field docs for the variables).
    ///
    /// # Errors
    /// A missing or malformed variable, named with its value.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) over any variable lookup (tests, launchers).
    ///
    /// # Errors
    /// A missing or malformed variable, or `RANK >= WORLD_SIZE`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        fn parse<T: std::str::FromStr>(
            var: &'static str,
            get: &dyn Fn(&str) -> Option<String>,
            default: Option<T>,
        ) -> Result<T> {
            match get(var) {
                None => default.ok_or(DistError::Env {
                    var,
                    value: None,
                    reason: "required by the env:// rendezvous (set by torchrun or bt-cli launch)".into(),
                }),
                Some(v) => v.trim().parse().map_err(|_| DistError::Env {
                    var,
                    value: Some(v.clone()),
                    reason: "not a non-negative integer in range".into(),
                }),
            }
        }
        let rank: usize = parse("RANK", &get, None)?;
        let world_size: usize = parse("WORLD_SIZE", &get, None)?;
        if world_size == 0 || rank >= world_size {
            return Err(DistError::Env {
                var: "RANK",
                value: Some(rank.to_string()),
                reason: format!("must be < WORLD_SIZE={world_size}"),
            });
        }
        // torch defaults LOCAL_RANK to 0 only through torchrun; a hand launch on one node may
        // omit it, and rank is then the best guess.
        let local_rank = parse("LOCAL_RANK", &get, Some(rank))?;
        let master_addr = get("MASTER_ADDR").filter(|s| !s.is_empty()).ok_or(DistError::Env {
            var: "MASTER_ADDR",
            value: None,
            reason: "required by the env:// rendezvous (the host of rank 0 or of the agent)".into(),
        })?;
        let master_port: u16 = parse("MASTER_PORT", &get, None)?;
        if master_port == 0 {
            return Err(DistError::Env {
                var: "MASTER_PORT",
                value: Some("0".into()),
                reason: "port 0 cannot be a rendezvous port".into(),
            });
        }
        // torch: `os.environ.get("TORCHELASTIC_USE_AGENT_STORE", None) == str(True)`.
        let use_agent_store = get("TORCHELASTIC_USE_AGENT_STORE").as_deref() == Some("True");
        let restart_count = parse("TORCHELASTIC_RESTART_COUNT", &get, Some(0))?;
        Ok(Self { rank, world_size, local_rank, master_addr, master_port, use_agent_store, restart_count })
    }

    /// Whether this process runs the TCPStore server: rank 0, unless torchrun's agent does.
    pub fn hosts_store(&self) -> bool {
        self.rank == 0 && !self.use_agent_store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    const BASE: &[(&str, &str)] =
        &[("RANK", "1"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "29500")];

    #[test]
    fn torchrun_variables_are_read() {
        let mut v = BASE.to_vec();
        v.push(("LOCAL_RANK", "1"));
        let e = DistEnv::from_lookup(env(&v)).unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.master_port), (1, 4, 1, 29500));
        assert!(!e.use_agent_store && !e.hosts_store());
        let e0 = DistEnv::from_lookup(env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ]))
        .unwrap();
        assert!(e0.hosts_store(), "rank 0 hosts the store without an agent");
    }

    #[test]
    fn agent_store_means_every_rank_is_a_client() {
        let mut v = BASE.to_vec();
        v[0] = ("RANK", "0");
        v.push(("TORCHELASTIC_USE_AGENT_STORE", "True"));
        v.push(("TORCHELASTIC_RESTART_COUNT", "2"));
        let e = DistEnv::from_lookup(env(&v)).unwrap();
        assert!(e.use_agent_store && !e.hosts_store());
        assert_eq!(e.restart_count, 2);
        // torch compares with str(True) exactly.
        v[4] = ("TORCHELASTIC_USE_AGENT_STORE", "true");
        assert!(DistEnv::from_lookup(env(&v)).unwrap().hosts_store());
    }

    #[test]
    fn bad_or_missing_variables_are_named() {
        let e = DistEnv::from_lookup(env(&BASE[1..])).unwrap_err().to_string();
        assert!(e.contains("RANK") && e.contains("<unset>"), "{e}");
        let mut v = BASE.to_vec();
        v[0] = ("RANK", "4");
        let e = DistEnv::from_lookup(env(&v)).unwrap_err().to_string();
        assert!(e.contains("RANK=4") && e.contains("WORLD_SIZE=4"), "{e}");
        let mut v = BASE.to_vec();
        v[3] = ("MASTER_PORT", "http");
        let e = DistEnv::from_lookup(env(&v)).unwrap_err().to_string();
        assert!(e.contains("MASTER_PORT=http"), "{e}");
    }
}
