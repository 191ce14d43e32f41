//! Second chance in the rings (docs/second-chance.md): for every Maglev slot, the backend it
//! held before its last change, written beside the slot's backend until the change is older
//! than the window.
//!
//! The input is a VIP's members as operators set them now and its steps (`state::history`),
//! which every load balancer of a fleet holds alike. Step j changed the members from
//! `steps[j].before` to the next step's `before` (or to the members now, for the last), so the
//! tables T_0 .. T_k built from them are the tables the VIP went through. A slot's last change
//! is the last j where T_j and T_(j+1) differ at the slot, and its previous backend is T_j's.
//! That is a function of the replicated state alone: no flow sync, no agreement protocol.
//!
//! Health is this node's own and stays out of it: the ring's backend is this node's choice
//! (a backend it sees down is out), and a previous backend equal to it is dropped.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use lb_common::maglev::{MaglevMember, MaglevTable};
use lb_common::{NO_BACKEND, RING_TICK_SHIFT, RingSlot, encode_id};

use crate::state::Vip;
use crate::state::history::{self, History, Member};

/// What the reconciler needs to write previous backends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecondChance {
    /// Per VIP: its members as operators set them now, and its steps.
    pub vips: BTreeMap<Vip, (Vec<Member>, History)>,
    /// `second_chance_secs` in ms; 0: off (no previous backend is written).
    pub window_ms: u64,
    /// Unix time now, in ms.
    pub now_ms: u64,
    /// CLOCK_MONOTONIC minus Unix time, in ns: turns an expiry into the ring's clock ticks.
    pub mono_offset_ns: i128,
}

/// The live steps of one VIP and the members now: what its previous backends depend on.
pub type Input = (Vec<Member>, History);

impl SecondChance {
    /// `vip`'s input with the steps that still count now; None when there are none.
    pub fn input(&self, vip: &Vip) -> Option<Input> {
        if self.window_ms == 0 {
            return None;
        }
        let (members, steps) = self.vips.get(vip)?;
        let mut steps = steps.clone();
        history::prune(&mut steps, self.now_ms, self.window_ms);
        (!steps.is_empty()).then(|| (members.clone(), steps))
    }

    /// The ring's clock tick at which a step made at `at_ms` stops counting.
    fn until_ticks(&self, at_ms: u64) -> u32 {
        let ns = (at_ms.saturating_add(self.window_ms) as i128) * 1_000_000 + self.mono_offset_ns;
        (ns.max(0) >> RING_TICK_SHIFT).min(u32::MAX as i128) as u32
    }
}

/// Per slot, the previous backend's address and when its change was made (Unix ms), from
/// `input`. A table that cannot be built (a step whose members no longer fit) gives none.
pub fn previous_owners(ring_size: u32, seed: u64, input: &Input) -> Vec<Option<(Ipv6Addr, u64)>> {
    let (now, steps) = input;
    let m = ring_size as usize;
    // Tables as slot -> address index, with one address list for all of them.
    let mut addrs: Vec<Ipv6Addr> = Vec::new();
    let mut index: BTreeMap<Ipv6Addr, u32> = BTreeMap::new();
    let mut build = |members: &[Member]| -> Option<Vec<u32>> {
        let mm: Vec<MaglevMember> = members.iter().map(|&m| m.into()).collect();
        let t = MaglevTable::build(ring_size, seed, &mm).ok()?;
        let ids: Vec<u32> = t
            .members()
            .iter()
            .map(|member| {
                *index.entry(member.addr).or_insert_with(|| {
                    addrs.push(member.addr);
                    addrs.len() as u32 - 1
                })
            })
            .collect();
        Some(if ids.is_empty() {
            vec![NO_BACKEND; m]
        } else {
            t.slots_as_ids(&ids)
        })
    };
    let mut tables = Vec::with_capacity(steps.len() + 1);
    for s in steps {
        match build(&s.before) {
            Some(t) => tables.push(t),
            None => return vec![None; m],
        }
    }
    match build(now) {
        Some(t) => tables.push(t),
        None => return vec![None; m],
    }
    (0..m)
        .map(|slot| {
            (0..steps.len()).rev().find_map(|j| {
                let (before, after) = (tables[j][slot], tables[j + 1][slot]);
                (before != after && before != NO_BACKEND)
                    .then(|| (addrs[before as usize], steps[j].at_ms))
            })
        })
        .collect()
}

