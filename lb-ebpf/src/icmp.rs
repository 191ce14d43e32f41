//! ICMP and ICMPv6 addressed to a VIP address (parse.rs hands them over, main.rs dispatches).
//!
//! - Echo request (IPv4 type 8, ICMPv6 type 128, code 0): answered by the load balancer itself
//!   with XDP_TX, unless the address's marker entry has `VIP_F_NO_ECHO` (then dropped).
//! - Destination unreachable (IPv4 type 3, any code, including 4 "fragmentation needed";
//!   ICMPv6 type 1) and packet too big (ICMPv6 type 2): the error is about a packet a backend
//!   sent from the VIP (direct server return), so the backend needs it (path MTU discovery, RFC
//!   1191 / RFC 8201). The embedded header names the flow; the ICMP packet, untouched, is
//!   encapsulated to that flow's backend like any packet of the flow. The choice is read-only
//!   (`conntrack::lookup_backend`): an error never creates or refreshes a connection entry.
//! - Anything else (neighbour discovery, time exceeded, echo replies, ...): to the kernel.

use core::ptr::write as store;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, VIP_F_NO_ECHO};

use crate::parse::{Parsed, Verdict};
use crate::wire::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, HOP_LIMIT, ICMP_HLEN, IPV4_HLEN, IPV6_HLEN,
    PROTO_ICMP, PROTO_ICMPV6, VLAN_HLEN, load,
};
use crate::{conntrack, encap, maps, stats, vip};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO: u8 = 8;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PKT_TOOBIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Bytes of the embedded transport header an error must quote: the ports (RFC 792 quotes 8).
const EMBEDDED_L4_LEN: usize = 8;
/// IPv4 fragment offset bits (network order): a later fragment quotes no ports.
const IPV4_FRAG_OFFSET: u16 = 0x1FFFu16.to_be();

