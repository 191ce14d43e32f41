//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), with weights.
//!
//! Every load balancer of a fleet must compute the same table from the same backend set, so
//! the construction is fully determined by its input: members are put in a canonical order
//! (by address) and each member's permutation comes from a keyed hash of its address with the
//! fleet-wide seed, never from list order or process state.

use std::net::Ipv6Addr;

use crate::backend::NO_BACKEND;
use crate::hash::hash_words;

/// Largest accepted weight: keeps a round of turns short and tables balanced.
pub const MAX_WEIGHT: u32 = 1000;

/// One backend as Maglev sees it: its identity (tunnel address) and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MaglevMember {
    pub addr: Ipv6Addr,
    pub weight: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum MaglevError {
    SizeNotPrime(u32),
    /// A round of turns (each active member's weight divided by the weights' gcd, summed) is
    /// longer than half the table: shares would be too coarse.
    TooManyMembers {
        members: usize,
        turns: u64,
        size: u32,
    },
    DuplicateMember(Ipv6Addr),
    WeightOutOfRange {
        addr: Ipv6Addr,
        weight: u32,
    },
}

impl std::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SizeNotPrime(m) => write!(f, "Maglev table size {m} is not a prime"),
            Self::TooManyMembers {
                members,
                turns,
                size,
            } => {
                write!(
                    f,
                    "{members} backends do not fit a Maglev table of {size} slots: their weights, \
                     divided by their greatest common divisor, add up to {turns}, and may add up \
                     to at most {} (half the table); use a larger table or coarser weights",
                    size / 2
                )
            }
            Self::DuplicateMember(a) => write!(f, "backend {a} is listed twice"),
            Self::WeightOutOfRange { addr, weight } => {
                write!(
                    f,
                    "backend {addr} has weight {weight}; weights are 0..={MAX_WEIGHT}"
                )
            }
        }
    }
}

impl std::error::Error for MaglevError {}

/// A built lookup table: `slots[i]` is an index into `members()` or [`NO_BACKEND`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    members: Vec<MaglevMember>,
    slots: Vec<u32>,
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = n as u64;
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn addr_words(a: &Ipv6Addr) -> [u64; 2] {
    let o = a.octets();
    [
        u64::from_be_bytes(o[..8].try_into().unwrap()),
        u64::from_be_bytes(o[8..].try_into().unwrap()),
    ]
}

