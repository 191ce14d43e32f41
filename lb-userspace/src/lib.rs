//! The load balancer's userspace: loading the XDP program and managing its maps.

pub mod dataplane;

/// The compiled XDP object (built by build.rs through aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));
