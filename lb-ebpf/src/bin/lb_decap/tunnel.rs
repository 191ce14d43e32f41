//! The tunnel payload, the same with or without a routing header: which addresses are ours,
//! the GUE port, the inner header's checks, and the rewrite that strips the outer headers.
//! Below `main` and `srh`; uses only the maps.

use core::ptr::write as store;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_head,
    macros::map,
    maps::{Array, HashMap},
    programs::XdpContext,
};
use lb_common::decap::{DECAP_MAX_ADDRS, DecapConfig, DecapCounter};
use lb_common::headers::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, UDP_HLEN, VLAN_HLEN,
};
use lb_ebpf::load;

/// The backend's own tunnel addresses (key: address words as loaded from the packet).
#[map]
static DECAP_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(DECAP_MAX_ADDRS, 0);

#[map]
static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

/// The inner IP version the outer header announces.
#[derive(Clone, Copy)]
pub(crate) enum Inner {
    V4,
    V6,
    /// GUE variant 1 does not say: the inner version nibble decides.
    Either,
}

/// A verdict and the counter it moves.
pub(crate) type Outcome = (u32, DecapCounter);

pub(crate) const NOT_TUNNEL: Outcome = (XDP_PASS, DecapCounter::PassNotTunnel);
pub(crate) const MALFORMED: Outcome = (XDP_DROP, DecapCounter::DropMalformed);
pub(crate) const OTHER_ADDRESS: Outcome = (XDP_PASS, DecapCounter::PassOtherAddress);

/// Is the outer IPv6 header at `ip` (in the frame, checked by the caller) addressed to one of
/// our tunnel addresses?
#[inline(always)]
pub(crate) fn is_ours(ip: usize) -> bool {
    // SAFETY: in the IPv6 header (checked by the caller).
    let dst: [u32; 4] = unsafe { load(ip + 24) };
    // SAFETY: the value is only tested for presence, never read.
    unsafe { DECAP_ADDRS.get(&dst) }.is_some()
}

/// Is the UDP header at `udp` in the frame and addressed to the configured GUE port?
#[inline(always)]
pub(crate) fn is_gue(udp: usize, end: usize) -> bool {
    if udp + UDP_HLEN > end {
        return false;
    }
    // SAFETY: the UDP header is in the frame (checked above).
    let dport: u16 = unsafe { load(udp + 2) };
    let gue_port = DECAP_CONFIG.get(0).map_or(0, |c| c.gue_port);
    gue_port != 0 && dport == gue_port
}

/// `end` hidden from LLVM, for comparisons with a length read from the packet: from those LLVM
/// would conclude that a bounds check before or after is implied and drop it, and the verifier
/// cannot follow that reasoning.
#[inline(always)]
pub(crate) fn opaque(end: usize) -> usize {
    core::hint::black_box(end)
}

/// The inner IP header, checked: its version and the ethertype it gets once decapsulated.
#[derive(Clone, Copy)]
pub(crate) struct InnerIp {
    pub v4: bool,
    pub ethertype: u16,
}

/// Checks the inner header that follows `OUTER` bytes of tunnel headers (IPv6, then UDP for
/// GUE and/or a routing header): a whole minimal IPv4 or IPv6 header of the announced version,
/// inside the outer payload, inside the frame.
#[inline(always)]
pub(crate) fn inner_header<const L2: usize, const OUTER: usize>(
    data: usize,
    end: usize,
    payload_len: usize,
    expect: Inner,
) -> Result<InnerIp, Outcome> {
    let inner = data + L2 + OUTER;
    if inner + 1 > end {
        return Err(MALFORMED);
    }
    // SAFETY: the inner header's first byte is in the frame (checked above).
    let first: u8 = unsafe { load(inner) };
    let (ip, min_len) = match (first >> 4, expect) {
        (4, Inner::V4 | Inner::Either) if first & 0x0F >= 5 => (
            InnerIp {
                v4: true,
                ethertype: ETH_P_IP,
            },
            IPV4_HLEN,
        ),
        (6, Inner::V6 | Inner::Either) => (
            InnerIp {
                v4: false,
                ethertype: ETH_P_IPV6,
            },
            IPV6_HLEN,
        ),
        // Wrong version for the next header, IHL < 5, or a GUE variant 0 header.
        _ => return Err(MALFORMED),
    };
    // The header against the frame (second chance reads it).
    if inner + min_len > end {
        return Err(MALFORMED);
    }
    // Lengths inside the inner packet are the kernel's to check, as for any packet it receives.
    if payload_len < OUTER - IPV6_HLEN + min_len
        || data + L2 + IPV6_HLEN + payload_len > opaque(end)
    {
        return Err(MALFORMED);
    }
    Ok(ip)
}

/// Rewrites a checked frame: the link-layer header moves forward over the `OUTER` bytes of
/// tunnel headers and the head follows it. The inner packet itself is not touched.
#[inline(always)]
pub(crate) fn strip<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    data: usize,
    end: usize,
    ethertype: u16,
    counter: DecapCounter,
) -> Outcome {
    // Explicit bound for the verifier (implied by the checks before): the new link-layer
    // header is written at `data + OUTER`.
    let new = data + OUTER;
    if new + L2 > end {
        return MALFORMED;
    }
    // SAFETY: both link-layer headers, old at `data` and new at `new`, are in the frame
    // (checked above).
    unsafe {
        // The regions do not overlap (OUTER >= 40 > L2), so read-then-write is a plain copy.
        let macs: [u32; 3] = load(data);
        store(new as *mut [u32; 3], macs);
        if L2 == ETH_HLEN + VLAN_HLEN {
            // TPID and TCI stay: the inner packet arrives on the same VLAN.
            let tag: u32 = load(data + 12);
            store((new + 12) as *mut u32, tag);
        }
        store((new + L2 - 2) as *mut u16, ethertype);
    }
    // SAFETY: a helper call on this program's own context; it checks the new start.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OUTER as i32) } != 0 {
        // The copy above already overwrote the outer header: the frame cannot go on.
        return (XDP_DROP, DecapCounter::DropError);
    }
    (XDP_PASS, counter)
}