impl MaglevTable {
    /// Builds the table of `size` slots (a prime) for `members`, in any order.
    /// Members of weight 0 get no slot; with no positive weight every slot is `NO_BACKEND`.
    pub fn build(size: u32, seed: u64, members: &[MaglevMember]) -> Result<Self, MaglevError> {
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime(size));
        }
        let mut members = members.to_vec();
        members.sort();
        for pair in members.windows(2) {
            if pair[0].addr == pair[1].addr {
                return Err(MaglevError::DuplicateMember(pair[0].addr));
            }
        }
        if let Some(m) = members.iter().find(|m| m.weight > MAX_WEIGHT) {
            return Err(MaglevError::WeightOutOfRange {
                addr: m.addr,
                weight: m.weight,
            });
        }
        let active: Vec<usize> = (0..members.len())
            .filter(|&i| members[i].weight > 0)
            .collect();
        let mut slots = vec![NO_BACKEND; size as usize];
        if active.is_empty() {
            return Ok(Self { members, slots });
        }
        // Weights only matter relative to each other: divide by their gcd so a round of
        // turns is as short as possible (smoother interleaving, same shares). The limit
        // applies to that round, so 1,000 backends of weight 100 fit where 1,000 of weight 1 do.
        let g = active.iter().fold(0, |g, &i| gcd(g, members[i].weight));
        let turns_total: u64 = active.iter().map(|&i| (members[i].weight / g) as u64).sum();
        if turns_total > size as u64 / 2 {
            return Err(MaglevError::TooManyMembers {
                members: members.len(),
                turns: turns_total,
                size,
            });
        }
        let m = size as u64;
        // Per active member: (current position in its permutation, skip, turns per round).
        let mut perm: Vec<(u64, u64, u32)> = active
            .iter()
            .map(|&i| {
                let w = addr_words(&members[i].addr);
                let offset = hash_words(seed ^ 0x6f66_6673_6574, &w) % m;
                let skip = hash_words(seed ^ 0x736b_6970, &w) % (m - 1) + 1;
                (offset, skip, members[i].weight / g)
            })
            .collect();
        let mut filled = 0u64;
        'fill: loop {
            for (k, &member) in active.iter().enumerate() {
                let (pos, skip, turns) = &mut perm[k];
                for _ in 0..*turns {
                    // Claim this member's next preferred free slot. Skip < M and M prime make
                    // the permutation visit every slot, so this ends.
                    while slots[*pos as usize] != NO_BACKEND {
                        *pos = (*pos + *skip) % m;
                    }
                    slots[*pos as usize] = member as u32;
                    *pos = (*pos + *skip) % m;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Ok(Self { members, slots })
    }

    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Members in canonical order; slot values index this.
    pub fn members(&self) -> &[MaglevMember] {
        &self.members
    }

    pub fn slots(&self) -> &[u32] {
        &self.slots
    }

    /// The slots with each member index replaced by `ids[index]` (the dataplane's backend id
    /// of that member); empty slots stay `NO_BACKEND`. This is what a ring map holds.
    pub fn slots_as_ids(&self, ids: &[u32]) -> Vec<u32> {
        assert_eq!(ids.len(), self.members.len(), "one id per member");
        self.slots
            .iter()
            .map(|&s| if s == NO_BACKEND { s } else { ids[s as usize] })
            .collect()
    }

    /// The member owning `slot`, if any.
    pub fn member_at(&self, slot: u32) -> Option<&MaglevMember> {
        self.members.get(*self.slots.get(slot as usize)? as usize)
    }

    /// Slots held by each member, in `members()` order.
    pub fn slot_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.members.len()];
        for &s in &self.slots {
            if s != NO_BACKEND {
                counts[s as usize] += 1;
            }
        }
        counts
    }

    /// The slots whose owner (by address) differs between `self` and `other`.
    pub fn changed_slots(&self, other: &MaglevTable) -> usize {
        let owner = |t: &MaglevTable, i: usize| t.members.get(t.slots[i] as usize).map(|m| m.addr);
        (0..self.slots.len().min(other.slots.len()))
            .filter(|&i| owner(self, i) != owner(other, i))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65537;
    const SEED: u64 = 0x5eed_f1ee7;

    fn members(n: u32, weight: u32) -> Vec<MaglevMember> {
        (0..n)
            .map(|i| MaglevMember {
                addr: Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, (i >> 16) as u16, i as u16),
                weight,
            })
            .collect()
    }

    fn spread(counts: &[u32]) -> (u32, u32, f64) {
        let max = *counts.iter().max().unwrap();
        let min = *counts.iter().min().unwrap();
        let mean = counts.iter().map(|&c| c as f64).sum::<f64>() / counts.len() as f64;
        (max, min, mean)
    }

    #[test]
    fn balance_with_equal_weights() {
        for n in [3, 10, 100] {
            let t = MaglevTable::build(M, SEED, &members(n, 1)).unwrap();
            let counts = t.slot_counts();
            assert_eq!(counts.iter().sum::<u32>(), M, "every slot is filled");
            let (max, min, mean) = spread(&counts);
            println!("balance n={n}: min {min} max {max} mean {mean:.1}");
            assert!(
                (max - min) as f64 <= 0.01 * mean,
                "n={n}: max {max} min {min} mean {mean}"
            );
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let mut ms = members(4, 1);
        for (m, w) in ms.iter_mut().zip([1, 2, 3, 10]) {
            m.weight = w;
        }
        let t = MaglevTable::build(M, SEED, &ms).unwrap();
        let counts = t.slot_counts();
        let total_w: u32 = 16;
        for (m, &c) in t.members().iter().zip(&counts) {
            let want = M as f64 * m.weight as f64 / total_w as f64;
            let err = (c as f64 - want).abs() / want;
            println!(
                "weight {}: {c} slots, want {want:.0} ({:.3}% off)",
                m.weight,
                err * 100.0
            );
            assert!(err < 0.01, "weight {} got {c}, want {want}", m.weight);
        }
        // A weight-2 backend gets twice the slots of a weight-1 one.
        let ratio = counts[1] as f64 / counts[0] as f64;
        assert!((ratio - 2.0).abs() < 0.02, "ratio {ratio}");
    }

    #[test]
    fn adding_one_backend_moves_about_one_share() {
        for n in [3u32, 10, 100] {
            let before = MaglevTable::build(M, SEED, &members(n, 1)).unwrap();
            let after = MaglevTable::build(M, SEED, &members(n + 1, 1)).unwrap();
            let moved = before.changed_slots(&after) as f64 / M as f64;
            let ideal = 1.0 / (n + 1) as f64;
            println!(
                "add 1 to {n}: moved {:.4} of slots, ideal {ideal:.4} ({:.2}x)",
                moved,
                moved / ideal
            );
            assert!(moved >= ideal * 0.98, "moved {moved} < ideal {ideal}");
            // Maglev trades some extra movement for balance; with M = 65537 it stays well
            // under twice the ideal (the paper's figure for M/N of a few hundred).
            assert!(
                moved <= ideal * 2.0,
                "moved {moved} far above ideal {ideal}"
            );
        }
    }

    #[test]
    fn removing_one_backend_moves_its_slots_and_little_else() {
        for n in [10u32, 100] {
            let all = members(n, 1);
            let before = MaglevTable::build(M, SEED, &all).unwrap();
            let gone = all[n as usize / 2].addr;
            let rest: Vec<_> = all.iter().copied().filter(|m| m.addr != gone).collect();
            let after = MaglevTable::build(M, SEED, &rest).unwrap();
            let owned = before
                .slots()
                .iter()
                .filter(|&&s| before.members()[s as usize].addr == gone)
                .count();
            let moved = before.changed_slots(&after);
            let remainder = (moved - owned) as f64 / M as f64;
            println!(
                "remove 1 of {n}: its {owned} slots + {} others moved ({:.4} of the table)",
                moved - owned,
                remainder
            );
            assert!(moved >= owned);
            assert!(remainder < 0.01, "remainder {remainder} of the table");
        }
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut ms = members(10, 1);
        ms[3].weight = 4;
        let a = MaglevTable::build(M, SEED, &ms).unwrap();
        ms.reverse();
        ms.swap(1, 7);
        let b = MaglevTable::build(M, SEED, &ms).unwrap();
        assert_eq!(a, b);
        // The seed is part of the input: another fleet gets another table.
        let c = MaglevTable::build(M, SEED + 1, &ms).unwrap();
        assert_ne!(a.slots(), c.slots());
    }

    #[test]
    fn zero_weights_and_bad_input() {
        let mut ms = members(3, 1);
        ms[0].weight = 0;
        let t = MaglevTable::build(M, SEED, &ms).unwrap();
        assert_eq!(t.slot_counts()[0], 0);
        let empty = MaglevTable::build(M, SEED, &members(3, 0)).unwrap();
        assert!(empty.slots().iter().all(|&s| s == NO_BACKEND));
        assert_eq!(
            MaglevTable::build(65536, SEED, &ms),
            Err(MaglevError::SizeNotPrime(65536))
        );
        let mut dup = members(3, 1);
        dup[2].addr = dup[0].addr;
        assert!(matches!(
            MaglevTable::build(M, SEED, &dup),
            Err(MaglevError::DuplicateMember(_))
        ));
        ms[1].weight = MAX_WEIGHT + 1;
        assert!(matches!(
            MaglevTable::build(M, SEED, &ms),
            Err(MaglevError::WeightOutOfRange { .. })
        ));
        assert!(matches!(
            MaglevTable::build(7, SEED, &members(5, 1)),
            Err(MaglevError::TooManyMembers { .. })
        ));
        // The limit is on weights relative to each other: equal weights of 100 fit wherever
        // equal weights of 1 do, and build the same table.
        let heavy = MaglevTable::build(65537, SEED, &members(1000, 100)).unwrap();
        let light = MaglevTable::build(65537, SEED, &members(1000, 1)).unwrap();
        assert_eq!(heavy.slots(), light.slots());
        assert!(matches!(
            MaglevTable::build(65537, SEED, &members(40000, 1)),
            Err(MaglevError::TooManyMembers { turns: 40000, .. })
        ));
    }
}
