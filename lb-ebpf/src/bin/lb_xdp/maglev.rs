//! Maglev ring lookup and backend validation.

use lb_common::{BACKEND_F_VALID, Backend, RingSlot, decode_id, ring_slot};

use crate::maps::{BACKENDS, RINGS, ring_size};

/// `ring`'s slot for `hash` and its backend id, if it names one (None for an empty slot).
#[inline(always)]
pub fn ring_lookup(ring: u32, hash: u32) -> Option<(u32, &'static RingSlot)> {
    let m = ring_size();
    let slot = RINGS.get(ring.wrapping_mul(m).wrapping_add(ring_slot(hash, m)))?;
    if slot.backend == 0 {
        None
    } else {
        Some((decode_id(slot.backend), slot))
    }
}

/// An installed backend; a slot whose backend was removed reads as None.
#[inline(always)]
pub fn backend(id: u32) -> Option<&'static Backend> {
    let b = BACKENDS.get(id)?;
    if b.flags & BACKEND_F_VALID != 0 {
        Some(b)
    } else {
        None
    }
}
