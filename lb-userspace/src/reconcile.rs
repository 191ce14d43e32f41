//! Makes the dataplane's maps equal to a desired state with the fewest writes, in an order that
//! keeps every packet on a valid backend:
//!
//! 1. removed VIPs become unreachable first (VIP entry deleted);
//! 2. new backends are installed (BACKENDS entry, fresh generation) before any slot names them;
//! 3. only the Maglev slots whose backend changed are rewritten;
//! 4. a new VIP's entry is written only after its whole ring is;
//! 5. removed backends are uninstalled last, when no slot names them any more. Their ids are
//!    not reused within the same pass, and a reused id gets a new generation, so connection
//!    entries of its previous owner fall back to Maglev instead of following the id.
//!
//! Every Maglev table is built before the first write, so a change that cannot be built is
//! refused with nothing written.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use anyhow::{Context, Result, anyhow, bail};
use lb_common::{
    BACKEND_F_DRAINING, BACKEND_F_VALID, Backend, NO_BACKEND, VIP_F_GUE, VipKey, VipMeta,
    maglev::{MaglevMember, MaglevTable},
    v6_words, words_v6,
};

use crate::dataplane::Dataplane;
use crate::state::{BackendSpec, BackendState, DesiredState, Vip, VipSpec, conflict};

/// The map writes the reconciler needs; `Dataplane` implements it, tests record it.
pub trait MapWriter {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn clear_backend(&mut self, id: u32) -> Result<()>;
    fn backend_generation(&mut self, id: u32) -> Result<u32>;
    fn write_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<()>;
    fn set_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()>;
    fn remove_vip(&mut self, key: VipKey) -> Result<()>;
    fn reset_vip_counter(&mut self, id: u32) -> Result<()>;
    fn reset_backend_counter(&mut self, id: u32) -> Result<()>;
}

impl MapWriter for Dataplane {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        Dataplane::set_backend(self, id, backend)
    }
    fn clear_backend(&mut self, id: u32) -> Result<()> {
        Dataplane::clear_backend(self, id)
    }
    fn backend_generation(&mut self, id: u32) -> Result<u32> {
        Dataplane::backend_generation(self, id)
    }
    fn write_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<()> {
        self.write_ring_slots(ring, slots.iter().copied())
    }
    fn set_vip(&mut self, key: VipKey, meta: VipMeta) -> Result<()> {
        Dataplane::set_vip(self, key, meta)
    }
    fn remove_vip(&mut self, key: VipKey) -> Result<()> {
        Dataplane::remove_vip(self, key)
    }
    fn reset_vip_counter(&mut self, id: u32) -> Result<()> {
        Dataplane::reset_vip_counter(self, id)
    }
    fn reset_backend_counter(&mut self, id: u32) -> Result<()> {
        Dataplane::reset_backend_counter(self, id)
    }
}

/// A backend as installed: its dataplane id and what was written for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledBackend {
    pub id: u32,
    pub generation: u32,
    pub spec: BackendSpec,
}

#[derive(Clone, Debug)]
pub struct InstalledVip {
    /// VIP id: its counters' index and its ring.
    pub id: u32,
    pub gue: bool,
    pub backends: BTreeMap<Ipv6Addr, InstalledBackend>,
    /// The ring as written (backend id per slot); None until the whole ring has been written.
    pub slots: Option<Vec<u32>>,
    /// The Maglev members the ring was built from (None: unknown, e.g. adopted maps).
    pub members: Option<Vec<MaglevMember>>,
}

impl InstalledVip {
    /// Slots per backend id in the current ring.
    pub fn slot_counts(&self) -> BTreeMap<u32, u32> {
        let mut counts = BTreeMap::new();
        for &id in self.slots.iter().flatten() {
            if id != NO_BACKEND {
                *counts.entry(id).or_default() += 1;
            }
        }
        counts
    }
}

/// What one reconciliation wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApplyReport {
    pub slot_writes: u64,
    pub backends_installed: u32,
    pub backends_updated: u32,
    pub backends_removed: u32,
    pub vips_added: u32,
    pub vips_removed: u32,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

pub struct Reconciler {
    ring_size: u32,
    seed: u64,
    max_vips: u32,
    max_backends: u32,
    vips: BTreeMap<Vip, InstalledVip>,
    /// Rings whose contents are known (ring id -> slots), for VIP ids not in use.
    free_rings: BTreeMap<u32, Option<Vec<u32>>>,
    /// Backend ids in use; allocation continues round-robin after `next_backend` so an id
    /// is reused as late as possible.
    used_backends: BTreeSet<u32>,
    next_backend: u32,
    /// Bumped by every reconciliation that wrote something.
    pub version: u64,
}

