//! A pass that fails at any one of its writes, and the pass after it.

use super::*;
use lb_common::words_v6;
use std::collections::BTreeSet;

/// A `Recorder` whose `fail_at`-th call (1-based, reads included) fails; a failing ring write
/// lands half of its slots first, as the real one-slot-at-a-time writes can.
struct FailOnce {
    rec: Recorder,
    calls: u32,
    fail_at: u32,
}

impl FailOnce {
    fn fails(&mut self) -> bool {
        self.calls += 1;
        self.calls == self.fail_at
    }
}

impl MapWriter for FailOnce {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        if self.fails() {
            bail!("injected")
        }
        self.rec.set_backend(id, backend)
    }
    fn clear_backend(&mut self, id: u32) -> Result<()> {
        if self.fails() {
            bail!("injected")
        }
        self.rec.clear_backend(id)
    }
    fn backend_generation(&mut self, id: u32) -> Result<u32> {
        if self.fails() {
            bail!("injected")
        }
        self.rec.backend_generation(id)
    }
    fn write_slots(&mut self, ring: u32, slots: &[(u32, RingSlot)]) -> Result<()> {
        if self.fails() {
            self.rec.write_slots(ring, &slots[..slots.len() / 2])?;
            bail!("injected")
        }
        self.rec.write_slots(ring, slots)
    }
    fn set_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()> {
        if self.fails() {
            bail!("injected: the VIP index has no free slot")
        }
        self.rec.set_vip(key, meta)
    }
    fn remove_vip(&mut self, key: VipKey) -> Result<()> {
        if self.fails() {
            bail!("injected")
        }
        assert!(
            self.rec.vips.remove(&key).is_some(),
            "removing a VIP entry that was never written"
        );
        Ok(())
    }
    fn reset_vip_counter(&mut self, id: u32) -> Result<()> {
        if self.fails() {
            bail!("injected")
        }
        self.rec.reset_vip_counter(id)
    }
    fn reset_backend_counter(&mut self, id: u32) -> Result<()> {
        if self.fails() {
            bail!("injected")
        }
        self.rec.reset_backend_counter(id)
    }
}

/// What the maps serve, by address: VIP -> (encapsulation, backends with weight and flags,
/// the ring as backend addresses). Ids and generations may differ between two histories.
type Served = BTreeMap<Vip, (u32, BTreeMap<Ipv6Addr, (u32, u32)>, Vec<Option<Ipv6Addr>>)>;

fn served(rec: &Recorder) -> Served {
    let mut out = BTreeMap::new();
    for (key, meta) in &rec.vips {
        let backends = rec
            .backends
            .values()
            .filter(|b| b.flags & BACKEND_F_VALID != 0 && b.vip == meta.id)
            .map(|b| (words_v6(&b.addr), (b.weight, b.flags)))
            .collect();
        let ring = rec.rings[&meta.ring]
            .iter()
            .map(|s| s.backend_id())
            .map(|id| (id != NO_BACKEND).then(|| words_v6(&rec.backends[&id].addr)))
            .collect();
        out.insert(Vip::from_key(key).unwrap(), (meta.flags, backends, ring));
    }
    out
}

/// The reconciler's record against the maps: a VIP is reachable exactly when its entry is
/// written, a known ring is what the map holds, and every valid backend entry is recorded
/// (under its VIP, or pending its clearing) with what was written.
fn assert_recorded_matches(r: &Reconciler, rec: &Recorder, k: u32) {
    for (vip, v) in r.vips() {
        assert_eq!(
            rec.vips.contains_key(&vip.key()),
            v.reachable,
            "fail at {k}: {vip} recorded reachable={} against the map",
            v.reachable
        );
        if let Some(slots) = &v.slots {
            let m = rec.rings.get(&v.id).cloned();
            let m = m.unwrap_or_else(|| vec![RingSlot::default(); M as usize]);
            assert!(
                &m == slots,
                "fail at {k}: ring of {vip} differs from its record"
            );
        }
        for (addr, b) in &v.backends {
            let e = rec.backends[&b.id];
            assert_eq!(
                e,
                backend_entry(*addr, v.id, b),
                "fail at {k}: backend {addr} of {vip}"
            );
        }
    }
    for key in rec.vips.keys().filter(|k| k.proto != 0) {
        let vip = Vip::from_key(key).unwrap();
        assert!(
            r.is_reachable(&vip),
            "fail at {k}: {vip} in the map, not recorded"
        );
    }
    for (id, e) in &rec.backends {
        if e.flags & BACKEND_F_VALID != 0 {
            let recorded = r
                .vips()
                .values()
                .any(|v| v.backends.values().any(|b| b.id == *id));
            assert!(
                recorded || r.pending_clear.contains(id),
                "fail at {k}: backend id {id} is in the map but nowhere in the record"
            );
        }
    }
}

