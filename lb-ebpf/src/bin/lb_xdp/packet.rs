//! The types the pipeline's steps hand each other: the checked packet (`Parsed`), why a packet
//! is not balanced (`NotBalanced`, `Verdict`), what kind of packet the forwarding tail carries
//! (`Kind`) and the backend it goes to (`Target`).

use aya_ebpf::bindings::xdp_action;
use lb_common::{Counter, FlowKey};

use crate::stats;

/// A checked packet to forward, and the flow it belongs to.
pub struct Parsed {
    /// The flow (client -> VIP): the packet's own 5-tuple, or for an ICMP error the flow of the
    /// packet it quotes. Its `family` is the packet's own IP version either way.
    pub key: FlowKey,
    /// Offset of the IP header: 14, or 18 with a VLAN tag.
    pub l3_off: usize,
    /// The VLAN tag control information (network order), when `l3_off` is 18.
    pub vlan_tci: u16,
    /// Length of the IP packet from its own header; bytes after it are link padding.
    pub ip_len: u16,
    /// IPv4 TOS / IPv6 traffic class, copied to the outer header.
    pub tclass: u8,
    pub tcp_flags: u8,
    pub frame_len: u32,
}

/// What the forwarding tail carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client packet of its own flow: the connection table pins and refreshes the flow, and a
    /// packet too big to encapsulate is answered with ICMP.
    Client,
    /// An ICMP error to a VIP about one of its flows: sent, untouched, to that flow's backend.
    /// The lookup is read-only (no entry created or refreshed, no connection-table counter),
    /// no too-big check applies (an ICMP error is never answered with one, RFC 1122 3.2.2),
    /// and a sent error counts `IcmpErrorForwarded`.
    IcmpError,
}

/// Why parse did not return a packet to forward.
pub enum NotBalanced {
    /// Passed or dropped now.
    Verdict(Verdict),
    /// ICMP or ICMPv6 to a VIP address, complete and within the frame: for icmp.rs, with the
    /// address marker's flags (`VIP_F_NO_ECHO`).
    IcmpToVip(u32),
}

impl From<Verdict> for NotBalanced {
    #[inline(always)]
    fn from(verdict: Verdict) -> Self {
        NotBalanced::Verdict(verdict)
    }
}

/// What the program does with a packet it will not forward, and the counter to bump.
pub enum Verdict {
    Pass(Counter),
    Drop(Counter),
}

impl Verdict {
    #[inline(always)]
    pub fn apply(self) -> u32 {
        match self {
            Verdict::Pass(c) => {
                stats::count(c);
                xdp_action::XDP_PASS
            }
            Verdict::Drop(c) => stats::drop(c),
        }
    }
}

/// The backend a packet goes to, and the flow hash its outer headers carry.
pub struct Target {
    pub id: u32,
    pub addr: [u32; 4],
    pub hash: u32,
    /// Second chance: the backend that held the flow's slot before its last change, as id + 1
    /// (`lb_common::encode_id`); 0: none. Carried in a Segment Routing Header (`encap`).
    pub prev: u16,
}
