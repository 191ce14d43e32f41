//! Per-CPU counters: plain adds, no atomics (each CPU owns its slot). A forwarded packet counts
//! under its backend only; the agent sums a VIP's backends (dataplane/counters.rs).

use aya_ebpf::{bindings::xdp_action, maps::PerCpuArray};
use lb_common::{Counter, CounterValue};

use crate::maps::{BACKEND_STATS, STATS};

#[inline(always)]
fn add(map: &PerCpuArray<CounterValue>, index: u32, bytes: u64) {
    if let Some(c) = map.get_ptr_mut(index) {
        // SAFETY: a valid pointer to this CPU's slot, which nothing else writes meanwhile.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count(counter: Counter) {
    add(&STATS, counter as u32, 0);
}

/// Counts `counter` and returns XDP_DROP.
#[inline(always)]
pub fn drop(counter: Counter) -> u32 {
    count(counter);
    xdp_action::XDP_DROP
}

#[inline(always)]
pub fn add_backend(id: u32, bytes: u64) {
    add(&BACKEND_STATS, id, bytes);
}
