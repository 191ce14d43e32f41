//! Bounds-checked header parsing: Ethernet (optionally one 802.1Q tag), IPv4/IPv6, TCP/UDP.
//!
//! Every read is preceded by a check against `data_end` the verifier can see. Offsets are
//! const generics, so each header sits at a constant offset and the checks stay cheap.
//! Non-VIP traffic leaves as early as possible: after the destination address's filter bit.
//! ICMP and ICMPv6 to a VIP address (exact check) leave as `NotBalanced::IcmpToVip`, for
//! icmp.rs.

use aya_ebpf::programs::XdpContext;
use lb_common::headers::{
    ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ICMP_HLEN, IPV4_FRAG_MASK, IPV4_HLEN, IPV6_HLEN,
    NEXT_HEADER_FRAGMENT, PROTO_ICMP, PROTO_ICMPV6, TCP_HLEN, UDP_HLEN, VLAN_HLEN,
};
use lb_common::{Counter, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, PROTO_UDP, fold_v6};
use lb_ebpf::load;

use crate::packet::{NotBalanced, Parsed, Verdict};
use crate::vip;

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Parsed, NotBalanced> {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + ETH_HLEN > end {
        return Err(Verdict::Pass(Counter::PassNonIp).into());
    }
    // SAFETY: the Ethernet header is in the frame (checked above).
    let ethertype: u16 = unsafe { load(data + 12) };
    if ethertype == ETH_P_8021Q {
        if data + ETH_HLEN + VLAN_HLEN > end {
            return Err(Verdict::Pass(Counter::PassNonIp).into());
        }
        // SAFETY: the VLAN tag is in the frame (checked above).
        let tci: u16 = unsafe { load(data + 14) };
        // SAFETY: as above.
        let inner: u16 = unsafe { load(data + 16) };
        return match inner {
            ETH_P_IP => parse_v4::<{ ETH_HLEN + VLAN_HLEN }>(data, end, tci),
            ETH_P_IPV6 => parse_v6::<{ ETH_HLEN + VLAN_HLEN }>(data, end, tci),
            _ => Err(Verdict::Pass(Counter::PassNonIp).into()),
        };
    }
    match ethertype {
        ETH_P_IP => parse_v4::<ETH_HLEN>(data, end, 0),
        ETH_P_IPV6 => parse_v6::<ETH_HLEN>(data, end, 0),
        _ => Err(Verdict::Pass(Counter::PassNonIp).into()),
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
            // SAFETY: the TCP header is in the frame (checked above).
            Ok(unsafe { (load(l4), load(l4 + 2), load(l4 + 13), TCP_HLEN) })
        }
        PROTO_UDP => {
            if l4 + UDP_HLEN > end {
                return Err(Verdict::Drop(Counter::DropTruncated));
            }
            // SAFETY: the UDP header is in the frame (checked above).
            Ok(unsafe { (load(l4), load(l4 + 2), 0, UDP_HLEN) })
        }
        _ => Err(Verdict::Pass(Counter::PassVipOtherService)),
    }
}

/// A packet the filter flagged but that cannot be balanced: dropped (and counted under `why`)
/// only if it really is addressed to a VIP, else it is someone else's and goes to the kernel.
#[inline(always)]
fn refuse(family: u8, addr: &[u32; 4], why: Counter) -> NotBalanced {
    let verdict = if vip::is_vip_address(family, addr) {
        Verdict::Drop(why)
    } else {
        Verdict::Pass(Counter::PassNotVip)
    };
    verdict.into()
}

