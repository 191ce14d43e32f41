//! Second chance on the wire: an IPv6 Segment Routing Header (RFC 8754, routing type 4) right
//! after the outer IPv6 header, naming the backend that held the flow's Maglev slot before its
//! last change.
//!
//! Layout (40 bytes, two segments):
//!
//! ```text
//! 0: next header (4, 41 or 17 for GUE)   1: hdr ext len = 4   2: routing type = 4
//! 3: segments left = 1                   4: last entry = 1    5: flags = 0   6..8: tag = 0
//! 8..24:  segment list[0] = the previous backend (the next segment)
//! 24..40: segment list[1] = the current backend (the active segment: the outer destination)
//! ```
//!
//! The load balancer writes it with segments left 1 and the outer destination the current
//! backend. A backend that has no socket for the inner flow moves the packet to the next
//! segment: destination = list[0], segments left 0, hop limit - 1, and sends it back out. A
//! backend that receives it with segments left 0 decapsulates it whatever it holds.

/// IPv6 next header of a routing header.
pub const NEXT_HEADER_ROUTING: u8 = 43;
/// Routing type of the Segment Routing Header.
pub const SRH_ROUTING_TYPE: u8 = 4;
/// Segments the load balancer writes: the previous backend, then the current one.
pub const SRH_SEGMENTS: usize = 2;
/// The header's length with two segments: 8 fixed bytes and two addresses.
pub const SRH_LEN: usize = 8 + 16 * SRH_SEGMENTS;
/// Hdr Ext Len: 8-octet units after the first 8 octets.
pub const SRH_HDR_EXT_LEN: u8 = ((SRH_LEN - 8) / 8) as u8;
/// Offsets inside the header.
pub const SRH_OFF_NEXT_HEADER: usize = 0;
pub const SRH_OFF_HDR_EXT_LEN: usize = 1;
pub const SRH_OFF_ROUTING_TYPE: usize = 2;
pub const SRH_OFF_SEGMENTS_LEFT: usize = 3;
pub const SRH_OFF_LAST_ENTRY: usize = 4;
/// Segment list[0]: the previous backend.
pub const SRH_OFF_PREVIOUS: usize = 8;
/// Segment list[1]: the current backend.
pub const SRH_OFF_CURRENT: usize = 24;

/// The SRH's first 4 bytes (next header, hdr ext len, routing type, segments left) as one
/// big-endian word, for a single store.
#[inline(always)]
pub const fn srh_word0(next_header: u8) -> u32 {
    u32::from_be_bytes([next_header, SRH_HDR_EXT_LEN, SRH_ROUTING_TYPE, 1])
}

/// The SRH's second 4 bytes: last entry 1, flags 0, tag 0.
pub const SRH_WORD1: u32 = u32::from_be_bytes([(SRH_SEGMENTS - 1) as u8, 0, 0, 0]);

/// Builds the header the load balancer writes (for tests and tools; the XDP program writes
/// the same bytes with word stores).
#[cfg(any(feature = "user", test))]
pub fn build(
    next_header: u8,
    previous: std::net::Ipv6Addr,
    current: std::net::Ipv6Addr,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(SRH_LEN);
    h.extend_from_slice(&srh_word0(next_header).to_be_bytes());
    h.extend_from_slice(&SRH_WORD1.to_be_bytes());
    h.extend_from_slice(&previous.octets());
    h.extend_from_slice(&current.octets());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_segments_are_forty_bytes_with_ext_len_four() {
        assert_eq!(SRH_LEN, 40);
        assert_eq!(SRH_HDR_EXT_LEN, 4);
        assert_eq!(srh_word0(4).to_be_bytes(), [4, 4, 4, 1]);
        assert_eq!(SRH_WORD1.to_be_bytes(), [1, 0, 0, 0]);
        let prev: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
        let cur: std::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
        let h = build(41, prev, cur);
        assert_eq!(h.len(), SRH_LEN);
        assert_eq!(&h[SRH_OFF_PREVIOUS..SRH_OFF_PREVIOUS + 16], &prev.octets());
        assert_eq!(&h[SRH_OFF_CURRENT..SRH_OFF_CURRENT + 16], &cur.octets());
        assert_eq!(h[SRH_OFF_SEGMENTS_LEFT], 1);
        assert_eq!(h[SRH_OFF_LAST_ENTRY], 1);
    }
}
