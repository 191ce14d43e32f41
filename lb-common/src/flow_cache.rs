//! The flow cache: per CPU, direct-mapped, in front of the connection tables: `FLOW_CACHE` for
//! IPv4 flows (`CONNS4`), `FLOW_CACHE6` for IPv6 flows (`CONNS`). Each is one array map holding
//! each CPU's slots in a block of its own: only that CPU touches them.
//!
//! A kernel hash lookup is the largest single cost of an established packet (BENCHMARKS.md,
//! "Closer to the floor"): one call into the kernel, a hash of the key, a bucket walk. An
//! established flow's answer (its backend, the backend's generation, its flow hash and
//! second chance) is therefore kept per CPU in a plain array slot chosen by a cheap hash of the
//! key, which the verifier inlines to a few loads. A slot counts only while all of these hold:
//! - its key is the packet's own (four word compares for IPv4, ten for IPv6);
//! - its `epoch` is the current epoch of its slot index (`FLOW_CACHE_EPOCHS`, one u64 per index,
//!   shared by every CPU's slot of that index). Whoever changes a flow's entry writes a new
//!   epoch for the flow's index afterwards, so nothing the agent wrote is shadowed. A change
//!   retires the slots of its own index only: peers' flows arrive every few milliseconds in a
//!   fleet with flow sync, and one epoch for the whole cache would retire every flow each time;
//!   one flow in 16,384 shares an index with a changed one;
//! - it was read from the table less than `FLOW_CACHE_RECHECK_JIFFIES` ago: a busy flow still
//!   reads (and refreshes) its entry a few times a second, so its idle time, the LRU's order and
//!   peer sync see it as before, and an expired or evicted entry is noticed as before;
//! - the backend still has the generation the slot names, and its VIP is installed (read on
//!   every hit, as for a table hit).
//!
//! The XDP program's own writes keep it coherent too: a SYN's entry that replaces another one
//! (a reused 5-tuple) writes a new epoch for its index. Other packets only write an entry where
//! the flow's was missing, expired or stale: a slot never answers for those (it is filled only
//! while its entry has at least `FLOW_CACHE_MAX_LIFE_NS` to live, and it checks the backend's
//! generation). SYNs, FINs and RSTs never use the cache (they change the entry), nor do ICMP
//! errors (they read the table). A slot is filled with the epoch its index had before the
//! table was read, so a change that lands between the read and the fill still retires it.
//!
//! Every epoch is CLOCK_MONOTONIC in ns when it is written (userspace: or one more than the last
//! it wrote, if that is later), so no epoch comes back: a slot is never mistaken for a fresh one.

use crate::addr::FAMILY_V4;
use crate::conn::{FlowKey, FlowKey4};

/// Slots per CPU and family by default (`[dataplane] flow_cache_slots`): 48 bytes each for
/// IPv4 (768 KiB per CPU), 72 for IPv6 (1.1 MiB). `FLOW_CACHE` and `FLOW_CACHE6` hold every
/// possible CPU's slots back to back (the loader sizes them), CPU n's from `n << bits`, where
/// the slot count is `1 << bits` (the program's global `FLOW_CACHE_BITS`). An IPv4 and an IPv6
/// flow may share a slot index (and its epoch), not a slot.
pub const DEFAULT_FLOW_CACHE_SLOTS: u32 = 16_384;
/// The fewest and the most slots per CPU and family a load balancer may be given.
pub const FLOW_CACHE_MIN_SLOTS: u32 = 256;
pub const FLOW_CACHE_MAX_SLOTS: u32 = 1 << 20;
const _: () = assert!(DEFAULT_FLOW_CACHE_SLOTS.is_power_of_two());

/// A slot is used for at most this many jiffies after its flow's entry was read from the table:
/// 64 ms at HZ=1000, 256 ms at HZ=250, 640 ms at HZ=100, below the shortest idle timeout (1 s).
pub const FLOW_CACHE_RECHECK_JIFFIES: u64 = 64;
/// The longest a slot may be used, at the lowest HZ Linux has (100). An entry is cached only if
/// it stays live at least this long after the read, even without traffic.
pub const FLOW_CACHE_MAX_LIFE_NS: u64 = FLOW_CACHE_RECHECK_JIFFIES * 10_000_000;

/// One cached flow: what an established packet needs from its connection entry. `K` is the
/// table's key: `FlowKey4` in `FLOW_CACHE` (IPv4 flows, 48 bytes), `FlowKey` in `FLOW_CACHE6`
/// (IPv6 flows, 72 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlow<K> {
    pub key: K,
    pub backend: u32,
    /// `ConnEntry::generation`: checked against the backend's on every hit.
    pub generation: u32,
    /// `ConnEntry::hash`.
    pub hash: u32,
    /// `ConnEntry::prev`.
    pub prev: u16,
    pub _pad: u16,
    /// The epoch of the slot's index (`FLOW_CACHE_EPOCHS`) before the entry was read.
    pub epoch: u64,
    /// `bpf_jiffies64` when the entry was read.
    pub read_jiffies: u64,
}

// SAFETY: repr(C), no implicit padding (explicit `_pad`; the key is 16 bytes, so `epoch` is
// 8-aligned), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CachedFlow<FlowKey4> {}

// SAFETY: as above (the key is 40 bytes).
#[cfg(feature = "user")]
unsafe impl aya::Pod for CachedFlow<FlowKey> {}

