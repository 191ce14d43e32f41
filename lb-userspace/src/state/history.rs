//! What a VIP's Maglev members were before its recent changes: the input of second chance
//! (docs/second-chance.md).
//!
//! Every change of a VIP's members (a backend added, drained, undrained, removed or weighted)
//! appends a [`Step`]: when it happened and the members before it. With the members now, the
//! steps give the sequence of Maglev tables the VIP went through, so every load balancer that
//! holds the same steps computes the same previous backend for every slot
//! (`reconcile::second_chance`). In a fleet the steps travel in the replicated state, stamped
//! like any other field; a standalone agent keeps its own.
//!
//! Steps older than the second-chance window no longer matter and are dropped, and at most
//! [`MAX_STEPS`] are kept per VIP: a slot remembers one previous backend, so older steps only
//! matter for slots that later changes left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use lb_common::maglev::MaglevMember;
use serde::{Deserialize, Serialize};

use super::{BackendState, DesiredState, Vip, VipSpec};

/// Steps kept per VIP.
pub const MAX_STEPS: usize = 8;

/// A Maglev member as a step records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub addr: Ipv6Addr,
    pub weight: u32,
}

impl From<Member> for MaglevMember {
    fn from(m: Member) -> Self {
        MaglevMember {
            addr: m.addr,
            weight: m.weight,
        }
    }
}

/// One change of a VIP's members.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Step {
    /// When it was made: Unix time in ms on the node that made it.
    pub at_ms: u64,
    /// The members before it, in address order.
    pub before: Vec<Member>,
}

/// A VIP's steps, oldest first.
pub type History = Vec<Step>;

/// The Maglev members of a VIP as operators set them: its active backends.
pub fn members_of(spec: &VipSpec) -> Vec<Member> {
    spec.backends
        .iter()
        .filter(|(_, b)| b.state == BackendState::Active)
        .map(|(addr, b)| Member {
            addr: *addr,
            weight: b.weight,
        })
        .collect()
}

/// The VIPs of `new` whose members differ from `old`'s (a VIP new in `new` has no previous
/// members, so no step: its flows are all new).
pub fn changed_vips(old: &DesiredState, new: &DesiredState) -> BTreeSet<Vip> {
    new.vips
        .iter()
        .filter(|(vip, spec)| {
            old.vips
                .get(vip)
                .is_some_and(|o| members_of(o) != members_of(spec))
        })
        .map(|(vip, _)| *vip)
        .collect()
}

/// Drops steps that no longer count at `now_ms` (older than `window_ms`), and the oldest beyond
/// [`MAX_STEPS`].
pub fn prune(h: &mut History, now_ms: u64, window_ms: u64) {
    h.retain(|s| s.at_ms.saturating_add(window_ms) > now_ms);
    if h.len() > MAX_STEPS {
        h.drain(..h.len() - MAX_STEPS);
    }
}

/// `h` with the step from `before` at `now_ms` appended, pruned.
pub fn with_step(mut h: History, before: Vec<Member>, now_ms: u64, window_ms: u64) -> History {
    h.push(Step {
        at_ms: now_ms,
        before,
    });
    prune(&mut h, now_ms, window_ms);
    h
}

/// A standalone agent's steps: appends one for every VIP whose members differ between `old` and
/// `new`, forgets VIPs `new` lacks, and prunes.
pub fn record(
    histories: &mut BTreeMap<Vip, History>,
    old: &DesiredState,
    new: &DesiredState,
    now_ms: u64,
    window_ms: u64,
) {
    histories.retain(|vip, _| new.vips.contains_key(vip));
    if window_ms == 0 {
        histories.clear();
        return;
    }
    for vip in changed_vips(old, new) {
        let h = histories.remove(&vip).unwrap_or_default();
        let before = members_of(&old.vips[&vip]);
        histories.insert(vip, with_step(h, before, now_ms, window_ms));
    }
    for h in histories.values_mut() {
        prune(h, now_ms, window_ms);
    }
    histories.retain(|_, h| !h.is_empty());
}

/// Unix time in ms.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::BackendSpec;

    fn state(backends: &[(&str, u32, BackendState)]) -> DesiredState {
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let mut s = DesiredState::default();
        s.vips.insert(
            vip,
            VipSpec {
                gue: false,
                backends: backends
                    .iter()
                    .map(|(a, w, st)| {
                        (
                            a.parse().unwrap(),
                            BackendSpec {
                                weight: *w,
                                state: *st,
                            },
                        )
                    })
                    .collect(),
            },
        );
        s
    }

    use BackendState::{Active, Draining};

    #[test]
    fn a_member_change_is_a_step_with_the_members_before_it() {
        let a = state(&[("2001:db8::1", 100, Active), ("2001:db8::2", 100, Active)]);
        let b = state(&[("2001:db8::1", 100, Active), ("2001:db8::2", 100, Draining)]);
        let mut h = BTreeMap::new();
        record(&mut h, &a, &b, 1_000, 60_000);
        let steps = &h.values().next().unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].at_ms, 1_000);
        assert_eq!(steps[0].before, members_of(a.vips.values().next().unwrap()));
        // The same members again (a health pass, a reload of the same file): no step.
        record(&mut h, &b, &b, 2_000, 60_000);
        assert_eq!(h.values().next().unwrap().len(), 1);
        // A weight is a member change too.
        let c = state(&[("2001:db8::1", 50, Active), ("2001:db8::2", 100, Draining)]);
        record(&mut h, &b, &c, 3_000, 60_000);
        assert_eq!(h.values().next().unwrap().len(), 2);
    }

    #[test]
    fn steps_expire_with_the_window_and_are_capped() {
        let mut h: History = Vec::new();
        for i in 0..20u64 {
            h = with_step(h, vec![], i * 1000, 100_000);
        }
        assert_eq!(h.len(), MAX_STEPS);
        assert_eq!(h[0].at_ms, 12_000, "the oldest go first");
        prune(&mut h, 112_000, 100_000);
        assert_eq!(h.len(), MAX_STEPS - 1, "12 s + 100 s is over at 112 s");
        prune(&mut h, 1_000_000, 100_000);
        assert!(h.is_empty());
    }

    #[test]
    fn a_new_or_removed_vip_has_no_steps_and_window_zero_keeps_none() {
        let a = state(&[("2001:db8::1", 100, Active)]);
        let mut h = BTreeMap::new();
        record(&mut h, &DesiredState::default(), &a, 1, 60_000);
        assert!(h.is_empty());
        let b = state(&[("2001:db8::2", 100, Active)]);
        record(&mut h, &a, &b, 2, 60_000);
        assert_eq!(h.len(), 1);
        record(&mut h, &b, &DesiredState::default(), 3, 60_000);
        assert!(h.is_empty());
        record(&mut h, &a, &b, 4, 0);
        assert!(h.is_empty());
    }
}
