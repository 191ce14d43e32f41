//! The per-CPU flow caches in front of `CONNS4` and `CONNS` (lb-common/src/flow_cache.rs says
//! when a slot counts): `probe` for an established packet (the flow's slot index and its
//! epoch, read before the table, and what the slot holds), `fill` after its entry was read
//! from the table, `retire` when an entry replaced another. Each takes the packet's `FlowKey`
//! and picks the family's cache: `FlowKey4` keys in `FLOW_CACHE`, IPv6 `FlowKey`s in
//! `FLOW_CACHE6`.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns};
use aya_ebpf::maps::Array;
use lb_common::{
    CachedFlow, ConnEntry, FAMILY_V4, FLOW_CACHE_RECHECK_JIFFIES, FlowKey, FlowKey4,
    flow_cache_index, flow_cache_slot, flow_cache_slot6,
};

use crate::maps::{FLOW_CACHE, FLOW_CACHE_EPOCHS, FLOW_CACHE6, cache_bits};

/// A table key the cache can hold: its slot index (of `1 << bits`), its array, and a
/// word-by-word compare (a derived `==` on arrays may become a `memcmp` call, which BPF does
/// not have).
trait CacheKey: Copy + 'static {
    fn index(&self, bits: u32) -> u32;
    fn cache() -> &'static Array<CachedFlow<Self>>;
    fn same(&self, other: &Self) -> bool;
}

impl CacheKey for FlowKey4 {
    #[inline(always)]
    fn index(&self, bits: u32) -> u32 {
        flow_cache_slot(self, bits)
    }
    #[inline(always)]
    fn cache() -> &'static Array<CachedFlow<Self>> {
        &FLOW_CACHE
    }
    #[inline(always)]
    fn same(&self, o: &Self) -> bool {
        self.src == o.src && self.dst == o.dst && self.ports == o.ports && self.proto == o.proto
    }
}

impl CacheKey for FlowKey {
    #[inline(always)]
    fn index(&self, bits: u32) -> u32 {
        flow_cache_slot6(self, bits)
    }
    #[inline(always)]
    fn cache() -> &'static Array<CachedFlow<Self>> {
        &FLOW_CACHE6
    }
    #[inline(always)]
    fn same(&self, o: &Self) -> bool {
        // The key's last word: ports. Then protocol and family (the padding is always zero).
        self.src_port == o.src_port
            && self.dst_port == o.dst_port
            && self.src[3] == o.src[3]
            && self.src[2] == o.src[2]
            && self.src[1] == o.src[1]
            && self.src[0] == o.src[0]
            && self.dst[3] == o.dst[3]
            && self.dst[2] == o.dst[2]
            && self.dst[1] == o.dst[1]
            && self.dst[0] == o.dst[0]
            && self.proto == o.proto
            && self.family == o.family
    }
}

/// A flow's slot index (the same on every CPU) and the index's epoch, read before the
/// connection table: a fill can never tag an entry read before a change with the epoch written
/// after it.
#[derive(Clone, Copy)]
pub struct Slot {
    index: u32,
    bits: u32,
    epoch: u64,
}

/// What a slot that holds the flow says: its backend id, that backend's generation, the flow
/// hash and the second chance (`ConnEntry`'s fields).
pub struct Answer {
    pub backend: u32,
    pub generation: u32,
    pub hash: u32,
    pub prev: u16,
}

/// The flow's slot (index and epoch) and, if this CPU's slot holds the flow, of the index's
/// current epoch and read recently enough, what it says.
#[inline(always)]
pub fn probe(key: &FlowKey) -> (Slot, Option<Answer>) {
    if key.family == FAMILY_V4 {
        probe_in(&key.v4())
    } else {
        probe_in(key)
    }
}

#[inline(always)]
fn probe_in<K: CacheKey>(key: &K) -> (Slot, Option<Answer>) {
    let slot = slot(key);
    let answer = lookup(key, slot).map(|c| Answer {
        backend: c.backend,
        generation: c.generation,
        hash: c.hash,
        prev: c.prev,
    });
    (slot, answer)
}

#[inline(always)]
fn slot<K: CacheKey>(key: &K) -> Slot {
    let bits = cache_bits();
    let index = key.index(bits);
    let epoch = match FLOW_CACHE_EPOCHS.get_ptr(index) {
        // SAFETY: a valid pointer to the index's u64; volatile, so the load stays here, ahead
        // of the table lookup.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    };
    Slot { index, bits, epoch }
}

/// This CPU's slot of `slot`'s index. Only this CPU reads or writes it, and a program run is
/// never moved to another CPU.
#[inline(always)]
fn this_cpu(slot: Slot) -> u32 {
    // SAFETY: a helper without arguments (the verifier inlines it).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    (cpu << (slot.bits & 31)) | slot.index
}

/// This CPU's slot if it holds `key`, of the index's current epoch, read recently enough.
#[inline(always)]
fn lookup<K: CacheKey>(key: &K, slot: Slot) -> Option<&'static CachedFlow<K>> {
    let c = K::cache().get(this_cpu(slot))?;
    // SAFETY: a helper without arguments (the verifier inlines it to a load).
    let now = unsafe { bpf_jiffies64() };
    let fresh = now.wrapping_sub(c.read_jiffies) < FLOW_CACHE_RECHECK_JIFFIES;
    (c.key.same(key) && fresh && c.epoch == slot.epoch).then_some(c)
}

/// Remembers `entry`, just read from the table for `key`, in this CPU's slot.
#[inline(always)]
pub fn fill(key: &FlowKey, entry: &ConnEntry, slot: Slot) {
    if key.family == FAMILY_V4 {
        fill_in(&key.v4(), entry, slot);
    } else {
        fill_in(key, entry, slot);
    }
}

#[inline(always)]
fn fill_in<K: CacheKey>(key: &K, entry: &ConnEntry, slot: Slot) {
    let Some(c) = K::cache().get_ptr_mut(this_cpu(slot)) else {
        return;
    };
    // SAFETY: this CPU's slot, which no other CPU reads or writes; a helper without arguments.
    unsafe {
        (*c).key = *key;
        (*c).backend = entry.backend;
        (*c).generation = entry.generation;
        (*c).hash = entry.hash;
        (*c).prev = entry.prev;
        (*c).epoch = slot.epoch;
        (*c).read_jiffies = bpf_jiffies64();
    }
}

/// Retires every CPU's slot of `key`'s index: the program replaced a connection entry that a
/// cache may hold. The new epoch is CLOCK_MONOTONIC in ns, the clock userspace's epochs come
/// from too.
#[inline(always)]
pub fn retire(key: &FlowKey) {
    if let Some(p) = FLOW_CACHE_EPOCHS.get_ptr_mut(flow_cache_index(key, cache_bits())) {
        // SAFETY: a valid, 8-byte aligned pointer to the index's u64: one aligned store, which
        // no reader can see torn; a helper without arguments.
        unsafe { core::ptr::write_volatile(p, bpf_ktime_get_ns()) };
    }
}
