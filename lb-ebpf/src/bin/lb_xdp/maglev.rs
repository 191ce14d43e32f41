//! Maglev ring lookup and backend validation.

use lb_common::{BACKEND_F_VALID, Backend, NO_BACKEND, ring_slot};

use crate::maps::{BACKENDS, RINGS, ring_size};

/// The backend id in `ring`'s slot for `hash`, or None for an empty slot.
#[inline(always)]
pub fn ring_lookup(ring: u32, hash: u32) -> Option<u32> {
    let m = ring_size();
    let id = *RINGS.get(ring.wrapping_mul(m).wrapping_add(ring_slot(hash, m)))?;
    if id == NO_BACKEND { None } else { Some(id) }
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
