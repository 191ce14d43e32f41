//! `VIP_INDEX`: the services of `VIPS` again, in an open-addressed array, so the hot path's
//! lookup by address costs array reads and word compares, not a kernel hash lookup.

use crate::vip::{VipKey, VipMeta};

/// A `VIP_INDEX` slot: a service's key and meta; `key.proto == 0` marks a free slot. The
/// service with key `k` lives in the first free of the `VIP_PROBES` slots from
/// `vip_index_slot(vip_index_hash(k), 0, size)`, and the lookup checks all of them (removals
/// leave holes, so it does not stop at a free one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    pub meta: VipMeta,
}

// SAFETY: repr(C), no padding (20 + 16 bytes, 4-byte aligned), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for VipSlot {}

/// Probes per `VIP_INDEX` lookup. With the index 8 times larger than `max_vips`, a service
/// that finds all 8 taken is vanishingly rare; the agent refuses it with a clear error.
pub const VIP_PROBES: u32 = 8;

/// `VIP_INDEX` size for `max_vips` services: 8 slots per service, a power of two.
pub const fn vip_index_size(max_vips: u32) -> u32 {
    (max_vips.saturating_mul(8)).next_power_of_two()
}

/// The hash placing a service in `VIP_INDEX`: a multiply-xorshift of its five key words
/// (cheap in BPF; quality only affects probe lengths, not correctness).
#[inline(always)]
pub const fn vip_index_hash(key: &VipKey) -> u32 {
    vip_index_hash_words(&key.addr, vip_key_tail(key.port, key.proto, key.family))
}

/// A `VipKey`'s fifth 32-bit word as it lies in memory (little-endian): port, protocol,
/// family.
#[inline(always)]
pub const fn vip_key_tail(port: u16, proto: u8, family: u8) -> u32 {
    (port as u32) | ((proto as u32) << 16) | ((family as u32) << 24)
}

/// `vip_index_hash` of a key given as its address words and `vip_key_tail`.
#[inline(always)]
pub const fn vip_index_hash_words(addr: &[u32; 4], tail: u32) -> u32 {
    let mut h = addr[0] ^ addr[1].rotate_left(7) ^ addr[2].rotate_left(13);
    h ^= addr[3].rotate_left(19) ^ tail.rotate_left(3);
    h = h.wrapping_mul(0x9E37_79B1);
    h ^= h >> 15;
    h = h.wrapping_mul(0x85EB_CA77);
    h ^ (h >> 13)
}

/// Slot of probe `probe` for `hash` in an index of `size` slots (a power of two).
#[inline(always)]
pub const fn vip_index_slot(hash: u32, probe: u32, size: u32) -> u32 {
    hash.wrapping_add(probe) & (size - 1)
}

const _: () = assert!(core::mem::size_of::<VipSlot>() == 36);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_is_the_keys_fifth_word_in_memory() {
        let key = VipKey {
            addr: [1, 2, 3, 4],
            port: 80u16.to_be(),
            proto: 6,
            family: 4,
        };
        // SAFETY: VipKey is repr(C), 20 bytes without padding: five u32 words.
        let words: [u32; 5] = unsafe { core::mem::transmute(key) };
        assert_eq!(words[4], vip_key_tail(key.port, key.proto, key.family));
        assert_eq!(
            vip_index_hash(&key),
            vip_index_hash_words(&key.addr, words[4])
        );
    }

    #[test]
    fn index_size_and_slots_wrap() {
        assert_eq!(vip_index_size(512), 4096);
        assert_eq!(vip_index_size(100), 1024);
        assert_eq!(vip_index_slot(4095, 1, 4096), 0);
        assert_eq!(vip_index_slot(7, 3, 8), 2);
    }
}
