//! `lb_decap`: the backend's XDP decapsulation program: parse -> decide -> rewrite.
//!
//! The load balancer sends each client packet, byte for byte, behind an IPv6 header addressed to
//! the backend's tunnel address (next header 4 or 41, RFC 2473), or behind IPv6 + UDP to the GUE
//! port (GUE variant 1: the inner IP header right after UDP). This program removes that outer
//! header in place and returns XDP_PASS, so the kernel receives the client's own packet as if it
//! had arrived directly, and the reply goes straight to the client (direct server return).
//! Everything else passes untouched. No loops over packet data, no logging.
//!
//! Second chance (`srh`): a tunnel packet may carry an IPv6 Segment Routing Header naming the
//! backend that held the flow before the last change. It is decapsulated as above when this
//! host should take it (a SYN, a socket for the flow, a valid SYN cookie, the last segment, not
//! TCP: `socket`), and otherwise moved to the previous backend and sent back out (XDP_TX).
//!
//! The counters, config and map names are in `lb_common::decap`; `lb decap` loads it.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values stay borrowed: passed by value, LLVM emits different code"
)]

mod socket;
mod srh;

use core::ptr::write as store;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::headers::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, GUE_HLEN, IPV4_HLEN, IPV6_HLEN, NEXT_HEADER_IPIP,
    NEXT_HEADER_IPV6, NEXT_HEADER_UDP, VLAN_HLEN,
};
use lb_common::srh::NEXT_HEADER_ROUTING;
use lb_common::{
    CounterValue,
    decap::{DECAP_MAX_ADDRS, DecapConfig, DecapCounter},
};
use lb_ebpf::load;

/// The backend's own tunnel addresses (key: address words as loaded from the packet).
#[map]
static DECAP_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(DECAP_MAX_ADDRS, 0);

#[map]
static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

#[map]
static DECAP_STATS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

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

#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    // Bytes as received (outer headers included), for the counters.
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let (verdict, counter) = decap(&ctx);
    if let Some(c) = DECAP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a valid pointer to this CPU's slot, which nothing else writes meanwhile
        // (per-CPU: plain adds, no atomics).
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
    verdict
}

/// Parse the link layer: Ethernet, optionally one 802.1Q tag, carrying IPv6.
#[inline(always)]
fn decap(ctx: &XdpContext) -> Outcome {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return NOT_TUNNEL;
    }
    // SAFETY: the Ethernet header is in the frame (checked above).
    let ethertype: u16 = unsafe { load(data + 12) };
    if ethertype == ETH_P_8021Q {
        if data + ETH_HLEN + VLAN_HLEN > end {
            return NOT_TUNNEL;
        }
        // SAFETY: the VLAN tag is in the frame (checked above).
        let inner: u16 = unsafe { load(data + 16) };
        if inner != ETH_P_IPV6 {
            return NOT_TUNNEL;
        }
        return outer::<{ ETH_HLEN + VLAN_HLEN }>(ctx, data, end);
    }
    if ethertype != ETH_P_IPV6 {
        return NOT_TUNNEL;
    }
    outer::<ETH_HLEN>(ctx, data, end)
}

/// Parse and decide on the outer IPv6 header at `L2`: a tunnel packet for one of our addresses?
#[inline(always)]
fn outer<const L2: usize>(ctx: &XdpContext, data: usize, end: usize) -> Outcome {
    let ip = data + L2;
    // Too short for IPv6 (or for UDP below): not ours to judge; the kernel drops it itself.
    if ip + IPV6_HLEN > end {
        return NOT_TUNNEL;
    }
    // SAFETY: the IPv6 header is in the frame (checked above).
    let next_header: u8 = unsafe { load(ip + 6) };
    let inner = match next_header {
        NEXT_HEADER_IPIP => Inner::V4,
        NEXT_HEADER_IPV6 => Inner::V6,
        NEXT_HEADER_UDP => {
            if !is_gue(ip + IPV6_HLEN, end) {
                return NOT_TUNNEL;
            }
            Inner::Either
        }
        // Second chance: a Segment Routing Header before the tunnel payload.
        NEXT_HEADER_ROUTING => return srh::routed::<L2>(ctx, data, end),
        // Other extension headers (e.g. RFC 2473's tunnel encapsulation limit), fragments,
        // anything else: the load balancer never sends them, so they are not tunnel packets.
        _ => return NOT_TUNNEL,
    };
    // Other addresses' tunnel packets are the kernel's business (it may route them on).
    if !is_ours(ip) {
        return OTHER_ADDRESS;
    }
    // SAFETY: in the IPv6 header (checked above).
    let payload_len = u16::from_be(unsafe { load(ip + 4) }) as usize;
    match inner {
        Inner::Either => plain::<L2, GUE_HLEN>(
            ctx,
            data,
            end,
            payload_len,
            inner,
            [DecapCounter::DecapGueV4, DecapCounter::DecapGueV6],
        ),
        _ => plain::<L2, IPV6_HLEN>(
            ctx,
            data,
            end,
            payload_len,
            inner,
            [DecapCounter::DecapIpip, DecapCounter::DecapIp6ip6],
        ),
    }
}

/// A tunnel packet without a routing header: always decapsulated, counted by inner version
/// (`counters`: IPv4, IPv6).
#[inline(always)]
fn plain<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    data: usize,
    end: usize,
    payload_len: usize,
    expect: Inner,
    counters: [DecapCounter; 2],
) -> Outcome {
    match inner_header::<L2, OUTER>(data, end, payload_len, expect) {
        Ok(ip) => strip::<L2, OUTER>(
            ctx,
            data,
            end,
            ip.ethertype,
            counters[if ip.v4 { 0 } else { 1 }],
        ),
        Err(outcome) => outcome,
    }
}

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
    if udp + lb_common::headers::UDP_HLEN > end {
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
