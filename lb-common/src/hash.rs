//! The flow hash: identical in the XDP program and in userspace.
//!
//! It is a keyed multiply-xorshift over the 5-tuple's 64-bit words: a handful of
//! multiplications, no tables, no loops with data-dependent bounds, so the verifier accepts
//! it and it costs a few nanoseconds. Every load balancer of a fleet uses the same seed, so
//! a flow picks the same Maglev slot wherever anycast delivers it.

use crate::conn::FlowKey;

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

#[inline(always)]
const fn round(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K1).rotate_left(29).wrapping_mul(K2)
}

#[inline(always)]
const fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Keyed 64-bit hash of arbitrary 64-bit words (used for backend identities in Maglev).
#[inline(always)]
pub const fn hash_words(seed: u64, words: &[u64]) -> u64 {
    let mut h = seed ^ K2;
    let mut i = 0;
    while i < words.len() {
        h = round(h, words[i]);
        i += 1;
    }
    finish(h ^ (words.len() as u64))
}

/// 32-bit hash of a flow's 5-tuple.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u64) -> u32 {
    let s = &key.src;
    let d = &key.dst;
    let mut h = seed ^ K2;
    h = round(h, (s[0] as u64) | ((s[1] as u64) << 32));
    h = round(h, (s[2] as u64) | ((s[3] as u64) << 32));
    h = round(h, (d[0] as u64) | ((d[1] as u64) << 32));
    h = round(h, (d[2] as u64) | ((d[3] as u64) << 32));
    h = round(
        h,
        (key.src_port as u64) | ((key.dst_port as u64) << 16) | ((key.proto as u64) << 32),
    );
    (finish(h) >> 32) as u32
}

/// Maps a 32-bit hash onto `[0, size)` with a multiply and a shift (Lemire's reduction):
/// uniform like `hash % size`, without a division on the hot path.
#[inline(always)]
pub const fn ring_slot(hash: u32, size: u32) -> u32 {
    (((hash as u64) * (size as u64)) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            src: [i.to_be(), 0, 0, 0],
            dst: [0xC000_0201u32.to_be(), 0, 0, 0],
            src_port: (i as u16).to_be(),
            dst_port: 80u16.to_be(),
            proto: 6,
            ..FlowKey::default()
        }
    }

    #[test]
    fn deterministic_and_seeded() {
        assert_eq!(flow_hash(&key(7), 1), flow_hash(&key(7), 1));
        assert_ne!(flow_hash(&key(7), 1), flow_hash(&key(7), 2));
        assert_ne!(flow_hash(&key(7), 1), flow_hash(&key(8), 1));
    }

    #[test]
    fn ring_slot_stays_in_range_and_spreads() {
        let size = 65537;
        let mut buckets = [0u32; 16];
        for i in 0..160_000u32 {
            let s = ring_slot(flow_hash(&key(i), 42), size);
            assert!(s < size);
            buckets[(s as usize * 16) / size as usize] += 1;
        }
        for b in buckets {
            // 10,000 expected per bucket; a bad hash is far outside 5%.
            assert!((9_500..=10_500).contains(&b), "bucket count {b}");
        }
        assert_eq!(ring_slot(u32::MAX, size), size - 1);
        assert_eq!(ring_slot(0, size), 0);
    }
}
