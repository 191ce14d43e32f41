//! Types and pure functions shared by the XDP program (`lb-ebpf`, `no_std`) and userspace.
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: map keys and
//! values (`#[repr(C)]`, explicit padding), counter indices, the flow hash and the Maglev
//! table construction. Both sides therefore agree on layouts and on which backend a flow maps to.
#![cfg_attr(not(feature = "user"), no_std)]

pub mod decap;
pub mod hash;
pub mod healthcheck;
pub mod maps;
pub mod stats;

#[cfg(feature = "user")]
pub mod maglev;

pub use hash::{flow_hash, ring_slot};
pub use maps::*;
pub use stats::Counter;
