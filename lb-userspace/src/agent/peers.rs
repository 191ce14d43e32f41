//! How operator changes and peers' states enter the replicated state, and what the actor
//! publishes for the sync tasks after every install.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Result;
use tracing::{error, info, warn};

use super::actor::Agent;
use super::fleet::{log_skipped, materialize};
use crate::api::SyncStatus;
use crate::reconcile::ApplyReport;
use crate::state::Change;
use crate::sync::flows::{FlowIndex, table_digest};
use crate::sync::replicated::gc::horizon_of;
use crate::sync::replicated::{ReplicatedState, state_digest};
use crate::sync::{Local, Summary};

impl Agent {
    /// What the sync tasks need to know of this agent now.
    pub(super) fn local(&self, replicated: &ReplicatedState) -> Local {
        let d = &self.config.dataplane;
        Local {
            state: Arc::new(replicated.clone()),
            summary: Summary {
                version: replicated.version(),
                state_digest: state_digest(&self.desired),
                table_digest: table_digest(&self.effective(&self.desired), d.ring_size, d.seed),
                flows: self.config.sync.as_ref().is_some_and(|s| s.flows.shares()),
            },
            index: Arc::new(FlowIndex::from_reconciler(&self.reconciler)),
            rings: self
                .fleet
                .as_ref()
                .map(|f| f.rings.clone())
                .unwrap_or_default(),
        }
    }

    /// Tells the sync tasks about the state just installed.
    pub(super) fn publish_fleet(&mut self) {
        let Some(f) = &self.fleet else { return };
        let local = self.local(&f.replicated);
        let f = self.fleet.as_ref().expect("checked");
        f.sync.local.send_replace(local);
    }

    /// Installs what a replicated state describes and makes it ours: persisted and published.
    /// A state the dataplane cannot take is still kept (it is the fleet's); the error says why
    /// this agent's tables lag.
    fn commit(&mut self, replicated: ReplicatedState) -> Result<ApplyReport> {
        let m = replicated.materialize(&self.config.capacity());
        let f = self.fleet.as_mut().expect("fleet");
        log_skipped(&f.skipped, &m);
        f.skipped = m.skipped;
        f.held_back = m.held_back;
        let next = m.desired;
        f.replicated = replicated;
        f.persist();
        // install publishes on success; a refused install must still share the new state.
        let result = self.install(next);
        if result.is_err() {
            self.publish_fleet();
        }
        result
    }

    /// An operator's change (already accepted against the desired state), stamped and shared.
    /// Refused, changing nothing, if it would take the replicated state over its caps (a peer
    /// would refuse it): removals wait as tombstones until every peer has seen them.
    pub(super) fn commit_changes(&mut self, changes: &[Change]) -> Result<ApplyReport> {
        let f = self.fleet.as_ref().expect("fleet");
        let mut next = f.replicated.clone();
        let mut last = None;
        for c in changes {
            let stamp = next.next_stamp(&f.sync.node)?;
            next.record(c, &stamp);
            last = Some(stamp);
        }
        // Second chance: the members each VIP had before, for every node to read alike.
        if let Some(stamp) = last {
            let before = materialize(&self.config, &f.replicated);
            let after = materialize(&self.config, &next);
            next.record_history(
                &before,
                &after,
                &stamp,
                crate::state::history::unix_ms(),
                self.second_chance_ms(),
            );
        }
        self.collect(&mut next);
        next.within_caps().map_err(|e| {
            anyhow::anyhow!(
                "{e}: the change would take the replicated state over its caps; tombstones are \
                 collected once every peer has sent a state that includes them (lb peer list)"
            )
        })?;
        self.commit(next)
    }

    /// Raises the horizon to what every configured peer has sent us and collects the
    /// tombstones under it; true if the state changed.
    fn collect(&mut self, next: &mut ReplicatedState) -> bool {
        let peers = self.config.sync.as_ref().map_or(&[][..], |s| &s.peers[..]);
        let f = self.fleet.as_mut().expect("fleet");
        let h = horizon_of(
            next.version(),
            peers.iter().map(|p| f.peer_versions.get(&p.name).copied()),
        );
        let Some(h) = h else { return false };
        let before = next.horizon;
        let n = next.advance(h);
        f.collected += n as u64;
        n > 0 || next.horizon != before
    }

