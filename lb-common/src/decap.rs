//! The backend-side decapsulation program (`lb-decap`, program `lb_decap`): map names, its
//! configuration and its counters, shared by the XDP program and `lb decap`.
//!
//! Addresses are keyed like the load balancer's: the raw network-order bytes read as
//! native-endian `u32` words (`addr::v6_words`), exactly what the program loads from the packet.

use crate::counters::counter_enum;

/// Map names, as the program defines them and userspace opens and pins them.
pub mod names {
    /// The backend's own tunnel addresses: `[u32; 4]` -> its position on the command line.
    pub const ADDRS: &str = "DECAP_ADDRS";
    /// `DecapConfig` at index 0.
    pub const CONFIG: &str = "DECAP_CONFIG";
    /// Per-CPU `CounterValue`s indexed by `DecapCounter`.
    pub const STATS: &str = "DECAP_STATS";

    pub const PINNED: &[&str] = &[ADDRS, CONFIG, STATS];
}

/// The program's name in the object, and the file it is built to.
pub const PROGRAM_NAME: &str = "lb_decap";

/// How many tunnel addresses one program accepts.
pub const DECAP_MAX_ADDRS: u32 = 16;

/// Settings (`DECAP_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// GUE (variant 1) UDP destination port, network order; 0 turns GUE off.
    pub gue_port: u16,
    pub _pad: [u8; 6],
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for DecapConfig {}

counter_enum! {
    /// Per-CPU counters by outcome (`DECAP_STATS[DecapCounter as u32]`); every packet moves
    /// exactly one.
    pub enum DecapCounter {
        /// IPv4 in IPv6 (next header 4), decapsulated.
        DecapIpip = "decap_ipip",
        /// IPv6 in IPv6 (next header 41), decapsulated.
        DecapIp6ip6 = "decap_ip6ip6",
        /// GUE variant 1 carrying IPv4, decapsulated.
        DecapGueV4 = "decap_gue_v4",
        /// GUE variant 1 carrying IPv6, decapsulated.
        DecapGueV6 = "decap_gue_v6",
        /// Not a tunnel packet (not IPv6, another next header or UDP port, too short to tell):
        /// passed untouched.
        PassNotTunnel = "pass_not_tunnel",
        /// A tunnel packet for an address that is not ours: passed untouched.
        PassOtherAddress = "pass_other_address",
        /// A tunnel packet for our address that cannot be decapsulated: the inner header is cut
        /// short or is not the IP version the outer header announces, or the outer payload length
        /// runs past the frame; with a routing header also an inner TCP header cut short (there
        /// is nothing to decide on). Dropped.
        DropMalformed = "drop_malformed",
        /// `bpf_xdp_adjust_head` failed after the checks (cannot happen on a checked frame).
        /// Dropped, since the Ethernet header was already moved.
        DropError = "drop_error",
        // Appended for second chance (indices above are stable): tunnel packets to our address
        // with a Segment Routing Header (`srh`). Each is counted here, not under `decap_*`.
        /// Handed on to the previous backend: no socket for the inner TCP flow, segments left
        /// 1. Destination = segment list[0], segments left 0, hop limit - 1, MACs swapped,
        /// `XDP_TX`.
        SrhForwarded = "srh_forwarded",
        /// Decapsulated and passed: the inner packet is a TCP SYN (a new connection is ours).
        SrhPassSyn = "srh_pass_syn",
        /// Decapsulated and passed: `bpf_skc_lookup_tcp` found an established, request or
        /// TIME_WAIT socket for the inner flow.
        SrhPassSocket = "srh_pass_socket",
        /// Decapsulated and passed: a listener accepts the inner ACK as a valid SYN cookie.
        SrhPassSyncookie = "srh_pass_syncookie",
        /// Decapsulated and passed: segments left 0 (this backend is the last segment).
        SrhPassLast = "srh_pass_last",
        /// Decapsulated and passed: the inner packet is not TCP (or an IPv4 fragment, or IPv6
        /// with an extension header before TCP).
        SrhPassNotTcp = "srh_pass_not_tcp",
        /// A malformed routing header: wrong routing type, Hdr Ext Len not 4, last entry not 1,
        /// segments left above 1, the header or the outer payload length past the frame, or a
        /// next segment that is unspecified or multicast. Dropped, never transmitted.
        DropBadSrh = "drop_bad_srh",
        /// Would be handed on, but the outer hop limit is 0 or 1 (it would reach 0). Dropped,
        /// as a router drops it (no ICMP time exceeded is sent).
        DropSrhHopLimit = "drop_srh_hop_limit",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_numbered_in_order_with_distinct_names() {
        let indices: Vec<u32> = DecapCounter::ALL.iter().map(|&c| c as u32).collect();
        let names: Vec<&str> = DecapCounter::ALL.iter().map(|c| c.name()).collect();
        crate::counters::check_counters(&indices, &names, DecapCounter::COUNT);
        assert_eq!(DecapCounter::DropError as u32, 7);
        assert_eq!(DecapCounter::SrhForwarded as u32, 8);
        assert_eq!(DecapCounter::SrhForwarded.name(), "srh_forwarded");
    }
}
