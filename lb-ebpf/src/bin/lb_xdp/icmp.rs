//! ICMP and ICMPv6 addressed to a VIP address (parse.rs flags them, lb_xdp dispatches here).
//!
//! - Echo request (IPv4 type 8, ICMPv6 type 128, code 0): answered here with XDP_TX, unless
//!   the address's marker entry has `VIP_F_NO_ECHO`, the source is not one host (the same
//!   rule as for "too big": broadcast, multicast, loopback, unspecified), or this CPU's ICMP
//!   budget is spent (`ratelimit`); then dropped and counted.
//! - Destination unreachable (IPv4 type 3, any code, including 4 "fragmentation needed";
//!   ICMPv6 type 1) and packet too big (ICMPv6 type 2): the error is about a packet a backend
//!   sent from the VIP (direct server return), so the backend needs it (path MTU discovery, RFC
//!   1191 / RFC 8201). The embedded header names the flow: `handle` returns the ICMP packet
//!   with that flow as its key (`Handled::Error`), and lb_xdp's forwarding tail sends it,
//!   untouched, to the flow's backend like any packet of the flow, read-only (`Kind::IcmpError`).
//! - Anything else (neighbour discovery, time exceeded, echo replies, ...): to the kernel.

use core::ptr::write as store;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use lb_common::checksum::csum_replace;
use lb_common::headers::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, HOP_LIMIT, ICMP_DEST_UNREACH, ICMP_ECHO,
    ICMP_ECHO_REPLY, ICMP_HLEN, ICMPV6_DEST_UNREACH, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
    ICMPV6_PKT_TOOBIG, IPV4_FRAG_OFFSET, IPV4_HLEN, IPV6_HLEN, PROTO_ICMP, VLAN_HLEN,
};
use lb_common::toobig::{is_unicast_v4, is_unicast_v6};
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, VIP_F_NO_ECHO};
use lb_ebpf::load;

use crate::packet::Parsed;
use crate::{ratelimit, stats};

/// Bytes of the embedded transport header an error must quote: the ports (RFC 792 quotes 8).
const EMBEDDED_L4_LEN: usize = 8;

/// What `handle` made of an ICMP packet to a VIP address.
pub enum Handled {
    /// Answered (echo), passed or dropped, and counted: lb_xdp returns this XDP action.
    Action(u32),
    /// An error about a flow: the ICMP packet, keyed by the flow it quotes, for the forwarding
    /// tail.
    Error(Parsed),
}

/// Answers, passes or returns for forwarding an ICMP packet parse's `icmp_to_vip` accepted;
/// `addr_flags` are its destination's marker flags (`VIP_F_NO_ECHO`).
///
/// Not inlined: a BPF-to-BPF call on this rare path keeps lb_xdp's body small enough for LLVM
/// to keep it in one piece, so the forwarding path's code stays as without ICMP.
#[inline(never)]
pub fn handle(xdp_md: *mut xdp_md, addr_flags: u32) -> Handled {
    // `black_box` keeps the argument the context pointer: as this function only reads through
    // it, LLVM would otherwise pass `data` and `data_end` loaded by the caller, and the verifier
    // rejects the arithmetic that widens `data_end` here.
    let ctx = &XdpContext::new(core::hint::black_box(xdp_md));
    let data = ctx.data();
    let end = ctx.data_end();
    // parse.rs checked all of this; the verifier needs to see it again.
    if data + ETH_HLEN + VLAN_HLEN > end {
        return Handled::Action(stats::drop(Counter::DropTruncated));
    }
    // SAFETY: the Ethernet header and a VLAN tag's worth of bytes are in the frame (checked).
    let (ethertype, inner): (u16, u16) = unsafe { (load(data + 12), load(data + 16)) };
    match (ethertype, inner) {
        (ETH_P_IP, _) => at::<ETH_HLEN, true>(ctx, addr_flags),
        (ETH_P_IPV6, _) => at::<ETH_HLEN, false>(ctx, addr_flags),
        (ETH_P_8021Q, ETH_P_IP) => at::<{ ETH_HLEN + VLAN_HLEN }, true>(ctx, addr_flags),
        (ETH_P_8021Q, ETH_P_IPV6) => at::<{ ETH_HLEN + VLAN_HLEN }, false>(ctx, addr_flags),
        _ => Handled::Action(stats::drop(Counter::DropTruncated)),
    }
}

