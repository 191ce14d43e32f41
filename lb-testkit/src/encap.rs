//! Encapsulated output frames: decoded and checked field by field, or built as expected.

use std::net::Ipv6Addr;

use anyhow::{Result, bail, ensure};
use etherparse::{Ipv6Header, SingleVlanHeader, UdpHeader};
use lb_common::FlowKey;

use crate::fixture::*;
use crate::frames::*;

/// An output frame taken apart: outer Ethernet, VLAN, IPv6, optional UDP, and the inner packet.
#[derive(Debug)]
pub struct Encapsulated {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub vlan: Option<SingleVlanHeader>,
    pub ip6: Ipv6Header,
    pub udp: Option<UdpHeader>,
    pub inner: Vec<u8>,
}

/// Decodes an encapsulated frame and checks the structural invariants every output must hold:
/// ethertype IPv6, version 6, payload length equal to the bytes that follow, hop limit 64, the
/// UDP length for GUE. Field values specific to a flow are checked by the caller.
pub fn decode(out: &[u8]) -> Result<Encapsulated> {
    ensure!(
        out.len() >= 14 + 40,
        "output of {} bytes is too short for Ethernet + IPv6",
        out.len()
    );
    let eth_dst: [u8; 6] = out[0..6].try_into()?;
    let eth_src: [u8; 6] = out[6..12].try_into()?;
    let (vlan, mut rest) = if out[12..14] == [0x81, 0x00] {
        let (v, rest) = SingleVlanHeader::from_slice(&out[14..])?;
        ensure!(
            v.ether_type.0 == 0x86DD,
            "VLAN ethertype {:#x}",
            v.ether_type.0
        );
        (Some(v), rest)
    } else {
        ensure!(
            out[12..14] == [0x86, 0xDD],
            "outer ethertype {:02x?} is not IPv6",
            &out[12..14]
        );
        (None, &out[14..])
    };
    let (ip6, after) = Ipv6Header::from_slice(rest)?;
    rest = after;
    ensure!(
        ip6.payload_length as usize == rest.len(),
        "IPv6 payload length {} but {} bytes follow",
        ip6.payload_length,
        rest.len()
    );
    ensure!(ip6.hop_limit == 64, "hop limit {}", ip6.hop_limit);
    let udp = if ip6.next_header.0 == 17 {
        let (u, after) = UdpHeader::from_slice(rest)?;
        ensure!(
            u.length as usize == rest.len(),
            "UDP length {} but {} bytes",
            u.length,
            rest.len()
        );
        rest = after;
        Some(u)
    } else {
        None
    };
    let inner = rest.to_vec();
    let expect_nh = match inner.first().map(|b| b >> 4) {
        Some(4) => 4,
        Some(6) => 41,
        _ => bail!("inner packet is not IP"),
    };
    if udp.is_none() {
        ensure!(
            ip6.next_header.0 == expect_nh,
            "next header {} for an IPv{} inner packet",
            ip6.next_header.0,
            inner[0] >> 4
        );
    }
    Ok(Encapsulated {
        eth_dst,
        eth_src,
        vlan,
        ip6,
        udp,
        inner,
    })
}

impl Encapsulated {
    pub fn backend(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ip6.destination)
    }
}

