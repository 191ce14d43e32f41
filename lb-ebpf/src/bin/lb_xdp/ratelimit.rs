//! The budget for ICMP the program generates (echo replies in `icmp`, "too big" in `toobig`):
//! a token bucket per CPU (`lb_common::ratelimit`), `LbConfig::icmp_rate` per second and
//! `icmp_burst` at once, refilled from the coarse clock. Per CPU so that taking a token is a
//! plain read and write of this CPU's slot, like the counters. Not pinned: a new program
//! starts with full buckets.
//!
//! The new-flow gate (`allow_new_entry`) is the same bucket for connection entries: above
//! `FlowGate::rate` new entries per second per CPU, a new flow is forwarded without one.

use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use lb_common::{
    Counter,
    ratelimit::{FlowGate, TokenBucket},
};

use crate::{clock, maps, stats};

#[map]
static ICMP_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Whether one more generated ICMP message may be sent now; if not, counts
/// `DropIcmpRateLimited` (the caller drops the packet).
///
/// Not inlined: only the ICMP paths call it, and as a BPF-to-BPF call it adds no code to the
/// forwarding tail that `toobig::check` sits in.
#[inline(never)]
pub fn allow() -> bool {
    let Some(cfg) = maps::config() else {
        return true;
    };
    if cfg.icmp_rate == 0 {
        return true;
    }
    spend(&ICMP_BUCKET, Counter::DropIcmpRateLimited, |b, now| {
        b.take(now, cfg.icmp_rate, cfg.icmp_burst)
    })
}

/// The new-flow gate's setting (`lb_common::ratelimit::FlowGate`; all zeroes: no gate).
#[map]
static FLOW_GATE: Array<FlowGate> = Array::with_max_entries(1, 0);

#[map]
static FLOW_GATE_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// Whether one more connection entry may be created now; if not, counts `LruInsertGated`
/// (the caller forwards the packet by Maglev without an entry). Per CPU, like the ICMP budget.
#[inline(never)]
pub fn allow_new_entry() -> bool {
    let Some(gate) = FLOW_GATE.get(0) else {
        return true;
    };
    if gate.rate == 0 {
        return true;
    }
    spend(&FLOW_GATE_BUCKET, Counter::LruInsertGated, |b, now| {
        b.take_wide(now, gate.rate, gate.burst)
    })
}

/// Takes a token with `take` from this CPU's slot of `bucket` at the coarse clock's now;
/// counts `refused` when there is none. A missing slot (cannot happen) allows.
#[inline(always)]
fn spend(
    bucket: &PerCpuArray<TokenBucket>,
    refused: Counter,
    take: impl FnOnce(&mut TokenBucket, u64) -> bool,
) -> bool {
    let Some(slot) = bucket.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a valid pointer to this CPU's slot, which nothing else writes meanwhile.
    if take(unsafe { &mut *slot }, clock::now_ns()) {
        return true;
    }
    stats::count(refused);
    false
}
