//! Types and pure functions shared by the eBPF programs (`lb-ebpf`, `no_std`) and userspace.
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: map keys and
//! values (`#[repr(C)]`, explicit padding, each with its `Pod` impl beside it), counter
//! indices, header constants, the flow hash and the Maglev table construction. Both sides
//! therefore agree on layouts and on which backend a flow maps to. The pure arithmetic of the
//! XDP program (checksums, too-big sizing) lives here too, where the host tests run it.
//!
//! One idea per module; nothing here imports upward (`headers` and `addr` at the bottom, the
//! map types above them, `maglev` on top):
//! - `headers`: header sizes and field values; `addr`: address words and families.
//! - `conn`, `flow_cache`, `vip`, `vip_index`, `vip_filter`, `backend`, `config`, `egress`,
//!   `flow_event`: the `lb-xdp` object's map types; `names`: its map and global names.
//! - `counters`: the counter macro and `Counter`; `decap` and `health`: the other programs'
//!   names, types and counters.
//! - `hash`: the flow hash; `maglev` (userspace): Maglev construction.
//! - `checksum`, `toobig`: pure helpers of the XDP program; `srh`: the second-chance header.
#![cfg_attr(not(any(feature = "user", test)), no_std)]

pub mod addr;
pub mod backend;
pub mod checksum;
pub mod config;
pub mod conn;
pub mod counters;
pub mod decap;
pub mod egress;
pub mod flow_cache;
pub mod flow_event;
pub mod hash;
pub mod headers;
pub mod health;
pub mod names;
pub mod ratelimit;
pub mod srh;
pub mod toobig;
pub mod vip;
pub mod vip_filter;
pub mod vip_index;

#[cfg(feature = "user")]
pub mod maglev;

pub use addr::*;
pub use backend::*;
pub use config::*;
pub use conn::*;
pub use counters::{Counter, CounterValue, STATS_SLOTS};
pub use egress::*;
pub use flow_cache::*;
pub use flow_event::*;
pub use hash::{flow_hash, ring_slot};
pub use headers::{ENCAP_GUE_LEN, ENCAP_IP6_LEN, PROTO_TCP, PROTO_UDP};
pub use names::globals;
pub use vip::*;
pub use vip_filter::*;
pub use vip_index::*;
