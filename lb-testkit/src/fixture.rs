//! What every packet test shares: verdict numbers, fixed MACs and addresses, the seed, and
//! the root check.

use std::net::{IpAddr, Ipv6Addr};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const NIC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x01];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0xfe];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xc1, 0x01];
pub const SEED: u64 = 0x0123_4567_89ab_cdef;
pub const GUE_PORT: u16 = 6080;

pub fn lb_tunnel_addr() -> Ipv6Addr {
    "2001:db8:1b::1".parse().unwrap()
}

/// Backend `i`'s tunnel address: 2001:db8:be::i.
pub fn backend_addr(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// The IP source and destination of a parsed frame (the outer header, for a tunnelled one).
pub fn ip_endpoints(p: &etherparse::SlicedPacket) -> Option<(IpAddr, IpAddr)> {
    use etherparse::NetSlice;
    match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => Some((
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        )),
        NetSlice::Ipv6(ip) => Some((
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        )),
        _ => None,
    }
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads XDP programs and needs root (CAP_BPF, CAP_NET_ADMIN); run it as root"
    );
}
