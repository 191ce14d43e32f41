//! `lb_health_encap`: TC egress on the load balancer's NIC. Packets of the agent's health-check
//! sockets (marked `HEALTH_MARK_BASE | index`) are encapsulated to the backend `HEALTH_TARGETS[mark]`
//! names, in the same IPv6 (or IPv6 + UDP for GUE) header the XDP program writes for client
//! packets. So a check connection to the VIP travels the tunnel like real traffic, and the
//! backend's reply comes back directly, as for a client. The tunnelled packet then leaves the
//! way the kernel routes the backend's address (its NIC and next hop, from `bpf_fib_lookup`),
//! which in a two-arm setup is another NIC than the VIP's route. Every other packet passes
//! untouched.
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values stay borrowed: passed by value, LLVM emits different code"
)]

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV6, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use lb_common::headers::{
    ETH_HLEN, ETH_P_IP, ETH_P_IPV6, GUE_HLEN, HOP_LIMIT, IPV6_HLEN, NEXT_HEADER_IPIP,
    NEXT_HEADER_IPV6, NEXT_HEADER_UDP, PROTO_TCP, TCP_RST, UDP_HLEN,
};
use lb_common::health::{
    HEALTH_F_GUE, HEALTH_MARK_BASE, HEALTH_MARK_MASK, HealthCounter, HealthTarget,
    MAX_HEALTH_TARGETS, MAX_HEALTH_VIPS,
};
// The panic handler.
use lb_ebpf as _;

/// The verdicts as the program returns them.
#[allow(
    clippy::unnecessary_cast,
    reason = "TC_ACT_* are i32 in some architectures' bindings, u32 in others"
)]
const OK: i32 = TC_ACT_OK as i32;
#[allow(
    clippy::unnecessary_cast,
    reason = "TC_ACT_* are i32 in some architectures' bindings, u32 in others"
)]
const SHOT: i32 = TC_ACT_SHOT as i32;

#[map]
static HEALTH_TARGETS: HashMap<u32, HealthTarget> =
    HashMap::with_max_entries(MAX_HEALTH_TARGETS, 0);

#[map]
static HEALTH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(HealthCounter::COUNT, 0);

/// The checked VIP addresses (IPv4 in the first word, the rest zero).
#[map]
static HEALTH_VIPS: HashMap<[u32; 4], u8> = HashMap::with_max_entries(MAX_HEALTH_VIPS, 0);

/// The outer IPv6 header, as on the wire.
#[repr(C)]
struct Ipv6Header {
    word0: u32,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u32; 4],
    dst: [u32; 4],
}

#[repr(C)]
struct UdpHeader {
    src_port: u16,
    dst_port: u16,
    len: u16,
    csum: u16,
}

#[inline(always)]
fn count(c: HealthCounter) {
    if let Some(v) = HEALTH_STATS.get_ptr_mut(c as u32) {
        // SAFETY: a valid pointer to this CPU's slot, which nothing else writes meanwhile.
        unsafe { *v += 1 };
    }
}

#[classifier]
pub fn lb_health_encap(ctx: TcContext) -> i32 {
    // SAFETY: the context's skb pointer is valid for the program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if mark & HEALTH_MARK_MASK != HEALTH_MARK_BASE {
        if is_stray_reset(&ctx) {
            count(HealthCounter::DropStrayReset);
            return SHOT;
        }
        return OK;
    }
    // A check packet must never leave unencapsulated: the router would send it to the VIP
    // through any load balancer and the check would pass for the wrong backend.
    // SAFETY: the value is read at once, before anything could delete it.
    let Some(target) = (unsafe { HEALTH_TARGETS.get(&mark) }) else {
        count(HealthCounter::DropNoTarget);
        return SHOT;
    };
    match encapsulate(&ctx, target) {
        Ok(()) => {
            count(HealthCounter::Encapsulated);
            route(&ctx, target)
        }
        Err(()) => {
            count(HealthCounter::DropEncap);
            SHOT
        }
    }
}