/// The ICMP packet with its IP header at `L3`, IPv4 or IPv6.
#[inline(always)]
fn at<const L3: usize, const V4: bool>(ctx: &XdpContext, addr_flags: u32) -> Handled {
    let data = ctx.data();
    let end = ctx.data_end();
    let ip = data + L3;
    let ip_hlen = if V4 { IPV4_HLEN } else { IPV6_HLEN };
    let icmp = ip + ip_hlen;
    if icmp + ICMP_HLEN > end {
        return Handled::Action(stats::drop(Counter::DropTruncated));
    }
    // SAFETY: the ICMP header is in the frame (checked above).
    let (ty, code): (u8, u8) = unsafe { (load(icmp), load(icmp + 1)) };
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
            return Handled::Action(stats::drop(Counter::DropIcmpEchoOff));
        }
        // SAFETY: the source address is in the IP header, before the ICMP header (in the
        // frame, checked above).
        let unicast = unsafe {
            if V4 {
                is_unicast_v4(load(ip + 12))
            } else {
                is_unicast_v6(&load(ip + 8))
            }
        };
        if !unicast {
            return Handled::Action(stats::drop(Counter::DropIcmpEchoBadSource));
        }
        if !ratelimit::allow() {
            return Handled::Action(xdp_action::XDP_DROP);
        }
        // SAFETY: everything up to the end of the ICMP header is in the frame (checked above).
        unsafe {
            if V4 {
                echo_reply_v4(data, ip, icmp);
            } else {
                echo_reply_v6(data, ip, icmp);
            }
        }
        stats::count(Counter::IcmpEchoReply);
        return Handled::Action(xdp_action::XDP_TX);
    }
    if !error {
        stats::count(Counter::PassIcmpOther);
        return Handled::Action(xdp_action::XDP_PASS);
    }
    // SAFETY: all inside the IP header, which precedes the ICMP header (in the frame).
    let (ip_len, tclass, dst) = unsafe {
        if V4 {
            let tot_len = u16::from_be(load(ip + 2));
            (tot_len, load(ip + 1), [load(ip + 16), 0, 0, 0])
        } else {
            let (b0, b1): (u8, u8) = (load(ip), load(ip + 1));
            let payload_len = u16::from_be(load(ip + 4));
            let tclass = (b0 << 4) | (b1 >> 4);
            // icmp_to_vip checked that the packet is in the frame: this cannot overflow.
            let ip_len = payload_len.wrapping_add(IPV6_HLEN as u16);
            (ip_len, tclass, load(ip + 24))
        }
    };
    let key = if V4 {
        embedded_flow_v4(icmp + ICMP_HLEN, end, ip_len as usize, dst[0])
    } else {
        embedded_flow_v6(icmp + ICMP_HLEN, end, ip_len as usize, &dst)
    };
    let Some(key) = key else {
        return Handled::Action(stats::drop(Counter::DropIcmpBadEmbedded));
    };
    Handled::Error(Parsed {
        key,
        l3_off: L3,
        vlan_tci: if L3 == ETH_HLEN + VLAN_HLEN {
            // SAFETY: the VLAN tag is in the frame (checked in `handle`).
            unsafe { load(data + ETH_HLEN) }
        } else {
            0
        },
        ip_len,
        tclass,
        tcp_flags: 0,
        frame_len: (end - data) as u32,
    })
}

/// The flow (client -> VIP) of the reply (VIP -> client) an IPv4 error quotes at `inner`:
/// IHL 5, not a later fragment, TCP or UDP with its ports inside the ICMP packet's `ip_len`,
/// sent from `vip`, the address the error came to.
#[inline(always)]
fn embedded_flow_v4(inner: usize, end: usize, ip_len: usize, vip: u32) -> Option<FlowKey> {
    // The frame bound first, then the IP length (see parse's `icmp_to_vip`).
    if inner + IPV4_HLEN + EMBEDDED_L4_LEN > end {
        return None;
    }
    if ip_len < IPV4_HLEN + ICMP_HLEN + IPV4_HLEN + EMBEDDED_L4_LEN {
        return None;
    }
    // SAFETY: the embedded IPv4 header and 8 bytes after it are in the frame (checked above).
    let (version_ihl, frag, proto, src): (u8, u16, u8, u32) = unsafe {
        (
            load(inner),
            load(inner + 6),
            load(inner + 9),
            load(inner + 12),
        )
    };
    if version_ihl != 0x45
        || frag & IPV4_FRAG_OFFSET != 0
        || (proto != PROTO_TCP && proto != PROTO_UDP)
        || src != vip
    {
        return None;
    }
    let l4 = inner + IPV4_HLEN;
    // SAFETY: as above.
    let (dst, sport, dport): (u32, u16, u16) =
        unsafe { (load(inner + 16), load(l4), load(l4 + 2)) };
    Some(FlowKey {
        src: [dst, 0, 0, 0],
        dst: [src, 0, 0, 0],
        src_port: dport,
        dst_port: sport,
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
    // SAFETY: the embedded IPv6 header and 8 bytes after it are in the frame (checked above).
    let (b0, next_header, src): (u8, u8, [u32; 4]) =
        unsafe { (load(inner), load(inner + 6), load(inner + 8)) };
    if b0 >> 4 != 6 || (next_header != PROTO_TCP && next_header != PROTO_UDP) || src != *vip {
        return None;
    }
    let l4 = inner + IPV6_HLEN;
    // SAFETY: as above.
    let (dst, sport, dport): ([u32; 4], u16, u16) =
        unsafe { (load(inner + 24), load(l4), load(l4 + 2)) };
    Some(FlowKey {
        src: dst,
        dst: src,
        src_port: dport,
        dst_port: sport,
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
    // SAFETY: every access is before the end of the ICMP header (the caller's check).
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
    // SAFETY: every access is before the end of the ICMP header (the caller's check).
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
    // SAFETY: the 12 MAC bytes are in the frame (the caller's check).
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
    // SAFETY: the type, code and checksum are in the ICMP header (the caller's check).
    unsafe {
        let old: u16 = load(icmp);
        let [_, code] = old.to_ne_bytes();
        let new = u16::from_ne_bytes([ty, code]);
        store(icmp as *mut u16, new);
        let check: u16 = load(icmp + 2);
        store((icmp + 2) as *mut u16, csum_replace(check, old, new));
    }
}
