//! VIP lookup: a one-bit pre-filter on the destination address, then the exact service from
//! the open-addressed `VIP_INDEX` (or, for an established flow, its backend's service by id).
//! The `VIPS` hash map remains the agent's record and holds the per-address markers.

use core::{mem::MaybeUninit, ptr::write_volatile};

use lb_common::{
    FlowKey, VIP_F_LIVE, VIP_FILTER_WORDS, VIP_PROBES, VipKey, VipMeta, vip_filter_bit,
    vip_index_hash_words, vip_index_slot, vip_key_tail,
};

use crate::maps::{VIP_FILTER, VIP_INDEX, VIPS, VIPS_BY_ID, vip_index_slots};

/// Whether the destination address may be a VIP (false: it certainly is not).
#[inline(always)]
pub fn filter_hit(folded_addr: u32) -> bool {
    let bit = vip_filter_bit(folded_addr);
    match VIP_FILTER.get(0) {
        Some(filter) => {
            let word = filter.words[(bit as usize >> 6) & (VIP_FILTER_WORDS - 1)];
            (word >> (bit & 63)) & 1 != 0
        }
        None => false,
    }
}

/// The service for this flow: the exact port first, then the VIP's any-port (port 0) entry.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<&'static VipMeta> {
    let exact = vip_key_tail(key.dst_port, key.proto, key.family);
    if let Some(meta) = indexed(&key.dst, exact) {
        return Some(meta);
    }
    indexed(&key.dst, vip_key_tail(0, key.proto, key.family))
}

/// The service with address `addr` and key tail `tail` in `VIP_INDEX`: up to `VIP_PROBES`
/// array reads, each compared as five words (no key is built on the stack).
#[inline(always)]
fn indexed(addr: &[u32; 4], tail: u32) -> Option<&'static VipMeta> {
    let size = vip_index_slots();
    let hash = vip_index_hash_words(addr, tail);
    for probe in 0..VIP_PROBES {
        let slot = VIP_INDEX.get(vip_index_slot(hash, probe, size))?;
        let k = &slot.key as *const VipKey as *const u32;
        // SAFETY: VipKey is repr(C), 20 bytes, 4-byte aligned: five u32 words.
        let same = unsafe {
            *k.add(4) == tail
                && *k == addr[0]
                && *k.add(1) == addr[1]
                && *k.add(2) == addr[2]
                && *k.add(3) == addr[3]
        };
        if same {
            return Some(&slot.meta);
        }
    }
    None
}

/// The installed service with this id (`VipMeta::id`), for an established flow's backend.
#[inline(always)]
pub fn by_id(id: u32) -> Option<&'static VipMeta> {
    VIPS_BY_ID.get(id).filter(|m| m.flags & VIP_F_LIVE != 0)
}

/// Exact check that `addr` is a VIP address (its marker entry: port 0, protocol 0).
/// Only the rare refuse paths (fragments, options, extension headers) pay for it.
#[inline(always)]
pub fn is_vip_address(family: u8, addr: &[u32; 4]) -> bool {
    address_marker(family, addr).is_some()
}

/// The marker entry of VIP address `addr` (its `flags` hold per-address options such as
/// `VIP_F_NO_ECHO`), or None if `addr` is not a VIP address.
#[inline(always)]
pub fn address_marker(family: u8, addr: &[u32; 4]) -> Option<&'static VipMeta> {
    // The key is written with volatile word stores: LLVM would merge plain stores of its
    // constant zeros (IPv4's unused address words, port 0, protocol 0) into a memset, which
    // the BPF backend emits as a byte-by-byte loop of some 75 instructions.
    let mut marker = MaybeUninit::<VipKey>::uninit();
    let words = marker.as_mut_ptr() as *mut u32;
    // SAFETY: the five word stores cover all 20 bytes of the repr(C) VipKey (4-byte aligned)
    // before it is read.
    unsafe {
        for (i, w) in addr.iter().enumerate() {
            write_volatile(words.add(i), *w);
        }
        // Port 0, protocol 0, then the family byte, in memory order.
        write_volatile(words.add(4), u32::from_ne_bytes([0, 0, 0, family]));
        VIPS.get(marker.assume_init_ref())
    }
}
