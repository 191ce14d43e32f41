//! The program's maps. Sizes are defaults; the loader resizes them (`map_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    Backend, CachedFlow, ConnEntry, CounterValue, DEFAULT_FLOW_CACHE_SLOTS, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_CONNS, DEFAULT_MAX_IFACES, DEFAULT_MAX_RINGS, DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE,
    EGRESS_MAX_DEVS, EGRESS_STATS_SLOTS, Egress, FLOW_EVENTS_BYTES, FlowKey, FlowKey4,
    IFACE_PROBES, IfaceConfig, IfaceSlot, LbConfig, RingSlot, STATS_SLOTS, VipFilter, VipKey,
    VipMeta, VipSlot, flow_cache_bits, iface_slot, vip_index_size,
};

/// Bench variant flag: a separate LRU list per CPU over the shared table.
#[cfg(feature = "conns-no-common-lru")]
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Maglev table size M, set by the loader; `volatile` read so it is not constant-folded.
#[unsafe(no_mangle)]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;

#[inline(always)]
pub fn ring_size() -> u32 {
    // SAFETY: a read of a plain u32 static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}

/// `VIP_INDEX` slots (a power of two), set by the loader.
#[unsafe(no_mangle)]
static VIP_INDEX_SIZE: u32 = vip_index_size(DEFAULT_MAX_VIPS);

#[inline(always)]
pub fn vip_index_slots() -> u32 {
    // SAFETY: a read of a plain u32 static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&VIP_INDEX_SIZE) }
}

/// log2 of the flow cache's slots per CPU and family, set by the loader.
#[unsafe(no_mangle)]
static FLOW_CACHE_BITS: u32 = flow_cache_bits(DEFAULT_FLOW_CACHE_SLOTS);

#[inline(always)]
pub fn cache_bits() -> u32 {
    // SAFETY: a read of a plain u32 static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(&FLOW_CACHE_BITS) }
}

#[map]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

/// Link layer per ingress NIC, so one program can serve several NICs: slots found by ifindex
/// (`IfaceSlot`), an array so the lookup costs no hashing.
#[map]
pub static IFACES: Array<IfaceSlot> = Array::with_max_entries(DEFAULT_MAX_IFACES, 0);

#[map]
pub static VIP_FILTER: Array<VipFilter> = Array::with_max_entries(1, 0);

/// Services, plus one marker per VIP address (port 0, proto 0) for the exact address check.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS * 2, 0);

/// Services by `VipMeta::id` (flag `VIP_F_LIVE`): the VIP of an established flow's backend.
#[map]
pub static VIPS_BY_ID: Array<VipMeta> = Array::with_max_entries(DEFAULT_MAX_VIPS, 0);

/// The services, open-addressed by `vip_index_hash` (see `VipSlot`).
#[map]
pub static VIP_INDEX: Array<VipSlot> = Array::with_max_entries(vip_index_size(DEFAULT_MAX_VIPS), 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// All Maglev rings, back to back: ring r is `RINGS[r * M .. (r + 1) * M]`.
#[map]
pub static RINGS: Array<RingSlot> =
    Array::with_max_entries(DEFAULT_MAX_RINGS * DEFAULT_RING_SIZE, 0);

/// The connection tables, IPv4 flows in `CONNS4` (a 16-byte key, cheaper to hash and compare)
/// and IPv6 flows in `CONNS` (conns.rs picks by family): LRU hashes shared by all CPUs, so a
/// flow is found whichever CPU receives it (RSS changes, flows installed by the agent). `cargo
/// xtask bench` compares them with per-CPU LRU lists and per-CPU tables; see docs/dataplane.md
/// for the figures.
/// The type of both connection tables (conns.rs writes either through it).
#[cfg(not(feature = "conns-percpu-lru"))]
pub type Table<K> = aya_ebpf::maps::LruHashMap<K, ConnEntry>;
#[cfg(feature = "conns-percpu-lru")]
pub type Table<K> = aya_ebpf::maps::LruPerCpuHashMap<K, ConnEntry>;

#[cfg(not(any(feature = "conns-no-common-lru", feature = "conns-percpu-lru")))]
#[map]
pub static CONNS: aya_ebpf::maps::LruHashMap<FlowKey, ConnEntry> =
    aya_ebpf::maps::LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);
#[cfg(not(any(feature = "conns-no-common-lru", feature = "conns-percpu-lru")))]
#[map]
pub static CONNS4: aya_ebpf::maps::LruHashMap<FlowKey4, ConnEntry> =
    aya_ebpf::maps::LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Bench variant: the shared tables with a separate LRU list per CPU.
#[cfg(feature = "conns-no-common-lru")]
#[map]
pub static CONNS: aya_ebpf::maps::LruHashMap<FlowKey, ConnEntry> =
    aya_ebpf::maps::LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, BPF_F_NO_COMMON_LRU);
