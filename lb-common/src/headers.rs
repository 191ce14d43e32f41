//! Packet headers: sizes, protocol numbers and field values, the one place both sides take them from.
//! The XDP and TC programs parse and build headers with them; userspace sizes MTUs and builds
//! test frames with the same numbers.
//!
//! Multi-byte field values named "as loaded" are in network order, i.e. what a native-endian
//! load of the packet's bytes returns.

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
/// Ethertypes as loaded from the packet.
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();

pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// ICMP and ICMPv6 header: type, code, checksum, 4 bytes of type-specific data.
pub const ICMP_HLEN: usize = 8;

/// IP protocol / IPv6 next header numbers.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
/// IPv6 next header of the tunnel (RFC 2473): IPv4 inside, IPv6 inside, or UDP for GUE.
pub const NEXT_HEADER_IPIP: u8 = 4;
pub const NEXT_HEADER_IPV6: u8 = 41;
pub const NEXT_HEADER_UDP: u8 = PROTO_UDP;
/// IPv6 fragment header: only the first fragment has ports, so no fragment can be balanced.
pub const NEXT_HEADER_FRAGMENT: u8 = 44;

/// TTL / hop limit of every header the programs write (tunnel headers, ICMP replies).
pub const HOP_LIMIT: u8 = 64;

/// IPv4 flags and fragment offset, as loaded: "don't fragment", "more fragments" + offset
/// (any fragment), and the offset alone (a later fragment, which quotes no ports).
pub const IPV4_DF: u16 = 0x4000u16.to_be();
pub const IPV4_FRAG_MASK: u16 = 0x3FFFu16.to_be();
pub const IPV4_FRAG_OFFSET: u16 = 0x1FFFu16.to_be();

/// TCP flags (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// ICMP types (RFC 792).
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO: u8 = 8;
/// Destination unreachable code 4: fragmentation needed and DF set (RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 types (RFC 4443).
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// An IPv6 Segment Routing Header with two segments (second chance, `srh`).
pub const ENCAP_SRH_LEN: usize = crate::srh::SRH_LEN;

/// IPv6 + UDP: the GUE (variant 1) outer headers.
pub const GUE_HLEN: usize = IPV6_HLEN + UDP_HLEN;
/// Bytes the load balancer's encapsulation adds: an IPv6 header, plus UDP for GUE.
pub const ENCAP_IP6_LEN: usize = IPV6_HLEN;
pub const ENCAP_GUE_LEN: usize = GUE_HLEN;
