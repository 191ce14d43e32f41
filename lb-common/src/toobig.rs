//! Too big to encapsulate: the pure half of the XDP program's ICMP "too big" reply (sizes,
//! which quote fits, who may be told). lb-ebpf's `toobig` builds the message; the policy is in
//! docs/dataplane.md ("Too big to encapsulate").

use crate::headers::{
    ENCAP_GUE_LEN, ENCAP_IP6_LEN, ENCAP_SRH_LEN, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HLEN,
    ICMPV6_PKT_TOOBIG, IPV4_HLEN, IPV6_HLEN,
};
use crate::vip::VIP_F_GUE;

/// Type and code word of ICMP "fragmentation needed" (RFC 792, RFC 1191), host order.
pub const ICMP_FRAG_NEEDED_WORD: u16 = u16::from_be_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]);
/// Type and code word of ICMPv6 "packet too big", code 0 (RFC 4443 3.2), host order.
pub const ICMPV6_TOO_BIG_WORD: u16 = u16::from_be_bytes([ICMPV6_PKT_TOOBIG, 0]);

/// RFC 1812 4.3.2.3: an ICMPv4 error quotes as much of the original as fits in 576 bytes.
pub const ICMP4_MAX: usize = 576;
/// RFC 4443 2.4 (c): an ICMPv6 error quotes as much as fits in the IPv6 minimum MTU.
pub const ICMP6_MAX: usize = 1280;
/// The quotes: the full one (the ICMP message at its maximum size), or the minimum one (IP
/// header + 8 bytes, RFC 792 / RFC 4443), for MTUs too small to carry the full message.
pub const QUOTE4_FULL: usize = ICMP4_MAX - IPV4_HLEN - ICMP_HLEN;
pub const QUOTE4_MIN: usize = IPV4_HLEN + 8;
pub const QUOTE6_FULL: usize = ICMP6_MAX - IPV6_HLEN - ICMP_HLEN;
pub const QUOTE6_MIN: usize = IPV6_HLEN + 8;
/// Bytes the reply puts in front of the quote.
pub const GROW4: usize = IPV4_HLEN + ICMP_HLEN;
pub const GROW6: usize = IPV6_HLEN + ICMP_HLEN;

/// Bytes the encapsulation adds for a VIP with these flags, plus the Segment Routing Header
/// for a packet that carries a second chance (`srh`).
#[inline(always)]
pub const fn overhead(vip_flags: u32, srh: bool) -> u32 {
    let tunnel = if vip_flags & VIP_F_GUE != 0 {
        ENCAP_GUE_LEN as u32
    } else {
        ENCAP_IP6_LEN as u32
    };
    if srh {
        tunnel + ENCAP_SRH_LEN as u32
    } else {
        tunnel
    }
}

/// Whether the encapsulated packet (`ip_len + overhead`) would exceed `mtu`; never for mtu 0.
/// One compare: mtu 0 wraps to u32::MAX, and `ip_len + overhead >= 40` cannot wrap.
#[inline(always)]
pub const fn exceeds(ip_len: u16, overhead: u32, mtu: u16) -> bool {
    ip_len as u32 + overhead - 1 > (mtu as u32).wrapping_sub(1)
}

/// The next-hop MTU to advertise: what is left for the client's packet (no underflow).
#[inline(always)]
pub const fn advertised_mtu(mtu: u16, overhead: u32) -> u32 {
    (mtu as u32).saturating_sub(overhead)
}

/// How much of the original packet the reply quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quote {
    /// The ICMP message at its maximum size (576 / 1280 bytes).
    Full,
    /// IP header + 8 bytes: the packet is shorter than the full quote, or the NIC's MTU is
    /// smaller than the full message (only when the agent's MTU validation was bypassed).
    Min,
    /// Not even the minimum message fits the NIC's MTU.
    None,
}

/// The quote for a packet of `ip_len` bytes answered out of a NIC with `mtu`, given the full
/// and minimum quote sizes and the headers (`grow`) the reply adds.
#[inline(always)]
pub const fn quote(ip_len: u16, mtu: u16, full: usize, min: usize, grow: usize) -> Quote {
    let (ip_len, mtu) = (ip_len as usize, mtu as usize);
    if ip_len >= full && mtu >= grow + full {
        Quote::Full
    } else if ip_len >= min && mtu >= grow + min {
        Quote::Min
    } else {
        Quote::None
    }
}

