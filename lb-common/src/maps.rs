//! `#[repr(C)]` keys and values of the XDP program's maps, and the map names.
//!
//! Addresses are stored as the raw network-order bytes read as native-endian `u32` words (what
//! the XDP program loads from the packet); ports likewise stay in network order. IPv4 uses word
//! 0 and zeroes the rest, and a `family` byte keeps IPv4 and IPv6 keys apart.

/// Map names, as the XDP program defines them and userspace opens them.
pub mod names {
    pub const CONFIG: &str = "LB_CONFIG";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const VIPS: &str = "VIPS";
    /// `VipMeta` by `VipMeta::id`, for established flows: their backend names the VIP, so
    /// they skip the `VIPS` hash lookup.
    pub const VIPS_BY_ID: &str = "VIPS_BY_ID";
    /// The services of `VIPS` again, in an open-addressed array (`VipSlot`): the hot path's
    /// lookup by address costs array reads and word compares, not a kernel hash lookup.
    pub const VIP_INDEX: &str = "VIP_INDEX";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RINGS: &str = "RINGS";
    pub const CONNS: &str = "CONNS";
    pub const STATS: &str = "STATS";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const IFACES: &str = "IFACES";
    /// Ring buffer of `FlowEvent`s (new TCP flows) for peer flow sync. Not pinned: each
    /// program load gets a fresh one, read by the agent that loaded it.
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";

    /// The maps that hold state worth keeping across an agent restart or upgrade; the agent
    /// pins them in bpffs and a new agent's program reuses them.
    pub const PINNED: &[&str] = &[
        CONFIG,
        VIP_FILTER,
        VIPS,
        VIPS_BY_ID,
        VIP_INDEX,
        BACKENDS,
        RINGS,
        CONNS,
        STATS,
        VIP_STATS,
        BACKEND_STATS,
        IFACES,
    ];
}

/// Globals set at load time (`EbpfLoader::set_global`).
pub mod globals {
    /// Maglev table size M shared by all rings (a prime).
    pub const RING_SIZE: &str = "RING_SIZE";
    /// Slots of `VIP_INDEX` (a power of two).
    pub const VIP_INDEX_SIZE: &str = "VIP_INDEX_SIZE";
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Ring slot value meaning "no backend" (an empty ring drops with `drop_no_backend`).
pub const NO_BACKEND: u32 = u32::MAX;

pub const DEFAULT_RING_SIZE: u32 = 65537;
pub const DEFAULT_MAX_VIPS: u32 = 512;
pub const DEFAULT_MAX_RINGS: u32 = 64;
pub const DEFAULT_MAX_BACKENDS: u32 = 4096;
pub const DEFAULT_MAX_CONNS: u32 = 1_000_000;
pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Slots of `IFACES` (a power of two; fixed, not resized by the loader).
pub const DEFAULT_MAX_IFACES: u32 = 64;
/// A NIC lives in one of `IFACE_PROBES` consecutive `IFACES` slots from `iface_slot(ifindex, 0)`.
pub const IFACE_PROBES: u32 = 4;
pub const DEFAULT_UDP_TIMEOUT_NS: u64 = 30_000_000_000;
/// An established TCP flow idle this long is forgotten (its next packet is re-hashed).
pub const DEFAULT_TCP_IDLE_TIMEOUT_NS: u64 = 900_000_000_000;
/// After the client's FIN or RST, the entry lives this long without packets.
pub const DEFAULT_TCP_CLOSING_TIMEOUT_NS: u64 = 30_000_000_000;
/// A connection entry's `atime_ns` is rewritten at most this often, so busy flows do not write
/// their shared entry on every packet.
pub const ATIME_GRANULARITY_NS: u64 = 1_000_000_000;

/// Default byte size of the `FLOW_EVENTS` ring buffer (a power-of-two multiple of the page
/// size, as the kernel requires). Each event takes `size_of::<FlowEvent>()` plus an 8-byte
/// record header, so 1 MiB holds about 18.7k events.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// Bytes the encapsulation adds: IPv6 header, plus UDP for GUE.
pub const ENCAP_IP6_LEN: usize = 40;
pub const ENCAP_GUE_LEN: usize = 48;

/// A connection's 5-tuple (client -> VIP), the connection table's key. 40 bytes.
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

/// A VIP service: address, port (0 = any port) and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// A `VIP_INDEX` slot: a service's key and meta; `key.proto == 0` marks a free slot. The
/// service with key `k` lives in the first free of the `VIP_PROBES` slots from
/// `vip_index_slot(vip_index_hash(k), 0, size)`, and the lookup checks all of them (removals
/// leave holes, so it does not stop at a free one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    pub meta: VipMeta,
}

/// Probes per `VIP_INDEX` lookup. With the index 8 times larger than `max_vips`, a service
/// that finds all 8 taken is vanishingly rare; the agent refuses it with a clear error.
pub const VIP_PROBES: u32 = 8;