#[inline(always)]
fn encapsulate(ctx: &TcContext, t: &HealthTarget) -> Result<(), ()> {
    // skb->protocol holds the ethertype in network order, like the `headers` constants.
    // SAFETY: the context's skb pointer is valid for the program run.
    let next_header = match unsafe { (*ctx.skb.skb).protocol } as u16 {
        ETH_P_IP => NEXT_HEADER_IPIP,
        ETH_P_IPV6 => NEXT_HEADER_IPV6,
        _ => return Err(()),
    };
    let inner_len = (ctx.len() as usize).checked_sub(ETH_HLEN).ok_or(())? as u16;
    let gue = t.flags & HEALTH_F_GUE != 0;
    let (grow, flags) = if gue {
        (
            GUE_HLEN,
            BPF_F_ADJ_ROOM_ENCAP_L3_IPV6 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        )
    } else {
        (IPV6_HLEN, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6)
    };
    ctx.adjust_room(grow as i32, BPF_ADJ_ROOM_MAC, flags as u64)
        .map_err(|_| ())?;
    let payload_len = inner_len + if gue { UDP_HLEN as u16 } else { 0 };
    let ip = Ipv6Header {
        word0: (6u32 << 28).to_be(),
        payload_len: payload_len.to_be(),
        next_header: if gue { NEXT_HEADER_UDP } else { next_header },
        hop_limit: HOP_LIMIT,
        src: t.src_ip6,
        dst: t.dst_ip6,
    };
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    if gue {
        let udp = UdpHeader {
            src_port: (0xC000u16 | (mark_port(ctx) & 0x3FFF)).to_be(),
            dst_port: t.gue_port,
            len: payload_len.to_be(),
            // Zero UDP checksum for a tunnel over IPv6 (RFC 6935), as the XDP program does.
            csum: 0,
        };
        ctx.store(ETH_HLEN + IPV6_HLEN, &udp, 0).map_err(|_| ())?;
    }
    ctx.store(12, &ETH_P_IPV6, 0).map_err(|_| ())
}

/// Sends the tunnelled check by the backend's route when the agent named its NIC: the kernel
/// finds the route and the neighbour there (`bpf_redirect_neigh`, Linux 5.10), so the check
/// takes the same NIC and next hop as the backend's client packets. (`bpf_fib_lookup` would
/// need IPv6 forwarding on the NIC.)
#[inline(always)]
fn route(ctx: &TcContext, t: &HealthTarget) -> i32 {
    use aya_ebpf::helpers::bpf_redirect_neigh;
    if t.egress_ifindex == 0 {
        return OK;
    }
    // SAFETY: the context's skb pointer is valid for the program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if t.egress_ifindex != ifindex {
        count(HealthCounter::Redirected);
    }
    // The egress NIC runs this program again: without the mark the tunnelled packet passes it
    // untouched instead of being encapsulated twice.
    // SAFETY: the context's skb pointer is valid; `mark` is writable from TC programs.
    unsafe { (*ctx.skb.skb).mark = 0 };
    // SAFETY: a helper call without neighbour parameters (the kernel looks the route up).
    unsafe { bpf_redirect_neigh(t.egress_ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Whether an unmarked packet is a TCP reset to a checked VIP. A check's socket marks all it
/// sends, even from TIME_WAIT; a reset without a mark comes from no socket: the kernel answering
/// a backend's segment that arrived after the check's socket was gone.
#[inline(always)]
fn is_stray_reset(ctx: &TcContext) -> bool {
    // SAFETY: the context's skb pointer is valid for the program run.
    let (dst, flags_at) = match unsafe { (*ctx.skb.skb).protocol } as u16 {
        ETH_P_IP => {
            let Ok(vihl) = ctx.load::<u8>(ETH_HLEN) else {
                return false;
            };
            if ctx.load::<u8>(ETH_HLEN + 9) != Ok(PROTO_TCP) {
                return false;
            }
            let Ok(d) = ctx.load::<u32>(ETH_HLEN + 16) else {
                return false;
            };
            ([d, 0, 0, 0], ETH_HLEN + (vihl as usize & 0x0f) * 4 + 13)
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(ETH_HLEN + 6) != Ok(PROTO_TCP) {
                return false;
            }
            let Ok(d) = ctx.load::<[u32; 4]>(ETH_HLEN + 24) else {
                return false;
            };
            (d, ETH_HLEN + IPV6_HLEN + 13)
        }
        _ => return false,
    };
    if flags_at > ETH_HLEN + 60 + 13 {
        return false;
    }
    matches!(ctx.load::<u8>(flags_at), Ok(f) if f & TCP_RST != 0)
        // SAFETY: the value is only tested for presence, never read.
        && unsafe { HEALTH_VIPS.get(&dst) }.is_some()
}

/// A per-packet varying source port is pointless for a handful of check packets; the mark's
/// index keeps each check on one RSS queue.
#[inline(always)]
fn mark_port(ctx: &TcContext) -> u16 {
    // SAFETY: the context's skb pointer is valid for the program run.
    (unsafe { (*ctx.skb.skb).mark } & 0xFFFF) as u16
}
