//! The egress step: which NIC a backend's packet leaves by, and with which MACs.
//!
//! `EGRESS[backend id]` (`lb_common::Egress`, written by the agent from the kernel's routes and
//! neighbours, or from the static next hops) says: the ingress NIC's own next hop (XDP_TX,
//! today's one-arm setup), or a path of the backend's route picked by the flow hash (XDP_TX when
//! it is the ingress NIC, else XDP_REDIRECT through `EGRESS_DEVS`), or nothing usable: dropped
//! and counted, never sent to a zero or stale MAC.
//!
//! The `egress-fib` bench variant asks the kernel per packet instead (`bpf_fib_lookup` on the
//! outer IPv6 header), so the two can be measured against each other (`cargo xtask bench`).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, IfaceConfig};

use crate::maps::{EGRESS_DEVS, EGRESS_STATS};
use crate::stats;

/// Where the packet goes: the MACs to write, and the NIC slot to redirect to (None: XDP_TX).
pub struct Out {
    pub link: &'static IfaceConfig,
    pub redirect: Option<u32>,
    /// The `EGRESS_STATS` slot pair of the NIC (None: the ingress NIC's static next hop).
    pub dev: Option<u32>,
}

/// The way out for backend `id`'s packet of a flow with `hash`, arriving on `ingress` (whose
/// link layer is `iface`); Err: the verdict (dropped, counted).
#[cfg(not(feature = "egress-fib"))]
#[inline(always)]
pub fn choose(
    _ctx: &XdpContext,
    id: u32,
    hash: u32,
    ingress: u32,
    iface: &'static IfaceConfig,
) -> Result<Out, u32> {
    let Some(e) = crate::maps::EGRESS.get(id) else {
        return Err(stats::drop(Counter::DropNoNextHop));
    };
    if e.state == lb_common::EGRESS_INGRESS {
        return Ok(Out {
            link: iface,
            redirect: None,
            dev: None,
        });
    }
    if e.state != lb_common::EGRESS_ROUTED || e.paths_len == 0 {
        return Err(stats::drop(Counter::DropNoNextHop));
    }
    let i = lb_common::egress_path_index(hash, e.paths_len) as usize;
    // The bound check the verifier needs (the agent never writes more paths than fit).
    let Some(path) = e.paths.get(i) else {
        return Err(stats::drop(Counter::DropNoNextHop));
    };
    Ok(Out {
        link: &path.link,
        redirect: (path.ifindex != ingress).then_some(path.dev),
        dev: Some(path.dev),
    })
}

/// Sends the encapsulated frame: XDP_TX, or XDP_REDIRECT to the path's NIC; counts per NIC.
#[inline(always)]
pub fn send(out: &Out, len: u64) -> u32 {
    let action = match out.redirect {
        None => xdp_action::XDP_TX,
        Some(dev) => match EGRESS_DEVS.redirect(dev, 0) {
            Ok(action) => {
                stats::count(Counter::TxRedirect);
                action
            }
            Err(_) => return stats::drop(Counter::DropRedirect),
        },
    };
    if let Some(dev) = out.dev {
        let slot = dev * 2 + out.redirect.is_some() as u32;
        if let Some(c) = EGRESS_STATS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot, which nothing else writes meanwhile.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += len;
            }
        }
    }
    action
}

/// Bench variant: the kernel's FIB and neighbour table per packet (`bpf_fib_lookup` on the
/// backend's address), the cost the cache avoids. The MACs land in a per-CPU scratch slot.
#[cfg(feature = "egress-fib")]
#[inline(always)]
pub fn choose(
    ctx: &XdpContext,
    id: u32,
    _hash: u32,
    ingress: u32,
    _iface: &'static IfaceConfig,
) -> Result<Out, u32> {
    use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
    use aya_ebpf::helpers::bpf_fib_lookup;
    let Some(backend) = crate::maps::BACKENDS.get(id) else {
        return Err(stats::drop(Counter::DropNoNextHop));
    };
    let Some(scratch) = crate::maps::EGRESS_FIB_SCRATCH.get_ptr_mut(0) else {
        return Err(stats::drop(Counter::DropNoNextHop));
    };
    // SAFETY: plain data; every field the helper reads is set below.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = 10; // AF_INET6
    p.ifindex = ingress;
    p.__bindgen_anon_4.ipv6_dst = backend.addr;
    p.__bindgen_anon_3.ipv6_src = crate::maps::config().map_or([0; 4], |c| c.src_ip6);
    // SAFETY: a helper call on this program's own context with a params struct of its size.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != 0 {
        return Err(stats::drop(Counter::DropNoNextHop));
    }
    // SAFETY: this CPU's scratch slot, which nothing else writes meanwhile.
    let link = unsafe {
        (*scratch).src_mac = p.smac;
        (*scratch).dst_mac = p.dmac;
        &*scratch
    };
    Ok(Out {
        link,
        redirect: (p.ifindex != ingress).then_some(0),
        dev: Some(0),
    })
}
