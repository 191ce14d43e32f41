//! Header sizes, field values and the packet load, shared by the XDP and TC programs. Each
//! program uses a subset.
#![allow(dead_code)]

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
/// Ethertypes as loaded from the packet (network order).
pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86DDu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
/// IPv6 + UDP: the GUE (variant 1) outer headers.
pub const GUE_HLEN: usize = IPV6_HLEN + UDP_HLEN;
/// IPv6 next header of the tunnel (RFC 2473): IPv4 inside, IPv6 inside, or UDP for GUE.
pub const NEXT_HEADER_IPIP: u8 = 4;
pub const NEXT_HEADER_IPV6: u8 = 41;
pub const NEXT_HEADER_UDP: u8 = 17;
/// Hop limit of the outer IPv6 header.
pub const HOP_LIMIT: u8 = 64;
/// IP protocol / IPv6 next header of ICMP and ICMPv6.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// ICMP and ICMPv6 header: type, code, checksum, 4 bytes of type-specific data.
pub const ICMP_HLEN: usize = 8;

/// Reads a `T` at `addr`; the caller has checked `addr + size_of::<T>() <= data_end`.
/// A plain (not `read_unaligned`) load: the BPF backend would split an unaligned read into
/// single bytes, while the kernel's JITs handle misaligned packet loads directly.
#[inline(always)]
pub unsafe fn load<T: Copy>(addr: usize) -> T {
    unsafe { core::ptr::read(addr as *const T) }
}