#[cfg(feature = "conns-no-common-lru")]
#[map]
pub static CONNS4: aya_ebpf::maps::LruHashMap<FlowKey4, ConnEntry> =
    aya_ebpf::maps::LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, BPF_F_NO_COMMON_LRU);

/// Bench variant: private tables per CPU (Katran's layout).
#[cfg(feature = "conns-percpu-lru")]
#[map]
pub static CONNS: aya_ebpf::maps::LruPerCpuHashMap<FlowKey, ConnEntry> =
    aya_ebpf::maps::LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);
#[cfg(feature = "conns-percpu-lru")]
#[map]
pub static CONNS4: aya_ebpf::maps::LruPerCpuHashMap<FlowKey4, ConnEntry> =
    aya_ebpf::maps::LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_CONNS, 0);

/// Established IPv4 flows as last read from `CONNS4` (flowcache.rs): the slot count per
/// CPU, CPU after CPU (the loader sizes it for every possible CPU). One array, not a per-CPU
/// one: a per-CPU array allocates each element apart, so a slot costs two dependent reads
/// (its pointer, then the element) where this costs one.
#[map]
pub static FLOW_CACHE: Array<CachedFlow<FlowKey4>> =
    Array::with_max_entries(DEFAULT_FLOW_CACHE_SLOTS, 0);

/// Established IPv6 flows as last read from `CONNS`, laid out as `FLOW_CACHE`.
#[map]
pub static FLOW_CACHE6: Array<CachedFlow<FlowKey>> =
    Array::with_max_entries(DEFAULT_FLOW_CACHE_SLOTS, 0);

/// The flow cache's epoch per slot index: a slot of another epoch does not count (flowcache.rs).
#[map]
pub static FLOW_CACHE_EPOCHS: Array<u64> = Array::with_max_entries(DEFAULT_FLOW_CACHE_SLOTS, 0);

/// New TCP flows (`FlowEvent`) for peer flow sync, when `LB_F_FLOW_EVENTS` is set.
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);

/// Each backend's way out (`lb_common::Egress`, by backend id), written by the agent.
#[map]
pub static EGRESS: Array<Egress> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// The NICs a packet may be redirected to, by `EgressPath::dev`.
#[map]
pub static EGRESS_DEVS: DevMap = DevMap::with_max_entries(EGRESS_MAX_DEVS, 0);

/// Per NIC of the egress step: packets sent with XDP_TX, then with XDP_REDIRECT.
#[map]
pub static EGRESS_STATS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(EGRESS_STATS_SLOTS, 0);

/// Bench variant `egress-fib`: where the per-packet FIB lookup leaves the MACs it found.
#[cfg(feature = "egress-fib")]
#[map]
pub static EGRESS_FIB_SCRATCH: PerCpuArray<IfaceConfig> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static STATS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);

/// Written by the agent only: the counts of each VIP's uninstalled backends (a VIP's count is
/// these plus its installed backends' `BACKEND_STATS`).
#[map]
pub static VIP_STATS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

#[inline(always)]
pub fn config() -> Option<&'static LbConfig> {
    LB_CONFIG.get(0)
}

/// The link layer of the NIC with `ifindex`, from the first of its probe slots that holds it.
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceConfig> {
    for probe in 0..IFACE_PROBES {
        if let Some(slot) = IFACES.get(iface_slot(ifindex, probe))
            && slot.ifindex == ifindex
        {
            return Some(&slot.config);
        }
    }
    None
}