/// `VIP_INDEX` size for `max_vips` services: 8 slots per service, a power of two.
pub const fn vip_index_size(max_vips: u32) -> u32 {
    (max_vips.saturating_mul(8)).next_power_of_two()
}

/// The hash placing a service in `VIP_INDEX`: a multiply-xorshift of its five key words
/// (cheap in BPF; quality only affects probe lengths, not correctness).
#[inline(always)]
pub const fn vip_index_hash(key: &VipKey) -> u32 {
    vip_index_hash_words(&key.addr, vip_key_tail(key.port, key.proto, key.family))
}

/// A `VipKey`'s fifth 32-bit word as it lies in memory (little-endian): port, protocol,
/// family.
#[inline(always)]
pub const fn vip_key_tail(port: u16, proto: u8, family: u8) -> u32 {
    (port as u32) | ((proto as u32) << 16) | ((family as u32) << 24)
}

/// `vip_index_hash` of a key given as its address words and `vip_key_tail`.
#[inline(always)]
pub const fn vip_index_hash_words(addr: &[u32; 4], tail: u32) -> u32 {
    let mut h = addr[0] ^ addr[1].rotate_left(7) ^ addr[2].rotate_left(13);
    h ^= addr[3].rotate_left(19) ^ tail.rotate_left(3);
    h = h.wrapping_mul(0x9E37_79B1);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85EB_CA77);
    h ^ (h >> 13)
}

/// Slot of probe `probe` for `hash` in an index of `size` slots (a power of two).
#[inline(always)]
pub const fn vip_index_slot(hash: u32, probe: u32, size: u32) -> u32 {
    hash.wrapping_add(probe) & (size - 1)
}

/// `VipMeta::flags`: encapsulate in IPv6 + UDP (GUE variant 1) instead of plain IPv6.
pub const VIP_F_GUE: u32 = 1;
/// `VipMeta::flags` of a VIP address's marker entry (port 0, protocol 0): do not answer ICMP
/// echo requests to this address.
pub const VIP_F_NO_ECHO: u32 = 2;
/// `VipMeta::flags` in `VIPS_BY_ID`: the slot holds an installed service (cleared when the
/// service is removed, so connection entries of its backends stop taking the fast path).
pub const VIP_F_LIVE: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS`.
    pub id: u32,
    /// Which Maglev ring (`RINGS[ring * RING_SIZE ..]`) this VIP uses.
    pub ring: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// `Backend::flags`: the slot holds an installed backend. A connection-table entry pointing at
/// a slot without it is treated as a miss, so a removed backend never receives traffic.
pub const BACKEND_F_VALID: u32 = 1;
/// `Backend::flags`: draining (no ring slots; existing flows keep it). Informational for the
/// XDP program, which only follows ring slots and connection entries.
pub const BACKEND_F_DRAINING: u32 = 2;

/// One backend of one VIP (`BACKENDS[id]`): the tunnel endpoint and, for the agent that adopts
/// the maps after a restart, which VIP it serves and with what weight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    pub flags: u32,
    /// Bumped every time the id is given to a new backend: a connection entry from the id's
    /// previous owner no longer matches and falls back to Maglev.
    pub generation: u32,
    /// `VipMeta::id` of the VIP this backend serves.
    pub vip: u32,
    pub weight: u32,
}

/// `ConnEntry::flags`: the client sent FIN or RST; the short closing timeout applies.
pub const CONN_F_CLOSING: u32 = 1;
/// `ConnEntry::flags`: installed by the agent from a peer's flow; the XDP program clears it once
/// local traffic refreshes the entry (this load balancer then owns the flow and re-exports it on
/// refresh sweeps).
pub const CONN_F_PEER: u32 = 2;

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
    pub flags: u32,
}

/// Load-balancer wide settings (`LB_CONFIG[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbConfig {
    /// Outer IPv6 source: this load balancer's tunnel address.
    pub src_ip6: [u32; 4],
    /// Fleet-wide flow hash seed.
    pub hash_seed: u64,
    /// UDP flows idle longer than this are re-hashed.
    pub udp_timeout_ns: u64,
    /// Established TCP flows idle longer than this are re-hashed.
    pub tcp_idle_timeout_ns: u64,
    /// TCP flows idle this long after the client's FIN or RST are re-hashed.
    pub tcp_closing_timeout_ns: u64,
    /// GUE destination port, network order.
    pub gue_port: u16,
    /// `LB_F_*` feature bits.
    pub flags: u16,
    pub _pad: [u16; 2],
}

/// `LbConfig::flags`: export SYN-created connection entries on FLOW_EVENTS for peer sync.
pub const LB_F_FLOW_EVENTS: u16 = 1;

/// A new TCP flow, exported on `FLOW_EVENTS` when a SYN creates its connection entry. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: FlowKey,
    /// The local backend id (`ConnEntry::backend`).
    pub backend: u32,
    /// The flow hash stored in the entry (`ConnEntry::hash`).
    pub hash: u32,
}

