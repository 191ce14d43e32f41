//! The load balancer's userspace: the dataplane handle (program and maps), the desired state
//! and its reconciliation into the maps, the agent, its control API and the CLI.

pub mod agent;
pub mod api;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod decap;
pub mod health;
pub mod http;
pub mod neighbour;
pub mod reconcile;
pub mod state;
pub mod sync;

/// The compiled XDP object (built by build.rs through aya-build).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-xdp"));

/// `lb_health_encap`, the TC egress program that tunnels health checks to their backend.
pub static HC_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-health-encap"));

/// `lb_decap`, the backends' XDP decapsulation program (`lb decap`).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

/// `xdp_pass`, for the receiving end of veth pairs in labs and tests.
pub static PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-pass"));

/// `cargo xtask bench` only: the input-restoring harness, the floor and the empty program.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench-harness"));

/// Loads `xdp_pass` and attaches it to `iface` (in the calling thread's network namespace).
/// Detached when the returned handle is dropped.
pub fn attach_pass(iface: &str) -> anyhow::Result<aya::Ebpf> {
    use anyhow::Context;
    let mut ebpf = aya::Ebpf::load(PASS_OBJECT)?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut("xdp_pass")
        .context("xdp_pass missing")?
        .try_into()?;
    prog.load()?;
    prog.attach(iface, aya::programs::XdpMode::Driver)
        .with_context(|| format!("attaching xdp_pass to {iface}"))?;
    Ok(ebpf)
}

/// Attaches `xdp_pass` to `iface` and pins the link at `pin`, so it stays attached after this
/// process exits (labs built by a command that returns); removing the pin detaches it.
pub fn attach_pass_pinned(iface: &str, pin: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut ebpf = aya::Ebpf::load(PASS_OBJECT)?;
    let prog: &mut aya::programs::Xdp = ebpf
        .program_mut("xdp_pass")
        .context("xdp_pass missing")?
        .try_into()?;
    prog.load()?;
    let id = prog
        .attach(iface, aya::programs::XdpMode::Driver)
        .with_context(|| format!("attaching xdp_pass to {iface}"))?;
    let link = aya::programs::links::FdLink::try_from(prog.take_link(id)?)
        .context("xdp_pass was not attached as a bpf_link")?;
    link.pin(pin)
        .with_context(|| format!("pinning the xdp_pass link at {}", pin.display()))?;
    Ok(())
}
