//! Bounds-checked header parsing: Ethernet (optionally one 802.1Q tag), IPv4/IPv6, TCP/UDP.
//!
//! Every read is preceded by a check against `data_end` the verifier can see. Offsets are
//! const generics, so each header sits at a constant offset and the checks stay cheap.
//! Non-VIP traffic leaves as early as possible: after the destination address's filter bit.
//! ICMP and ICMPv6 to a VIP address (exact check) leave as `Verdict::Icmp`, for icmp.rs.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, fold_v6};

use crate::wire::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, PROTO_ICMP, PROTO_ICMPV6,
    TCP_HLEN, UDP_HLEN, VLAN_HLEN, load,
};
use crate::{icmp, stats, vip};

/// IPv4 "more fragments" flag and fragment offset bits.
const IPV4_FRAG_MASK: u16 = 0x3FFFu16.to_be();

/// What the program must do with a packet it will not forward, and the counter to bump.
pub enum Verdict {
    Pass(Counter),
    Drop(Counter),
    /// ICMP or ICMPv6 to a VIP address (its marker's flags): lb_xdp hands it to `icmp::handle`.
    Icmp(u32),
}

impl Verdict {
    #[inline(always)]
    pub fn apply(self) -> u32 {
        match self {
            Verdict::Pass(c) => {
                stats::count(c);
                xdp_action::XDP_PASS
            }
            Verdict::Drop(c) => stats::drop(c),
            // Not reached: lb_xdp dispatches ICMP before applying verdicts.
            Verdict::Icmp(_) => {
                stats::count(Counter::PassIcmpOther);
                xdp_action::XDP_PASS
            }
        }
    }
}

/// A checked client -> VIP packet.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the IP header: 14, or 18 with a VLAN tag.
    pub l3_off: usize,
    /// The VLAN tag control information (network order), when `l3_off` is 18.
    pub vlan_tci: u16,
    /// Length of the IP packet from its own header; bytes after it are link padding.
    pub ip_len: u16,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tclass: u8,
    pub tcp_flags: u8,
    pub frame_len: u32,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, Verdict> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return Err(Verdict::Pass(Counter::PassNonIp));
    }
    let ethertype: u16 = unsafe { load(data + 12) };
    if ethertype == ETH_P_8021Q {
        if data + ETH_HLEN + VLAN_HLEN > end {
            return Err(Verdict::Pass(Counter::PassNonIp));
        }
        let tci: u16 = unsafe { load(data + 14) };
        let inner: u16 = unsafe { load(data + 16) };
        return match inner {
            ETH_P_IP => parse_v4::<{ ETH_HLEN + VLAN_HLEN }>(data, end, tci),
            ETH_P_IPV6 => parse_v6::<{ ETH_HLEN + VLAN_HLEN }>(data, end, tci),
            _ => Err(Verdict::Pass(Counter::PassNonIp)),
        };
    }
    match ethertype {
        ETH_P_IP => parse_v4::<ETH_HLEN>(data, end, 0),
        ETH_P_IPV6 => parse_v6::<ETH_HLEN>(data, end, 0),
        _ => Err(Verdict::Pass(Counter::PassNonIp)),
    }
}

/// Ports and flags of a TCP or UDP header at `l4`, and its minimum length.
///
/// Called before the IP length checks: were it after them, LLVM would drop this bounds check
/// as implied by `ip + ip_len <= end`, and the verifier cannot follow that reasoning.
#[inline(always)]
fn parse_l4(l4: usize, end: usize, proto: u8) -> Result<(u16, u16, u8, usize), Verdict> {
    match proto {
        PROTO_TCP => {
            if l4 + TCP_HLEN > end {
                return Err(Verdict::Drop(Counter::DropTruncated));
            }
            Ok(unsafe { (load(l4), load(l4 + 2), load(l4 + 13), TCP_HLEN) })
        }
        PROTO_UDP => {
            if l4 + UDP_HLEN > end {
                return Err(Verdict::Drop(Counter::DropTruncated));
            }
            Ok(unsafe { (load(l4), load(l4 + 2), 0, UDP_HLEN) })
        }
        _ => Err(Verdict::Pass(Counter::PassVipOtherService)),
    }
}

/// A packet the filter flagged but that cannot be balanced: dropped (and counted under `why`)
/// only if it really is addressed to a VIP, else it is someone else's and goes to the kernel.
#[inline(always)]
fn refuse(family: u8, addr: &[u32; 4], why: Counter) -> Verdict {
    if vip::is_vip_address(family, addr) {
        Verdict::Drop(why)
    } else {
        Verdict::Pass(Counter::PassNotVip)
    }
}

