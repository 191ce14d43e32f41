//! The program's maps. Sizes are defaults; the loader resizes them (`map_max_entries`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Backend, ConnEntry, CounterValue, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_CONNS, DEFAULT_MAX_RINGS,
    DEFAULT_MAX_VIPS, DEFAULT_RING_SIZE, FlowKey, LbConfig, VipFilter, VipKey, VipMeta,
    stats::COUNTER_COUNT,
};

/// Each CPU keeps its own LRU list (the hash table stays shared): no cross-CPU lock on the
/// LRU on insert, and a flow is still found whichever CPU receives it after an RSS change.
const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;

/// Maglev table size M, set by the loader; `volatile` read so it is not constant-folded.
#[unsafe(no_mangle)]
static RING_SIZE: u32 = DEFAULT_RING_SIZE;

#[inline(always)]
pub fn ring_size() -> u32 {
    unsafe { core::ptr::read_volatile(&RING_SIZE) }
}

#[map]
pub static LB_CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);

#[map]
pub static VIP_FILTER: Array<VipFilter> = Array::with_max_entries(1, 0);

/// Services, plus one marker per VIP address (port 0, proto 0) for the exact address check.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(DEFAULT_MAX_VIPS * 2, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(DEFAULT_MAX_BACKENDS, 0);

/// All Maglev rings, back to back: ring r is `RINGS[r * M .. (r + 1) * M]`.
#[map]
pub static RINGS: Array<u32> = Array::with_max_entries(DEFAULT_MAX_RINGS * DEFAULT_RING_SIZE, 0);

#[map]
pub static CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(DEFAULT_MAX_CONNS, BPF_F_NO_COMMON_LRU);

#[map]
pub static STATS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

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
