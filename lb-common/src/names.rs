//! Names in the `lb-xdp` object: its maps, as the XDP program defines them and userspace opens
//! them, and (`globals`) the globals the loader sets.

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
/// IPv6 flows' connection table (`FlowKey`).
pub const CONNS: &str = "CONNS";
/// IPv4 flows' connection table (`FlowKey4`).
pub const CONNS4: &str = "CONNS4";
/// Per CPU, the established IPv4 flows last read from `CONNS4` (`CachedFlow<FlowKey4>`). Not
/// pinned: each program load starts with an empty cache.
pub const FLOW_CACHE: &str = "FLOW_CACHE";
/// The same for IPv6 flows and `CONNS` (`CachedFlow<FlowKey>`). Not pinned.
pub const FLOW_CACHE6: &str = "FLOW_CACHE6";
/// The flow cache's epochs, a u64 per slot index (`flow_cache_slots`, shared by every CPU's
/// slot of that index): written after a change to the entry of any flow of that index, which
/// retires those slots only. Pinned with the tables it guards, so any process that writes them
/// (through their pins) can find it.
pub const FLOW_CACHE_EPOCHS: &str = "FLOW_CACHE_EPOCHS";
pub const STATS: &str = "STATS";
pub const VIP_STATS: &str = "VIP_STATS";
pub const BACKEND_STATS: &str = "BACKEND_STATS";
pub const IFACES: &str = "IFACES";
/// Ring buffer of `FlowEvent`s (new TCP flows) for peer flow sync. Not pinned: each
/// program load gets a fresh one, read by the agent that loaded it.
pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
/// The new-flow gate's setting (`ratelimit::FlowGate`). Not pinned: the agent writes it after
/// every load, like its per-CPU buckets, which start full.
pub const FLOW_GATE: &str = "FLOW_GATE";
/// Each backend's way out (`Egress`, by backend id). Not pinned: the agent writes it for every
/// installed backend after each load, from the kernel's routes or the static next hops.
pub const EGRESS: &str = "EGRESS";
/// The NICs packets may be redirected to (a DEVMAP, by `EgressPath::dev`). Not pinned.
pub const EGRESS_DEVS: &str = "EGRESS_DEVS";
/// Per-NIC counters of the egress step (`EGRESS_STATS_SLOTS`: XDP_TX and XDP_REDIRECT per
/// `EgressPath::dev`). Not pinned.
pub const EGRESS_STATS: &str = "EGRESS_STATS";

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
    CONNS4,
    FLOW_CACHE_EPOCHS,
    STATS,
    VIP_STATS,
    BACKEND_STATS,
    IFACES,
];

/// Globals set at load time (`EbpfLoader::set_global`).
pub mod globals {
    /// Maglev table size M shared by all rings (a prime).
    pub const RING_SIZE: &str = "RING_SIZE";
    /// Slots of `VIP_INDEX` (a power of two).
    pub const VIP_INDEX_SIZE: &str = "VIP_INDEX_SIZE";
    /// log2 of the flow cache's slots per CPU and family (`[dataplane] flow_cache_slots`).
    pub const FLOW_CACHE_BITS: &str = "FLOW_CACHE_BITS";
}
