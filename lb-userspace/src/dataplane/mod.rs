//! The dataplane handle: loads the XDP program and reads and writes its maps.
//!
//! Each write here keeps its own map consistent (a VIP's index slot, marker and filter bit
//! follow its entry). The order across maps that keeps every packet on a valid backend lives in
//! `crate::reconcile`, which drives these writes: a backend is installed before any ring slot
//! points at it, and a VIP's ring is filled before the VIP entry makes it reachable. Besides the
//! agent's `Dataplane`, a [`FlowTable`] (peer sync's importer) writes the connection table.
//!
//! Files: `limits` (map sizes and the pinned layout), `load` (load, adopt, attach, pin),
//! `vips` (VIP entries, the VIP index and the address filter), `backends` (backends and
//! rings), `egress` (each backend's way out: NIC and MACs), `ifaces` (the NICs' link layer), `probe` (open-addressed slot lookup), `counters`,
//! `flows` (the connection table), `batch` (the batched map syscalls aya does not wrap).

mod backends;
mod batch;
mod counters;
mod egress;
mod flows;
mod handle;
mod ifaces;
mod limits;
mod load;
mod probe;
mod vips;

pub use flows::{FlowCounts, FlowTable, flow_counts_pinned, is_live, monotonic_ns};
pub use handle::{Attachment, Dataplane, PROGRAM_NAME};
pub use lb_host::ensure_bpffs;
pub use limits::{DataplaneLimits, MAX_VIPS_LIMIT};
pub use load::{detach_pinned, link_pin_path, unpin_link};
