use super::*;
use crate::state::{Capacity, Change};
use lb_common::VipKey;
use std::collections::HashMap;

/// Records writes and checks, at every write, the invariants the XDP program relies on.
#[derive(Default)]
struct Recorder {
    backends: HashMap<u32, Backend>,
    rings: HashMap<u32, Vec<RingSlot>>,
    vips: HashMap<VipKey, VipMeta>,
    slot_writes: u64,
    ring_size: u32,
}

impl Recorder {
    fn check(&self) {
        for meta in self.vips.values() {
            let ring = &self.rings[&meta.ring];
            assert_eq!(
                ring.len(),
                self.ring_size as usize,
                "reachable VIP with a partial ring"
            );
            let valid = |id: u32| {
                self.backends
                    .get(&id)
                    .is_some_and(|b| b.flags & BACKEND_F_VALID != 0)
            };
            for s in ring {
                let id = s.backend_id();
                assert!(
                    id == NO_BACKEND || valid(id),
                    "a reachable slot names uninstalled backend {id}"
                );
                // A previous backend is a live backend too: its id must not serve another.
                if let Some(prev) = s.live_prev(u32::MAX - 1) {
                    assert!(
                        valid(prev),
                        "a slot's previous backend {prev} is uninstalled"
                    );
                }
            }
        }
    }
}

impl MapWriter for Recorder {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.backends.insert(id, *backend);
        self.check();
        Ok(())
    }
    fn clear_backend(&mut self, id: u32) -> Result<()> {
        let g = self.backends.get(&id).map_or(0, |b| b.generation);
        self.backends.insert(
            id,
            Backend {
                generation: g,
                ..Default::default()
            },
        );
        self.check();
        Ok(())
    }
    fn backend_generation(&mut self, id: u32) -> Result<u32> {
        Ok(self.backends.get(&id).map_or(0, |b| b.generation))
    }
    fn write_slots(&mut self, ring: u32, slots: &[(u32, RingSlot)]) -> Result<()> {
        let m = self.ring_size as usize;
        let r = self
            .rings
            .entry(ring)
            .or_insert_with(|| vec![RingSlot::default(); m]);
        for &(s, value) in slots {
            r[s as usize] = value;
            self.slot_writes += 1;
        }
        // Check after the whole batch too (the real writes are one slot at a time, and
        // each one names an installed backend, which `check` verifies for reachable VIPs).
        self.check();
        Ok(())
    }
    fn set_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()> {
        self.rings.entry(meta.ring).or_default();
        self.vips.insert(key, meta);
        self.check();
        Ok(())
    }
    fn remove_vip(&mut self, key: VipKey) -> Result<()> {
        self.vips.remove(&key);
        Ok(())
    }
    fn reset_vip_counter(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
    fn reset_backend_counter(&mut self, _: u32) -> Result<()> {
        Ok(())
    }
}

const M: u32 = 4099;
const CAP: Capacity = Capacity {
    vips: 4,
    backends: 64,
    backends_per_vip: 100,
};

fn b(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, i)
}

fn setup() -> (Reconciler, Recorder, DesiredState, Vip) {
    let r = Reconciler::new(M, 42, 4, 64);
    let rec = Recorder {
        ring_size: M,
        ..Default::default()
    };
    let mut s = DesiredState::default();
    let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
    s.apply(&Change::AddVip { vip, gue: false }, &CAP).unwrap();
    for i in 1..=4 {
        s.apply(
            &Change::AddBackend {
                vip,
                backend: b(i),
                weight: 1,
                state: BackendState::Active,
            },
            &CAP,
        )
        .unwrap();
    }
    (r, rec, s, vip)
}

