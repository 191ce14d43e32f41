//! Makes the dataplane's maps equal to a desired state with the fewest writes, in an order that
//! keeps every packet on a valid backend. This is where the write order across maps lives
//! (`Dataplane` keeps each map consistent on its own):
//!
//! 1. removed VIPs, and VIPs whose encapsulation changes (re-created), become unreachable
//!    first (VIP entry deleted);
//! 2. new backends are installed (BACKENDS entry, fresh generation) before any slot names them;
//! 3. only the Maglev slots whose backend or previous backend changed are rewritten
//!    (`second_chance`);
//! 4. a new VIP's entry is written only after its whole ring is;
//! 5. removed backends are uninstalled last, when no slot names them any more. Their ids are
//!    not reused within the same pass, and a reused id gets a new generation, so connection
//!    entries of its previous owner fall back to Maglev instead of following the id.
//!
//! The capacity checks and every Maglev table come before the first write, so a state that
//! does not fit or cannot be built is refused (`state::Refused`) with nothing written. Other
//! errors (a failed map write, a full VIP index, running out of free backend ids because a pass
//! cannot reuse the ids it frees) can stop a pass midway; the agent then reports a map-write
//! fault. The reconciler records only the writes that succeeded (a VIP is `reachable` only once
//! its entry is written, a ring half-written is unknown, a backend to uninstall stays pending
//! until its entry is cleared), so the next pass writes exactly what is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use anyhow::{Context, Result, anyhow, bail};
use lb_common::{
    BACKEND_F_DRAINING, BACKEND_F_VALID, Backend, NO_BACKEND, RingSlot, VIP_F_GUE, VipMeta,
    maglev::{MaglevMember, MaglevTable},
    v6_words,
};

use crate::state::{BackendSpec, BackendState, DesiredState, Vip, VipSpec, conflict};

mod adopt;
pub mod second_chance;
mod writer;
pub use second_chance::SecondChance;
pub use writer::MapWriter;

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
    /// What the ring holds (backend and previous backend per slot) as this agent last wrote or
    /// read it; None while unknown, so the next pass writes every slot. A new VIP on a reused
    /// ring starts with its previous VIP's slots and rewrites only those that differ.
    pub slots: Option<Vec<RingSlot>>,
    /// The Maglev members the ring was built from (None: unknown, e.g. adopted maps).
    pub members: Option<Vec<MaglevMember>>,
    /// The second-chance input its previous backends were computed from (None: none).
    pub chance: Option<second_chance::Input>,
    /// Its VIP entry is in the map: packets reach it, and only then may it be announced. A new
    /// VIP whose pass stopped before the entry was written is false until a pass writes it.
    pub reachable: bool,
}

