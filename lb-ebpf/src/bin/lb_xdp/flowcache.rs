//! The per-CPU flow cache in front of `CONNS4` (lb-common/src/flow_cache.rs says when a slot
//! counts): `epoch` before the table is read, `lookup` for an established IPv4 packet, `fill`
//! after its entry was read from the table, `retire_all` when an entry replaced another.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns};
use lb_common::{
    CachedFlow, ConnEntry, FLOW_CACHE_RECHECK_JIFFIES, FLOW_CACHE_SLOTS, FlowKey4, flow_cache_slot,
};

use crate::maps::{FLOW_CACHE, FLOW_CACHE_EPOCH};

/// The current epoch. Read before the connection table, so a fill can never tag an entry read
/// before a change with the epoch written after it.
#[inline(always)]
pub fn epoch() -> u64 {
    match FLOW_CACHE_EPOCH.get_ptr(0) {
        // SAFETY: a valid pointer to the map's one u64; volatile, so the load stays here, ahead
        // of the table lookup.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    }
}

/// The index of this CPU's slot for `key`. Only this CPU reads or writes its slots, and a
/// program run is never moved to another CPU.
#[inline(always)]
fn index(key: &FlowKey4) -> u32 {
    // SAFETY: a helper without arguments (the verifier inlines it).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu.wrapping_mul(FLOW_CACHE_SLOTS) | flow_cache_slot(key)
}

/// This CPU's slot for `key` if it holds `key`, of `epoch`, read recently enough.
#[inline(always)]
pub fn lookup(key: &FlowKey4, epoch: u64) -> Option<&'static CachedFlow> {
    let c = FLOW_CACHE.get(index(key))?;
    // SAFETY: a helper without arguments (the verifier inlines it to a load).
    let now = unsafe { bpf_jiffies64() };
    let fresh = now.wrapping_sub(c.read_jiffies) < FLOW_CACHE_RECHECK_JIFFIES;
    let same = c.key.src == key.src
        && c.key.dst == key.dst
        && c.key.ports == key.ports
        && c.key.proto == key.proto;
    (same && fresh && c.epoch == epoch).then_some(c)
}

/// Remembers `entry`, just read from `CONNS4` for `key`, in this CPU's slot.
#[inline(always)]
pub fn fill(key: &FlowKey4, entry: &ConnEntry, epoch: u64) {
    let Some(c) = FLOW_CACHE.get_ptr_mut(index(key)) else {
        return;
    };
    // SAFETY: this CPU's slot, which no other CPU reads or writes; a helper without arguments.
    unsafe {
        (*c).key = *key;
        (*c).backend = entry.backend;
        (*c).generation = entry.generation;
        (*c).hash = entry.hash;
        (*c).prev = entry.prev;
        (*c).epoch = epoch;
        (*c).read_jiffies = bpf_jiffies64();
    }
}

/// Retires every CPU's slots: the program replaced a connection entry that a cache may hold.
/// The new epoch is CLOCK_MONOTONIC in ns, the clock userspace's epochs come from too.
#[inline(always)]
pub fn retire_all() {
    if let Some(p) = FLOW_CACHE_EPOCH.get_ptr_mut(0) {
        // SAFETY: a valid, 8-byte aligned pointer to the map's one u64: one aligned store, which
        // no reader can see torn; a helper without arguments.
        unsafe { core::ptr::write_volatile(p, bpf_ktime_get_ns()) };
    }
}