/// ICMP or ICMPv6 to an address the VIP filter flagged, from parse.rs once the outer header
/// passed its checks (version, options, fragments, extension headers). `ip_len` is the IP
/// packet's length from its own header. Returns `Verdict::Icmp` with the address marker's
/// flags if the address really is a VIP address and the ICMP header is complete. Only the
/// flags cross to `handle`, which reads the rest again: the forwarding path's parse result
/// stays as small as it was.
#[inline(always)]
pub fn to_vip<const L3: usize>(
    data: usize,
    end: usize,
    family: u8,
    dst: &[u32; 4],
    ip_len: usize,
) -> Verdict {
    let Some(marker) = vip::address_marker(family, dst) else {
        return Verdict::Pass(Counter::PassNotVip);
    };
    let ip_hlen = if family == FAMILY_V4 {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    // Before the length checks, as in parse_l4: after them LLVM would drop this bound as
    // implied, and the verifier cannot follow that.
    if data + L3 + ip_hlen + ICMP_HLEN > end {
        return Verdict::Drop(Counter::DropTruncated);
    }
    if ip_len < ip_hlen + ICMP_HLEN {
        return Verdict::Drop(Counter::DropBadIpHeader);
    }
    if data + L3 + ip_len > end {
        return Verdict::Drop(Counter::DropTruncated);
    }
    Verdict::Icmp(marker.flags)
}

/// What `at` found: a verdict, or an error to send to the backend of the flow it quotes.
enum Step {
    Done(u32),
    Forward(Parsed, FlowKey),
}

/// Answers, forwards or passes an ICMP packet `to_vip` accepted; `addr_flags` are its
/// destination's marker flags (`VIP_F_NO_ECHO`).
///
/// Not inlined: a BPF-to-BPF call on this rare path keeps lb_xdp's body small enough for LLVM
/// to keep it in one piece, so the forwarding path's code is the same as without ICMP.
#[inline(never)]
pub fn handle(xdp_md: *mut xdp_md, addr_flags: u32) -> u32 {
    let ctx = &XdpContext::new(xdp_md);
    let data = ctx.data();
    let end = ctx.data_end();
    // parse.rs checked all of this; the verifier needs to see it again.
    if data + ETH_HLEN + VLAN_HLEN > end {
        return stats::drop(Counter::DropTruncated);
    }
    let ethertype: u16 = unsafe { load(data + 12) };
    let inner: u16 = unsafe { load(data + 16) };
    let step = match (ethertype, inner) {
        (ETH_P_IP, _) => at::<ETH_HLEN, true>(ctx, addr_flags),
        (ETH_P_IPV6, _) => at::<ETH_HLEN, false>(ctx, addr_flags),
        (ETH_P_8021Q, ETH_P_IP) => at::<{ ETH_HLEN + VLAN_HLEN }, true>(ctx, addr_flags),
        (ETH_P_8021Q, ETH_P_IPV6) => at::<{ ETH_HLEN + VLAN_HLEN }, false>(ctx, addr_flags),
        _ => Step::Done(stats::drop(Counter::DropTruncated)),
    };
    // One copy of the forwarding tail (lookups and encapsulation) for all four header layouts.
    match step {
        Step::Done(verdict) => verdict,
        Step::Forward(pkt, key) => forward_error(ctx, &pkt, &key),
    }
}

/// The ICMP packet with its IP header at `L3`, IPv4 or IPv6.
#[inline(always)]
fn at<const L3: usize, const V4: bool>(ctx: &XdpContext, addr_flags: u32) -> Step {
    let data = ctx.data();
    let end = ctx.data_end();
    let ip = data + L3;
    let ip_hlen = if V4 { IPV4_HLEN } else { IPV6_HLEN };
    let icmp = ip + ip_hlen;
    if icmp + ICMP_HLEN > end {
        return Step::Done(stats::drop(Counter::DropTruncated));
    }
    let ty: u8 = unsafe { load(icmp) };
    let code: u8 = unsafe { load(icmp + 1) };
    let (echo, error) = if V4 {
        (ty == ICMP_ECHO && code == 0, ty == ICMP_DEST_UNREACH)
    } else {
        (
            ty == ICMPV6_ECHO_REQUEST && code == 0,
            ty == ICMPV6_DEST_UNREACH || ty == ICMPV6_PKT_TOOBIG,
        )
    };
    if echo {
        if addr_flags & VIP_F_NO_ECHO != 0 {
            return Step::Done(stats::drop(Counter::DropIcmpEchoOff));
        }
        unsafe {
            if V4 {
                echo_reply_v4(data, ip, icmp);
            } else {
                echo_reply_v6(data, ip, icmp);
            }
        }
        stats::count(Counter::IcmpEchoReply);
        return Step::Done(xdp_action::XDP_TX);
    }
    if !error {
        stats::count(Counter::PassIcmpOther);
        return Step::Done(xdp_action::XDP_PASS);
    }
    let (family, ip_len, tclass, src, dst) = unsafe {
        if V4 {
            let dst = [load(ip + 16), 0, 0, 0];
            let tot_len = u16::from_be(load(ip + 2));
            (
                FAMILY_V4,
                tot_len,
                load(ip + 1),
                [load(ip + 12), 0, 0, 0],
                dst,
            )
        } else {
            let (b0, b1): (u8, u8) = (load(ip), load(ip + 1));
            let payload_len = u16::from_be(load(ip + 4));
            let tclass = (b0 << 4) | (b1 >> 4);
            // to_vip checked that the packet is in the frame: this cannot overflow.
            let ip_len = payload_len.wrapping_add(IPV6_HLEN as u16);
            (FAMILY_V6, ip_len, tclass, load(ip + 8), load(ip + 24))
        }
    };
    let key = if V4 {
        embedded_flow_v4(icmp + ICMP_HLEN, end, ip_len as usize, dst[0])
    } else {
        embedded_flow_v6(icmp + ICMP_HLEN, end, ip_len as usize, &dst)
    };
    let Some(key) = key else {
        return Step::Done(stats::drop(Counter::DropIcmpBadEmbedded));
    };
    let pkt = Parsed {
        key: FlowKey {
            src,
            dst,
            src_port: 0,
            dst_port: 0,
            proto: if V4 { PROTO_ICMP } else { PROTO_ICMPV6 },
            family,
            _pad: [0; 2],
        },
        l3_off: L3,
        vlan_tci: if L3 == ETH_HLEN + VLAN_HLEN {
            unsafe { load(data + ETH_HLEN) }
        } else {
            0
        },
        ip_len,
        tclass,
        tcp_flags: 0,
        frame_len: (end - data) as u32,
    };
    Step::Forward(pkt, key)
}

/// Sends the error, untouched, to the backend of the flow it is about, exactly as a packet of
/// that flow would be encapsulated (same backend, same flow label and GUE source port).
#[inline(always)]
fn forward_error(ctx: &XdpContext, pkt: &Parsed, key: &FlowKey) -> u32 {
    let Some(vip) = vip::lookup(key) else {
        return stats::drop(Counter::DropIcmpNoFlow);
    };
    let Some(cfg) = maps::config() else {
        return stats::drop(Counter::DropEncap);
    };
    let Some(iface) = maps::iface(ctx.ingress_ifindex() as u32) else {
        return stats::drop(Counter::DropNoIface);
    };
    let Some(target) = conntrack::lookup_backend(ctx, key, vip, cfg) else {
        return stats::drop(Counter::DropIcmpNoFlow);
    };
    let len = pkt.frame_len as u64;
    stats::add_vip(vip.id, len);
    stats::add_backend(target.id, len);
    let verdict = encap::encapsulate(ctx, pkt, vip, cfg, iface, &target);
    if verdict == xdp_action::XDP_TX {
        stats::count(Counter::IcmpErrorForwarded);
    }
    verdict
}

/// The flow (client -> VIP) of the reply (VIP -> client) an IPv4 error quotes at `inner`:
/// IHL 5, not a later fragment, TCP or UDP with its ports inside the ICMP packet's `ip_len`,
/// sent from `vip`, the address the error came to.
#[inline(always)]
fn embedded_flow_v4(inner: usize, end: usize, ip_len: usize, vip: u32) -> Option<FlowKey> {
    // The frame bound first, then the IP length (see `to_vip`).
    if inner + IPV4_HLEN + EMBEDDED_L4_LEN > end {
        return None;
    }
    if ip_len < IPV4_HLEN + ICMP_HLEN + IPV4_HLEN + EMBEDDED_L4_LEN {
        return None;
    }
    let version_ihl: u8 = unsafe { load(inner) };
    let frag: u16 = unsafe { load(inner + 6) };
    let proto: u8 = unsafe { load(inner + 9) };
    let src: u32 = unsafe { load(inner + 12) };
    if version_ihl != 0x45
        || frag & IPV4_FRAG_OFFSET != 0
        || (proto != PROTO_TCP && proto != PROTO_UDP)
        || src != vip
    {
        return None;
    }
    let dst: u32 = unsafe { load(inner + 16) };
    let l4 = inner + IPV4_HLEN;
    Some(FlowKey {
        src: [dst, 0, 0, 0],
        dst: [src, 0, 0, 0],
        src_port: unsafe { load(l4 + 2) },
        dst_port: unsafe { load(l4) },
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    })
}

/// The same for ICMPv6: a fixed IPv6 header whose next header is TCP or UDP directly.
#[inline(always)]
fn embedded_flow_v6(inner: usize, end: usize, ip_len: usize, vip: &[u32; 4]) -> Option<FlowKey> {
    if inner + IPV6_HLEN + EMBEDDED_L4_LEN > end {
        return None;
    }
    if ip_len < IPV6_HLEN + ICMP_HLEN + IPV6_HLEN + EMBEDDED_L4_LEN {
        return None;
    }
    let b0: u8 = unsafe { load(inner) };
    let next_header: u8 = unsafe { load(inner + 6) };
    let src: [u32; 4] = unsafe { load(inner + 8) };
    if b0 >> 4 != 6 || (next_header != PROTO_TCP && next_header != PROTO_UDP) || src != *vip {
        return None;
    }
    let l4 = inner + IPV6_HLEN;
    Some(FlowKey {
        src: unsafe { load(inner + 24) },
        dst: src,
        src_port: unsafe { load(l4 + 2) },
        dst_port: unsafe { load(l4) },
        proto: next_header,
        family: FAMILY_V6,
        _pad: [0; 2],
    })
}

/// Turns an IPv4 echo request into its reply in place: MACs and addresses swapped, TTL 64,
/// type 0; both checksums updated incrementally (swapping addresses leaves sums unchanged).
///
/// # Safety
/// The caller has checked that the frame holds everything up to the end of the ICMP header.
#[inline(always)]
unsafe fn echo_reply_v4(data: usize, ip: usize, icmp: usize) {
    unsafe {
        swap_macs(data);
        let src: u32 = load(ip + 12);
        let dst: u32 = load(ip + 16);
        store((ip + 12) as *mut u32, dst);
        store((ip + 16) as *mut u32, src);
        // TTL and protocol share a checksum word.
        let old: u16 = load(ip + 8);
        let new = u16::from_ne_bytes([HOP_LIMIT, PROTO_ICMP]);
        store((ip + 8) as *mut u16, new);
        let check: u16 = load(ip + 10);
        store((ip + 10) as *mut u16, csum_replace(check, old, new));
        set_type(icmp, ICMP_ECHO_REPLY);
    }
}

/// The same for ICMPv6: hop limit 64, type 129. The checksum's pseudo-header holds both
/// addresses, so swapping them leaves it unchanged; only the type word changes.
///
/// # Safety
/// As for `echo_reply_v4`.
#[inline(always)]
unsafe fn echo_reply_v6(data: usize, ip: usize, icmp: usize) {
    unsafe {
        swap_macs(data);
        // Word by word: whole arrays would become a byte-by-byte memmove loop on BPF.
        for i in 0..4 {
            let src: u32 = load(ip + 8 + 4 * i);
            let dst: u32 = load(ip + 24 + 4 * i);
            store((ip + 8 + 4 * i) as *mut u32, dst);
            store((ip + 24 + 4 * i) as *mut u32, src);
        }
        store((ip + 7) as *mut u8, HOP_LIMIT);
        set_type(icmp, ICMPV6_ECHO_REPLY);
    }
}

/// # Safety
/// The caller has checked that the Ethernet header is in the packet.
#[inline(always)]
unsafe fn swap_macs(data: usize) {
    // In 4 + 2 byte words: 6-byte arrays become a byte-by-byte memmove loop on BPF.
    unsafe {
        let (dst_hi, dst_lo): (u32, u16) = (load(data), load(data + 4));
        let (src_hi, src_lo): (u32, u16) = (load(data + 6), load(data + 10));
        store(data as *mut u32, src_hi);
        store((data + 4) as *mut u16, src_lo);
        store((data + 6) as *mut u32, dst_hi);
        store((data + 10) as *mut u16, dst_lo);
    }
}

/// Rewrites the ICMP type at `icmp` (code kept) and updates the ICMP checksum for it.
///
/// # Safety
/// The caller has checked that the 8-byte ICMP header is in the packet.
#[inline(always)]
unsafe fn set_type(icmp: usize, ty: u8) {
    unsafe {
        let old: u16 = load(icmp);
        let [_, code] = old.to_ne_bytes();
        let new = u16::from_ne_bytes([ty, code]);
        store(icmp as *mut u16, new);
        let check: u16 = load(icmp + 2);
        store((icmp + 2) as *mut u16, csum_replace(check, old, new));
    }
}

/// Incremental checksum update for one 16-bit word changing from `old` to `new` (RFC 1624,
/// eqn. 3: HC' = ~(~HC + ~m + m')). One's-complement sums do not depend on byte order, so the
/// words may be used as loaded from the packet.
#[inline(always)]
fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}
