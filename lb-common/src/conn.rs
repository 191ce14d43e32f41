//! The connection tables (`CONNS4` for IPv4 flows, `CONNS` for IPv6): a flow's 5-tuple, where
//! it is pinned, and how long an entry lives. The XDP program creates and refreshes entries; the agent installs peers' entries and
//! counts flows with the same timeouts (`LbConfig::idle_timeout_ns`).

use crate::headers::{TCP_FIN, TCP_RST, TCP_SYN};

pub const DEFAULT_MAX_CONNS: u32 = 1_000_000;
pub const DEFAULT_UDP_TIMEOUT_NS: u64 = 30_000_000_000;
/// An established TCP flow idle this long is forgotten (its next packet is re-hashed).
pub const DEFAULT_TCP_IDLE_TIMEOUT_NS: u64 = 900_000_000_000;
/// After the client's FIN or RST, the entry lives this long without packets.
pub const DEFAULT_TCP_CLOSING_TIMEOUT_NS: u64 = 30_000_000_000;
/// A connection entry's `atime_ns` is rewritten at most this often, so busy flows do not write
/// their shared entry on every packet.
pub const ATIME_GRANULARITY_NS: u64 = 1_000_000_000;

/// A connection's 5-tuple (client -> VIP), the connection table's key. 40 bytes. Addresses as
/// in `addr`; ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

// SAFETY: repr(C), no implicit padding (explicit `_pad`), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}

#[cfg(feature = "user")]
impl FlowKey {
    /// The key of a client -> VIP flow, as the XDP program builds it.
    pub fn new(
        src: std::net::IpAddr,
        src_port: u16,
        dst: std::net::IpAddr,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        let (family, src) = crate::addr::addr_words(src);
        let (_, dst) = crate::addr::addr_words(dst);
        Self {
            src,
            dst,
            src_port: src_port.to_be(),
            dst_port: dst_port.to_be(),
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

/// An IPv4 flow's key in `CONNS4`: `FlowKey`'s 5-tuple in 16 bytes. The kernel hashes and
/// compares the whole key on every lookup, and 16 bytes cost about 10 ns less per lookup than
/// 40 (BENCHMARKS.md, "Closer to the floor"): IPv4 flows, most of the traffic, get their own
/// table. Addresses as in `FlowKey`. Four whole words, no padding field: built from a
/// `[u8; 3]` of zeros, LLVM emitted a `memset` call, a byte loop in BPF that cost more than the
/// short key saved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    /// The source then the destination port, network order, as `FlowKey` lays them out.
    pub ports: u32,
    /// The protocol in the first byte, zeros after it.
    pub proto: u32,
}

// SAFETY: repr(C), four u32s: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey4 {}

const _: () = assert!(core::mem::size_of::<FlowKey4>() == 16);

impl FlowKey {
    /// The `CONNS4` key of an IPv4 flow (`family` FAMILY_V4).
    #[inline(always)]
    pub fn v4(&self) -> FlowKey4 {
        let [s0, s1] = self.src_port.to_ne_bytes();
        let [d0, d1] = self.dst_port.to_ne_bytes();
        FlowKey4 {
            src: self.src[0],
            dst: self.dst[0],
            ports: u32::from_ne_bytes([s0, s1, d0, d1]),
            proto: u32::from_ne_bytes([self.proto, 0, 0, 0]),
        }
    }
}

impl FlowKey4 {
    /// The same flow as a `FlowKey`.
    #[inline(always)]
    pub fn widen(&self) -> FlowKey {
        let [s0, s1, d0, d1] = self.ports.to_ne_bytes();
        FlowKey {
            src: [self.src, 0, 0, 0],
            dst: [self.dst, 0, 0, 0],
            src_port: u16::from_ne_bytes([s0, s1]),
            dst_port: u16::from_ne_bytes([d0, d1]),
            proto: self.proto.to_ne_bytes()[0],
            family: crate::addr::FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// `ConnEntry::flags`: the client sent FIN or RST; the short closing timeout applies.
pub const CONN_F_CLOSING: u16 = 1;
/// `ConnEntry::flags`: installed by the agent from a peer's flow; the XDP program clears it once
/// local traffic refreshes the entry (this load balancer then owns the flow and re-exports it on
/// refresh sweeps).
pub const CONN_F_PEER: u16 = 2;

/// Connection-table value: where the flow is pinned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEntry {
    pub backend: u32,
    /// The flow hash, kept so an established packet needs no rehash (flow label, GUE port).
    pub hash: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC) of the last refresh, at most
    /// `ATIME_GRANULARITY_NS` stale.
    pub atime_ns: u64,
    /// `Backend::generation` when the entry was made.
    pub generation: u32,
    pub flags: u16,
    /// Second chance: the backend that held the flow's Maglev slot before its last change,
    /// as id + 1 (`backend::encode_id`); 0: none. Set when a mid-flow packet without an entry
    /// met a slot with a live previous backend; every packet of the flow then carries it.
    pub prev: u16,
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConnEntry {}

/// What a packet's TCP flags mean to its connection entry (all false for UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// A connection start (SYN without RST): always re-chosen by Maglev, (re)creating the entry.
    pub syn: bool,
    /// RST: follows the entry if any, never creates one.
    pub rst: bool,
    /// FIN or RST: the entry switches to the closing timeout.
    pub closing: bool,
}

impl TcpEvent {
    #[inline(always)]
    pub const fn of(is_tcp: bool, tcp_flags: u8) -> Self {
        Self {
            syn: is_tcp && tcp_flags & (TCP_SYN | TCP_RST) == TCP_SYN,
            rst: is_tcp && tcp_flags & TCP_RST != 0,
            closing: is_tcp && tcp_flags & (TCP_FIN | TCP_RST) != 0,
        }
    }
}

// Layouts are part of the kernel/userspace contract.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "user")]
    #[test]
    fn an_ipv4_key_narrows_and_widens_back_unchanged() {
        let k = FlowKey::new(
            "198.51.100.7".parse().unwrap(),
            40000,
            "192.0.2.10".parse().unwrap(),
            80,
            crate::headers::PROTO_TCP,
        );
        let n = k.v4();
        assert_eq!((n.src, n.dst), (k.src[0], k.dst[0]));
        assert_eq!(n.widen(), k);
    }

    const ACK: u8 = 0x10;

    #[test]
    fn tcp_flags_classify() {
        let e = |f| TcpEvent::of(true, f);
        assert_eq!(
            e(TCP_SYN),
            TcpEvent {
                syn: true,
                rst: false,
                closing: false
            }
        );
        // SYN-ACK is a SYN too; SYN+RST is a reset, not a start.
        assert!(e(TCP_SYN | ACK).syn);
        assert_eq!(
            e(TCP_SYN | TCP_RST),
            TcpEvent {
                syn: false,
                rst: true,
                closing: true
            }
        );
        assert_eq!(
            e(TCP_FIN | ACK),
            TcpEvent {
                syn: false,
                rst: false,
                closing: true
            }
        );
        assert_eq!(
            e(ACK),
            TcpEvent {
                syn: false,
                rst: false,
                closing: false
            }
        );
        // UDP has no flags, whatever the byte holds.
        assert_eq!(
            TcpEvent::of(false, 0xFF),
            TcpEvent {
                syn: false,
                rst: false,
                closing: false
            }
        );
    }
}