/// ICMP or ICMPv6 to an address the VIP filter flagged, once the outer header passed its
/// checks (version, options, fragments, extension headers). `ip_len` is the IP packet's length
/// from its own header. `IcmpToVip` with the address marker's flags if the address really is a
/// VIP address and the ICMP header is complete. Only the flags cross to `icmp::handle`, which
/// reads the rest again: the forwarding path's parse result stays as small as it was.
#[inline(always)]
fn icmp_to_vip<const L3: usize>(
    data: usize,
    end: usize,
    family: u8,
    dst: &[u32; 4],
    ip_len: usize,
) -> NotBalanced {
    let Some(marker) = vip::address_marker(family, dst) else {
        return Verdict::Pass(Counter::PassNotVip).into();
    };
    let ip_hlen = if family == FAMILY_V4 {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    // Before the length checks, as in parse_l4: after them LLVM would drop this bound as
    // implied, and the verifier cannot follow that.
    if data + L3 + ip_hlen + ICMP_HLEN > end {
        return Verdict::Drop(Counter::DropTruncated).into();
    }
    if ip_len < ip_hlen + ICMP_HLEN {
        return Verdict::Drop(Counter::DropBadIpHeader).into();
    }
    if data + L3 + ip_len > end {
        return Verdict::Drop(Counter::DropTruncated).into();
    }
    NotBalanced::IcmpToVip(marker.flags)
}

#[inline(always)]
fn parse_v4<const L3: usize>(
    data: usize,
    end: usize,
    vlan_tci: u16,
) -> Result<Parsed, NotBalanced> {
    let ip = data + L3;
    if ip + IPV4_HLEN > end {
        return Err(Verdict::Drop(Counter::DropTruncated).into());
    }
    // SAFETY: every load below is inside the fixed IPv4 header, in the frame (checked above).
    let daddr: u32 = unsafe { load(ip + 16) };
    if !vip::filter_hit(daddr) {
        return Err(Verdict::Pass(Counter::PassNotVip).into());
    }
    let dst = [daddr, 0, 0, 0];
    // SAFETY: in the IPv4 header (see above).
    let version_ihl: u8 = unsafe { load(ip) };
    if version_ihl != 0x45 {
        if version_ihl >> 4 != 4 || version_ihl & 0x0F < 5 {
            return Err(Verdict::Drop(Counter::DropBadIpHeader).into());
        }
        return Err(refuse(FAMILY_V4, &dst, Counter::DropIpv4Options));
    }
    // SAFETY: in the IPv4 header (see above).
    let frag: u16 = unsafe { load(ip + 6) };
    if frag & IPV4_FRAG_MASK != 0 {
        return Err(refuse(FAMILY_V4, &dst, Counter::DropIpv4Fragment));
    }
    // SAFETY: in the IPv4 header (see above).
    let proto: u8 = unsafe { load(ip + 9) };
    if proto == PROTO_ICMP {
        // SAFETY: in the IPv4 header (see above).
        let tot_len = u16::from_be(unsafe { load(ip + 2) });
        return Err(icmp_to_vip::<L3>(
            data,
            end,
            FAMILY_V4,
            &dst,
            tot_len as usize,
        ));
    }
    let (src_port, dst_port, tcp_flags, l4_min) = parse_l4(ip + IPV4_HLEN, end, proto)?;
    // SAFETY: in the IPv4 header (see above).
    let tot_len = u16::from_be(unsafe { load(ip + 2) });
    if (tot_len as usize) < IPV4_HLEN + l4_min {
        return Err(Verdict::Drop(Counter::DropBadIpHeader).into());
    }
    if ip + tot_len as usize > end {
        return Err(Verdict::Drop(Counter::DropTruncated).into());
    }
    // SAFETY: in the IPv4 header (see above).
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
        // SAFETY: in the IPv4 header (see above).
        tclass: unsafe { load(ip + 1) },
        tcp_flags,
        frame_len: (end - data) as u32,
    })
}

#[inline(always)]
fn parse_v6<const L3: usize>(
    data: usize,
    end: usize,
    vlan_tci: u16,
) -> Result<Parsed, NotBalanced> {
    let ip = data + L3;
    if ip + IPV6_HLEN > end {
        return Err(Verdict::Drop(Counter::DropTruncated).into());
    }
    // SAFETY: every load below is inside the fixed IPv6 header, in the frame (checked above).
    let dst: [u32; 4] = unsafe { load(ip + 24) };
    if !vip::filter_hit(fold_v6(&dst)) {
        return Err(Verdict::Pass(Counter::PassNotVip).into());
    }
    // SAFETY: in the IPv6 header (see above).
    let b0: u8 = unsafe { load(ip) };
    if b0 >> 4 != 6 {
        return Err(Verdict::Drop(Counter::DropBadIpHeader).into());
    }
    // SAFETY: in the IPv6 header (see above).
    let next_header: u8 = unsafe { load(ip + 6) };
    match next_header {
        PROTO_TCP | PROTO_UDP => {}
        // Only the first fragment has ports, so no fragment can be hashed.
        NEXT_HEADER_FRAGMENT => {
            return Err(refuse(FAMILY_V6, &dst, Counter::DropIpv6Fragment));
        }
        // Hop-by-hop, routing, ESP, AH, destination options, mobility, HIP, shim6, experiments.
        0 | 43 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254 => {
            return Err(refuse(FAMILY_V6, &dst, Counter::DropIpv6ExtHeader));
        }
        PROTO_ICMPV6 => {
            // SAFETY: in the IPv6 header (see above).
            let payload_len = u16::from_be(unsafe { load(ip + 4) });
            let ip_len = IPV6_HLEN + payload_len as usize;
            return Err(icmp_to_vip::<L3>(data, end, FAMILY_V6, &dst, ip_len));
        }
        _ => return Err(Verdict::Pass(Counter::PassVipOtherService).into()),
    }
    let (src_port, dst_port, tcp_flags, l4_min) = parse_l4(ip + IPV6_HLEN, end, next_header)?;
    // SAFETY: in the IPv6 header (see above).
    let payload_len = u16::from_be(unsafe { load(ip + 4) });
    if (payload_len as usize) < l4_min {
        return Err(Verdict::Drop(Counter::DropBadIpHeader).into());
    }
    if ip + IPV6_HLEN + payload_len as usize > end {
        return Err(Verdict::Drop(Counter::DropTruncated).into());
    }
    // SAFETY: in the IPv6 header (see above).
    let b1: u8 = unsafe { load(ip + 1) };
    Ok(Parsed {
        key: FlowKey {
            // SAFETY: in the IPv6 header (see above).
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