/// A pass that adds, removes and re-creates VIPs and adds, updates and removes backends.
fn before_and_after() -> (DesiredState, DesiredState) {
    let cap = Capacity {
        vips: 4,
        backends: 64,
        backends_per_vip: 100,
    };
    let v = |s: &str| -> Vip { s.parse().unwrap() };
    let add = |s: &mut DesiredState, vip: Vip, i: u16, weight: u32| {
        s.apply(
            &Change::AddBackend {
                vip,
                backend: b(i),
                weight,
                state: BackendState::Active,
            },
            &cap,
        )
        .unwrap();
    };
    let mut before = DesiredState::default();
    for (vip, gue) in [("192.0.2.1:80/tcp", false), ("192.0.2.2:80/tcp", false)] {
        before
            .apply(&Change::AddVip { vip: v(vip), gue }, &cap)
            .unwrap();
    }
    for i in 1..=3 {
        add(&mut before, v("192.0.2.1:80/tcp"), i, 1);
        add(&mut before, v("192.0.2.2:80/tcp"), i + 10, 1);
    }
    let mut after = before.clone();
    after
        .apply(
            &Change::RemoveVip {
                vip: v("192.0.2.2:80/tcp"),
            },
            &cap,
        )
        .unwrap();
    after
        .apply(
            &Change::RemoveBackend {
                vip: v("192.0.2.1:80/tcp"),
                backend: b(1),
            },
            &cap,
        )
        .unwrap();
    after
        .apply(
            &Change::SetWeight {
                vip: v("192.0.2.1:80/tcp"),
                backend: b(2),
                weight: 3,
            },
            &cap,
        )
        .unwrap();
    add(&mut after, v("192.0.2.1:80/tcp"), 4, 1);
    for vip in ["192.0.2.3:80/tcp", "[2001:db8::3]:443/tcp"] {
        after
            .apply(
                &Change::AddVip {
                    vip: v(vip),
                    gue: true,
                },
                &cap,
            )
            .unwrap();
        add(&mut after, v(vip), 20, 1);
        add(&mut after, v(vip), 21, 2);
    }
    (before, after)
}

#[test]
fn a_pass_that_fails_at_any_write_records_only_what_it_wrote_and_the_next_one_converges() {
    let (before, after) = before_and_after();
    let clean = {
        let mut r = Reconciler::new(M, 42, 4, 64);
        let mut rec = Recorder {
            ring_size: M,
            ..Default::default()
        };
        r.apply(&mut rec, &before, &SecondChance::default())
            .unwrap();
        r.apply(&mut rec, &after, &SecondChance::default()).unwrap();
        served(&rec)
    };
    // Count the pass's calls with a writer that never fails.
    let calls = {
        let mut r = Reconciler::new(M, 42, 4, 64);
        let mut w = FailOnce {
            rec: Recorder {
                ring_size: M,
                ..Default::default()
            },
            calls: 0,
            fail_at: 0,
        };
        r.apply(&mut w, &before, &SecondChance::default()).unwrap();
        w.calls = 0;
        r.apply(&mut w, &after, &SecondChance::default()).unwrap();
        w.calls
    };
    assert!(calls > 20, "the pass makes {calls} calls");
    for k in 1..=calls {
        let mut r = Reconciler::new(M, 42, 4, 64);
        let mut w = FailOnce {
            rec: Recorder {
                ring_size: M,
                ..Default::default()
            },
            calls: 0,
            fail_at: 0,
        };
        r.apply(&mut w, &before, &SecondChance::default()).unwrap();
        w.calls = 0;
        w.fail_at = k;
        let e = r
            .apply(&mut w, &after, &SecondChance::default())
            .unwrap_err();
        assert!(format!("{e:#}").contains("injected"), "fail at {k}: {e:#}");
        assert_recorded_matches(&r, &w.rec, k);
        // Only VIPs whose entry is written count as installed (what the agent may announce).
        let installed: BTreeSet<Vip> = r.installed_state().vips.keys().copied().collect();
        let in_map: BTreeSet<Vip> = w.rec.vips.keys().filter_map(Vip::from_key).collect();
        assert_eq!(installed, in_map, "fail at {k}");
        // A healthy writer then completes the work: the maps a clean install gives.
        w.fail_at = 0;
        r.apply(&mut w, &after, &SecondChance::default()).unwrap();
        assert_recorded_matches(&r, &w.rec, k);
        assert!(
            served(&w.rec) == clean,
            "fail at {k}: the next pass did not converge"
        );
        assert_eq!(r.installed_state(), after, "fail at {k}");
        // And then there is nothing left to do.
        assert!(
            r.apply(&mut w, &after, &SecondChance::default())
                .unwrap()
                .is_empty(),
            "fail at {k}"
        );
    }
}