#[test]
fn a_change_writes_exactly_the_slots_maglev_moves() {
    let (mut r, mut rec, mut s, vip) = setup();
    let rep = r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    assert_eq!(
        rep.slot_writes, M as u64,
        "a new VIP writes its whole ring once"
    );
    assert_eq!(rep.vips_added, 1);
    let members_before = members(&s.vips[&vip].backends);
    let table_before = MaglevTable::build(M, 42, &members_before).unwrap();
    for change in [
        Change::AddBackend {
            vip,
            backend: b(5),
            weight: 1,
            state: BackendState::Active,
        },
        Change::SetWeight {
            vip,
            backend: b(2),
            weight: 3,
        },
        Change::SetState {
            vip,
            backend: b(3),
            state: BackendState::Draining,
        },
        Change::RemoveBackend { vip, backend: b(1) },
    ] {
        let before = MaglevTable::build(M, 42, &members(&s.vips[&vip].backends)).unwrap();
        s.apply(&change, &CAP).unwrap();
        let after = MaglevTable::build(M, 42, &members(&s.vips[&vip].backends)).unwrap();
        // Slots whose backend (by address) differs between the two tables.
        let moved = before
            .slots()
            .iter()
            .zip(after.slots())
            .filter(|(x, y)| {
                before.members()[**x as usize].addr != after.members()[**y as usize].addr
            })
            .count() as u64;
        let writes_before = rec.slot_writes;
        let rep = r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
        assert_eq!(rep.slot_writes, moved, "{change}");
        assert_eq!(rec.slot_writes - writes_before, moved, "{change}");
        assert!(
            moved > 0 && moved < M as u64 / 2,
            "{change}: {moved} slots moved"
        );
    }
    let _ = table_before;
    // Nothing to do: nothing written, version unchanged.
    let v = r.version;
    assert!(
        r.apply(&mut rec, &s, &SecondChance::default())
            .unwrap()
            .is_empty()
    );
    assert_eq!(r.version, v);
}

#[test]
fn removed_backends_are_uninstalled_after_their_slots_move_and_ids_get_new_generations() {
    let (mut r, mut rec, mut s, vip) = setup();
    r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    let id1 = r.vips()[&vip].backends[&b(1)].id;
    let g1 = r.vips()[&vip].backends[&b(1)].generation;
    s.apply(&Change::RemoveBackend { vip, backend: b(1) }, &CAP)
        .unwrap();
    let rep = r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    assert_eq!(rep.backends_removed, 1);
    assert_eq!(rec.backends[&id1].flags, 0);
    assert!(!rec.rings[&0].contains(&RingSlot::new(id1)));
    // Fill every other id, so the next backend must reuse id1: a new generation.
    for i in 10..(10 + 64 - 3) {
        s.apply(
            &Change::AddBackend {
                vip,
                backend: b(i),
                weight: 1,
                state: BackendState::Active,
            },
            &CAP,
        )
        .unwrap();
    }
    r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    let reused = r.vips()[&vip]
        .backends
        .values()
        .find(|x| x.id == id1)
        .unwrap();
    assert_ne!(reused.generation, g1);
}

#[test]
fn vips_come_and_go_in_a_safe_order() {
    let (mut r, mut rec, mut s, vip) = setup();
    r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    let vip2: Vip = "[2001:db8::10]:443/tcp".parse().unwrap();
    s.apply(
        &Change::AddVip {
            vip: vip2,
            gue: true,
        },
        &CAP,
    )
    .unwrap();
    s.apply(
        &Change::AddBackend {
            vip: vip2,
            backend: b(1),
            weight: 1,
            state: BackendState::Active,
        },
        &CAP,
    )
    .unwrap();
    r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    assert_eq!(rec.vips[&vip2.key()].flags, VIP_F_GUE);
    // The same address in two VIPs gets two ids (per-VIP stats, per-VIP removal).
    assert_ne!(
        r.vips()[&vip].backends[&b(1)].id,
        r.vips()[&vip2].backends[&b(1)].id
    );
    s.apply(&Change::RemoveVip { vip }, &CAP).unwrap();
    let rep = r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    assert_eq!((rep.vips_removed, rep.backends_removed), (1, 4));
    assert!(!rec.vips.contains_key(&vip.key()));
    // Its ring is reused by the next VIP, which writes only the slots that differ.
    let vip3: Vip = "192.0.2.11:80/tcp".parse().unwrap();
    s.apply(
        &Change::AddVip {
            vip: vip3,
            gue: false,
        },
        &CAP,
    )
    .unwrap();
    r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    assert!(
        rec.rings[&r.vips()[&vip3].id]
            .iter()
            .all(|x| x.backend_id() == NO_BACKEND)
    );
}

#[test]
fn an_impossible_state_is_refused_before_any_write() {
    let (mut r, mut rec, s, _) = setup();
    r.apply(&mut rec, &s, &SecondChance::default()).unwrap();
    let mut big = s.clone();
    let cap = Capacity {
        vips: 10,
        backends: 100,
        backends_per_vip: 100,
    };
    for i in 0..5 {
        let v: Vip = format!("192.0.2.{}:80/tcp", 20 + i).parse().unwrap();
        big.apply(&Change::AddVip { vip: v, gue: false }, &cap)
            .unwrap();
    }
    let writes = rec.slot_writes;
    let e = r
        .apply(&mut rec, &big, &SecondChance::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("more VIPs"), "{e}");
    assert_eq!(rec.slot_writes, writes);
    assert_eq!(r.installed_state(), s);
}

mod partial;
