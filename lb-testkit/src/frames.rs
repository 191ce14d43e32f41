//! Client frames to send (`Flow`, `Tcp`), where their IP packet is, and their checksums.

use std::net::IpAddr;

use anyhow::{Result, ensure};
use etherparse::PacketBuilder;
use lb_common::FlowKey;

use crate::fixture::*;

/// TCP flags for the frame builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    Ack,
    Rst,
    Fin,
}

/// Describes a client frame to build.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub vlan: Option<u16>,
    pub tclass: u8,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Flow {
    /// The same flow framed between other MACs (real links in namespaces).
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn new(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            vlan: None,
            tclass: 0,
            src_mac: CLIENT_MAC,
            dst_mac: NIC_MAC,
        }
    }

    pub fn key(&self, proto: u8) -> FlowKey {
        FlowKey::new(self.src, self.sport, self.dst, self.dport, proto)
    }

    fn builder(&self) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => eth.ipv4(s.octets(), d.octets(), 57),
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => {
                eth.single_vlan(v.try_into().unwrap())
                    .ipv4(s.octets(), d.octets(), 57)
            }
            (IpAddr::V6(s), IpAddr::V6(d), None) => eth.ipv6(s.octets(), d.octets(), 57),
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => {
                eth.single_vlan(v.try_into().unwrap())
                    .ipv6(s.octets(), d.octets(), 57)
            }
            _ => panic!("mixed address families"),
        }
    }

    pub fn tcp(&self, flags: Tcp, payload: &[u8]) -> Vec<u8> {
        let b = self.builder().tcp(self.sport, self.dport, 1000, 64240);
        let b = match flags {
            Tcp::Syn => b.syn(),
            Tcp::Ack => b.ack(2000).psh(),
            Tcp::Rst => b.rst(),
            Tcp::Fin => b.fin().ack(2000),
        };
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        self.set_tclass(&mut v);
        v
    }

    pub fn udp(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        self.builder()
            .udp(self.sport, self.dport)
            .write(&mut v, payload)
            .unwrap();
        self.set_tclass(&mut v);
        v
    }

    fn set_tclass(&self, frame: &mut [u8]) {
        if self.tclass == 0 {
            return;
        }
        let l3 = l3_offset(frame);
        if self.src.is_ipv4() {
            frame[l3 + 1] = self.tclass;
            fix_ipv4_checksum(&mut frame[l3..]);
        } else {
            frame[l3] = (frame[l3] & 0xF0) | (self.tclass >> 4);
            frame[l3 + 1] = (frame[l3 + 1] & 0x0F) | (self.tclass << 4);
        }
    }
}

/// Offset of the IP header in an Ethernet frame (one optional VLAN tag).
pub fn l3_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// The IP packet inside a client frame, as its own header sizes it (without link padding).
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    let l3 = l3_offset(frame);
    let ip = &frame[l3..];
    let len = if ip[0] >> 4 == 4 {
        u16::from_be_bytes([ip[2], ip[3]]) as usize
    } else {
        40 + u16::from_be_bytes([ip[4], ip[5]]) as usize
    };
    &ip[..len]
}

/// One's-complement sum of 16-bit words (RFC 1071), not yet inverted.
pub fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc
}

pub fn fix_ipv4_checksum(ip: &mut [u8]) {
    let ihl = ((ip[0] & 0x0F) as usize) * 4;
    ip[10] = 0;
    ip[11] = 0;
    let sum = !(ones_sum(0, &ip[..ihl]) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Checks an IP packet's own checksums: the IPv4 header's, and TCP's or UDP's with the pseudo-header.
pub fn check_inner_checksums(ip: &[u8]) -> Result<()> {
    let (l4, proto, pseudo) = if ip[0] >> 4 == 4 {
        let ihl = ((ip[0] & 0x0F) as usize) * 4;
        ensure!(
            ones_sum(0, &ip[..ihl]) == 0xFFFF,
            "bad IPv4 header checksum"
        );
        let l4 = &ip[ihl..];
        let mut p = ones_sum(0, &ip[12..20]);
        p = ones_sum(p, &[0, ip[9]]);
        p = ones_sum(p, &(l4.len() as u16).to_be_bytes());
        (l4, ip[9], p)
    } else {
        let l4 = &ip[40..];
        let mut p = ones_sum(0, &ip[8..40]);
        p = ones_sum(p, &(l4.len() as u32).to_be_bytes());
        p = ones_sum(p, &[0, 0, 0, ip[6]]);
        (l4, ip[6], p)
    };
    ensure!(
        proto == 6 || proto == 17,
        "unexpected inner protocol {proto}"
    );
    ensure!(
        ones_sum(pseudo, l4) == 0xFFFF,
        "bad {} checksum",
        if proto == 6 { "TCP" } else { "UDP" }
    );
    Ok(())
}
