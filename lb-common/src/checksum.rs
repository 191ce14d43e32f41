//! Internet checksum arithmetic (RFC 1071, RFC 1624) for headers the XDP program rewrites or
//! builds. One's-complement sums do not depend on byte order, so every word may be used as
//! loaded from the packet.

use crate::headers::{HOP_LIMIT, PROTO_ICMP};

/// Folds a one's-complement sum of 16-bit words (in memory order) to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xFFFF_FFFF) + (sum >> 32);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum as u16
}

/// The two 16-bit words of a 32-bit value as loaded from memory, summed.
#[inline(always)]
pub const fn sum32(w: u32) -> u64 {
    (w & 0xFFFF) as u64 + (w >> 16) as u64
}

/// Incremental checksum update for one 16-bit word changing from `old` to `new` (RFC 1624,
/// eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    !(sum as u16)
}

/// Checksum of an IPv4 header the program builds for an ICMP message: version 4, IHL 5, TOS 0,
/// no fragment bits, TTL `HOP_LIMIT`, protocol ICMP; `tot_len` and `id` as stored, addresses as
/// loaded from the packet.
#[inline(always)]
pub const fn ipv4_icmp_header_checksum(tot_len: u16, id: u16, saddr: u32, daddr: u32) -> u16 {
    let sum = 0x4500u16.to_be() as u64
        + tot_len as u64
        + id as u64
        + (((HOP_LIMIT as u16) << 8) | PROTO_ICMP as u16).to_be() as u64
        + sum32(saddr)
        + sum32(daddr);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: RFC 1071's sum over big-endian 16-bit words, complemented.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let hi = pair[0] as u32;
            let lo = *pair.get(1).unwrap_or(&0) as u32;
            sum += (hi << 8) | lo;
        }
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// Sums bytes as the program does: native-endian 16-bit loads.
    fn native_sum(bytes: &[u8]) -> u64 {
        bytes
            .chunks(2)
            .map(|p| u16::from_ne_bytes([p[0], p[1]]) as u64)
            .sum()
    }

    #[test]
    fn fold_matches_rfc_1071_in_memory_order() {
        // An IPv4 header with its checksum field zeroed (RFC 1071's example style).
        let hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let ours = !fold(native_sum(&hdr));
        assert_eq!(u16::from_be(ours), reference(&hdr));
        assert_eq!(u16::from_be(ours), 0xb861);
        // Carries out of 32 bits fold back in.
        assert_eq!(fold(u64::MAX), 0xFFFF);
        assert_eq!(fold(0x1_0000), 1);
    }

    #[test]
    fn csum_replace_equals_recomputing() {
        let mut hdr: [u8; 20] = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x01, 0x00, 0x00, 0x0a, 0x00,
            0x00, 0x01, 0xc0, 0x00, 0x02, 0x0a,
        ];
        let check = !fold(native_sum(&hdr));
        // TTL and protocol share a word: rewrite it as the echo reply does.
        let old = u16::from_ne_bytes([hdr[8], hdr[9]]);
        let new = u16::from_ne_bytes([HOP_LIMIT, PROTO_ICMP]);
        hdr[8] = HOP_LIMIT;
        let updated = csum_replace(check, old, new);
        assert_eq!(updated, !fold(native_sum(&hdr)));
        // Changing a word to itself changes nothing.
        assert_eq!(csum_replace(check, old, old), check);
    }

    #[test]
    fn ipv4_icmp_header_checksum_validates() {
        let (saddr, daddr) = ([192u8, 0, 2, 10], [198u8, 51, 100, 7]);
        let tot_len = 576u16.to_be();
        let id = 0xBEEFu16;
        let check = ipv4_icmp_header_checksum(
            tot_len,
            id,
            u32::from_ne_bytes(saddr),
            u32::from_ne_bytes(daddr),
        );
        let mut hdr = [0u8; 20];
        hdr[0] = 0x45;
        hdr[2..4].copy_from_slice(&tot_len.to_ne_bytes());
        hdr[4..6].copy_from_slice(&id.to_ne_bytes());
        hdr[8] = HOP_LIMIT;
        hdr[9] = PROTO_ICMP;
        hdr[10..12].copy_from_slice(&check.to_ne_bytes());
        hdr[12..16].copy_from_slice(&saddr);
        hdr[16..20].copy_from_slice(&daddr);
        // A header with a correct checksum sums to zero.
        assert_eq!(reference(&hdr), 0);
    }
}
