//! The eBPF objects, built once from lb-ebpf by build.rs (aya-build, nightly,
//! bpfel-unknown-none) and embedded here, so the agent (lb-userspace) and the backend's
//! `lb decap` (lb-decap) share one build.
//!
//! Product objects are at the top; what only labs, tests and benches load is in [`testing`]
//! (feature `testing`).

/// `lb_xdp`, the load balancer's XDP program (the agent's dataplane).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// `lb_health_encap`, the TC egress program that tunnels health checks to their backend.
pub static HEALTH_ENCAP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-health-encap"));

/// `lb_decap`, the backends' XDP decapsulation program (`lb decap`).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

#[cfg(feature = "testing")]
pub mod testing;
