//! Peer flow sync's record: a new TCP flow, exported by the XDP program on `FLOW_EVENTS` when a
//! SYN creates its connection entry, and sent by the agent to its peers.

use crate::conn::FlowKey;

/// Default byte size of the `FLOW_EVENTS` ring buffer (a power-of-two multiple of the page
/// size, as the kernel requires). Each event takes `size_of::<FlowEvent>()` plus an 8-byte
/// record header, so 1 MiB holds about 18.7k events.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// A new TCP flow. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: FlowKey,
    /// The local backend id (`ConnEntry::backend`).
    pub backend: u32,
    /// The flow hash stored in the entry (`ConnEntry::hash`).
    pub hash: u32,
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowEvent {}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 48);
