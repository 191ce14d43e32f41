//! Second chance on the backend: a tunnel packet whose outer IPv6 header is followed by a
//! Segment Routing Header (RFC 8754, `lb_common::srh`: two segments, list[0] the previous
//! backend, list[1] this one).
//!
//! The header is checked first (a malformed one is dropped and counted, never transmitted),
//! then the tunnel payload behind it like any tunnel packet's. Segments left 0: this backend is
//! the last segment and takes the packet. Segments left 1: `socket` decides whether this host
//! takes it; if not, the packet moves to the next segment in place and goes back out with
//! XDP_TX towards the router it came from.

use core::ptr::write as store;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_TX},
    programs::XdpContext,
};
use lb_common::decap::DecapCounter;
use lb_common::headers::{
    IPV6_HLEN, NEXT_HEADER_IPIP, NEXT_HEADER_IPV6, NEXT_HEADER_UDP, UDP_HLEN,
};
use lb_common::srh::{
    SRH_HDR_EXT_LEN, SRH_LEN, SRH_OFF_HDR_EXT_LEN, SRH_OFF_LAST_ENTRY, SRH_OFF_NEXT_HEADER,
    SRH_OFF_PREVIOUS, SRH_OFF_ROUTING_TYPE, SRH_OFF_SEGMENTS_LEFT, SRH_ROUTING_TYPE, SRH_SEGMENTS,
};
use lb_ebpf::load;

use crate::socket::{Take, take};
use crate::tunnel::{
    Inner, MALFORMED, NOT_TUNNEL, OTHER_ADDRESS, Outcome, inner_header, is_gue, is_ours, opaque,
    strip,
};

const BAD_SRH: Outcome = (XDP_DROP, DecapCounter::DropBadSrh);

/// The outer IPv6 header at `data + L2` (in the frame, checked by the caller) has next header
/// 43, a routing header.
#[inline(always)]
pub(crate) fn routed<const L2: usize>(ctx: &XdpContext, data: usize, end: usize) -> Outcome {
    let ip = data + L2;
    // Routing headers to other addresses are the kernel's business (it may route them on).
    if !is_ours(ip) {
        return OTHER_ADDRESS;
    }
    let srh = ip + IPV6_HLEN;
    if srh + SRH_LEN > end {
        return BAD_SRH;
    }
    // SAFETY: the whole 40-byte header is in the frame (checked above).
    let (next_header, ext_len, routing_type, segments_left, last_entry) = unsafe {
        (
            load::<u8>(srh + SRH_OFF_NEXT_HEADER),
            load::<u8>(srh + SRH_OFF_HDR_EXT_LEN),
            load::<u8>(srh + SRH_OFF_ROUTING_TYPE),
            load::<u8>(srh + SRH_OFF_SEGMENTS_LEFT),
            load::<u8>(srh + SRH_OFF_LAST_ENTRY),
        )
    };
    // Exactly the header the load balancers write: two segments, segments left 0 or 1.
    // Longer segment lists are not supported (the load balancer never sends them).
    if routing_type != SRH_ROUTING_TYPE
        || ext_len != SRH_HDR_EXT_LEN
        || last_entry != (SRH_SEGMENTS - 1) as u8
        || segments_left > last_entry
    {
        return BAD_SRH;
    }
    // SAFETY: in the IPv6 header (checked by the caller).
    let payload_len = u16::from_be(unsafe { load(ip + 4) }) as usize;
    if payload_len < SRH_LEN || ip + IPV6_HLEN + payload_len > opaque(end) {
        return BAD_SRH;
    }
    let last = segments_left == 0;
    match next_header {
        NEXT_HEADER_IPIP => {
            decide::<L2, { IPV6_HLEN + SRH_LEN }>(ctx, data, end, payload_len, Inner::V4, last)
        }
        NEXT_HEADER_IPV6 => {
            decide::<L2, { IPV6_HLEN + SRH_LEN }>(ctx, data, end, payload_len, Inner::V6, last)
        }
        NEXT_HEADER_UDP if is_gue(srh + SRH_LEN, end) => {
            decide::<L2, { IPV6_HLEN + SRH_LEN + UDP_HLEN }>(
                ctx,
                data,
                end,
                payload_len,
                Inner::Either,
                last,
            )
        }
        // Not a tunnel payload (UDP to another port, TCP, ...): untouched, as without the
        // routing header. The kernel drops it unless it is configured for segment routing.
        _ => NOT_TUNNEL,
    }
}

/// The tunnel payload behind the routing header: decapsulate (this host takes it) or hand it on.
#[inline(always)]
fn decide<const L2: usize, const OUTER: usize>(
    ctx: &XdpContext,
    data: usize,
    end: usize,
    payload_len: usize,
    expect: Inner,
    last: bool,
) -> Outcome {
    let ip = match inner_header::<L2, OUTER>(data, end, payload_len, expect) {
        Ok(ip) => ip,
        Err(outcome) => return outcome,
    };
    let counter = if last {
        // The last segment takes the packet whatever this host holds: the host answers it
        // as it would (e.g. a reset when it has no socket either).
        DecapCounter::SrhPassLast
    } else {
        match take(ctx, data + L2 + OUTER, end, ip.v4) {
            Take::Yes(counter) => counter,
            Take::No => return hand_on::<L2>(data, end),
            Take::Malformed => return MALFORMED,
        }
    };
    strip::<L2, OUTER>(ctx, data, end, ip.ethertype, counter)
}

/// Moves the packet to the next segment in place and sends it back to the router it came from:
/// destination = segment list[0], segments left 0, hop limit - 1, Ethernet addresses swapped.
/// Nothing else changes. In particular a UDP (GUE) checksum stays right: with a routing header
/// its pseudo-header holds the final destination (RFC 8200, 8.1), list[0], which this does not
/// change.
#[inline(always)]
fn hand_on<const L2: usize>(data: usize, end: usize) -> Outcome {
    let ip = data + L2;
    let srh = ip + IPV6_HLEN;
    // Explicit bound for the verifier (checked by `routed` already).
    if srh + SRH_LEN > end {
        return BAD_SRH;
    }
    // SAFETY: the Ethernet header, the IPv6 header and the routing header are in the frame
    // (checked above).
    unsafe {
        let next: [u32; 4] = load(srh + SRH_OFF_PREVIOUS);
        // Never reflect a packet to an unspecified or multicast destination.
        let first = u32::from_be(next[0]);
        if first >> 24 == 0xff || next == [0; 4] {
            return BAD_SRH;
        }
        // A router discards a packet whose hop limit would reach 0 (RFC 8200, 3); so does this.
        let hop_limit: u8 = load(ip + 7);
        if hop_limit <= 1 {
            return (XDP_DROP, DecapCounter::DropSrhHopLimit);
        }
        store((ip + 7) as *mut u8, hop_limit - 1);
        store((ip + 24) as *mut [u32; 4], next);
        store((srh + SRH_OFF_SEGMENTS_LEFT) as *mut u8, 0);
        // Back to the router it came from: its source MAC becomes the destination.
        let m: [u16; 6] = load(data);
        store(data as *mut [u16; 6], [m[3], m[4], m[5], m[0], m[1], m[2]]);
    }
    (XDP_TX, DecapCounter::SrhForwarded)
}
