//! ICMP and ICMPv6 error frames: built, and their checksums checked.

use std::net::IpAddr;

use anyhow::{Result, bail, ensure};
use etherparse::PacketBuilder;

use crate::fixture::*;

/// MAC of a router that sends ICMP errors towards a VIP (tests/tests/icmp.rs).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0e, 0x01];

/// Describes an ICMP (IPv4) or ICMPv6 frame to build: type, code, the header's last 4 bytes
/// (echo identifier and sequence, the MTU of "too big", ...); the body is given to `build`.
#[derive(Clone, Debug)]
pub struct IcmpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    pub ty: u8,
    pub code: u8,
    pub rest: [u8; 4],
}

impl IcmpFrame {
    /// `src -> dst`, from CLIENT_MAC to NIC_MAC, TTL 57, the last 4 header bytes zero.
    pub fn new(src: &str, dst: &str, ty: u8, code: u8) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: NIC_MAC,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ttl: 57,
            ty,
            code,
            rest: [0; 4],
        }
    }

    /// The frame with `body` after the 8-byte ICMP header; etherparse computes the checksums.
    pub fn build(&self, body: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let mut v = Vec::new();
        let (ty, code, rest) = (self.ty, self.code, self.rest);
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => eth
                .ipv4(s.octets(), d.octets(), self.ttl)
                .icmpv4_raw(ty, code, rest)
                .write(&mut v, body),
            (IpAddr::V4(s), IpAddr::V4(d), Some(vlan)) => eth
                .single_vlan(vlan.try_into().unwrap())
                .ipv4(s.octets(), d.octets(), self.ttl)
                .icmpv4_raw(ty, code, rest)
                .write(&mut v, body),
            (IpAddr::V6(s), IpAddr::V6(d), None) => eth
                .ipv6(s.octets(), d.octets(), self.ttl)
                .icmpv6_raw(ty, code, rest)
                .write(&mut v, body),
            (IpAddr::V6(s), IpAddr::V6(d), Some(vlan)) => eth
                .single_vlan(vlan.try_into().unwrap())
                .ipv6(s.octets(), d.octets(), self.ttl)
                .icmpv6_raw(ty, code, rest)
                .write(&mut v, body),
            _ => panic!("mixed address families"),
        }
        .unwrap();
        v
    }
}

/// Checks, with etherparse, the IPv4 header checksum and the ICMP / ICMPv6 checksum of a frame.
pub fn check_icmp_checksums(frame: &[u8]) -> Result<()> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame)?;
    let (src6, dst6) = match p.net.as_ref() {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            ensure!(
                h.header_checksum == h.calc_header_checksum(),
                "bad IPv4 header checksum"
            );
            (None, None)
        }
        Some(NetSlice::Ipv6(ip)) => (Some(ip.header().source()), Some(ip.header().destination())),
        _ => bail!("not an IP frame"),
    };
    match (p.transport.as_ref(), src6, dst6) {
        (Some(TransportSlice::Icmpv4(icmp)), None, None) => ensure!(
            icmp.checksum() == icmp.icmp_type().calc_checksum(icmp.payload()),
            "bad ICMP checksum"
        ),
        (Some(TransportSlice::Icmpv6(icmp)), Some(s), Some(d)) => {
            ensure!(icmp.is_checksum_valid(s, d), "bad ICMPv6 checksum")
        }
        _ => bail!("not an ICMP frame of its IP version"),
    }
    Ok(())
}