    pub(super) fn peer_state(&mut self, from: &str, state: ReplicatedState) {
        let Some(f) = &mut self.fleet else { return };
        let mut next = f.replicated.clone();
        let (merged, n) = next.merge_counted(&state);
        f.collected += n as u64;
        f.peer_versions.insert(from.to_string(), state.version());
        let collected = self.collect(&mut next);
        if !merged && !collected {
            return;
        }
        let version = next.version();
        let changes = self.desired.changes_to(&materialize(&self.config, &next));
        match self.commit(next) {
            Ok(_) => {
                for c in &changes {
                    info!(peer = from, version, "replicated: {c}");
                }
            }
            Err(e) => error!(
                peer = from,
                version, "a replicated change does not install: {e:#}"
            ),
        }
    }

    /// False while this agent, just started, still waits for its peers' state and flows.
    pub(super) fn caught_up(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.waiting.is_empty())
    }

    pub(super) fn peer_synced(&mut self, from: &str) {
        let Some(f) = &mut self.fleet else { return };
        if f.waiting.remove(from) {
            info!(peer = from, "caught up with peer");
            if f.waiting.is_empty() {
                info!("caught up with every peer: announcing");
                self.publish();
            }
        }
    }

    pub(super) fn sync_wait_over(&mut self) {
        let Some(f) = &mut self.fleet else { return };
        if !f.waiting.is_empty() {
            warn!(peers = ?f.waiting, "peers not heard from in time; announcing without their flows");
            f.waiting.clear();
            self.publish();
        }
    }

    pub(super) fn sync_status(&self) -> Option<SyncStatus> {
        let f = self.fleet.as_ref()?;
        let local = f.sync.local.borrow().clone();
        let c = &f.sync.counters;
        Some(SyncStatus {
            node: f.sync.node.clone(),
            version: local.summary.version,
            state_digest: local.summary.state_digest,
            table_digest: local.summary.table_digest,
            flows: f.sync.flows.shares(),
            flow_mode: f.sync.flows.to_string(),
            flows_moved: c.flows_moved.load(Ordering::Relaxed),
            flows_moved_over: c.flows_moved_over.load(Ordering::Relaxed),
            waiting_for: f.waiting.iter().cloned().collect(),
            held_back: f.held_back.iter().map(ToString::to_string).collect(),
            peers: f.sync.peer_status(),
            flows_exported: c.flows_exported.load(Ordering::Relaxed),
            flows_imported: c.flows_imported.load(Ordering::Relaxed),
            flows_dropped_queue: c.flows_dropped_queue.load(Ordering::Relaxed),
            flows_dropped_import: c.flows_dropped_import.load(Ordering::Relaxed),
            flows_untranslated: c.flows_untranslated.load(Ordering::Relaxed),
            flows_unknown_id: c.flows_unknown_id.load(Ordering::Relaxed),
            flow_walks: c.flow_walks.load(Ordering::Relaxed),
            flow_walk_us: c.flow_walk_last_us.load(Ordering::Relaxed),
            flow_walk_max_us: c.flow_walk_max_us.load(Ordering::Relaxed),
            flow_walk_flows: c.flow_walk_flows.load(Ordering::Relaxed),
            refreshes_skipped: c.refreshes_skipped.load(Ordering::Relaxed),
            refused: c
                .refused()
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            state_file: f.file.clone(),
            tombstones: f.replicated.tombstones() as u64,
            tombstones_collected: f.collected,
            horizon: f.replicated.horizon,
            states_sent: c.states_sent.load(Ordering::Relaxed),
            state_bytes_sent: c.state_bytes_sent.load(Ordering::Relaxed),
            deltas_sent: c.deltas_sent.load(Ordering::Relaxed),
            delta_bytes_sent: c.delta_bytes_sent.load(Ordering::Relaxed),
            state_parts_sent: c.state_parts_sent.load(Ordering::Relaxed),
        })
    }
}