/// The ring to write: `ids` (backend id per slot), each slot with its previous backend if that
/// backend has an id here (`id_of`: still a backend of the VIP) other than the slot's own.
pub(super) fn ring(
    ids: &[u32],
    owners: Option<&[Option<(Ipv6Addr, u64)>]>,
    id_of: impl Fn(&Ipv6Addr) -> Option<u32>,
    chance: &SecondChance,
) -> Vec<RingSlot> {
    ids.iter()
        .enumerate()
        .map(|(slot, &id)| {
            let mut s = RingSlot::new(id);
            if let Some(Some((addr, at_ms))) = owners.map(|o| o[slot])
                && id != NO_BACKEND
                && let Some(prev) = id_of(&addr).filter(|&p| p != id)
            {
                s.prev = encode_id(prev);
                s.prev_until = chance.until_ticks(at_ms);
            }
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::history::Step;

    const M: u32 = 251;

    fn member(i: u16) -> Member {
        Member {
            addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i),
            weight: 100,
        }
    }

    fn table(members: &[Member]) -> Vec<Ipv6Addr> {
        let mm: Vec<MaglevMember> = members.iter().map(|&m| m.into()).collect();
        let t = MaglevTable::build(M, 7, &mm).unwrap();
        t.slots()
            .iter()
            .map(|&i| t.members()[i as usize].addr)
            .collect()
    }

    #[test]
    fn each_slot_names_the_backend_before_its_last_change() {
        let (a, b, c, d) = (member(1), member(2), member(3), member(4));
        // Change 1 at 1 s adds d; change 2 at 2 s drains b.
        let t0 = table(&[a, b, c]);
        let t1 = table(&[a, b, c, d]);
        let t2 = table(&[a, c, d]);
        let input = (
            vec![a, c, d],
            vec![
                Step {
                    at_ms: 1000,
                    before: vec![a, b, c],
                },
                Step {
                    at_ms: 2000,
                    before: vec![a, b, c, d],
                },
            ],
        );
        let owners = previous_owners(M, 7, &input);
        let (mut by_first, mut by_second) = (0, 0);
        for s in 0..M as usize {
            let want = if t1[s] != t2[s] {
                by_second += 1;
                Some((t1[s], 2000))
            } else if t0[s] != t1[s] {
                by_first += 1;
                Some((t0[s], 1000))
            } else {
                None
            };
            assert_eq!(owners[s], want, "slot {s}");
        }
        assert!(by_first > 0 && by_second > 0, "{by_first} {by_second}");
    }

    #[test]
    fn the_ring_keeps_previous_backends_that_are_still_backends_and_not_the_slot() {
        let chance = SecondChance {
            window_ms: 60_000,
            ..Default::default()
        };
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let gone: Ipv6Addr = "2001:db8::9".parse().unwrap();
        let owners = [Some((a, 1000)), Some((a, 1000)), Some((gone, 1000)), None];
        let id_of = |x: &Ipv6Addr| (*x == a).then_some(5);
        let r = ring(&[3, 5, 3, 3], Some(&owners), id_of, &chance);
        assert_eq!(r[0].live_prev(0), Some(5));
        // 61 s after the epoch, in 2^30 ns ticks.
        assert_eq!(r[0].prev_until, (61_000_000_000u64 >> 30) as u32);
        assert_eq!(
            r[1],
            RingSlot::new(5),
            "the slot's own backend is no second chance"
        );
        assert_eq!(r[2], RingSlot::new(3), "a removed backend has no id");
        assert_eq!(r[3], RingSlot::new(3));
        assert_eq!(ring(&[3], None, id_of, &chance), vec![RingSlot::new(3)]);
    }

    #[test]
    fn steps_outside_the_window_or_with_the_window_off_give_no_input() {
        let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
        let steps = vec![Step {
            at_ms: 1000,
            before: vec![member(1)],
        }];
        let mut chance = SecondChance {
            window_ms: 10_000,
            now_ms: 5_000,
            ..Default::default()
        };
        chance.vips.insert(vip, (vec![member(2)], steps));
        assert!(chance.input(&vip).is_some());
        chance.now_ms = 11_000;
        assert!(chance.input(&vip).is_none());
        chance.now_ms = 5_000;
        chance.window_ms = 0;
        assert!(chance.input(&vip).is_none());
    }
}
