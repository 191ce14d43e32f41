//! `[sync] flows = "changes"`: the slots an install changes, found by diffing the rings the
//! reconciler reports before and after it (`Reconciler::vips`, keyed by VIP), so this needs
//! nothing of the reconciler's internals. The sync walker then sends peers the live local
//! entries in those slots (`sync::moved`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use lb_common::RingSlot;
use tracing::debug;

use super::actor::Agent;
use crate::reconcile::InstalledVip;
use crate::state::Vip;
use crate::sync::moved::SlotSet;
use crate::sync::{ChangedSlots, Rings};

/// A VIP's ring as installed (backend id per slot), and the local ids of its backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct RingSnap {
    pub slots: Option<Arc<Vec<u32>>>,
    pub backends: Vec<u32>,
}

/// Every VIP's ring, keyed by VIP (its id is its ring).
pub(super) type Snapshot = BTreeMap<Vip, RingSnap>;

pub(super) fn snapshot(vips: &BTreeMap<Vip, InstalledVip>) -> Snapshot {
    vips.iter()
        .map(|(vip, v)| {
            (
                *vip,
                RingSnap {
                    // Only the backend each slot sends new flows to: a previous backend or its
                    // expiry changing moves no flow.
                    slots: v
                        .slots
                        .as_ref()
                        .map(|slots| Arc::new(slots.iter().map(RingSlot::backend_id).collect())),
                    backends: v.backends.values().map(|b| b.id).collect(),
                },
            )
        })
        .collect()
}

/// The slots that differ between two snapshots, by the backend ids the VIP had before or has
/// after. A VIP that is new or gone moved nothing (no entry can sit in a ring that did not
/// exist; a removed VIP's flows have no backend left), nor does a ring whose contents were
/// unknown before (adopted maps at start: no change happened, the agent just learned them).
/// A ring whose size changed moved every slot.
pub(super) fn diff(before: &Snapshot, after: &Snapshot) -> ChangedSlots {
    let mut out = ChangedSlots::default();
    for (vip, a) in after {
        let Some(b) = before.get(vip) else { continue };
        let (Some(old), Some(new)) = (&b.slots, &a.slots) else {
            continue;
        };
        if Arc::ptr_eq(old, new) || old == new {
            continue;
        }
        let mut set = SlotSet::new(new.len() as u32);
        if old.len() == new.len() {
            for (i, (x, y)) in old.iter().zip(new.iter()).enumerate() {
                if x != y {
                    set.insert(i as u32);
                }
            }
        } else {
            (0..new.len() as u32).for_each(|i| set.insert(i));
        }
        if set.is_empty() {
            continue;
        }
        out.slots += set.len();
        let set = Arc::new(set);
        for &id in b.backends.iter().chain(&a.backends) {
            out.by_backend.insert(id, set.clone());
        }
    }
    out
}

/// The rings by backend id, for the walker's refreshes of moved flows.
pub(super) fn rings(s: &Snapshot) -> Rings {
    let mut by_backend = HashMap::new();
    for r in s.values() {
        if let Some(slots) = &r.slots {
            for &id in &r.backends {
                by_backend.insert(id, slots.clone());
            }
        }
    }
    Rings { by_backend }
}

impl Agent {
    /// Before an install: the rings, if flow sync wants the slots it moves.
    pub(super) fn moved_before(&self) -> Option<Snapshot> {
        let f = self.fleet.as_ref()?;
        f.sync
            .wants_moved()
            .then(|| snapshot(self.reconciler.vips()))
    }

    /// After a successful install, before it publishes (so the sync tasks get the new rings):
    /// keeps the rings and returns the slots that changed.
    pub(super) fn moved_after(&mut self, before: Option<Snapshot>) -> Option<ChangedSlots> {
        let before = before?;
        let after = snapshot(self.reconciler.vips());
        let changed = diff(&before, &after);
        let f = self.fleet.as_mut()?;
        f.rings = Arc::new(rings(&after));
        (!changed.is_empty()).then_some(changed)
    }

