//! Objects for labs, tests and benches only: never loaded by the agent or `lb decap`.

use std::path::Path;

use anyhow::{Context, Result};
use aya::programs::{Xdp, XdpMode, links::FdLink, xdp::XdpLinkId};

/// `xdp_pass`, for the receiving end of veth pairs in labs and tests.
pub static PASS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-pass"));

/// `cargo xtask bench` only: the input-restoring harness, the floor and the empty program.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-bench-harness"));

/// Loads `xdp_pass` and attaches it to `iface` (in the calling thread's network namespace).
/// Detached when the returned handle is dropped.
pub fn attach_pass(iface: &str) -> Result<aya::Ebpf> {
    Ok(load_and_attach_pass(iface)?.0)
}

/// Attaches `xdp_pass` to `iface` and pins the link at `pin`, so it stays attached after this
/// process exits (labs built by a command that returns); removing the pin detaches it.
pub fn attach_pass_pinned(iface: &str, pin: &Path) -> Result<()> {
    let (mut ebpf, id) = load_and_attach_pass(iface)?;
    let prog: &mut Xdp = ebpf.program_mut("xdp_pass").expect("loaded").try_into()?;
    let link =
        FdLink::try_from(prog.take_link(id)?).context("xdp_pass was not attached as a bpf_link")?;
    link.pin(pin)
        .with_context(|| format!("pinning the xdp_pass link at {}", pin.display()))?;
    Ok(())
}

fn load_and_attach_pass(iface: &str) -> Result<(aya::Ebpf, XdpLinkId)> {
    let mut ebpf = aya::Ebpf::load(PASS_OBJECT)?;
    let prog: &mut Xdp = ebpf
        .program_mut("xdp_pass")
        .context("xdp_pass missing")?
        .try_into()?;
    prog.load()?;
    let id = prog
        .attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching xdp_pass to {iface}"))?;
    Ok((ebpf, id))
}
