//! The load balancer's userspace: the dataplane handle (program and maps), the desired state
//! and its reconciliation into the maps, the agent, its control API and the CLI.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod http;
pub mod metrics;
pub mod neighbour;
pub mod reconcile;
pub mod state;

/// The compiled XDP object (built by build.rs through aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
