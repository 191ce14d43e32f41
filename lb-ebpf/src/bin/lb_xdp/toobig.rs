//! Too big to encapsulate: a client packet that would exceed the NIC's MTU once the tunnel
//! header is added (40 bytes, 48 with GUE) is not forwarded. The client is told to send smaller
//! packets with ICMP "fragmentation needed" (IPv4 with DF, RFC 1191) or ICMPv6 "packet too big"
//! (RFC 8201), sent back out of the same NIC with XDP_TX. IPv4 without DF is dropped: the load
//! balancer does not fragment. docs/dataplane.md ("Too big to encapsulate") has the policy and
//! the exact messages.
//!
//! The frame is reshaped in place: the tail is cut to the quote, the head grows by the new IP +
//! ICMP headers, so the quoted bytes of the original packet never move. The ICMP checksum is
//! summed with `bpf_csum_diff` over constant-size chunks (at most 512 bytes each, the helper's
//! limit), so the verifier sees fixed sizes only.
//!
//! Fast path: `check` costs one compare for a packet that fits (or when the MTU is 0, unset).
//! A message is sent only within this CPU's ICMP budget (`ratelimit`); over it, the packet is
//! dropped and counted.
//!
//! The sizes and decisions (overhead, quote, who may be answered) are pure functions in
//! `lb_common::toobig` and `lb_common::checksum`, tested on the host; this module builds the
//! message.

use core::ptr::{null_mut, write as store};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_csum_diff, bpf_get_prandom_u32, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::checksum::{fold, ipv4_icmp_header_checksum};
use lb_common::headers::{
    ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, HOP_LIMIT, ICMP_HLEN, IPV4_DF, IPV4_HLEN, IPV6_HLEN,
    PROTO_ICMP, PROTO_ICMPV6,
};
use lb_common::toobig::{
    GROW4, GROW6, ICMP_FRAG_NEEDED_WORD, ICMPV6_TOO_BIG_WORD, QUOTE4_FULL, QUOTE4_MIN, QUOTE6_FULL,
    QUOTE6_MIN, Quote, advertised_mtu, exceeds, is_unicast_v4, is_unicast_v6, overhead, quote,
};
use lb_common::{Counter, FAMILY_V4, IfaceConfig, PROTO_TCP, PROTO_UDP, VipMeta};
use lb_ebpf::load;

use crate::packet::Parsed;
use crate::{ratelimit, stats};

/// `bpf_csum_diff` sums at most 512 bytes per call, in multiples of 4.
const CSUM_CHUNK: usize = 512;
// Every checksummed region is a multiple of 4 and fits in three chunks.
const _: () = assert!(
    (ICMP_HLEN + QUOTE4_FULL).is_multiple_of(4) && (ICMP_HLEN + QUOTE4_MIN).is_multiple_of(4)
);
const _: () = assert!((32 + ICMP_HLEN + QUOTE6_FULL).is_multiple_of(4));
const _: () = assert!((32 + ICMP_HLEN + QUOTE6_MIN).is_multiple_of(4));
const _: () = assert!(32 + ICMP_HLEN + QUOTE6_FULL <= 3 * CSUM_CHUNK);

/// The too-big check, between the backend choice and the encapsulation. `None`: the packet
/// fits, encapsulate it. `Some(verdict)`: it was answered with ICMP (XDP_TX) or dropped.
#[inline(always)]
pub fn check(
    ctx: &XdpContext,
    pkt: &Parsed,
    vip: &VipMeta,
    iface: &IfaceConfig,
    srh: bool,
) -> Option<u32> {
    let overhead = overhead(vip.flags, srh);
    if !exceeds(pkt.ip_len, overhead, iface.mtu) {
        return None;
    }
    Some(reply(ctx, pkt, iface.mtu, overhead))
}

/// Sums `len` bytes at `p` (a constant multiple of 4, at most three chunks, already checked
/// against the packet end by the caller).
#[inline(always)]
unsafe fn sum_bytes(p: usize, len: usize) -> u64 {
    /// # Safety
    /// `n` bytes at `p` are in the packet.
    #[inline(always)]
    unsafe fn chunk(p: usize, n: usize) -> u64 {
        // SAFETY: in the packet (the caller's check). Sizes are compile-time multiples of 4
        // within the helper's limit: it cannot fail.
        unsafe { bpf_csum_diff(null_mut(), 0, p as *mut u32, n as u32, 0) as u32 as u64 }
    }
    // SAFETY: each chunk lies within the `len` bytes the caller checked.
    let mut sum = unsafe { chunk(p, if len < CSUM_CHUNK { len } else { CSUM_CHUNK }) };
    if len > CSUM_CHUNK {
        let n = len - CSUM_CHUNK;
        // SAFETY: see above.
        sum += unsafe { chunk(p + CSUM_CHUNK, if n < CSUM_CHUNK { n } else { CSUM_CHUNK }) };
    }
    if len > 2 * CSUM_CHUNK {
        // SAFETY: see above.
        sum += unsafe { chunk(p + 2 * CSUM_CHUNK, len - 2 * CSUM_CHUNK) };
    }
    sum
}

