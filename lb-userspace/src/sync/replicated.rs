//! The fleet's replicated desired state: a last-writer-wins map per field, ordered by
//! (Lamport clock, node name) stamps.
//!
//! Every operator change on any agent stamps the fields it sets with a clock one above the
//! highest it has seen. Agents exchange whole states and merge them field by field, keeping
//! the higher stamp. Merging is commutative, associative and idempotent, so agents that have
//! seen the same changes hold the same state whatever the order they saw them in, and two
//! concurrent changes to one field resolve the same way everywhere (higher clock, then higher
//! node name). Removals are tombstones, so a late copy of an old entry cannot revive it; they
//! are collected once every peer has seen them, below the state's *horizon* (`gc`): an entry
//! absent from a state and stamped at or below its horizon is gone, not unknown, so a peer's
//! older copy of a collected entry is refused by the merge (docs/sync.md, "Tombstones").

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::wire::{Refusal, refused};
use crate::state::history::{self, History};
use crate::state::{
    BackendSpec, BackendState, Capacity, Change, DesiredState, Vip, VipSpec, check_vip_addr,
};

/// When and where a field was last set. Ordered by clock, then node name.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub clock: u64,
    pub node: String,
}

/// One last-writer-wins field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lww<T> {
    pub stamp: Stamp,
    pub value: T,
}

impl BackendEntry {
    /// The highest clock of its fields.
    pub fn clock(&self) -> u64 {
        self.member
            .stamp
            .clock
            .max(self.weight.stamp.clock)
            .max(self.state.stamp.clock)
    }
}

impl<T: Clone + Ord> Lww<T> {
    fn new(stamp: &Stamp, value: T) -> Self {
        Self {
            stamp: stamp.clone(),
            value,
        }
    }

