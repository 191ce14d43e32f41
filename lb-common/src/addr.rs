//! Addresses as the XDP program sees them: the raw network-order bytes read as native-endian
//! `u32` words (what it loads from the packet). IPv4 uses word 0 and zeroes the rest; a
//! `family` byte keeps IPv4 and IPv6 keys apart.

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// An IPv6 address's words folded to one (the VIP filter's input for IPv6).
#[inline(always)]
pub const fn fold_v6(a: &[u32; 4]) -> u32 {
    a[0] ^ a[1] ^ a[2] ^ a[3]
}

#[cfg(feature = "user")]
mod user {
    use super::{FAMILY_V4, FAMILY_V6};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// An address as the XDP program sees it: family and network-order words.
    pub fn addr_words(addr: IpAddr) -> (u8, [u32; 4]) {
        match addr {
            IpAddr::V4(a) => (FAMILY_V4, [u32::from_ne_bytes(a.octets()), 0, 0, 0]),
            IpAddr::V6(a) => (FAMILY_V6, v6_words(a)),
        }
    }

    pub fn v6_words(a: Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        core::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    }

    pub fn words_v6(w: &[u32; 4]) -> Ipv6Addr {
        let mut o = [0u8; 16];
        for (i, x) in w.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
        }
        Ipv6Addr::from(o)
    }

    pub fn words_addr(family: u8, w: &[u32; 4]) -> IpAddr {
        if family == FAMILY_V4 {
            IpAddr::V4(Ipv4Addr::from(w[0].to_ne_bytes()))
        } else {
            IpAddr::V6(words_v6(w))
        }
    }
}

#[cfg(feature = "user")]
pub use user::*;

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn words_round_trip_in_packet_order() {
        for s in ["192.0.2.10", "2001:db8::1", "::ffff:1.2.3.4"] {
            let addr: IpAddr = s.parse().unwrap();
            let (family, words) = addr_words(addr);
            assert_eq!(words_addr(family, &words), addr);
        }
        let (family, words) = addr_words("192.0.2.10".parse().unwrap());
        assert_eq!(family, FAMILY_V4);
        // The packet's bytes, in order, whatever the host's byte order.
        assert_eq!(words[0].to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(words[1..], [0, 0, 0]);
    }
}