impl LbConfig {
    /// How long a connection entry may idle before it is ignored: UDP, established TCP, or
    /// TCP after the client's FIN/RST. The XDP program and the agent's flow counts share it.
    #[inline(always)]
    pub fn idle_timeout_ns(&self, is_tcp: bool, entry_flags: u32) -> u64 {
        if !is_tcp {
            self.udp_timeout_ns
        } else if entry_flags & CONN_F_CLOSING != 0 {
            self.tcp_closing_timeout_ns
        } else {
            self.tcp_idle_timeout_ns
        }
    }
}

/// Per-NIC link layer (in an `IfaceSlot`): encapsulated packets leave by the NIC they came in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Outer Ethernet source: the NIC's MAC.
    pub src_mac: [u8; 6],
    /// Outer Ethernet destination: the next hop towards the backends.
    pub dst_mac: [u8; 6],
    /// Largest IP packet (outer header included) that may leave this NIC: a client packet that
    /// would exceed it once encapsulated is answered with ICMP "too big" instead. 0: unchecked.
    pub mtu: u16,
    pub _pad: u16,
}

/// An `IFACES` slot: a NIC's ifindex (0: free) and its link layer. The NIC with ifindex `i`
/// lives in slot `iface_slot(i, p)` for the first free probe `p < IFACE_PROBES`: the hot path
/// finds it with array lookups (a few instructions each) rather than a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    pub ifindex: u32,
    pub config: IfaceConfig,
}

/// The `IFACES` slot of probe `probe` for `ifindex`.
#[inline(always)]
pub const fn iface_slot(ifindex: u32, probe: u32) -> u32 {
    ifindex.wrapping_add(probe) & (DEFAULT_MAX_IFACES - 1)
}

/// A packets/bytes pair, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Bits in the VIP address pre-filter: a non-VIP packet leaves after one array lookup and a bit
/// test, before any hash-map lookup. False positives only cost the exact VIP lookup.
pub const VIP_FILTER_BITS: u32 = 1 << 16;
pub const VIP_FILTER_WORDS: usize = (VIP_FILTER_BITS / 64) as usize;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipFilter {
    pub words: [u64; VIP_FILTER_WORDS],
}

impl Default for VipFilter {
    fn default() -> Self {
        Self {
            words: [0; VIP_FILTER_WORDS],
        }
    }
}

/// The filter bit of an address (its words as loaded from the packet).
#[inline(always)]
pub const fn vip_filter_bit(folded_addr: u32) -> u32 {
    (folded_addr.wrapping_mul(0x9E37_79B1) >> 16) & (VIP_FILTER_BITS - 1)
}

#[inline(always)]
pub const fn fold_v6(a: &[u32; 4]) -> u32 {
    a[0] ^ a[1] ^ a[2] ^ a[3]
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for LbConfig {}
    unsafe impl aya::Pod for CounterValue {}
    unsafe impl aya::Pod for VipFilter {}
    unsafe impl aya::Pod for IfaceConfig {}
    unsafe impl aya::Pod for IfaceSlot {}
    unsafe impl aya::Pod for VipSlot {}
    unsafe impl aya::Pod for FlowEvent {}

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

    impl FlowKey {
        /// The key of a client -> VIP flow, as the XDP program builds it.
        pub fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> Self {
            let (family, src) = addr_words(src);
            let (_, dst) = addr_words(dst);
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

    impl VipKey {
        pub fn new(addr: IpAddr, port: u16, proto: u8) -> Self {
            let (family, addr) = addr_words(addr);
            Self {
                addr,
                port: port.to_be(),
                proto,
                family,
            }
        }

        pub fn filter_bit(&self) -> u32 {
            let folded = if self.family == FAMILY_V4 {
                self.addr[0]
            } else {
                fold_v6(&self.addr)
            };
            vip_filter_bit(folded)
        }
    }

    impl VipFilter {
        pub fn set(&mut self, bit: u32) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        pub fn contains(&self, bit: u32) -> bool {
            self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
        }
    }
}

#[cfg(feature = "user")]
pub use user::*;

// Layouts are part of the kernel/userspace contract.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);
const _: () = assert!(core::mem::size_of::<Backend>() == 32);
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 24);
const _: () = assert!(core::mem::size_of::<LbConfig>() == 56);
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 16);
const _: () = assert!(core::mem::size_of::<IfaceSlot>() == 20);
const _: () = assert!(core::mem::size_of::<VipSlot>() == 36);
const _: () = assert!(DEFAULT_MAX_IFACES.is_power_of_two());
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 48);