#[inline(always)]
fn reply(ctx: &XdpContext, pkt: &Parsed, mtu: u16, overhead: u32) -> u32 {
    let adv = advertised_mtu(mtu, overhead);
    match (pkt.key.family == FAMILY_V4, pkt.l3_off == 18) {
        (true, false) => reply_v4::<14>(ctx, pkt, mtu, adv as u16),
        (true, true) => reply_v4::<18>(ctx, pkt, mtu, adv as u16),
        (false, false) => reply_v6::<14>(ctx, pkt, mtu, adv),
        (false, true) => reply_v6::<18>(ctx, pkt, mtu, adv),
    }
}

#[inline(always)]
fn reply_v4<const L3: usize>(ctx: &XdpContext, pkt: &Parsed, mtu: u16, adv: u16) -> u32 {
    let ip = ctx.data() + L3;
    if ip + IPV4_HLEN > ctx.data_end() {
        return stats::drop(Counter::DropTruncated);
    }
    // SAFETY: in the IPv4 header, in the frame (checked above).
    let frag: u16 = unsafe { load(ip + 6) };
    if frag & IPV4_DF == 0 {
        // The load balancer does not fragment: see docs/dataplane.md.
        return stats::drop(Counter::DropTooBigNoDf);
    }
    // SAFETY: in the IPv4 header (see above).
    if !answerable(unsafe { load(ip + 9) }) {
        return stats::drop(Counter::DropEncap);
    }
    if !is_unicast_v4(pkt.key.src[0]) {
        return stats::drop(Counter::DropBadIpHeader);
    }
    if !ratelimit::allow() {
        return xdp_action::XDP_DROP;
    }
    match quote(pkt.ip_len, mtu, QUOTE4_FULL, QUOTE4_MIN, GROW4) {
        Quote::Full => build_v4::<L3, QUOTE4_FULL>(ctx, pkt, adv),
        Quote::Min => build_v4::<L3, QUOTE4_MIN>(ctx, pkt, adv),
        Quote::None => stats::drop(Counter::DropEncap),
    }
}

#[inline(always)]
fn reply_v6<const L3: usize>(ctx: &XdpContext, pkt: &Parsed, mtu: u16, adv: u32) -> u32 {
    let ip = ctx.data() + L3;
    if ip + IPV6_HLEN > ctx.data_end() {
        return stats::drop(Counter::DropTruncated);
    }
    // SAFETY: in the IPv6 header, in the frame (checked above).
    if !answerable(unsafe { load(ip + 6) }) {
        return stats::drop(Counter::DropEncap);
    }
    if !is_unicast_v6(&pkt.key.src) {
        return stats::drop(Counter::DropBadIpHeader);
    }
    if !ratelimit::allow() {
        return xdp_action::XDP_DROP;
    }
    match quote(pkt.ip_len, mtu, QUOTE6_FULL, QUOTE6_MIN, GROW6) {
        Quote::Full => build_v6::<L3, QUOTE6_FULL>(ctx, pkt, adv),
        Quote::Min => build_v6::<L3, QUOTE6_MIN>(ctx, pkt, adv),
        Quote::None => stats::drop(Counter::DropEncap),
    }
}

/// Only TCP and UDP are answered: never an ICMP error about an ICMP message (RFC 1122
/// 3.2.2, RFC 4443 2.4 (e)), whatever path brought it here.
#[inline(always)]
fn answerable(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

/// Cuts the frame to the Ethernet header and `quote` bytes of the IP packet, then makes room
/// for `grow` bytes of new headers in front of the IP packet.
#[inline(always)]
fn reshape<const L3: usize>(ctx: &XdpContext, pkt: &Parsed, quote: usize, grow: usize) -> bool {
    let keep = L3 + quote;
    let frame_len = pkt.frame_len as usize;
    if frame_len > keep
        // SAFETY: a helper call on this program's own context; it checks the new length.
        && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame_len - keep) as i32)) } != 0
    {
        return false;
    }
    // SAFETY: a helper call on this program's own context; it checks the headroom.
    unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) == 0 }
}

/// The reply's link layer: the received frame's MACs swapped, its VLAN tag kept. The old
/// header is `grow` bytes further in; it is read before anything overwrites it.
///
/// # Safety
/// The frame holds `L3` bytes at `data` and the old Ethernet header at `data + grow`.
#[inline(always)]
unsafe fn write_l2<const L3: usize>(data: usize, grow: usize, ethertype: u16, vlan_tci: u16) {
    // SAFETY: both headers are in the frame (the caller's check).
    unsafe {
        // Scalar loads and stores: a [u8; 6] copy between packet bytes becomes a memcpy call.
        let old = data + grow;
        let dst_hi: u32 = load(old);
        let dst_lo: u16 = load(old + 4);
        let src_hi: u16 = load(old + 6);
        let src_lo: u32 = load(old + 8);
        store(data as *mut u16, src_hi);
        store((data + 2) as *mut u32, src_lo);
        store((data + 6) as *mut u32, dst_hi);
        store((data + 10) as *mut u16, dst_lo);
        if L3 == 18 {
            store((data + 12) as *mut u16, ETH_P_8021Q);
            store((data + 14) as *mut u16, vlan_tci);
        }
        store((data + L3 - 2) as *mut u16, ethertype);
    }
}

