//! Tombstone collection: collected once every peer has seen them, never brought back by a
//! peer's stale copy, and agents converge whatever the order they merge in.

use super::super::{ReplicatedState, Stamp};
use super::horizon_of;
use crate::state::{BackendState, Capacity, Change, Vip};
use std::net::Ipv6Addr;

const CAP: Capacity = Capacity {
    vips: 8,
    backends: 64,
    backends_per_vip: 32,
};

fn vip() -> Vip {
    "192.0.2.10:80/tcp".parse().unwrap()
}

fn b(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, i)
}

/// An agent: its state and the versions of the last states its peers sent it.
#[derive(Clone)]
struct Node {
    name: &'static str,
    state: ReplicatedState,
    heard: Vec<(&'static str, u64)>,
    peers: Vec<&'static str>,
}

impl Node {
    fn new(name: &'static str, peers: &[&'static str]) -> Self {
        Node {
            name,
            state: ReplicatedState::default(),
            heard: Vec::new(),
            peers: peers.to_vec(),
        }
    }

    fn change(&mut self, c: Change) {
        let st = self.state.next_stamp(self.name).unwrap();
        self.state.record(&c, &st);
        self.gc();
    }

    /// What the agent does with a peer's state: merge, note its version, collect.
    fn hear(&mut self, from: &Node) -> usize {
        let (_, n) = self.state.merge_counted(&from.state);
        self.heard.retain(|(p, _)| *p != from.name);
        self.heard.push((from.name, from.state.version()));
        n + self.gc()
    }

    fn gc(&mut self) -> usize {
        let h = horizon_of(
            self.state.version(),
            self.peers
                .iter()
                .map(|p| self.heard.iter().find(|(n, _)| n == p).map(|(_, v)| *v)),
        );
        h.map_or(0, |h| self.state.advance(h))
    }