    /// After the install published: the walker sends the changed slots' live flows to peers.
    pub(super) fn send_moved(&self, changed: Option<ChangedSlots>) {
        if let (Some(c), Some(f)) = (changed, &self.fleet) {
            debug!(slots = c.slots, "an install moved slots");
            f.sync.moved(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(port: u16) -> Vip {
        format!("192.0.2.10:{port}/tcp").parse().unwrap()
    }

    /// (port, slots, backend ids) per VIP.
    type Ring = (u16, Option<Vec<u32>>, Vec<u32>);

    fn snap(entries: &[Ring]) -> Snapshot {
        entries
            .iter()
            .map(|(p, slots, backends)| {
                (
                    vip(*p),
                    RingSnap {
                        slots: slots.clone().map(Arc::new),
                        backends: backends.clone(),
                    },
                )
            })
            .collect()
    }

    /// A hash that lands in `slot` of a ring of `size`.
    fn hash_in(slot: u32, size: u32) -> u32 {
        let h = (((slot as u64) << 32) / size as u64 + 1) as u32;
        assert_eq!(lb_common::ring_slot(h, size), slot);
        h
    }

    #[test]
    fn the_diff_finds_exactly_the_changed_slots_of_each_vip() {
        // VIP :80: b1 (id 1) drained, its slots 1 and 3 go to 2 and 3; VIP :443 unchanged.
        let before = snap(&[
            (80, Some(vec![1, 1, 2, 1, 3]), vec![1, 2, 3]),
            (443, Some(vec![7, 8, 7, 8, 7]), vec![7, 8]),
        ]);
        let after = snap(&[
            (80, Some(vec![2, 3, 2, 2, 3]), vec![1, 2, 3]),
            (443, Some(vec![7, 8, 7, 8, 7]), vec![7, 8]),
        ]);
        let d = diff(&before, &after);
        assert_eq!(d.slots, 3);
        for id in [1, 2, 3] {
            for (slot, changed) in [(0, true), (1, true), (2, false), (3, true), (4, false)] {
                assert_eq!(
                    d.contains(id, hash_in(slot, 5)),
                    changed,
                    "id {id} slot {slot}"
                );
            }
        }
        for id in [7, 8] {
            assert!(
                (0..5).all(|s| !d.contains(id, hash_in(s, 5))),
                "VIP :443 moved nothing"
            );
        }
        // Nothing changed: nothing to send.
        assert!(diff(&after, &after).is_empty());
    }

    #[test]
    fn added_removed_unknown_and_resized_rings() {
        // A backend added: the new id shares the changed slots; a removed id too.
        let before = snap(&[(80, Some(vec![1, 1, 2, 2]), vec![1, 2])]);
        let after = snap(&[(80, Some(vec![1, 4, 2, 4]), vec![1, 4])]);
        let d = diff(&before, &after);
        assert_eq!(d.slots, 2);
        for id in [1, 2, 4] {
            assert!(d.contains(id, hash_in(1, 4)) && d.contains(id, hash_in(3, 4)));
            assert!(!d.contains(id, hash_in(0, 4)) && !d.contains(id, hash_in(2, 4)));
        }
        // A new VIP, a removed VIP, and a ring unknown before: nothing moved.
        let new_vip = snap(&[
            (80, Some(vec![1, 1, 2, 2]), vec![1, 2]),
            (81, Some(vec![5; 4]), vec![5]),
        ]);
        assert!(diff(&before, &new_vip).is_empty());
        assert!(diff(&new_vip, &before).is_empty());
        let unknown = snap(&[(80, None, vec![1, 2])]);
        assert!(diff(&unknown, &after).is_empty());
        // A ring of another size: every slot.
        let resized = snap(&[(80, Some(vec![1, 2, 1, 2, 1, 2, 1, 2]), vec![1, 2])]);
        assert_eq!(diff(&before, &resized).slots, 8);
    }

    #[test]
    fn rings_map_each_backend_to_its_vips_ring() {
        let s = snap(&[(80, Some(vec![1, 2]), vec![1, 2]), (443, None, vec![3])]);
        let r = rings(&s);
        assert!(!r.moved(1, hash_in(0, 2)) && r.moved(1, hash_in(1, 2)));
        assert!(!r.moved(3, 0), "a VIP whose ring is unknown moves nothing");
    }
}
