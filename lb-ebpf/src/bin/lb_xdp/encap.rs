//! Encapsulation: the client's IP packet, byte for byte, behind a new IPv6 header (RFC 2473:
//! next header 4 for IPv4, 41 for IPv6), or behind IPv6 + UDP for GUE variant 1 (the inner IP
//! header directly after UDP). A packet with a second chance also carries a Segment Routing
//! Header between the IPv6 header and the rest (`lb_common::srh`). The MACs are the egress
//! step's (`egress`), which then sends the frame.

use core::mem::offset_of;
use core::ptr::write as store;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::headers::{
    ENCAP_GUE_LEN, ENCAP_IP6_LEN, ENCAP_SRH_LEN, ETH_P_8021Q, ETH_P_IPV6, HOP_LIMIT, IPV6_HLEN,
    NEXT_HEADER_IPIP, NEXT_HEADER_IPV6, NEXT_HEADER_UDP,
};
use lb_common::srh::{
    NEXT_HEADER_ROUTING, SRH_OFF_CURRENT, SRH_OFF_PREVIOUS, SRH_WORD1, srh_word0,
};
use lb_common::{Counter, FAMILY_V4, IfaceConfig, LbConfig, VIP_F_GUE, VipMeta};

use crate::packet::{Parsed, Target};
use crate::stats;

const UDP_HLEN: u16 = lb_common::headers::UDP_HLEN as u16;
/// Where the MACs lie in `IfaceConfig`, for the u16 reads below (even offsets).
const SRC_MAC: usize = offset_of!(IfaceConfig, src_mac);
const DST_MAC: usize = offset_of!(IfaceConfig, dst_mac);
const _: () = assert!(
    SRC_MAC.is_multiple_of(2) && DST_MAC.is_multiple_of(2) && align_of::<IfaceConfig>() >= 2
);

#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    pkt: &Parsed,
    vip: &VipMeta,
    cfg: &LbConfig,
    iface: &IfaceConfig,
    target: &Target,
    prev: Option<[u32; 4]>,
) -> u32 {
    let gue = vip.flags & VIP_F_GUE != 0;
    // Link-layer padding after the IP packet would end up inside the tunnel payload: trim it.
    let ip_end = pkt.l3_off + pkt.ip_len as usize;
    let frame_len = pkt.frame_len as usize;
    if frame_len > ip_end
        // SAFETY: a helper call on this program's own context; it checks the new length.
        && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame_len - ip_end) as i32)) } != 0
    {
        return stats::drop(Counter::DropEncap);
    }
    let grow = if gue { ENCAP_GUE_LEN } else { ENCAP_IP6_LEN }
        + if prev.is_some() { ENCAP_SRH_LEN } else { 0 };
    // SAFETY: a helper call on this program's own context; it checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return stats::drop(Counter::DropEncap);
    }
    let ok = match (pkt.l3_off == 18, gue, prev) {
        (false, false, None) => write_outer::<14, false, false>(ctx, pkt, cfg, iface, target, None),
        (false, true, None) => write_outer::<14, true, false>(ctx, pkt, cfg, iface, target, None),
        (true, false, None) => write_outer::<18, false, false>(ctx, pkt, cfg, iface, target, None),
        (true, true, None) => write_outer::<18, true, false>(ctx, pkt, cfg, iface, target, None),
        // Second chance: the rare packets of flows a table change moved.
        (false, false, p) => write_outer::<14, false, true>(ctx, pkt, cfg, iface, target, p),
        (false, true, p) => write_outer::<14, true, true>(ctx, pkt, cfg, iface, target, p),
        (true, false, p) => write_outer::<18, false, true>(ctx, pkt, cfg, iface, target, p),
        (true, true, p) => write_outer::<18, true, true>(ctx, pkt, cfg, iface, target, p),
    };
    if !ok {
        return stats::drop(Counter::DropEncap);
    }
    if prev.is_some() {
        stats::count(Counter::TxSecondChance);
    }
    stats::count(if gue { Counter::TxGue } else { Counter::Tx });
    xdp_action::XDP_TX
}

