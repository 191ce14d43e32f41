//! `flows = "changes"`: which connection entries a change of the Maglev tables moved, and the
//! pace at which they go to each peer.
//!
//! The agent diffs its rings around every install (`agent::moved`) and hands the walker the
//! slots that changed ([`ChangedSlots`]) with the rings as they now are ([`Rings`]). An entry's
//! slot is `ring_slot(entry.hash, ring_size)` in the ring of its backend's VIP: the walker sends
//! the live local entries in changed slots once, and on refresh and connect the live local
//! entries the current ring would send elsewhere (the flows earlier changes moved and that are
//! still alive), so peers' copies of those do not idle out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_common::ring_slot;

/// A ring's changed slots, as a bit set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotSet {
    size: u32,
    bits: Vec<u64>,
}

impl SlotSet {
    pub fn new(size: u32) -> Self {
        Self {
            size,
            bits: vec![0; (size as usize).div_ceil(64)],
        }
    }

    pub fn insert(&mut self, slot: u32) {
        if slot < self.size {
            self.bits[slot as usize / 64] |= 1 << (slot % 64);
        }
    }

    pub fn contains_slot(&self, slot: u32) -> bool {
        slot < self.size && self.bits[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    /// Whether a flow of this hash falls in a changed slot.
    pub fn contains_hash(&self, hash: u32) -> bool {
        self.contains_slot(ring_slot(hash, self.size))
    }

    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.bits.iter().all(|&w| w == 0)
    }
}

/// The slots one install changed, by the local backend ids of each changed VIP (before and
/// after it).
#[derive(Clone, Debug, Default)]
pub struct ChangedSlots {
    pub by_backend: HashMap<u32, Arc<SlotSet>>,
    /// Changed slots over all VIPs (for the log).
    pub slots: usize,
}

impl ChangedSlots {
    /// Whether the entry of a flow on `backend` with `hash` sits in a changed slot.
    pub fn contains(&self, backend: u32, hash: u32) -> bool {
        self.by_backend
            .get(&backend)
            .is_some_and(|s| s.contains_hash(hash))
    }

    pub fn is_empty(&self) -> bool {
        self.slots == 0
    }
}

/// The rings as installed: backend id per slot, by the local ids of each VIP's backends.
#[derive(Clone, Debug, Default)]
pub struct Rings {
    pub by_backend: HashMap<u32, Arc<Vec<u32>>>,
}

impl Rings {
    /// Whether the current ring sends a flow on `backend` with `hash` to another backend: a
    /// peer that gets the flow would pick that one. Unknown backends (removed) are not moved.
    pub fn moved(&self, backend: u32, hash: u32) -> bool {
        self.by_backend.get(&backend).is_some_and(|ring| {
            let slot = ring_slot(hash, ring.len() as u32) as usize;
            ring.get(slot).is_some_and(|&owner| owner != backend)
        })
    }
}

/// Paces flow batches to one peer: at most `rate` flows per second on average; the first
/// batch after a quiet spell goes at once.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: u32,
    next: Instant,
}

impl Pacer {
    pub fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: rate.max(1),
            next: now,
        }
    }

    /// When the next batch may go.
    pub fn next(&self) -> Instant {
        self.next
    }

    pub fn ready(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// A batch of `flows` went at `now`: the next waits its share of the rate.
    pub fn spend(&mut self, flows: u64, now: Instant) {
        let cost = Duration::from_secs_f64(flows as f64 / self.rate as f64);
        self.next = self.next.max(now) + cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sets_hold_exactly_their_slots_and_map_hashes_like_the_dataplane() {
        let mut s = SlotSet::new(65537);
        for slot in [0, 63, 64, 65536] {
            s.insert(slot);
        }
        s.insert(65537); // past the ring: ignored
        assert_eq!(s.len(), 4);
        assert!(s.contains_slot(0) && s.contains_slot(63) && s.contains_slot(64));
        assert!(s.contains_slot(65536) && !s.contains_slot(65537) && !s.contains_slot(1));
        // The dataplane's slot of a hash: the top of hash * size.
        assert!(s.contains_hash(u32::MAX)); // slot 65536
        assert!(s.contains_hash(0)); // slot 0
        let h = ((1u64 << 32) * 5 / 65537 + 1) as u32; // slot 5
        assert_eq!(ring_slot(h, 65537), 5);
        assert!(!s.contains_hash(h));
    }

    #[test]
    fn rings_say_which_entries_the_table_would_send_elsewhere() {
        let ring = Arc::new(vec![1, 1, 2, 3]);
        let rings = Rings {
            by_backend: [(1, ring.clone()), (2, ring.clone()), (3, ring)]
                .into_iter()
                .collect(),
        };
        let slot = |s: u32| ((1u64 << 32) * s as u64 / 4) as u32;
        assert!(!rings.moved(1, slot(0)) && !rings.moved(1, slot(1)));
        assert!(rings.moved(1, slot(2)) && rings.moved(2, slot(3)));
        assert!(!rings.moved(3, slot(3)));
        assert!(!rings.moved(9, slot(0)), "a backend no ring knows");
    }

    #[test]
    fn the_pacer_holds_the_rate_and_lets_a_first_batch_through() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0);
        assert!(p.ready(t0));
        // Ten batches of 100 flows, each sent as soon as allowed: one second for 1000 flows.
        let mut now = t0;
        for i in 0..10 {
            assert!(p.ready(now), "batch {i}");
            p.spend(100, now);
            assert!(!p.ready(now));
            now = p.next();
        }
        assert_eq!(now - t0, Duration::from_secs(1));
        // A quiet spell earns no burst beyond one batch.
        let later = now + Duration::from_secs(10);
        assert!(p.ready(later));
        p.spend(4096, later);
        assert_eq!(p.next() - later, Duration::from_secs_f64(4.096));
        assert!(!p.ready(later + Duration::from_secs(4)));
    }
}
