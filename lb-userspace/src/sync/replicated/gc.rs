//! Tombstone collection (docs/sync.md, "Tombstones").
//!
//! A removal stays as a tombstone until every configured peer has seen it; then it is dropped
//! and the state's horizon rises past its stamp. The horizon is what keeps a collected removal
//! removed: `merge` refuses a peer's entry that a horizon covers but the state lacks.
//!
//! Why a peer's version is enough: a peer stamps its own changes one above its version, so all
//! its changes up to the version it reported were made before it sent that state, and are in
//! it. Once every configured peer has sent us a state of version at least H, every change
//! stamped at or below H, by anyone in the fleet, has reached us: H is our horizon.

use super::{ReplicatedState, covers};

impl ReplicatedState {
    /// Whether a backend entry no longer serves: removed, or its VIP removed, absent, or
    /// re-created after it was added.
    fn backend_dead(&self, vip: &crate::state::Vip, e: &super::BackendEntry) -> bool {
        !e.member.value
            || self
                .vips
                .get(vip)
                .is_none_or(|v| v.exists.value.is_none() || e.member.stamp < v.exists.stamp)
    }

    /// Tombstones held: removed VIPs and backends that no longer serve.
    pub fn tombstones(&self) -> usize {
        let vips = self
            .vips
            .values()
            .filter(|v| v.exists.value.is_none())
            .count();
        let backends = self
            .backends
            .iter()
            .filter(|((vip, _), e)| self.backend_dead(vip, e))
            .count();
        vips + backends
    }

    /// Drops the tombstones the horizon covers; how many.
    pub fn collect(&mut self) -> usize {
        let h = self.horizon;
        let dead: Vec<_> = self
            .backends
            .iter()
            .filter(|((vip, _), e)| covers(h, e.clock()) && self.backend_dead(vip, e))
            .map(|(k, _)| *k)
            .collect();
        for k in &dead {
            self.backends.remove(k);
        }
        let before = self.vips.len();
        self.vips
            .retain(|_, v| !(v.exists.value.is_none() && covers(h, v.exists.stamp.clock)));
        dead.len() + before - self.vips.len()
    }

    /// Raises the horizon to `h` (never lowers it, nor lifts it above the version), then
    /// collects; how many tombstones went.
    pub fn advance(&mut self, h: u64) -> usize {
        self.horizon = self.horizon.max(h.min(self.version()));
        self.collect()
    }
}

/// The horizon an agent may adopt: the lowest version among the states its configured peers
/// last sent it (`None` for a peer that has sent none since this agent started: nothing is
/// known of it, so nothing can be collected); its own version with no peers.
pub fn horizon_of(own: u64, peers: impl IntoIterator<Item = Option<u64>>) -> Option<u64> {
    peers.into_iter().try_fold(own, |h, p| p.map(|v| h.min(v)))
}

#[cfg(test)]
mod tests;