/// Writes Ethernet (+ VLAN), IPv6, with `SRH` the Segment Routing Header naming `prev` then
/// the target (`lb_common::srh`), and for GUE UDP, in front of the inner packet.
#[inline(always)]
fn write_outer<const L3: usize, const GUE: bool, const SRH: bool>(
    ctx: &XdpContext,
    pkt: &Parsed,
    cfg: &LbConfig,
    iface: &IfaceConfig,
    target: &Target,
    prev: Option<[u32; 4]>,
) -> bool {
    let data = ctx.data();
    let udp_len = if GUE { UDP_HLEN as usize } else { 0 };
    let srh_len = if SRH { ENCAP_SRH_LEN } else { 0 };
    if data + L3 + IPV6_HLEN + srh_len + udp_len > ctx.data_end() {
        return false;
    }
    // RFC 6438: the flow label carries the flow's hash so routers and backend NICs can spread
    // tunnelled flows; zero means "no label", so avoid it.
    let mut label = target.hash & 0x000F_FFFF;
    if label == 0 {
        label = 1;
    }
    let word0 = (6u32 << 28) | ((pkt.tclass as u32) << 20) | label;
    let udp_payload = pkt.ip_len + if GUE { UDP_HLEN } else { 0 };
    let payload_len = udp_payload + srh_len as u16;
    let tunnel_header = if GUE {
        NEXT_HEADER_UDP
    } else if pkt.key.family == FAMILY_V4 {
        NEXT_HEADER_IPIP
    } else {
        NEXT_HEADER_IPV6
    };
    let next_header = if SRH {
        NEXT_HEADER_ROUTING
    } else {
        tunnel_header
    };
    // SAFETY: the new headers are in the frame (checked above); the MAC reads stay inside
    // `*iface` (two 6-byte arrays at even offsets of the 2-aligned IfaceConfig, read as three
    // aligned u16 each: unaligned reads compile to byte loads and shifts in BPF).
    unsafe {
        // Word stores: an array store compiles to a byte-by-byte memmove call in BPF.
        let link = iface as *const IfaceConfig as *const u16;
        let (src, dst) = (link.add(SRC_MAC / 2), link.add(DST_MAC / 2));
        for i in 0..3 {
            store((data + 2 * i) as *mut u16, *dst.add(i));
            store((data + 6 + 2 * i) as *mut u16, *src.add(i));
        }
        if L3 == 18 {
            store((data + 12) as *mut u16, ETH_P_8021Q);
            store((data + 14) as *mut u16, pkt.vlan_tci);
        }
        store((data + L3 - 2) as *mut u16, ETH_P_IPV6);
        let ip = data + L3;
        store(ip as *mut u32, word0.to_be());
        store((ip + 4) as *mut u16, payload_len.to_be());
        store((ip + 6) as *mut u8, next_header);
        store((ip + 7) as *mut u8, HOP_LIMIT);
        for i in 0..4 {
            store((ip + 8 + 4 * i) as *mut u32, cfg.src_ip6[i]);
            store((ip + 24 + 4 * i) as *mut u32, target.addr[i]);
        }
        if SRH && let Some(prev) = prev {
            // Segment list[0] is the previous backend (the next segment), [1] the target (the
            // active one, already the destination); segments left 1 (RFC 8754).
            let srh = ip + IPV6_HLEN;
            store(srh as *mut u32, srh_word0(tunnel_header).to_be());
            store((srh + 4) as *mut u32, SRH_WORD1.to_be());
            for (i, (p, t)) in prev.iter().zip(&target.addr).enumerate() {
                store((srh + SRH_OFF_PREVIOUS + 4 * i) as *mut u32, *p);
                store((srh + SRH_OFF_CURRENT + 4 * i) as *mut u32, *t);
            }
        }
        if GUE {
            let udp = ip + IPV6_HLEN + srh_len;
            // Source port from the flow hash (ephemeral range) for RSS on the backend's NIC.
            let sport = 0xC000u16 | ((target.hash >> 20) as u16 & 0x3FFF);
            store(udp as *mut u16, sport.to_be());
            store((udp + 2) as *mut u16, cfg.gue_port);
            store((udp + 4) as *mut u16, udp_payload.to_be());
            // Zero UDP checksum over IPv6 for a tunnel, as RFC 6935/6936 allow: the inner
            // packet carries its own transport checksum (see docs/dataplane.md).
            store((udp + 6) as *mut u16, 0);
        }
    }
    true
}
