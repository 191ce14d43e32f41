//! The reconciler's seam to the maps: the writes it makes, implemented by `Dataplane` and by
//! the tests' recorders.

use anyhow::Result;
use lb_common::{Backend, RingSlot, VipKey, VipMeta};

use crate::dataplane::Dataplane;

/// The map writes the reconciler needs; `Dataplane` implements it, tests record it.
pub trait MapWriter {
    fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()>;
    fn clear_backend(&mut self, id: u32) -> Result<()>;
    fn backend_generation(&mut self, id: u32) -> Result<u32>;
    fn write_slots(&mut self, ring: u32, slots: &[(u32, RingSlot)]) -> Result<()>;
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
    fn write_slots(&mut self, ring: u32, slots: &[(u32, RingSlot)]) -> Result<()> {
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
