//! The per-CPU flow cache in front of `CONNS4` (lb-common/src/flow_cache.rs says when a slot
//! counts): `slot` (the flow's index and its epoch) before the table is read, `lookup` for an
//! established IPv4 packet, `fill` after its entry was read from the table, `retire` when an
//! entry replaced another.

use aya_ebpf::helpers::{bpf_get_smp_processor_id, bpf_jiffies64, bpf_ktime_get_ns};
use lb_common::{
    CachedFlow, ConnEntry, FLOW_CACHE_RECHECK_JIFFIES, FLOW_CACHE_SLOTS, FlowKey4, flow_cache_slot,
};

use crate::maps::{FLOW_CACHE, FLOW_CACHE_EPOCHS};

/// A flow's slot index (the same on every CPU) and the index's epoch, read before the
/// connection table: a fill can never tag an entry read before a change with the epoch written
/// after it.
#[derive(Clone, Copy)]
pub struct Slot {
    index: u32,
    epoch: u64,
}

#[inline(always)]
pub fn slot(key: &FlowKey4) -> Slot {
    let index = flow_cache_slot(key);
    let epoch = match FLOW_CACHE_EPOCHS.get_ptr(index) {
        // SAFETY: a valid pointer to the index's u64; volatile, so the load stays here, ahead
        // of the table lookup.
        Some(p) => unsafe { core::ptr::read_volatile(p) },
        None => 0,
    };
    Slot { index, epoch }
}

/// This CPU's slot of `slot`'s index in `FLOW_CACHE`. Only this CPU reads or writes it, and a
/// program run is never moved to another CPU.
#[inline(always)]
fn this_cpu(slot: Slot) -> u32 {
    // SAFETY: a helper without arguments (the verifier inlines it).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu.wrapping_mul(FLOW_CACHE_SLOTS) | slot.index
}

/// This CPU's slot if it holds `key`, of the index's current epoch, read recently enough.
#[inline(always)]
pub fn lookup(key: &FlowKey4, slot: Slot) -> Option<&'static CachedFlow> {
    let c = FLOW_CACHE.get(this_cpu(slot))?;
    // SAFETY: a helper without arguments (the verifier inlines it to a load).
    let now = unsafe { bpf_jiffies64() };
    let fresh = now.wrapping_sub(c.read_jiffies) < FLOW_CACHE_RECHECK_JIFFIES;
    let same = c.key.src == key.src
        && c.key.dst == key.dst
        && c.key.ports == key.ports
        && c.key.proto == key.proto;
    (same && fresh && c.epoch == slot.epoch).then_some(c)
}

/// Remembers `entry`, just read from `CONNS4` for `key`, in this CPU's slot.
#[inline(always)]
pub fn fill(key: &FlowKey4, entry: &ConnEntry, slot: Slot) {
    let Some(c) = FLOW_CACHE.get_ptr_mut(this_cpu(slot)) else {
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
pub fn retire(key: &FlowKey4) {
    if let Some(p) = FLOW_CACHE_EPOCHS.get_ptr_mut(flow_cache_slot(key)) {
        // SAFETY: a valid, 8-byte aligned pointer to the index's u64: one aligned store, which
        // no reader can see torn; a helper without arguments.
        unsafe { core::ptr::write_volatile(p, bpf_ktime_get_ns()) };
    }
}