fn flags(spec: &BackendSpec) -> u32 {
    BACKEND_F_VALID
        | match spec.state {
            BackendState::Active => 0,
            BackendState::Draining => BACKEND_F_DRAINING,
        }
}

fn backend_entry(addr: Ipv6Addr, vip_id: u32, b: &InstalledBackend) -> Backend {
    Backend {
        addr: v6_words(addr),
        flags: flags(&b.spec),
        generation: b.generation,
        vip: vip_id,
        weight: b.spec.weight,
    }
}

/// The Maglev members of a VIP: its active backends with their weights.
pub(crate) fn members(spec: &BTreeMap<Ipv6Addr, BackendSpec>) -> Vec<MaglevMember> {
    spec.iter()
        .filter(|(_, b)| b.state == BackendState::Active)
        .map(|(addr, b)| MaglevMember {
            addr: *addr,
            weight: b.weight,
        })
        .collect()
}

impl Reconciler {
    pub fn new(ring_size: u32, seed: u64, max_vips: u32, max_backends: u32) -> Self {
        Self {
            ring_size,
            seed,
            max_vips,
            max_backends,
            vips: BTreeMap::new(),
            free_rings: (0..max_vips).map(|r| (r, None)).collect(),
            used_backends: BTreeSet::new(),
            next_backend: 0,
            version: 0,
        }
    }

