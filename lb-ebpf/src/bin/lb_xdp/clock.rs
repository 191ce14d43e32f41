//! The connection table's clock: `bpf_ktime_get_coarse_ns`, read once per jiffy per CPU.
//!
//! The coarse clock only moves at timer ticks, so within one jiffy every read returns the same
//! value (or the previous tick's, at the edge). `bpf_jiffies64` is inlined by the verifier (a
//! load), while the coarse-clock helper is a real call: caching its value per CPU for the
//! current jiffy keeps the same semantics at a fraction of the cost when packets come faster
//! than ticks. The value is at most about two ticks stale, far below `ATIME_GRANULARITY_NS`.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};

#[repr(C)]
pub struct Cached {
    jiffies: u64,
    ns: u64,
}

#[map]
static CLOCK: PerCpuArray<Cached> = PerCpuArray::with_max_entries(1, 0);

/// CLOCK_MONOTONIC (coarse) in ns.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper call without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: a helper call without arguments.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: a valid pointer to this CPU's slot, which nothing else writes meanwhile.
    let c = unsafe { &mut *c };
    if c.jiffies != jiffies || c.ns == 0 {
        c.jiffies = jiffies;
        // SAFETY: a helper call without arguments.
        c.ns = unsafe { bpf_ktime_get_coarse_ns() };
    }
    c.ns
}
