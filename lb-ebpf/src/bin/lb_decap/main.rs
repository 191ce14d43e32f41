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

// Modules import only downward: main -> srh -> socket, tunnel; main -> tunnel.
mod socket;
mod srh;
mod tunnel;

use aya_ebpf::{
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_common::headers::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IPV6, GUE_HLEN, IPV6_HLEN, NEXT_HEADER_IPIP, NEXT_HEADER_IPV6,
    NEXT_HEADER_UDP, VLAN_HLEN,
};
use lb_common::srh::NEXT_HEADER_ROUTING;
use lb_common::{CounterValue, decap::DecapCounter};
use lb_ebpf::load;

use tunnel::{Inner, NOT_TUNNEL, OTHER_ADDRESS, Outcome, inner_header, is_gue, is_ours, strip};

#[map]
static DECAP_STATS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DecapCounter::COUNT, 0);

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
