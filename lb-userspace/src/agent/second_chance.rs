//! Second chance in the agent (docs/second-chance.md): which steps of each VIP's members feed
//! the reconciler, where they come from, and when expired ones are cleared from the rings.
//!
//! In a fleet the steps are part of the replicated state: the node where an operator's change
//! lands records one per VIP whose members it changes (`commit_changes`), and every node reads
//! the same steps, so every node writes the same previous backend into each slot. A standalone
//! agent records its own in `install`.

use std::collections::BTreeMap;

use super::actor::Agent;
use crate::reconcile::SecondChance;
use crate::state::history::{self, History, members_of, unix_ms};
use crate::state::{DesiredState, Vip};

/// CLOCK_MONOTONIC minus Unix time, in ns, read once: expiries written to the rings stay the
/// same from one pass to the next.
pub(super) fn mono_offset_ns() -> i128 {
    crate::dataplane::monotonic_ns() as i128 - unix_ms() as i128 * 1_000_000
}

/// The reconciler's input for `desired` (the operators' state, before health), given the steps
/// `histories`, now.
pub(super) fn input(
    desired: &DesiredState,
    histories: &BTreeMap<Vip, History>,
    window_ms: u64,
    mono_offset_ns: i128,
) -> SecondChance {
    SecondChance {
        vips: desired
            .vips
            .iter()
            .filter_map(|(vip, spec)| {
                let steps = histories.get(vip)?;
                Some((*vip, (members_of(spec), steps.clone())))
            })
            .collect(),
        window_ms,
        now_ms: unix_ms(),
        mono_offset_ns,
    }
}

impl Agent {
    /// The window in ms (0: second chance off).
    pub(super) fn second_chance_ms(&self) -> u64 {
        self.config.dataplane.second_chance_ms()
    }

    /// The steps in force: the replicated state's in a fleet, this agent's own otherwise.
    fn histories(&self) -> BTreeMap<Vip, History> {
        match &self.fleet {
            Some(f) => f.replicated.histories(),
            None => self.history.clone(),
        }
    }

    fn second_chance_for(
        &self,
        desired: &DesiredState,
        histories: &BTreeMap<Vip, History>,
    ) -> SecondChance {
        input(
            desired,
            histories,
            self.second_chance_ms(),
            self.mono_offset_ns,
        )
    }

    /// For `install`: the input for `next`, and (standalone) this agent's steps with `next`'s
    /// member changes recorded, kept only once the install succeeds.
    pub(super) fn second_chance_next(
        &self,
        next: &DesiredState,
    ) -> (SecondChance, Option<BTreeMap<Vip, History>>) {
        if self.fleet.is_some() {
            let h = self.histories();
            return (self.second_chance_for(next, &h), None);
        }
        let mut h = self.history.clone();
        history::record(
            &mut h,
            &self.desired,
            next,
            unix_ms(),
            self.second_chance_ms(),
        );
        (self.second_chance_for(next, &h), Some(h))
    }

    /// Every second: a ring whose steps expired (or whose window changed) is rewritten, so a
    /// slot's previous backend goes when its window does. The XDP program ignores an expired
    /// one anyway; this keeps the rings and the counts honest.
    pub(super) fn expire_second_chance(&mut self) {
        let chance = self.second_chance_for(&self.desired, &self.histories());
        let stale = self.reconciler.vips().iter().any(|(vip, installed)| {
            installed.slots.is_some() && installed.chance != chance.input(vip)
        });
        if stale {
            let desired = self.desired.clone();
            if let Err(e) = self.install(desired) {
                tracing::debug!("clearing expired second-chance backends: {e:#}");
            }
        }
    }

    /// Slots whose previous backend still counts, over all VIPs (`lb status`, `/metrics`).
    pub(super) fn second_chance_slots(&self) -> u64 {
        let now_ticks = (crate::dataplane::monotonic_ns() >> lb_common::RING_TICK_SHIFT) as u32;
        self.reconciler
            .vips()
            .values()
            .flat_map(|v| v.slots.iter().flatten())
            .filter(|s| s.live_prev(now_ticks).is_some())
            .count() as u64
    }
}