    /// Keeps the later write; equal stamps (only from a confused peer) keep the larger value so
    /// the merge stays deterministic.
    fn merge(&mut self, other: &Self) -> bool {
        if (&other.stamp, &other.value) > (&self.stamp, &self.value) {
            *self = other.clone();
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipEntry {
    /// `Some(gue)` while the VIP exists, `None` once removed.
    pub exists: Lww<Option<bool>>,
    /// Its members before its recent changes, for second chance (`state::history`): written
    /// with each change of its members, by the node that makes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Lww<History>>,
}

impl VipEntry {
    fn new(exists: Lww<Option<bool>>) -> Self {
        Self {
            exists,
            history: None,
        }
    }

    /// Merges the other side's fields in; true if anything changed.
    fn merge(&mut self, other: &Self) -> bool {
        let mut changed = self.exists.merge(&other.exists);
        match (&mut self.history, &other.history) {
            (Some(mine), Some(theirs)) => changed |= mine.merge(theirs),
            (mine @ None, Some(theirs)) => {
                *mine = Some(theirs.clone());
                changed = true;
            }
            (_, None) => {}
        }
        changed
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendEntry {
    pub member: Lww<bool>,
    pub weight: Lww<u32>,
    pub state: Lww<BackendState>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedState {
    pub vips: BTreeMap<Vip, VipEntry>,
    /// Keyed by VIP and backend; JSON maps need string keys, hence a list on the wire.
    #[serde(with = "backend_list")]
    pub backends: BTreeMap<(Vip, Ipv6Addr), BackendEntry>,
    /// Every change stamped at or below this clock has reached this state (held, overwritten,
    /// or removed and collected): an entry it lacks whose stamps are all at or below it was
    /// removed. 0: nothing collected yet (and state files of earlier versions).
    #[serde(default)]
    pub horizon: u64,
}

pub mod backend_list {
    use super::*;
    use serde::{Deserializer, Serializer};

    #[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Item {
        pub vip: Vip,
        pub backend: Ipv6Addr,
        #[serde(flatten)]
        pub entry: BackendEntry,
    }

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<(Vip, Ipv6Addr), BackendEntry>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(|((vip, backend), entry)| Item {
            vip: *vip,
            backend: *backend,
            entry: entry.clone(),
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<(Vip, Ipv6Addr), BackendEntry>, D::Error> {
        let items = Vec::<Item>::deserialize(d)?;
        Ok(items
            .into_iter()
            .map(|i| ((i.vip, i.backend), i.entry))
            .collect())
    }
}

/// The highest clock a peer's state may carry: beyond any fleet's real history (a change per
/// microsecond for eight years), far from the end of `u64`.
pub const MAX_CLOCK: u64 = 1 << 48;

impl ReplicatedState {
    /// The state a config file declares, stamped with clock 0: any replicated change wins.
    pub fn seed(desired: &DesiredState, node: &str) -> Self {
        let mut s = Self::default();
        let stamp = Stamp {
            clock: 0,
            node: node.to_string(),
        };
        for (vip, spec) in &desired.vips {
            s.record(
                &Change::AddVip {
                    vip: *vip,
                    gue: spec.gue,
                },
                &stamp,
            );
            for (addr, b) in &spec.backends {
                s.record(
                    &Change::AddBackend {
                        vip: *vip,
                        backend: *addr,
                        weight: b.weight,
                        state: b.state,
                    },
                    &stamp,
                );
            }
        }
        s
    }

    /// Every stamp in the state, one per field.
    fn stamps(&self) -> impl Iterator<Item = &Stamp> {
        let v = self.vips.values().flat_map(|v| {
            std::iter::once(&v.exists.stamp).chain(v.history.as_ref().map(|h| &h.stamp))
        });
        let b = self
            .backends
            .values()
            .flat_map(|b| [&b.member.stamp, &b.weight.stamp, &b.state.stamp]);
        v.chain(b)
    }

    /// The highest clock of any field, or the horizon if higher (collected entries took their
    /// clocks with them; the next change must still stamp above them): the state's version.
    pub fn version(&self) -> u64 {
        self.stamps()
            .map(|s| s.clock)
            .max()
            .unwrap_or(0)
            .max(self.horizon)
    }

    /// The stamp for this node's next change. Refused, rather than wrapped, at the end of the
    /// clock (peers' states are bounded by [`check_clock`](Self::check_clock), so only a state
    /// file written by hand gets here).
    pub fn next_stamp(&self, node: &str) -> Result<Stamp> {
        let clock = self.version().checked_add(1).ok_or_else(|| {
            anyhow::anyhow!("the replicated state's clock is at its end ({})", u64::MAX)
        })?;
        Ok(Stamp {
            clock,
            node: node.to_string(),
        })
    }

    /// Refuses a peer's state whose clock is more than `max_jump` above `ours`, or above
    /// `MAX_CLOCK`: one buggy or hostile peer must not push the fleet's clock to its end
    /// (docs/sync.md). A node with no history yet (`ours` 0: a new agent, or one whose state
    /// file was lost) takes the fleet's clock as it is, up to `MAX_CLOCK`, or it could never
    /// join a fleet that has made more than `max_jump` changes.
    pub fn check_clock(&self, ours: u64, max_jump: u64) -> Result<()> {
        let theirs = self.version();
        let limit = if ours == 0 {
            MAX_CLOCK
        } else {
            ours.saturating_add(max_jump).min(MAX_CLOCK)
        };
        if theirs > limit {
            return Err(refused(
                Refusal::ClockJump,
                format!(
                    "state version {theirs} is more than {max_jump} above ours ({ours}); \
                     [sync] max_clock_jump"
                ),
            ));
        }
        Ok(())
    }

    /// Records a change (already accepted against the materialized state) under `stamp`.
    pub fn record(&mut self, change: &Change, stamp: &Stamp) {
        match change {
            Change::AddVip { vip, gue } => {
                self.vips
                    .insert(*vip, VipEntry::new(Lww::new(stamp, Some(*gue))));
            }
            Change::RemoveVip { vip } => {
                self.vips.insert(*vip, VipEntry::new(Lww::new(stamp, None)));
                for ((v, _), b) in self.backends.iter_mut() {
                    if v == vip {
                        b.member = Lww::new(stamp, false);
                    }
                }
            }
            Change::AddBackend {
                vip,
                backend,
                weight,
                state,
            } => {
                self.backends.insert(
                    (*vip, *backend),
                    BackendEntry {
                        member: Lww::new(stamp, true),
                        weight: Lww::new(stamp, *weight),
                        state: Lww::new(stamp, *state),
                    },
                );
            }
            Change::RemoveBackend { vip, backend } => {
                if let Some(b) = self.backends.get_mut(&(*vip, *backend)) {
                    b.member = Lww::new(stamp, false);
                }
            }
            Change::SetState {
                vip,
                backend,
                state,
            } => {
                if let Some(b) = self.backends.get_mut(&(*vip, *backend)) {
                    b.state = Lww::new(stamp, *state);
                }
            }
            Change::SetWeight {
                vip,
                backend,
                weight,
            } => {
                if let Some(b) = self.backends.get_mut(&(*vip, *backend)) {
                    b.weight = Lww::new(stamp, *weight);
                }
            }
        }
    }

    /// Second chance: records, under `stamp`, a step for every VIP whose members differ between
    /// `old` and `new` (the states materialized before and after an operator's changes).
    pub fn record_history(
        &mut self,
        old: &DesiredState,
        new: &DesiredState,
        stamp: &Stamp,
        now_ms: u64,
        window_ms: u64,
    ) {
        if window_ms == 0 {
            return;
        }
        for vip in history::changed_vips(old, new) {
            let Some(entry) = self.vips.get_mut(&vip) else {
                continue;
            };
            let steps = entry.history.take().map(|h| h.value).unwrap_or_default();
            let before = history::members_of(&old.vips[&vip]);
            entry.history = Some(Lww::new(
                stamp,
                history::with_step(steps, before, now_ms, window_ms),
            ));
        }
    }

    /// Every live VIP's steps (second chance).
    pub fn histories(&self) -> BTreeMap<Vip, History> {
        self.vips
            .iter()
            .filter(|(_, e)| e.exists.value.is_some())
            .filter_map(|(vip, e)| Some((*vip, e.history.as_ref()?.value.clone())))
            .filter(|(_, h)| !h.is_empty())
            .collect()
    }

    /// Merges a peer's (whole) state in; true if anything changed.
    ///
    /// Fields present on both sides keep the higher stamp. An entry on one side only is kept
    /// unless the other side's horizon covers all its stamps: that side has seen every change up
    /// to its horizon, so it lacks the entry because the entry was removed and collected (a
    /// peer's stale copy must not bring it back). The horizon becomes the higher of the two, and
    /// tombstones under it are collected.
    pub fn merge(&mut self, other: &ReplicatedState) -> bool {
        self.merge_counted(other).0
    }

    /// [`merge`](Self::merge), and how many of our tombstones it collected (the other side's
    /// horizon covered them, or ours rose over them).
    pub fn merge_counted(&mut self, other: &ReplicatedState) -> (bool, usize) {
        let mut changed = false;
        let mut collected = 0;
        let (ours, theirs) = (self.horizon, other.horizon);
        for (vip, e) in &other.vips {
            match self.vips.get_mut(vip) {
                Some(mine) => changed |= mine.merge(e),
                None if !covers(ours, e.exists.stamp.clock) => {
                    self.vips.insert(*vip, e.clone());
                    changed = true;
                }
                None => {}
            }
        }
        for (k, e) in &other.backends {
            match self.backends.get_mut(k) {
                Some(mine) => {
                    changed |= mine.member.merge(&e.member);
                    changed |= mine.weight.merge(&e.weight);
                    changed |= mine.state.merge(&e.state);
                }
                None if !covers(ours, e.clock()) => {
                    self.backends.insert(*k, e.clone());
                    changed = true;
                }
                None => {}
            }
        }
        if theirs > 0 {
            let before = (self.vips.len(), self.backends.len());
            self.vips
                .retain(|k, e| other.vips.contains_key(k) || !covers(theirs, e.exists.stamp.clock));
            self.backends
                .retain(|k, e| other.backends.contains_key(k) || !covers(theirs, e.clock()));
            collected = before.0 + before.1 - self.vips.len() - self.backends.len();
        }
        if theirs > ours {
            self.horizon = theirs;
            changed = true;
        }
        collected += self.collect();
        (changed || collected > 0, collected)
    }

    /// Checks a state received from a peer (or read from the state file): every value one the
    /// operator could have set, and every stamp naming a node by a valid node name. Errors are
    /// [`Refused`](super::wire::Refused): `too_large` for a state over the caps, `stamp` for a
    /// bad stamp, `malformed` otherwise.
    pub fn validate(&self) -> Result<()> {
        // Counted first: the checks below are cheap, but not free on a huge state.
        self.within_caps()?;
        let malformed = |e: anyhow::Error| refused(Refusal::Malformed, format!("{e:#}"));
        for ((vip, addr), b) in &self.backends {
            crate::state::check_weight(b.weight.value)
                .map_err(|e| malformed(anyhow::anyhow!("backend {addr} of {vip}: {e}")))?;
            crate::state::check_backend(addr).map_err(malformed)?;
        }
        for (vip, e) in &self.vips {
            // A tombstone of an address we now refuse is harmless, and must stay mergeable.
            if e.exists.value.is_some() {
                check_vip_addr(&vip.addr).map_err(malformed)?;
            }
        }
        // Names are tie-breakers shown in logs; they need not be a fleet member's (docs/sync.md).
        if let Some(bad) = self.stamps().find(|s| !crate::config::valid_name(&s.node)) {
            let name: String = bad.node.chars().take(80).collect();
            return Err(refused(
                Refusal::Stamp,
                format!("a stamp names node {name:?}, not a valid node name"),
            ));
        }
        Ok(())
    }

    /// The desired state these fields describe. A backend belongs to a VIP if it was added at
    /// or after the VIP's latest creation.
    ///
    /// Past the capacity, the newest are held back: VIPs take the slots in the order they were
    /// created (their `exists` stamp, then address), and a VIP's backends in the order they were
    /// added. A VIP that serves is older than any VIP added after it was seen, so a merge never
    /// removes it to make room; and the order depends on the state alone, so every agent with
    /// the same limits holds back the same VIPs.
    pub fn materialize(&self, cap: &Capacity) -> Materialized {
        let mut out = Materialized::default();
        let mut total = 0u32;
        let mut live: Vec<(&Stamp, &Vip, bool)> = self
            .vips
            .iter()
            .filter_map(|(vip, e)| e.exists.value.map(|gue| (&e.exists.stamp, vip, gue)))
            .collect();
        live.sort();
        for (created, vip, gue) in live {
            if out.desired.vips.len() as u32 >= cap.vips {
                out.held_back.push(*vip);
                out.skipped.push(format!(
                    "VIP {vip} (added at clock {} by {}): all {} VIP slots are in use by older \
                     VIPs; held back",
                    created.clock, created.node, cap.vips
                ));
                continue;
            }
            let mut spec = VipSpec {
                gue,
                backends: BTreeMap::new(),
            };
            let mut members: Vec<(&Stamp, &Ipv6Addr, &BackendEntry)> = self
                .backends
                .range((*vip, Ipv6Addr::UNSPECIFIED)..)
                .take_while(|((v, _), _)| v == vip)
                .filter(|(_, b)| b.member.value && b.member.stamp >= *created)
                .map(|((_, addr), b)| (&b.member.stamp, addr, b))
                .collect();
            members.sort_by(|x, y| (x.0, x.1).cmp(&(y.0, y.1)));
            for (_, addr, b) in members {
                if spec.backends.len() as u32 >= cap.backends_per_vip || total >= cap.backends {
                    out.skipped.push(format!(
                        "backend {addr} of {vip}: no backend slot left; held back"
                    ));
                    continue;
                }
                total += 1;
                spec.backends.insert(
                    *addr,
                    BackendSpec {
                        weight: b.weight.value,
                        state: b.state.value,
                    },
                );
            }
            out.desired.vips.insert(*vip, spec);
        }
        out
    }
}

/// Whether a state with horizon `h` has seen every change stamped `clock` (0: it claims
/// nothing, not even the config seeds at clock 0).
fn covers(h: u64, clock: u64) -> bool {
    h > 0 && clock <= h
}

/// A replicated state as this agent's limits let it serve it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Materialized {
    pub desired: DesiredState,
    /// Live VIPs left out for want of a VIP slot (the newest), in creation order.
    pub held_back: Vec<Vip>,
    /// One line per VIP or backend left out, for the log.
    pub skipped: Vec<String>,
}

/// A short, stable digest of a desired state (canonical JSON: maps are ordered).
pub fn state_digest(state: &DesiredState) -> String {
    let json = serde_json::to_vec(state).expect("serializable");
    hex16(&Sha256::digest(&json))
}

pub fn hex16(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub mod caps;
pub mod gc;

#[cfg(test)]
mod tests;
