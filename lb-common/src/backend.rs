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