    fn backends(&self) -> Vec<Ipv6Addr> {
        let d = self.state.materialize(&CAP).desired;
        d.vips
            .get(&vip())
            .map(|s| s.backends.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn add(i: u16) -> Change {
    Change::AddBackend {
        vip: vip(),
        backend: b(i),
        weight: 1,
        state: BackendState::Active,
    }
}

fn remove(i: u16) -> Change {
    Change::RemoveBackend {
        vip: vip(),
        backend: b(i),
    }
}

/// Two agents in sync with one VIP and backends 1..=n.
fn pair(n: u16) -> (Node, Node) {
    let mut a = Node::new("lb1", &["lb2"]);
    let mut c = Node::new("lb2", &["lb1"]);
    a.change(Change::AddVip {
        vip: vip(),
        gue: false,
    });
    for i in 1..=n {
        a.change(add(i));
    }
    c.hear(&a);
    a.hear(&c);
    (a, c)
}

#[test]
fn a_tombstone_is_collected_once_every_peer_has_seen_it() {
    let (mut a, mut c) = pair(2);
    a.change(remove(1));
    assert_eq!(a.state.tombstones(), 1, "held: lb2 has not seen it");
    // lb2 sends a state that does not have the removal yet: still held.
    assert_eq!(a.hear(&c), 0);
    assert_eq!(a.state.tombstones(), 1);
    // lb2 merges it; its version now covers it, and so does lb1's (lb1 made it).
    c.hear(&a);
    assert_eq!(c.state.tombstones(), 0, "lb2 has heard lb1 at that version");
    assert_eq!(c.state.horizon, a.state.version());
    // lb1 hears lb2's state: lb2's horizon covers the tombstone lb2 no longer has.
    assert_eq!(a.hear(&c), 1);
    assert_eq!(a.state, c.state, "both hold the same, with no tombstone");
    assert!(a.state.backends.len() == 1 && a.backends() == vec![b(2)]);
    // The next change stamps above the collected one.
    let v = a.state.version();
    a.change(add(3));
    assert_eq!(a.state.version(), v + 1);
}

#[test]
fn a_peer_not_heard_from_holds_every_tombstone() {
    let mut a = Node::new("lb1", &["lb2", "lb3"]);
    let mut c = Node::new("lb2", &["lb1", "lb3"]);
    a.change(Change::AddVip {
        vip: vip(),
        gue: false,
    });
    a.change(add(1));
    a.change(remove(1));
    c.hear(&a);
    a.hear(&c);
    assert_eq!(horizon_of(9, [Some(9), None]), None);
    assert_eq!(a.state.tombstones(), 1, "lb3 has not been heard: kept");
    assert_eq!(c.state.tombstones(), 1);
    assert_eq!(horizon_of(7, []), Some(7), "alone: collected at once");
    assert_eq!(horizon_of(9, [Some(5), Some(7)]), Some(5));
}

/// The resurrection case: a peer cut off (or restored from an old state file) comes back with
/// a live copy of a backend the fleet removed and collected meanwhile. Its copy is refused, it
/// drops the copy itself on hearing the fleet, and its changes made since still apply.
#[test]
fn a_stale_copy_of_a_collected_entry_does_not_come_back() {
    let (mut a, mut c) = pair(3);
    let stale = c.clone();
    // The fleet removes b1 and b2 (and the VIP's b3 stays) and collects.
    a.change(remove(1));
    c.hear(&a);
    c.change(remove(2));
    a.hear(&c);
    c.hear(&a);
    a.hear(&c);
    assert_eq!((a.state.tombstones(), c.state.tombstones()), (0, 0));
    assert!(a.state.horizon > 0);
    let fleet = a.state.clone();

    // lb2 restarts from an old state file: b1 and b2 live, version below the horizon.
    let mut back = stale;
    back.heard.clear();
    assert!(back.state.version() < a.state.horizon);
    // Changes made there before it hears anyone, stamped at its old version plus one: a new
    // weight for b3, and a new backend b5.
    back.change(Change::SetWeight {
        vip: vip(),
        backend: b(3),
        weight: 9,
    });
    back.change(add(5));
    assert!(back.state.version() <= a.state.horizon);
    // lb1 hears it: b1 and b2 stay removed.
    a.hear(&back);
    assert!(!a.backends().contains(&b(1)) && !a.backends().contains(&b(2)));
    // lb2 hears lb1: it drops its stale copies and converges.
    back.hear(&a);
    assert_eq!(back.state, a.state);
    assert_eq!(back.backends(), vec![b(3)], "lb2 dropped its stale copies");
    // The price, documented: a field of an entry both hold takes the change (last writer
    // wins), but an entry created below the horizon reads as collected, and is dropped.
    let d = a.state.materialize(&CAP).desired;
    assert_eq!(d.vips[&vip()].backends[&b(3)].weight, 9);
    assert_ne!(a.state, fleet);
    // A backend added after hearing the fleet stamps above the horizon and applies everywhere.
    back.change(add(5));
    a.hear(&back);
    assert_eq!(a.backends(), vec![b(3), b(5)]);
}

/// Without the horizon (the tombstone dropped, nothing else), the stale copy came back: the
/// check that the test above can fail.
#[test]
fn without_the_horizon_a_collected_removal_would_be_undone() {
    let (mut a, c) = pair(2);
    a.change(remove(1));
    let mut dropped = a.state.clone();
    dropped.backends.remove(&(vip(), b(1)));
    dropped.horizon = 0;
    dropped.merge(&c.state);
    assert!(dropped.backends.contains_key(&(vip(), b(1))), "resurrected");
    let mut with = a.state.clone();
    with.horizon = with.version();
    with.collect();
    with.merge(&c.state);
    assert!(!with.backends.contains_key(&(vip(), b(1))));
}

#[test]
fn a_re_add_after_a_collected_removal_survives_and_concurrent_changes_converge() {
    let (mut a, mut c) = pair(2);
    // Partition: lb1 removes b1 and b2; lb2 re-adds b1 (a later clock) and adds b4.
    a.change(remove(1));
    a.change(remove(2));
    c.change(Change::SetWeight {
        vip: vip(),
        backend: b(2),
        weight: 5,
    });
    c.change(remove(1));
    c.change(add(1));
    c.change(add(4));
    let mut orders = Vec::new();
    for first in [true, false] {
        let (mut x, mut y) = (a.clone(), c.clone());
        for _ in 0..3 {
            if first {
                y.hear(&x);
                x.hear(&y);
            } else {
                x.hear(&y);
                y.hear(&x);
            }
        }
        assert_eq!(x.state, y.state);
        orders.push(x.state.clone());
        assert_eq!(x.state.tombstones(), 0, "all seen by both: collected");
    }
    assert_eq!(orders[0], orders[1], "the same whatever the order");
    let n = Node {
        state: orders[0].clone(),
        ..Node::new("x", &[])
    };
    // b1's re-add has the highest clock: it stays; b2's removal wins over the older weight.
    assert_eq!(n.backends(), vec![b(1), b(4)]);
}

#[test]
fn a_removed_vip_and_its_backends_are_collected_together() {
    let (mut a, mut c) = pair(3);
    a.change(Change::RemoveVip { vip: vip() });
    assert_eq!(a.state.tombstones(), 4);
    c.hear(&a);
    a.hear(&c);
    assert!(a.state.vips.is_empty() && a.state.backends.is_empty());
    // Re-created with a backend: the old ones are not there.
    a.change(Change::AddVip {
        vip: vip(),
        gue: true,
    });
    a.change(add(7));
    c.hear(&a);
    assert_eq!(c.backends(), vec![b(7)]);
    // Versions never go back, even with everything collected.
    let s = ReplicatedState {
        horizon: 40,
        ..Default::default()
    };
    assert_eq!(s.version(), 40);
    assert_eq!(
        s.next_stamp("lb1").unwrap(),
        Stamp {
            clock: 41,
            node: "lb1".into()
        }
    );
}

/// A state file of an earlier version (no horizon) reads as horizon 0, and a horizon of 0
/// claims nothing: config seeds at clock 0 still merge.
#[test]
fn states_without_a_horizon_claim_nothing() {
    let (a, _) = pair(1);
    let mut json: serde_json::Value = serde_json::to_value(&a.state).unwrap();
    json.as_object_mut().unwrap().remove("horizon");
    let old: ReplicatedState = serde_json::from_value(json).unwrap();
    assert_eq!(old.horizon, 0);
    let mut seeded = ReplicatedState::default();
    let seed = Stamp {
        clock: 0,
        node: "lb2".into(),
    };
    seeded.record(
        &Change::AddVip {
            vip: "192.0.2.20:80/tcp".parse().unwrap(),
            gue: false,
        },
        &seed,
    );
    let mut m = old.clone();
    m.merge(&seeded);
    assert_eq!(m.vips.len(), 2);
    seeded.merge(&old);
    assert_eq!(seeded.vips.len(), 2);
}