impl InstalledVip {
    /// Slots per backend id in the current ring.
    pub fn slot_counts(&self) -> BTreeMap<u32, u32> {
        let mut counts = BTreeMap::new();
        for id in self.slots.iter().flatten().map(RingSlot::backend_id) {
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
    free_rings: BTreeMap<u32, Option<Vec<RingSlot>>>,
    /// Backend ids in use; allocation continues round-robin after `next_backend` so an id
    /// is reused as late as possible.
    used_backends: BTreeSet<u32>,
    next_backend: u32,
    /// Backend ids no slot names any more whose entries are still to be cleared (a pass that
    /// stopped before clearing them); they stay in `used_backends` until they are.
    pending_clear: BTreeSet<u32>,
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

/// A VIP's ring to write: its table, and the previous backends per slot (second chance).
struct Table {
    members: Vec<MaglevMember>,
    table: MaglevTable,
    input: Option<second_chance::Input>,
    owners: Option<Vec<Option<(Ipv6Addr, u64)>>>,
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
            pending_clear: BTreeSet::new(),
            version: 0,
        }
    }

    pub fn vips(&self) -> &BTreeMap<Vip, InstalledVip> {
        &self.vips
    }

    /// Whether `vip`'s entry is in the map (only such a VIP may be announced).
    pub fn is_reachable(&self, vip: &Vip) -> bool {
        self.vips.get(vip).is_some_and(|v| v.reachable)
    }

    /// The state the dataplane serves now: the VIPs whose entry is written.
    pub fn installed_state(&self) -> DesiredState {
        DesiredState {
            vips: self
                .vips
                .iter()
                .filter(|(_, v)| v.reachable)
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

    /// Installs backend `addr` of `vip` under a fresh id; the id goes back if a write fails.
    fn install_backend(
        &mut self,
        maps: &mut impl MapWriter,
        vip: &Vip,
        addr: Ipv6Addr,
        spec: BackendSpec,
    ) -> Result<()> {
        let vip_id = self.vips[vip].id;
        let id = self.alloc_backend()?;
        let written = (|| {
            let generation = maps.backend_generation(id)?.wrapping_add(1);
            let b = InstalledBackend {
                id,
                generation,
                spec,
            };
            maps.reset_backend_counter(id)?;
            maps.set_backend(id, &backend_entry(addr, vip_id, &b))
                .with_context(|| format!("installing backend {addr} of {vip}"))?;
            Ok(b)
        })();
        match written {
            Ok(b) => {
                self.vips.get_mut(vip).unwrap().backends.insert(addr, b);
                Ok(())
            }
            Err(e) => {
                // Nothing names the id: it is free again (its entry, if the write landed after
                // all, is invalid or rewritten with a new generation on its next use).
                self.used_backends.remove(&id);
                Err(e)
            }
        }
    }

    /// Clears the pending backend entries; each one leaves `used_backends` once cleared.
    fn clear_pending(&mut self, maps: &mut impl MapWriter, report: &mut ApplyReport) -> Result<()> {
        while let Some(&id) = self.pending_clear.first() {
            maps.clear_backend(id)
                .with_context(|| format!("uninstalling backend id {id}"))?;
            self.pending_clear.remove(&id);
            self.used_backends.remove(&id);
            report.backends_removed += 1;
        }
        Ok(())
    }

    /// Makes the maps hold `desired`, with the previous backends `chance` gives. On an error,
    /// what was written stays recorded (and only that), so the next pass completes the work.
    pub fn apply(
        &mut self,
        maps: &mut impl MapWriter,
        desired: &DesiredState,
        chance: &SecondChance,
    ) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let result = self.apply_pass(maps, desired, chance, &mut report);
        // A failed pass counts what it wrote too (a retry that writes nothing bumps nothing).
        if !report.is_empty() {
            self.version += 1;
        }
        result.map(|()| report)
    }

    fn apply_pass(
        &mut self,
        maps: &mut impl MapWriter,
        desired: &DesiredState,
        chance: &SecondChance,
        report: &mut ApplyReport,
    ) -> Result<()> {
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
        let mut tables: BTreeMap<Vip, Table> = BTreeMap::new();
        for (vip, spec) in &desired.vips {
            let members = members(&spec.backends);
            let input = chance.input(vip);
            let unchanged = self.vips.get(vip).is_some_and(|i| {
                i.gue == spec.gue
                    && i.members.as_ref() == Some(&members)
                    && i.chance == input
                    && i.slots.is_some()
            });
            if !unchanged {
                let table = MaglevTable::build(self.ring_size, self.seed, &members)
                    .map_err(|e| conflict(format!("VIP {vip}: {e}")))?;
                let owners = input
                    .as_ref()
                    .map(|i| second_chance::previous_owners(self.ring_size, self.seed, i));
                tables.insert(
                    *vip,
                    Table {
                        members,
                        table,
                        input,
                        owners,
                    },
                );
            }
        }

        // Backends an earlier pass could not clear: no slot names them.
        self.clear_pending(maps, report)?;
        // 1. VIPs that go (or change encapsulation, which re-creates them).
        let leaving: Vec<Vip> = self
            .vips
            .iter()
            .filter(|(v, i)| desired.vips.get(v).is_none_or(|d| d.gue != i.gue))
            .map(|(v, _)| *v)
            .collect();
        for vip in leaving {
            // A VIP whose entry was never written has none to remove.
            if self.vips[&vip].reachable {
                maps.remove_vip(vip.key())
                    .with_context(|| format!("removing VIP {vip}"))?;
                report.vips_removed += 1;
            }
            let old = self.vips.remove(&vip).expect("listed above");
            self.pending_clear
                .extend(old.backends.values().map(|b| b.id));
            self.free_rings.insert(old.id, old.slots);
        }

        for (vip, spec) in &desired.vips {
            if !self.vips.contains_key(vip) {
                let (&id, _) = self
                    .free_rings
                    .iter()
                    .next()
                    .ok_or_else(|| anyhow!("no free VIP id"))?;
                maps.reset_vip_counter(id)?;
                // The ring keeps what it held, so only differing slots get written; the VIP
                // entry still waits until all of them are right.
                let slots = self.free_rings.remove(&id).expect("just found");
                self.vips.insert(
                    *vip,
                    InstalledVip {
                        id,
                        gue: spec.gue,
                        backends: BTreeMap::new(),
                        slots,
                        members: None,
                        chance: None,
                        reachable: false,
                    },
                );
            }
            // 2. Backends: install new ones, update changed ones.
            for (addr, bspec) in &spec.backends {
                let vip_id = self.vips[vip].id;
                match self.vips[vip].backends.get(addr).copied() {
                    None => {
                        self.install_backend(maps, vip, *addr, *bspec)?;
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
            if let Some(t) = tables.remove(vip) {
                let ids: Vec<u32> = t
                    .table
                    .members()
                    .iter()
                    .map(|mm| installed.backends[&mm.addr].id)
                    .collect();
                let ids = if ids.is_empty() {
                    vec![NO_BACKEND; self.ring_size as usize]
                } else {
                    t.table.slots_as_ids(&ids)
                };
                // A previous backend must still be one of the VIP's backends: one leaving now
                // is uninstalled below, and its id may serve another backend later.
                let id_of = |addr: &Ipv6Addr| {
                    let b = installed.backends.get(addr)?;
                    spec.backends.contains_key(addr).then_some(b.id)
                };
                let new_slots = second_chance::ring(&ids, t.owners.as_deref(), id_of, chance);
                let writes: Vec<(u32, RingSlot)> = match &installed.slots {
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
                if !writes.is_empty()
                    && let Err(e) = maps.write_slots(installed.id, &writes)
                {
                    // Some slots may be written: the ring is unknown, so the next pass writes
                    // all of it.
                    installed.slots = None;
                    installed.members = None;
                    installed.chance = None;
                    return Err(e.context(format!("writing the ring of {vip}")));
                }
                report.slot_writes += writes.len() as u64;
                installed.slots = Some(new_slots);
                installed.members = Some(t.members);
                installed.chance = t.input;
            }
            // 4. A new VIP becomes reachable once its ring is complete.
            if !installed.reachable {
                let meta = VipMeta {
                    id: installed.id,
                    ring: installed.id,
                    flags: if spec.gue { VIP_F_GUE } else { 0 },
                    _pad: 0,
                };
                maps.set_vip(vip.key(), meta)
                    .with_context(|| format!("adding VIP {vip}"))?;
                installed.reachable = true;
                report.vips_added += 1;
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
                self.pending_clear.insert(b.id);
            }
        }
        // Ids freed in this pass are reused only by a later one (`used_backends` holds them
        // until here).
        self.clear_pending(maps, report)
    }
}

#[cfg(test)]
mod tests;