/// Full check of an encapsulated output against the input frame and what the flow should get.
pub fn check_encap(
    input: &[u8],
    out: &[u8],
    backend: Ipv6Addr,
    key: &FlowKey,
    gue: bool,
) -> Result<Encapsulated> {
    let e = decode(out)?;
    ensure!(
        e.eth_dst == NEXT_HOP_MAC,
        "Ethernet destination {:02x?}",
        e.eth_dst
    );
    ensure!(e.eth_src == NIC_MAC, "Ethernet source {:02x?}", e.eth_src);
    let l3 = l3_offset(input);
    match (l3, &e.vlan) {
        (14, None) => {}
        (18, Some(v)) => ensure!(
            out[14..16] == input[14..16],
            "VLAN TCI changed: {:02x?} -> {:02x?} ({v:?})",
            &input[14..16],
            &out[14..16]
        ),
        _ => bail!("VLAN tag presence changed"),
    }
    ensure!(
        Ipv6Addr::from(e.ip6.source) == lb_tunnel_addr(),
        "outer source {:?}",
        e.ip6.source
    );
    ensure!(
        e.backend() == backend,
        "outer destination {} but the flow belongs to {backend}",
        e.backend()
    );
    let inner = ip_packet(input);
    ensure!(
        e.inner == inner,
        "inner packet differs from the input's IP packet"
    );
    check_inner_checksums(&e.inner)?;
    let tclass = if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    };
    ensure!(
        e.ip6.traffic_class == tclass,
        "traffic class {:#x}, inner has {tclass:#x}",
        e.ip6.traffic_class
    );
    let hash = lb_common::flow_hash(key, SEED);
    let label = (hash & 0xF_FFFF).max(1);
    ensure!(
        e.ip6.flow_label.value() == label,
        "flow label {:#x}, want {label:#x}",
        e.ip6.flow_label.value()
    );
    match (&e.udp, gue) {
        (Some(u), true) => {
            ensure!(
                u.destination_port == GUE_PORT,
                "GUE port {}",
                u.destination_port
            );
            ensure!(
                u.source_port == 0xC000 | ((hash >> 20) as u16 & 0x3FFF),
                "GUE source port {}",
                u.source_port
            );
            ensure!(
                u.checksum == 0,
                "GUE UDP checksum {:#x}, want 0",
                u.checksum
            );
        }
        (None, false) => {}
        _ => bail!(
            "GUE expected: {gue}, UDP header present: {}",
            e.udp.is_some()
        ),
    }
    Ok(e)
}

/// The frame `lb_xdp` sends for `frame` of `flow` (protocol `proto`) to backend id `backend`,
/// plainly encapsulated (no GUE, no second chance), with the flow's own hash.
pub fn encap_to(flow: &Flow, proto: u8, frame: &[u8], backend: u32) -> Vec<u8> {
    let hash = lb_common::flow_hash(&flow.key(proto), SEED);
    expected_encap(frame, backend_addr(backend), hash, false)
}

/// The exact frame `lb_xdp` makes of `input` when it sends it to `backend` with flow hash
/// `hash`: outer Ethernet (VLAN kept), IPv6 (+ UDP for GUE), then the input's IP packet.
pub fn expected_encap(input: &[u8], backend: Ipv6Addr, hash: u32, gue: bool) -> Vec<u8> {
    expected_encap_srh(input, backend, None, hash, gue)
}

/// `expected_encap`, with a second chance at `prev`: a Segment Routing Header (routing type 4,
/// segments left 1, list [prev, backend]) between the IPv6 header and the rest, written
/// independently of `lb_common::srh`.
pub fn expected_encap_srh(
    input: &[u8],
    backend: Ipv6Addr,
    prev: Option<Ipv6Addr>,
    hash: u32,
    gue: bool,
) -> Vec<u8> {
    let inner = ip_packet(input);
    let tclass = if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    };
    let udp_len = inner.len() + if gue { 8 } else { 0 };
    let payload_len = udp_len + if prev.is_some() { 40 } else { 0 };
    let mut v = Vec::new();
    v.extend_from_slice(&NEXT_HOP_MAC);
    v.extend_from_slice(&NIC_MAC);
    if l3_offset(input) == 18 {
        v.extend_from_slice(&input[12..16]);
    }
    v.extend_from_slice(&[0x86, 0xDD]);
    let word0 = (6u32 << 28) | ((tclass as u32) << 20) | (hash & 0xF_FFFF).max(1);
    v.extend_from_slice(&word0.to_be_bytes());
    v.extend_from_slice(&(payload_len as u16).to_be_bytes());
    let next_header = match (gue, inner[0] >> 4) {
        (true, _) => 17,
        (false, 4) => 4,
        _ => 41,
    };
    v.extend_from_slice(&[if prev.is_some() { 43 } else { next_header }, 64]);
    v.extend_from_slice(&lb_tunnel_addr().octets());
    v.extend_from_slice(&backend.octets());
    if let Some(prev) = prev {
        // Next header, Hdr Ext Len 4 (two segments), type 4, segments left 1; last entry 1,
        // flags 0, tag 0; then the list: [0] the previous backend, [1] the backend.
        v.extend_from_slice(&[next_header, 4, 4, 1, 1, 0, 0, 0]);
        v.extend_from_slice(&prev.octets());
        v.extend_from_slice(&backend.octets());
    }
    if gue {
        let sport = 0xC000 | ((hash >> 20) as u16 & 0x3FFF);
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&GUE_PORT.to_be_bytes());
        v.extend_from_slice(&(udp_len as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
    }
    v.extend_from_slice(inner);
    v
}
