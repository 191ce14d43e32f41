//! Caps on a replicated state's size, checked when a state is validated (a peer's, or the
//! state file) and before an operator's change is recorded. A state over them is refused
//! (`too_large`) and changes nothing (docs/sync.md, "Bounds on peers' states").

use anyhow::Result;

use super::super::wire::{Refusal, refused};
use super::ReplicatedState;

/// The largest state an agent takes. Far above what a dataplane serves (64 VIPs and 4,096
/// backends by default, `max_vips` and `max_backends`), so that held-back entries and the
/// tombstones of a long partition fit; low enough that a whole state stays tens of MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// VIP entries, removed ones included.
    pub vips: usize,
    /// Backend entries, removed ones included.
    pub backends: usize,
    /// Backend entries of one VIP.
    pub backends_per_vip: usize,
    /// Removed VIPs and backends not yet collected.
    pub tombstones: usize,
    /// Second-chance steps of one VIP (`state::history::MAX_STEPS`).
    pub steps_per_vip: usize,
    /// Members recorded in all VIPs' steps.
    pub step_members: usize,
}

impl Caps {
    pub const DEFAULT: Caps = Caps {
        vips: 4096,
        backends: 65_536,
        backends_per_vip: 16_384,
        tombstones: 32_768,
        steps_per_vip: crate::state::history::MAX_STEPS,
        step_members: 131_072,
    };
}

/// What a state holds, against the caps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub vips: usize,
    pub backends: usize,
    pub most_per_vip: usize,
    pub tombstones: usize,
    pub most_steps: usize,
    pub step_members: usize,
}

impl ReplicatedState {
    pub fn counts(&self) -> Counts {
        let mut most_per_vip = 0;
        let mut run = (None, 0);
        for (vip, _) in self.backends.keys() {
            run = if run.0 == Some(vip) {
                (run.0, run.1 + 1)
            } else {
                (Some(vip), 1)
            };
            most_per_vip = most_per_vip.max(run.1);
        }
        let steps = self
            .vips
            .values()
            .filter_map(|e| e.history.as_ref())
            .map(|h| &h.value);
        Counts {
            vips: self.vips.len(),
            backends: self.backends.len(),
            most_per_vip,
            tombstones: self.tombstones(),
            most_steps: steps.clone().map(Vec::len).max().unwrap_or(0),
            step_members: steps.flatten().map(|s| s.before.len()).sum(),
        }
    }

    /// Refuses a state over the default caps (the only ones a fleet uses).
    pub fn within_caps(&self) -> Result<()> {
        self.check_caps(&Caps::DEFAULT)
    }

    /// Refuses a state over `caps` (`too_large`, naming the cap).
    pub fn check_caps(&self, caps: &Caps) -> Result<()> {
        let n = self.counts();
        let over = [
            ("VIP entries", n.vips, caps.vips),
            ("backend entries", n.backends, caps.backends),
            (
                "backend entries of one VIP",
                n.most_per_vip,
                caps.backends_per_vip,
            ),
            ("tombstones", n.tombstones, caps.tombstones),
            (
                "second-chance steps of one VIP",
                n.most_steps,
                caps.steps_per_vip,
            ),
            (
                "members in second-chance steps",
                n.step_members,
                caps.step_members,
            ),
        ]
        .into_iter()
        .find(|(_, have, cap)| have > cap);
        match over {
            Some((what, have, cap)) => Err(refused(
                Refusal::TooLarge,
                format!("a state with {have} {what} (at most {cap})"),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
