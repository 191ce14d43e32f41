//! Backends and the Maglev rings that name them.

use anyhow::{Context, Result, bail};
use lb_common::{BACKEND_F_VALID, Backend, RingSlot, names};

use super::handle::Dataplane;

impl Dataplane {
    /// Installs (or updates) backend `id`.
    /// Its way out (`EGRESS[id]`) is written first, so no packet meets it without one.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.check_backend_id(id)?;
        let e = self.egress_for(&backend.addr);
        self.write_egress(id, &e)?;
        self.backend_addrs.insert(id, backend.addr);
        self.array::<Backend>(names::BACKENDS)?
            .set(id, backend, 0)
            .with_context(|| format!("writing backend {id}"))
    }

    /// Every installed backend, by id.
    pub fn read_backends(&mut self) -> Result<Vec<(u32, Backend)>> {
        let n = self.limits.max_backends;
        let map = self.array::<Backend>(names::BACKENDS)?;
        let mut out = Vec::new();
        for id in 0..n {
            let b = map.get(&id, 0)?;
            if b.flags & lb_common::BACKEND_F_VALID != 0 {
                out.push((id, b));
            }
        }
        Ok(out)
    }

    /// The generation a backend id last had (kept when it is cleared, so reuse bumps it).
    pub fn backend_generation(&mut self, id: u32) -> Result<u32> {
        self.check_backend_id(id)?;
        Ok(self
            .array::<Backend>(names::BACKENDS)?
            .get(&id, 0)?
            .generation)
    }

    /// Uninstalls backend `id`: connection entries pointing at it fall back to Maglev. Its
    /// packet counts move to its VIP's retired counts (see `vip_counter`). Call only once no
    /// ring slot points at it.
    pub fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.check_backend_id(id)?;
        self.backend_addrs.remove(&id);
        let mut map = self.array::<Backend>(names::BACKENDS)?;
        let old = map.get(&id, 0)?;
        map.set(
            id,
            Backend {
                generation: old.generation,
                ..Default::default()
            },
            0,
        )
        .context("clearing backend")?;
        if old.flags & BACKEND_F_VALID != 0 {
            self.retire_backend_counter(id, old.vip)?;
        }
        Ok(())
    }

    fn check_backend_id(&self, id: u32) -> Result<()> {
        if id >= self.limits.max_backends {
            bail!(
                "backend id {id} is beyond max_backends {}",
                self.limits.max_backends
            );
        }
        Ok(())
    }

    pub(super) fn check_ring(&self, ring: u32) -> Result<()> {
        if ring >= self.limits.max_rings {
            bail!("ring {ring} is beyond max_rings {}", self.limits.max_rings);
        }
        Ok(())
    }

    /// Writes a whole ring of backend ids, without previous backends (`slots.len()` must be the
    /// ring size).
    pub fn write_ring(&mut self, ring: u32, slots: &[u32]) -> Result<()> {
        if slots.len() != self.limits.ring_size as usize {
            bail!(
                "a ring has {} slots, got {}",
                self.limits.ring_size,
                slots.len()
            );
        }
        self.write_ring_slots(
            ring,
            slots
                .iter()
                .enumerate()
                .map(|(i, &id)| (i as u32, RingSlot::new(id))),
        )
    }

    /// Writes the given `(slot, value)` pairs of one ring.
    pub fn write_ring_slots(
        &mut self,
        ring: u32,
        slots: impl IntoIterator<Item = (u32, RingSlot)>,
    ) -> Result<()> {
        self.check_ring(ring)?;
        let m = self.limits.ring_size;
        let mut rings = self.array::<RingSlot>(names::RINGS)?;
        for (slot, value) in slots {
            if slot >= m {
                bail!("slot {slot} is beyond the ring size {m}");
            }
            rings
                .set(ring * m + slot, value, 0)
                .context("writing a ring slot")?;
        }
        Ok(())
    }

    /// A whole ring, slot by slot.
    pub fn read_ring(&mut self, ring: u32) -> Result<Vec<RingSlot>> {
        self.check_ring(ring)?;
        let m = self.limits.ring_size;
        let rings = self.array::<RingSlot>(names::RINGS)?;
        (0..m)
            .map(|s| rings.get(&(ring * m + s), 0).context("reading a ring slot"))
            .collect()
    }

    /// A whole ring's backend ids (`NO_BACKEND` for an empty slot).
    pub fn read_ring_ids(&mut self, ring: u32) -> Result<Vec<u32>> {
        Ok(self
            .read_ring(ring)?
            .iter()
            .map(RingSlot::backend_id)
            .collect())
    }
}
