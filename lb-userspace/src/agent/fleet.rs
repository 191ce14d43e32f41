//! The agent's share of peer sync: the replicated state it owns, where it starts from and how
//! it is kept (`peers` holds how operator changes and peers' states enter it).
//!
//! The state file is a cache of what the fleet agreed, never a reason to stop: a corrupt one
//! (truncated, empty, garbage) is moved aside and the agent starts from its config and its
//! peers; a failed write (read-only directory, full disk) is logged, counted and retried with
//! the next change, while the dataplane keeps forwarding.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use crate::api::StateFileStatus;
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
    /// What the state file held at start, and how its writes fare.
    pub file: StateFileStatus,
    /// The version of the last state each peer sent (since this agent started): every change
    /// of that peer up to it has reached us. Their lowest is our horizon (`sync::replicated::gc`).
    pub peer_versions: BTreeMap<String, u64>,
    /// Tombstones collected since start.
    pub collected: u64,
    /// With `flows = "changes"`: the rings as last installed (`moved`).
    pub rings: std::sync::Arc<crate::sync::Rings>,
}

impl Fleet {
    /// Writes the state file; a failure is logged and counted, never returned: the next
    /// change writes it again.
    pub fn persist(&mut self) {
        match persist(&self.state_file, &self.replicated) {
            Ok(()) => self.file.last_error = None,
            Err(e) => {
                error!("persisting the replicated state (retried with the next change): {e:#}");
                self.file.persist_errors += 1;
                self.file.last_error = Some(format!("{e:#}"));
            }
        }
    }
}

/// Where an agent starts from, and what it found in its state file.
pub struct Initial {
    pub state: ReplicatedState,
    pub file: StateFileStatus,
}

/// The replicated state an agent starts from: the state file if there is a usable one, merged
/// with the config's [[vip]]s as clock-0 seeds (any replicated change overrides those).
pub fn initial_state(config: &Config) -> Result<Option<Initial>> {
    let Some(sync) = &config.sync else {
        return Ok(None);
    };
    let path = &sync.state_file;
    let mut file = StateFileStatus {
        path: path.display().to_string(),
        ..Default::default()
    };
    let mut state = match read_state(path) {
        Ok(Some(s)) => {
            info!(file = %path.display(), version = s.version(), "resuming from the replicated state");
            s
        }
        Ok(None) => ReplicatedState::default(),
        Err(e) => {
            file.recovered += 1;
            file.moved_to = move_aside(path);
            warn!(
                file = %path.display(),
                moved_to = file.moved_to.as_deref().unwrap_or("(not moved)"),
                "the state file is unusable ({e:#}); starting from the config and the peers"
            );
            file.recovered_reason = Some(format!("{e:#}"));
            ReplicatedState::default()
        }
    };
    state.merge(&ReplicatedState::seed(&config.desired_state()?, &sync.node));
    Ok(Some(Initial { state, file }))
}

/// The state file's state; None if there is no file.
fn read_state(path: &Path) -> Result<Option<ReplicatedState>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let s: ReplicatedState = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing {} ({} bytes)", path.display(), bytes.len()))?;
    s.validate()
        .with_context(|| format!("validating {}", path.display()))?;
    Ok(Some(s))
}

/// Renames an unusable state file to `<file>.corrupt-<unix time>` (kept for a post-mortem);
/// the new name, or None if it could not be moved (then the next persist replaces it).
fn move_aside(path: &Path) -> Option<String> {
    if !path.exists() {
        return None;
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let to = PathBuf::from(name);
    match std::fs::rename(path, &to) {
        Ok(()) => Some(to.display().to_string()),
        Err(e) => {
            warn!(
                "moving the unusable state file {} aside: {e}",
                path.display()
            );
            None
        }
    }
}

/// Writes the state file atomically and durably: a temporary file in the same directory,
/// fsynced, renamed over the old one, then the directory fsynced (so the rename survives a
/// power cut). A crash or a power cut leaves the old file or the new one, whole.
pub fn persist(path: &Path, state: &ReplicatedState) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(state)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {} (through {})", path.display(), tmp.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_state_reads_back_and_unusable_files_are_errors_moved_aside() {
        let dir = std::env::temp_dir().join(format!("lb-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/state.json");
        assert!(read_state(&path).unwrap().is_none(), "no file: start empty");
        let state = ReplicatedState::default();
        persist(&path, &state).unwrap();
        assert_eq!(read_state(&path).unwrap(), Some(state));
        assert!(
            !path.with_extension("tmp").exists(),
            "renamed, not left behind"
        );
        for bad in [&b""[..], b"{\"vips\": {", b"\xffgarbage"] {
            std::fs::write(&path, bad).unwrap();
            assert!(read_state(&path).is_err(), "{bad:?}");
            let moved = move_aside(&path).expect("moved");
            assert!(moved.contains("state.json.corrupt-"), "{moved}");
            assert_eq!(std::fs::read(&moved).unwrap(), bad);
            assert!(!path.exists());
            std::fs::remove_file(&moved).unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