const _: () = assert!(core::mem::size_of::<CachedFlow<FlowKey4>>() == 48);
const _: () = assert!(core::mem::size_of::<CachedFlow<FlowKey>>() == 72);

/// The slot index of an IPv4 flow among `1 << bits` slots (`bits` 8 to 20): a multiplicative
/// hash of its words (not the seeded flow hash: a slot only has to spread one CPU's flows, and
/// this costs two multiplies).
#[inline(always)]
pub const fn flow_cache_slot(key: &FlowKey4, bits: u32) -> u32 {
    slot_of(key.src, key.dst, key.ports, bits)
}

/// The slot index of an IPv6 flow (`FlowKey`, family FAMILY_V6): each address folded to a
/// word (rotated, so a client's /64 and interface id do not cancel out), then as for IPv4.
#[inline(always)]
pub const fn flow_cache_slot6(key: &FlowKey, bits: u32) -> u32 {
    const fn fold(a: &[u32; 4]) -> u32 {
        a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24)
    }
    let ports = key.src_port as u32 | (key.dst_port as u32) << 16;
    slot_of(fold(&key.src), fold(&key.dst), ports, bits)
}

/// The slot index of any flow, by its family: what userspace retires after changing an entry.
#[inline(always)]
pub fn flow_cache_index(key: &FlowKey, bits: u32) -> u32 {
    if key.family == FAMILY_V4 {
        flow_cache_slot(&key.v4(), bits)
    } else {
        flow_cache_slot6(key, bits)
    }
}

#[inline(always)]
const fn slot_of(src: u32, dst: u32, ports: u32, bits: u32) -> u32 {
    let h = (src ^ ports.rotate_left(16) ^ dst.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B1);
    // `bits` is 8 to 20: the shift stays below 32 (masked, so the program needs no check).
    h >> ((32 - bits) & 31)
}

/// `bits` for a slot count (a power of two).
#[inline(always)]
pub const fn flow_cache_bits(slots: u32) -> u32 {
    slots.trailing_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BITS: u32 = flow_cache_bits(DEFAULT_FLOW_CACHE_SLOTS);

    #[test]
    fn every_slot_count_keeps_indexes_in_range() {
        let key = FlowKey4 {
            src: 0xC633_6407u32.to_be(),
            dst: 0xC000_020Au32.to_be(),
            ports: 0xFFFF_FFFF,
            proto: 6,
        };
        let mut slots = FLOW_CACHE_MIN_SLOTS;
        while slots <= FLOW_CACHE_MAX_SLOTS {
            let bits = flow_cache_bits(slots);
            for src in 0..4096u32 {
                let k = FlowKey4 { src, ..key };
                assert!(flow_cache_slot(&k, bits) < slots);
            }
            slots <<= 1;
        }
    }

    #[test]
    fn slots_stay_in_range_and_spread_one_clients_ports() {
        let mut hits = vec![0u32; DEFAULT_FLOW_CACHE_SLOTS as usize];
        // One client, 32768 source ports, to one VIP: the case a weak hash folds together.
        for port in 1024..1024 + 32_768u16 {
            let ([s0, s1], [d0, d1]) = (port.to_be_bytes(), 80u16.to_be_bytes());
            let key = FlowKey4 {
                src: 0xC633_6407u32.to_be(),
                dst: 0xC000_020Au32.to_be(),
                ports: u32::from_ne_bytes([s0, s1, d0, d1]),
                proto: 6,
            };
            hits[flow_cache_slot(&key, BITS) as usize] += 1;
        }
        let used = hits.iter().filter(|&&n| n > 0).count() as u32;
        // Two keys per slot on average: a uniform hash leaves about e^-2 = 13.5% slots empty.
        assert!(
            used > DEFAULT_FLOW_CACHE_SLOTS * 80 / 100,
            "{used} slots used"
        );
        assert!(hits.iter().all(|&n| n <= 12), "a slot holds too many keys");
    }

    #[test]
    fn ipv6_slots_spread_one_clients_ports_and_one_prefixs_hosts() {
        let key = |src: [u32; 4], port: u16| FlowKey {
            src,
            dst: [0x2001_0db8u32.to_be(), 0x10u32.to_be(), 0, 0x10u32.to_be()],
            src_port: port.to_be(),
            dst_port: 443u16.to_be(),
            proto: 6,
            family: crate::addr::FAMILY_V6,
            _pad: [0; 2],
        };
        let client = [0x2001_0db8u32.to_be(), 0xcu32.to_be(), 0, 7u32.to_be()];
        // One client's 32,768 ports, then 32,768 hosts of one /64 on one port.
        let ports = (1024..1024 + 32_768u16).map(|p| key(client, p));
        let hosts =
            (0..32_768u32).map(|h| key([client[0], client[1], h.to_be(), 7u32.to_be()], 40000));
        for keys in [ports.collect::<Vec<_>>(), hosts.collect()] {
            let mut hits = vec![0u32; DEFAULT_FLOW_CACHE_SLOTS as usize];
            for k in &keys {
                assert_eq!(flow_cache_index(k, BITS), flow_cache_slot6(k, BITS));
                hits[flow_cache_slot6(k, BITS) as usize] += 1;
            }
            let used = hits.iter().filter(|&&n| n > 0).count() as u32;
            assert!(
                used > DEFAULT_FLOW_CACHE_SLOTS * 80 / 100,
                "{used} slots used"
            );
            assert!(hits.iter().all(|&n| n <= 12), "a slot holds too many keys");
        }
    }
}
