//! Backends (`BACKENDS[id]`) and the Maglev rings (`RINGS`) whose slots name them.

pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_RING_SIZE: u32 = 65537;
pub const DEFAULT_MAX_RINGS: u32 = 64;

/// Ring slot value meaning "no backend" (an empty ring drops with `drop_no_backend`).
pub const NO_BACKEND: u32 = u32::MAX;

/// `Backend::flags`: the slot holds an installed backend. A connection-table entry pointing at
/// a slot without it is treated as a miss, so a removed backend never receives traffic.
pub const BACKEND_F_VALID: u32 = 1;
/// `Backend::flags`: draining (no ring slots; existing flows keep it). Informational for the
/// XDP program, which only follows ring slots and connection entries.
pub const BACKEND_F_DRAINING: u32 = 2;

/// One backend of one VIP (`BACKENDS[id]`): the tunnel endpoint and, for the agent that adopts
/// the maps after a restart, which VIP it serves and with what weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    pub flags: u32,
    /// Bumped every time the id is given to a new backend: a connection entry from the id's
    /// previous owner no longer matches and falls back to Maglev.
    pub generation: u32,
    /// `VipMeta::id` of the VIP this backend serves.
    pub vip: u32,
    pub weight: u32,
}

// SAFETY: repr(C), no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Backend {}

const _: () = assert!(core::mem::size_of::<Backend>() == 32);

/// Largest number of backend ids: ring slots and connection entries name a backend in 16 bits.
pub const MAX_BACKEND_IDS: u32 = u16::MAX as u32;

/// `RingSlot::prev_until` counts in ticks of 2^30 ns (about 1.07 s) of CLOCK_MONOTONIC, so the
/// XDP program compares it with one shift of its clock.
pub const RING_TICK_SHIFT: u32 = 30;

/// One Maglev slot (`RINGS[ring * size + slot]`, 8 bytes): the backend that takes the slot's
/// new flows, and the backend that held the slot before its last change (second chance,
/// docs/second-chance.md) until `prev_until`. Ids are stored plus one, so a zeroed slot is
/// empty and has no previous backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingSlot {
    /// Backend id + 1; 0: no backend (the ring is empty).
    pub backend: u16,
    /// Previous backend id + 1; 0: none.
    pub prev: u16,
    /// The previous backend counts while the clock, in `RING_TICK_SHIFT` ticks, is below this.
    pub prev_until: u32,
}

// SAFETY: repr(C), no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RingSlot {}

const _: () = assert!(core::mem::size_of::<RingSlot>() == 8);

impl RingSlot {
    /// A slot for backend `id` (or `NO_BACKEND`) without a previous backend.
    pub const fn new(id: u32) -> Self {
        Self {
            backend: encode_id(id),
            prev: 0,
            prev_until: 0,
        }
    }

    /// The slot's backend id, or `NO_BACKEND`.
    #[inline(always)]
    pub const fn backend_id(&self) -> u32 {
        decode_id(self.backend)
    }

    /// The previous backend id if it still counts at `now_ticks`.
    #[inline(always)]
    pub const fn live_prev(&self, now_ticks: u32) -> Option<u32> {
        if self.prev != 0 && now_ticks < self.prev_until {
            Some(self.prev as u32 - 1)
        } else {
            None
        }
    }
}

/// A backend id as 16 bits plus one (0 for `NO_BACKEND`). Ids are below `MAX_BACKEND_IDS`.
#[inline(always)]
pub const fn encode_id(id: u32) -> u16 {
    if id >= MAX_BACKEND_IDS {
        0
    } else {
        (id + 1) as u16
    }
}

/// The inverse of `encode_id`: `NO_BACKEND` for 0.
#[inline(always)]
pub const fn decode_id(v: u16) -> u32 {
    if v == 0 { NO_BACKEND } else { v as u32 - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_ids_round_trip_and_zero_is_empty() {
        assert_eq!(RingSlot::default().backend_id(), NO_BACKEND);
        assert_eq!(RingSlot::new(NO_BACKEND), RingSlot::default());
        for id in [0, 1, 4095, MAX_BACKEND_IDS - 1] {
            assert_eq!(RingSlot::new(id).backend_id(), id);
        }
        let s = RingSlot {
            backend: encode_id(3),
            prev: encode_id(7),
            prev_until: 100,
        };
        assert_eq!(s.live_prev(99), Some(7));
        assert_eq!(s.live_prev(100), None, "expired at its tick");
        assert_eq!(RingSlot::new(3).live_prev(0), None);
    }
}