    /// Rebuilds the installed state from maps a previous agent left pinned.
    pub fn adopt(dp: &mut Dataplane, seed: u64) -> Result<Self> {
        let limits = dp.limits();
        let max_vips = limits.max_vips.min(limits.max_rings);
        let mut r = Self::new(limits.ring_size, seed, max_vips, limits.max_backends);
        let backends = dp.read_backends()?;
        for (key, meta) in dp.read_vips()? {
            let vip = Vip::from_key(&key)
                .ok_or_else(|| anyhow!("pinned VIP entry with protocol {}", key.proto))?;
            if meta.id != meta.ring || meta.id >= max_vips {
                bail!(
                    "pinned VIP {vip} has id {} / ring {}, which this agent does not use",
                    meta.id,
                    meta.ring
                );
            }
            let slots = dp.read_ring(meta.ring)?;
            let mut installed = BTreeMap::new();
            for (id, b) in backends.iter().filter(|(_, b)| b.vip == meta.id) {
                installed.insert(
                    words_v6(&b.addr),
                    InstalledBackend {
                        id: *id,
                        generation: b.generation,
                        spec: BackendSpec {
                            weight: b.weight,
                            state: if b.flags & BACKEND_F_DRAINING != 0 {
                                BackendState::Draining
                            } else {
                                BackendState::Active
                            },
                        },
                    },
                );
                r.used_backends.insert(*id);
            }
            r.free_rings.remove(&meta.ring);
            r.vips.insert(
                vip,
                InstalledVip {
                    id: meta.id,
                    gue: meta.flags & VIP_F_GUE != 0,
                    backends: installed,
                    slots: Some(slots),
                    // Unknown: the first apply rebuilds the table and compares slot by slot.
                    members: None,
                },
            );
        }
        // Backends of no VIP (an agent stopped mid-change): uninstall on the first apply.
        let orphans: Vec<u32> = backends
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !r.used_backends.contains(id))
            .collect();
        for id in orphans {
            dp.clear_backend(id)?;
        }
        r.next_backend = r.used_backends.last().map_or(0, |l| l + 1) % r.max_backends.max(1);
        Ok(r)
    }

    pub fn vips(&self) -> &BTreeMap<Vip, InstalledVip> {
        &self.vips
    }

    /// The state the dataplane holds now.
    pub fn installed_state(&self) -> DesiredState {
        DesiredState {
            vips: self
                .vips
                .iter()
                .map(|(vip, v)| {
                    (
                        *vip,
                        VipSpec {
                            gue: v.gue,
                            backends: v.backends.iter().map(|(a, b)| (*a, b.spec)).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn alloc_backend(&mut self) -> Result<u32> {
        for i in 0..self.max_backends {
            let id = (self.next_backend + i) % self.max_backends;
            if !self.used_backends.contains(&id) {
                self.used_backends.insert(id);
                self.next_backend = (id + 1) % self.max_backends;
                return Ok(id);
            }
        }
        bail!("all {} backend ids are in use", self.max_backends)
    }

    /// Makes the maps hold `desired`.
    pub fn apply(
        &mut self,
        maps: &mut impl MapWriter,
        desired: &DesiredState,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        // Capacity and Maglev tables first: a refusal writes nothing.
        if desired.vips.len() > self.max_vips as usize {
            return Err(conflict(format!(
                "the desired state has more VIPs than the {} the dataplane holds",
                self.max_vips
            )));
        }
        let desired_backends = desired.backend_count();
        if desired_backends > self.max_backends as usize {
            return Err(conflict(format!(
                "the desired state has {desired_backends} backends; the dataplane holds {}",
                self.max_backends
            )));
        }
        let mut tables: BTreeMap<Vip, (Vec<MaglevMember>, MaglevTable)> = BTreeMap::new();
        for (vip, spec) in &desired.vips {
            let m = members(&spec.backends);
            let unchanged = self.vips.get(vip).is_some_and(|i| {
                i.gue == spec.gue && i.members.as_ref() == Some(&m) && i.slots.is_some()
            });
            if !unchanged {
                let table = MaglevTable::build(self.ring_size, self.seed, &m)
                    .map_err(|e| conflict(format!("VIP {vip}: {e}")))?;
                tables.insert(*vip, (m, table));
            }
        }

        let mut to_clear: Vec<u32> = Vec::new();
        // 1. VIPs that go (or change encapsulation, which re-creates them).
        let leaving: Vec<Vip> = self
            .vips
            .iter()
            .filter(|(v, i)| desired.vips.get(v).is_none_or(|d| d.gue != i.gue))
            .map(|(v, _)| *v)
            .collect();
        for vip in leaving {
            maps.remove_vip(vip.key())
                .with_context(|| format!("removing VIP {vip}"))?;
            let old = self.vips.remove(&vip).expect("listed above");
            to_clear.extend(old.backends.values().map(|b| b.id));
            self.free_rings.insert(old.id, old.slots);
            report.vips_removed += 1;
        }

        for (vip, spec) in &desired.vips {
            let is_new = !self.vips.contains_key(vip);
            if is_new {
                let (&id, _) = self
                    .free_rings
                    .iter()
                    .next()
                    .ok_or_else(|| anyhow!("no free VIP id"))?;
                // The ring keeps what it held, so only differing slots get written; the VIP
                // entry still waits until all of them are right.
                let slots = self.free_rings.remove(&id).expect("just found");
                maps.reset_vip_counter(id)?;
                self.vips.insert(
                    *vip,
                    InstalledVip {
                        id,
                        gue: spec.gue,
                        backends: BTreeMap::new(),
                        slots,
                        members: None,
                    },
                );
                report.vips_added += 1;
            }
            // 2. Backends: install new ones, update changed ones.
            for (addr, bspec) in &spec.backends {
                let vip_id = self.vips[vip].id;
                match self.vips[vip].backends.get(addr).copied() {
                    None => {
                        let id = self.alloc_backend()?;
                        let generation = maps.backend_generation(id)?.wrapping_add(1);
                        let b = InstalledBackend {
                            id,
                            generation,
                            spec: *bspec,
                        };
                        maps.reset_backend_counter(id)?;
                        maps.set_backend(id, &backend_entry(*addr, vip_id, &b))
                            .with_context(|| format!("installing backend {addr} of {vip}"))?;
                        self.vips.get_mut(vip).unwrap().backends.insert(*addr, b);
                        report.backends_installed += 1;
                    }
                    Some(cur) if cur.spec != *bspec => {
                        let b = InstalledBackend {
                            spec: *bspec,
                            ..cur
                        };
                        maps.set_backend(cur.id, &backend_entry(*addr, vip_id, &b))?;
                        self.vips.get_mut(vip).unwrap().backends.insert(*addr, b);
                        report.backends_updated += 1;
                    }
                    Some(_) => {}
                }
            }
            // 3. The slots that differ.
            let installed = self.vips.get_mut(vip).unwrap();
            if let Some((m, table)) = tables.remove(vip) {
                let ids: Vec<u32> = table
                    .members()
                    .iter()
                    .map(|mm| installed.backends[&mm.addr].id)
                    .collect();
                let new_slots = if ids.is_empty() {
                    vec![NO_BACKEND; self.ring_size as usize]
                } else {
                    table.slots_as_ids(&ids)
                };
                let writes: Vec<(u32, u32)> = match &installed.slots {
                    Some(old) => new_slots
                        .iter()
                        .zip(old)
                        .enumerate()
                        .filter(|(_, (n, o))| n != o)
                        .map(|(i, (n, _))| (i as u32, *n))
                        .collect(),
                    None => new_slots
                        .iter()
                        .enumerate()
                        .map(|(i, n)| (i as u32, *n))
                        .collect(),
                };
                if !writes.is_empty() {
                    maps.write_slots(installed.id, &writes)
                        .with_context(|| format!("writing the ring of {vip}"))?;
                }
                report.slot_writes += writes.len() as u64;
                installed.slots = Some(new_slots);
                installed.members = Some(m);
            }
            // 4. A new VIP becomes reachable once its ring is complete.
            if is_new {
                let meta = VipMeta {
                    id: installed.id,
                    ring: installed.id,
                    flags: if spec.gue { VIP_F_GUE } else { 0 },
                    _pad: 0,
                };
                maps.set_vip(vip.key(), meta)
                    .with_context(|| format!("adding VIP {vip}"))?;
            }
            // 5. Backends that left this VIP: no slot names them any more.
            let gone: Vec<Ipv6Addr> = installed
                .backends
                .keys()
                .filter(|a| !spec.backends.contains_key(a))
                .copied()
                .collect();
            for addr in gone {
                let b = installed.backends.remove(&addr).unwrap();
                to_clear.push(b.id);
            }
        }
        for id in &to_clear {
            maps.clear_backend(*id)?;
            report.backends_removed += 1;
        }
        for id in to_clear {
            self.used_backends.remove(&id);
        }
        if !report.is_empty() {
            self.version += 1;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Capacity, Change};
    use std::collections::HashMap;

    /// Records writes and checks, at every write, the invariants the XDP program relies on.
    #[derive(Default)]
    struct Recorder {
        backends: HashMap<u32, Backend>,
        rings: HashMap<u32, Vec<u32>>,
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
                for &id in ring {
                    assert!(
                        id == NO_BACKEND
                            || self
                                .backends
                                .get(&id)
                                .is_some_and(|b| b.flags & BACKEND_F_VALID != 0),
                        "a reachable slot names uninstalled backend {id}"
                    );
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
        fn write_slots(&mut self, ring: u32, slots: &[(u32, u32)]) -> Result<()> {
            let m = self.ring_size as usize;
            let r = self
                .rings
                .entry(ring)
                .or_insert_with(|| vec![NO_BACKEND; m]);
            for &(s, id) in slots {
                r[s as usize] = id;
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
        let rep = r.apply(&mut rec, &s).unwrap();
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
            let rep = r.apply(&mut rec, &s).unwrap();
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
        assert!(r.apply(&mut rec, &s).unwrap().is_empty());
        assert_eq!(r.version, v);
    }

    #[test]
    fn removed_backends_are_uninstalled_after_their_slots_move_and_ids_get_new_generations() {
        let (mut r, mut rec, mut s, vip) = setup();
        r.apply(&mut rec, &s).unwrap();
        let id1 = r.vips()[&vip].backends[&b(1)].id;
        let g1 = r.vips()[&vip].backends[&b(1)].generation;
        s.apply(&Change::RemoveBackend { vip, backend: b(1) }, &CAP)
            .unwrap();
        let rep = r.apply(&mut rec, &s).unwrap();
        assert_eq!(rep.backends_removed, 1);
        assert_eq!(rec.backends[&id1].flags, 0);
        assert!(!rec.rings[&0].contains(&id1));
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
        r.apply(&mut rec, &s).unwrap();
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
        r.apply(&mut rec, &s).unwrap();
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
        r.apply(&mut rec, &s).unwrap();
        assert_eq!(rec.vips[&vip2.key()].flags, VIP_F_GUE);
        // The same address in two VIPs gets two ids (per-VIP stats, per-VIP removal).
        assert_ne!(
            r.vips()[&vip].backends[&b(1)].id,
            r.vips()[&vip2].backends[&b(1)].id
        );
        s.apply(&Change::RemoveVip { vip }, &CAP).unwrap();
        let rep = r.apply(&mut rec, &s).unwrap();
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
        r.apply(&mut rec, &s).unwrap();
        assert!(
            rec.rings[&r.vips()[&vip3].id]
                .iter()
                .all(|&x| x == NO_BACKEND)
        );
    }

    #[test]
    fn an_impossible_state_is_refused_before_any_write() {
        let (mut r, mut rec, s, _) = setup();
        r.apply(&mut rec, &s).unwrap();
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
        let e = r.apply(&mut rec, &big).unwrap_err().to_string();
        assert!(e.contains("more VIPs"), "{e}");
        assert_eq!(rec.slot_writes, writes);
        assert_eq!(r.installed_state(), s);
    }
}