/// RFC 1812 4.3.2.7 / RFC 1122: no ICMP error to a source that is not one host (0/8, 127/8,
/// multicast, class E and broadcast). `addr` as loaded from the packet. lb_xdp's echo replies
/// follow the same rule (a broadcast or spoofed source must not make us reflect traffic).
#[inline(always)]
pub const fn is_unicast_v4(addr: u32) -> bool {
    let first = u32::from_be(addr) >> 24;
    !(first == 0 || first == 127 || first >= 224)
}

/// RFC 4443 2.4 (e): no ICMPv6 error to the unspecified, loopback or a multicast source (and
/// no echo reply either).
#[inline(always)]
pub const fn is_unicast_v6(addr: &[u32; 4]) -> bool {
    if u32::from_be(addr[0]) >> 24 == 0xFF {
        return false;
    }
    let high_zero = addr[0] | addr[1] | addr[2] == 0;
    !(high_zero && u32::from_be(addr[3]) <= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn v6(s: &str) -> [u32; 4] {
        let o = s.parse::<std::net::Ipv6Addr>().unwrap().octets();
        core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    }

    #[test]
    fn sizes_match_the_rfcs() {
        assert_eq!(QUOTE4_FULL, 548);
        assert_eq!(GROW4 + QUOTE4_FULL, 576);
        assert_eq!(GROW6 + QUOTE6_FULL, 1280);
        assert_eq!((QUOTE4_MIN, QUOTE6_MIN), (28, 48));
        assert_eq!(ICMP_FRAG_NEEDED_WORD, 0x0304);
        assert_eq!(ICMPV6_TOO_BIG_WORD, 0x0200);
        assert_eq!(overhead(0, false), 40);
        assert_eq!(overhead(VIP_F_GUE, false), 48);
        assert_eq!(overhead(0, true), 80);
        assert_eq!(overhead(VIP_F_GUE, true), 88);
    }

    #[test]
    fn exceeds_is_one_compare_and_mtu_zero_is_unchecked() {
        assert!(!exceeds(1460, 40, 1500));
        assert!(exceeds(1461, 40, 1500));
        assert!(!exceeds(1452, 48, 1500));
        assert!(exceeds(1453, 48, 1500));
        assert!(!exceeds(u16::MAX, 48, 0));
        assert!(exceeds(20, 40, 1));
    }

    #[test]
    fn advertised_mtu_never_underflows() {
        assert_eq!(advertised_mtu(1500, 40), 1460);
        assert_eq!(advertised_mtu(1500, 48), 1452);
        assert_eq!(advertised_mtu(30, 40), 0);
    }

    #[test]
    fn quote_full_then_min_then_none() {
        let q = |ip_len, mtu| quote(ip_len, mtu, QUOTE4_FULL, QUOTE4_MIN, GROW4);
        assert_eq!(q(1500, 1500), Quote::Full);
        assert_eq!(q(548, 576), Quote::Full);
        // Shorter than the full quote, or a NIC too small for the full message.
        assert_eq!(q(547, 1500), Quote::Min);
        assert_eq!(q(1500, 575), Quote::Min);
        assert_eq!(q(1500, 56), Quote::Min);
        // Not even IP header + 8 bytes, or no room for the minimum message.
        assert_eq!(q(27, 1500), Quote::None);
        assert_eq!(q(1500, 55), Quote::None);
        let q6 = |ip_len, mtu| quote(ip_len, mtu, QUOTE6_FULL, QUOTE6_MIN, GROW6);
        assert_eq!(q6(1500, 1500), Quote::Full);
        assert_eq!(q6(1231, 1500), Quote::Min);
        assert_eq!(q6(1500, 1279), Quote::Min);
        assert_eq!(q6(47, 1500), Quote::None);
    }

    #[test]
    fn only_unicast_sources_are_answered() {
        assert!(is_unicast_v4(v4([198, 51, 100, 7])));
        assert!(is_unicast_v4(v4([223, 255, 255, 255])));
        for a in [
            [0, 1, 2, 3],
            [127, 0, 0, 1],
            [224, 0, 0, 1],
            [240, 0, 0, 1],
            [255; 4],
        ] {
            assert!(!is_unicast_v4(v4(a)), "{a:?}");
        }
        assert!(is_unicast_v6(&v6("2001:db8::1")));
        assert!(is_unicast_v6(&v6("::2")));
        for a in ["::", "::1", "ff02::1", "ff0e::1234"] {
            assert!(!is_unicast_v6(&v6(a)), "{a}");
        }
    }
}