/// An IPv6 address, word by word (an array store to the packet would become a memcpy call).
///
/// # Safety
/// 16 bytes at `p` are in the frame.
#[inline(always)]
unsafe fn store_addr(p: usize, addr: &[u32; 4]) {
    // SAFETY: in the frame (the caller's check).
    unsafe {
        store(p as *mut u32, addr[0]);
        store((p + 4) as *mut u32, addr[1]);
        store((p + 8) as *mut u32, addr[2]);
        store((p + 12) as *mut u32, addr[3]);
    }
}

/// Ethernet | IPv4 (VIP -> client) | ICMP 3/4 | the first `Q` bytes of the client's packet.
#[inline(always)]
fn build_v4<const L3: usize, const Q: usize>(ctx: &XdpContext, pkt: &Parsed, adv: u16) -> u32 {
    if !reshape::<L3>(ctx, pkt, Q, GROW4) {
        return stats::drop(Counter::DropEncap);
    }
    let data = ctx.data();
    if data + L3 + GROW4 + Q > ctx.data_end() {
        return stats::drop(Counter::DropEncap);
    }
    let saddr = pkt.key.dst[0];
    let daddr = pkt.key.src[0];
    let tot_len = ((GROW4 + Q) as u16).to_be();
    // DF clear (a router may fragment this small message), so a fresh id (RFC 6864).
    // SAFETY: a helper call without arguments.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    // SAFETY: the reply's headers and the quote are in the frame (checked above).
    unsafe {
        write_l2::<L3>(data, GROW4, ETH_P_IP, pkt.vlan_tci);
        let ip = data + L3;
        store(ip as *mut u16, 0x4500u16.to_be());
        store((ip + 2) as *mut u16, tot_len);
        store((ip + 4) as *mut u16, id);
        store((ip + 6) as *mut u16, 0);
        store((ip + 8) as *mut u8, HOP_LIMIT);
        store((ip + 9) as *mut u8, PROTO_ICMP);
        store(
            (ip + 10) as *mut u16,
            ipv4_icmp_header_checksum(tot_len, id, saddr, daddr),
        );
        store((ip + 12) as *mut u32, saddr);
        store((ip + 16) as *mut u32, daddr);
        let icmp = ip + IPV4_HLEN;
        store(icmp as *mut u16, ICMP_FRAG_NEEDED_WORD.to_be());
        store((icmp + 2) as *mut u16, 0);
        store((icmp + 4) as *mut u16, 0);
        store((icmp + 6) as *mut u16, adv.to_be());
        let sum = sum_bytes(icmp, ICMP_HLEN + Q);
        store((icmp + 2) as *mut u16, !fold(sum));
    }
    stats::count(Counter::IcmpTooBigSent);
    xdp_action::XDP_TX
}

/// Ethernet | IPv6 (VIP -> client) | ICMPv6 2/0 | the first `Q` bytes of the client's packet.
#[inline(always)]
fn build_v6<const L3: usize, const Q: usize>(ctx: &XdpContext, pkt: &Parsed, adv: u32) -> u32 {
    if !reshape::<L3>(ctx, pkt, Q, GROW6) {
        return stats::drop(Counter::DropEncap);
    }
    let data = ctx.data();
    if data + L3 + GROW6 + Q > ctx.data_end() {
        return stats::drop(Counter::DropEncap);
    }
    let payload_len = ((ICMP_HLEN + Q) as u16).to_be();
    // SAFETY: the reply's headers and the quote are in the frame (checked above).
    unsafe {
        write_l2::<L3>(data, GROW6, ETH_P_IPV6, pkt.vlan_tci);
        let ip = data + L3;
        store(ip as *mut u32, (6u32 << 28).to_be());
        store((ip + 4) as *mut u16, payload_len);
        store((ip + 6) as *mut u8, PROTO_ICMPV6);
        store((ip + 7) as *mut u8, HOP_LIMIT);
        store_addr(ip + 8, &pkt.key.dst);
        store_addr(ip + 24, &pkt.key.src);
        let icmp = ip + IPV6_HLEN;
        store(icmp as *mut u16, ICMPV6_TOO_BIG_WORD.to_be());
        store((icmp + 2) as *mut u16, 0);
        store((icmp + 4) as *mut u32, adv.to_be());
        // Pseudo-header (RFC 8200 8.1): the addresses are summed in place with the message;
        // the upper-layer length and next header words are added here.
        let sum = sum_bytes(ip + 8, 32 + ICMP_HLEN + Q)
            + payload_len as u64
            + (PROTO_ICMPV6 as u16).to_be() as u64;
        store((icmp + 2) as *mut u16, !fold(sum));
    }
    stats::count(Counter::IcmpTooBigSent);
    xdp_action::XDP_TX
}
