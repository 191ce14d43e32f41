//! The agent's share of peer sync: the replicated state it owns, where it starts from and how
//! it is kept (`peers` holds how operator changes and peers' states enter it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::config::Config;
use crate::state::{DesiredState, Vip};
use crate::sync::Sync;
use crate::sync::replicated::{Materialized, ReplicatedState};

pub struct Fleet {
    pub sync: Sync,
    pub replicated: ReplicatedState,
    pub state_file: PathBuf,
    /// Peers that have not yet sent their state and flows since this agent started. Until
    /// they have (or `startup_wait_secs` passes), the VIPs are not announced: routers must not
    /// send this node flows it knows nothing of.
    pub waiting: BTreeSet<String>,
    /// Live VIPs of the replicated state this agent's `max_vips` leaves out (the newest).
    pub held_back: Vec<Vip>,
    /// What the last materialization left out, so each change of it is logged once.
    pub skipped: Vec<String>,
}

/// The replicated state an agent starts from: the state file if there is one, merged with the
/// config's [[vip]]s as clock-0 seeds (any replicated change overrides those).
pub fn initial_state(config: &Config) -> Result<Option<ReplicatedState>> {
    let Some(sync) = &config.sync else {
        return Ok(None);
    };
    let mut state = match std::fs::read(&sync.state_file) {
        Ok(bytes) => {
            let s: ReplicatedState = serde_json::from_slice(&bytes)
                .with_context(|| format!("state file {}", sync.state_file.display()))?;
            s.validate()
                .with_context(|| format!("state file {}", sync.state_file.display()))?;
            info!(
                file = %sync.state_file.display(),
                version = s.version(),
                "resuming from the replicated state"
            );
            s
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ReplicatedState::default(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", sync.state_file.display()));
        }
    };
    state.merge(&ReplicatedState::seed(&config.desired_state()?, &sync.node));
    Ok(Some(state))
}

/// Writes the state file atomically (a crash leaves the old or the new one).
pub fn persist(path: &Path, state: &ReplicatedState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(state)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The desired state a replicated state gives within this agent's limits.
pub fn materialize(config: &Config, state: &ReplicatedState) -> DesiredState {
    state.materialize(&config.capacity()).desired
}

/// Logs what a materialization leaves out when that changes (not at every merge).
pub fn log_skipped(before: &[String], m: &Materialized) {
    if before != m.skipped.as_slice() {
        for s in &m.skipped {
            warn!("replicated state does not fit this agent's limits: {s}");
        }
    }
}
