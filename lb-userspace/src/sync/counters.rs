//! Counters shared by the sync tasks.

use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::Refusal;

/// The sync tasks' counters (read by `/metrics` and `lb peer list`).
#[derive(Debug, Default)]
pub struct Counters {
    pub flows_exported: AtomicU64,
    pub flows_imported: AtomicU64,
    /// A sender's queue was full (the peer is slow or away): the batch was not queued.
    pub flows_dropped_queue: AtomicU64,
    /// The importer's queue was full: a received batch was not installed.
    pub flows_dropped_import: AtomicU64,
    /// A received flow for a VIP or backend this agent does not have.
    pub flows_untranslated: AtomicU64,
    /// An exported flow whose backend id the agent no longer knows.
    pub flows_unknown_id: AtomicU64,
    /// `flows = "changes"`: live flows found in slots a change moved and queued to peers, and
    /// those left out past `changes_max`.
    pub flows_moved: AtomicU64,
    pub flows_moved_over: AtomicU64,
    pub refused: [AtomicU64; Refusal::ALL.len()],
    /// Walks of the connection table for refreshes (one per period and per coalesced connect,
    /// shared by every peer), the last one's duration and flows, and the longest.
    pub flow_walks: AtomicU64,
    pub flow_walk_last_us: AtomicU64,
    pub flow_walk_max_us: AtomicU64,
    pub flow_walk_flows: AtomicU64,
    /// Periodic refreshes not queued for a peer whose previous one was still being sent.
    pub refreshes_skipped: AtomicU64,
    /// Whole states sent (one per link that comes up) and their bytes (bodies).
    pub states_sent: AtomicU64,
    pub state_bytes_sent: AtomicU64,
    /// Deltas sent (one per change a link carries) and their bytes.
    pub deltas_sent: AtomicU64,
    pub delta_bytes_sent: AtomicU64,
    /// Frames of states or deltas too long for one (all but each one's last piece).
    pub state_parts_sent: AtomicU64,
}

impl Counters {
    pub(super) fn refuse(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).expect("listed");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn state_sent(&self, delta: bool, bytes: usize, frames: usize) {
        let (n, b) = if delta {
            (&self.deltas_sent, &self.delta_bytes_sent)
        } else {
            (&self.states_sent, &self.state_bytes_sent)
        };
        n.fetch_add(1, Ordering::Relaxed);
        b.fetch_add(bytes as u64, Ordering::Relaxed);
        self.state_parts_sent
            .fetch_add(frames as u64 - 1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, c)| (r.name(), c.load(Ordering::Relaxed)))
            .collect()
    }
}
