//! Peer flow sync's record: a new TCP flow, exported by the XDP program on `FLOW_EVENTS` when
//! its connection entry is made (by its SYN, or by its first packet after the SYN), and sent by
//! the agent to its peers.

use crate::conn::FlowKey;

/// Default byte size of the `FLOW_EVENTS` ring buffer (a power-of-two multiple of the page
/// size, as the kernel requires). Each event takes `size_of::<FlowEvent>()` plus an 8-byte
/// record header, rounded up to 8 bytes, so 1 MiB holds about 16.4k events.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// A new TCP flow. 52 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: FlowKey,
    /// The local backend id (`ConnEntry::backend`).
    pub backend: u32,
    /// The flow hash stored in the entry (`ConnEntry::hash`).
    pub hash: u32,
    /// `FLOW_EVENT_F_*` bits.
    pub flags: u32,
}

/// `FlowEvent::flags`: a SYN made the entry (the flow starts here), so peers install it over
/// any entry of theirs. Without it the entry was made by the flow's first packet after the
/// SYN (`LB_F_SECOND_CHANCE`), which may also be a flow that moved here mid-way: peers install
/// it only where they hold no entry of their own.
pub const FLOW_EVENT_F_SYN: u32 = 1;

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowEvent {}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 52);
