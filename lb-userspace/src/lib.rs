//! The load balancer's userspace: loading the XDP program, managing its maps, and the CLI.

pub mod dataplane;
pub mod run;
pub mod service;

/// The compiled XDP object (built by build.rs through aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