#[inline(always)]
fn parse_v4<const L3: usize>(data: usize, end: usize, vlan_tci: u16) -> Result<Parsed, Verdict> {
    let ip = data + L3;
    if ip + IPV4_HLEN > end {
        return Err(Verdict::Drop(Counter::DropTruncated));
    }
    let daddr: u32 = unsafe { load(ip + 16) };
    if !vip::filter_hit(daddr) {
        return Err(Verdict::Pass(Counter::PassNotVip));
    }
    let dst = [daddr, 0, 0, 0];
    let version_ihl: u8 = unsafe { load(ip) };
    if version_ihl != 0x45 {
        if version_ihl >> 4 != 4 || version_ihl & 0x0F < 5 {
            return Err(Verdict::Drop(Counter::DropBadIpHeader));
        }
        return Err(refuse(FAMILY_V4, &dst, Counter::DropIpv4Options));
    }
    let frag: u16 = unsafe { load(ip + 6) };
    if frag & IPV4_FRAG_MASK != 0 {
        return Err(refuse(FAMILY_V4, &dst, Counter::DropIpv4Fragment));
    }
    let proto: u8 = unsafe { load(ip + 9) };
    if proto == PROTO_ICMP {
        let tot_len = u16::from_be(unsafe { load(ip + 2) });
        return Err(icmp::to_vip::<L3>(
            data,
            end,
            FAMILY_V4,
            &dst,
            tot_len as usize,
        ));
    }
    let (src_port, dst_port, tcp_flags, l4_min) = parse_l4(ip + IPV4_HLEN, end, proto)?;
    let tot_len = u16::from_be(unsafe { load(ip + 2) });
    if (tot_len as usize) < IPV4_HLEN + l4_min {
        return Err(Verdict::Drop(Counter::DropBadIpHeader));
    }
    if ip + tot_len as usize > end {
        return Err(Verdict::Drop(Counter::DropTruncated));
    }
    let saddr: u32 = unsafe { load(ip + 12) };
    Ok(Parsed {
        key: FlowKey {
            src: [saddr, 0, 0, 0],
            dst,
            src_port,
            dst_port,
            proto,
            family: FAMILY_V4,
            _pad: [0; 2],
        },
        l3_off: L3,
        vlan_tci,
        ip_len: tot_len,
        tclass: unsafe { load(ip + 1) },
        tcp_flags,
        frame_len: (end - data) as u32,
    })
}

#[inline(always)]
fn parse_v6<const L3: usize>(data: usize, end: usize, vlan_tci: u16) -> Result<Parsed, Verdict> {
    let ip = data + L3;
    if ip + IPV6_HLEN > end {
        return Err(Verdict::Drop(Counter::DropTruncated));
    }
    let dst: [u32; 4] = unsafe { load(ip + 24) };
    if !vip::filter_hit(fold_v6(&dst)) {
        return Err(Verdict::Pass(Counter::PassNotVip));
    }
    let b0: u8 = unsafe { load(ip) };
    if b0 >> 4 != 6 {
        return Err(Verdict::Drop(Counter::DropBadIpHeader));
    }
    let next_header: u8 = unsafe { load(ip + 6) };
    match next_header {
        PROTO_TCP | PROTO_UDP => {}
        // Fragment header: only the first fragment has ports, so no fragment can be hashed.
        44 => return Err(refuse(FAMILY_V6, &dst, Counter::DropIpv6Fragment)),
        // Hop-by-hop, routing, ESP, AH, destination options, mobility, HIP, shim6, experiments.
        0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => {
            return Err(refuse(FAMILY_V6, &dst, Counter::DropIpv6ExtHeader));
        }
        PROTO_ICMPV6 => {
            let payload_len = u16::from_be(unsafe { load(ip + 4) });
            let ip_len = IPV6_HLEN + payload_len as usize;
            return Err(icmp::to_vip::<L3>(data, end, FAMILY_V6, &dst, ip_len));
        }
        _ => return Err(Verdict::Pass(Counter::PassVipOtherService)),
    }
    let (src_port, dst_port, tcp_flags, l4_min) = parse_l4(ip + IPV6_HLEN, end, next_header)?;
    let payload_len = u16::from_be(unsafe { load(ip + 4) });
    if (payload_len as usize) < l4_min {
        return Err(Verdict::Drop(Counter::DropBadIpHeader));
    }
    if ip + IPV6_HLEN + payload_len as usize > end {
        return Err(Verdict::Drop(Counter::DropTruncated));
    }
    let b1: u8 = unsafe { load(ip + 1) };
    Ok(Parsed {
        key: FlowKey {
            src: unsafe { load(ip + 8) },
            dst,
            src_port,
            dst_port,
            proto: next_header,
            family: FAMILY_V6,
            _pad: [0; 2],
        },
        l3_off: L3,
        vlan_tci,
        ip_len: payload_len + IPV6_HLEN as u16,
        tclass: (b0 << 4) | (b1 >> 4),
        tcp_flags,
        frame_len: (end - data) as u32,
    })
}
