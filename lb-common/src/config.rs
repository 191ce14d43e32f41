//! The dataplane's configuration: load-balancer wide settings (`LB_CONFIG[0]`) and each NIC's
//! link layer (`IFACES`).

use crate::conn::CONN_F_CLOSING;

pub const DEFAULT_GUE_PORT: u16 = 6080;
/// Slots of `IFACES` (a power of two; fixed, not resized by the loader).
pub const DEFAULT_MAX_IFACES: u32 = 64;
/// A NIC lives in one of `IFACE_PROBES` consecutive `IFACES` slots from `iface_slot(ifindex, 0)`.
pub const IFACE_PROBES: u32 = 4;

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
    /// Generated ICMP (echo replies, "too big") per second per CPU; 0: no limit
    /// (`lb_common::ratelimit`). In what was padding: pinned `LB_CONFIG` maps keep their layout,
    /// and an older agent's config (zeroes here) means no limit, as before.
    pub icmp_rate: u16,
    /// The most generated ICMP messages one CPU sends at once (the bucket's size).
    pub icmp_burst: u16,
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for LbConfig {}

/// `LbConfig::flags`: export new TCP connection entries on FLOW_EVENTS for peer sync.
pub const LB_F_FLOW_EVENTS: u16 = 1;
/// `LbConfig::flags`: the agent keeps each ring slot's previous backend (second chance is on),
/// so a SYN whose slot did not change recently writes no connection entry: its flow's entry is
/// made by its first packet after the SYN, and a table change in between is covered by the
/// second chance. Unset (second chance off, or an older agent): every SYN writes its entry.
pub const LB_F_SECOND_CHANCE: u16 = 2;
/// `LbConfig::flags`: established IPv4 packets may be answered by the per-CPU flow cache
/// (`flow_cache`). Unset: every packet reads the connection table, as before.
pub const LB_F_FLOW_CACHE: u16 = 4;

impl LbConfig {
    /// How long a connection entry may idle before it is ignored: UDP, established TCP, or
    /// TCP after the client's FIN/RST. The XDP program and the agent's flow counts share it.
    #[inline(always)]
    pub fn idle_timeout_ns(&self, is_tcp: bool, entry_flags: u16) -> u64 {
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

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceConfig {}

/// An `IFACES` slot: a NIC's ifindex (0: free) and its link layer. The NIC with ifindex `i`
/// lives in slot `iface_slot(i, p)` for the first free probe `p < IFACE_PROBES`: the hot path
/// finds it with array lookups (a few instructions each) rather than a hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceSlot {
    pub ifindex: u32,
    pub config: IfaceConfig,
}

// SAFETY: repr(C), no padding (4 + 16 bytes, 4-byte aligned), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceSlot {}

/// The `IFACES` slot of probe `probe` for `ifindex`.
#[inline(always)]
pub const fn iface_slot(ifindex: u32, probe: u32) -> u32 {
    ifindex.wrapping_add(probe) & (DEFAULT_MAX_IFACES - 1)
}

const _: () = assert!(core::mem::size_of::<LbConfig>() == 56);
const _: () = assert!(core::mem::size_of::<IfaceConfig>() == 16);
const _: () = assert!(core::mem::size_of::<IfaceSlot>() == 20);
const _: () = assert!(DEFAULT_MAX_IFACES.is_power_of_two());
