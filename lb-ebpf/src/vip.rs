//! VIP lookup: a one-bit pre-filter on the destination address, then the exact service.

use core::{mem::MaybeUninit, ptr::write_volatile};

use lb_common::{FlowKey, VIP_FILTER_WORDS, VipKey, VipMeta, vip_filter_bit};

use crate::maps::{VIP_FILTER, VIPS};

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
    let mut vip = VipKey {
        addr: key.dst,
        port: key.dst_port,
        proto: key.proto,
        family: key.family,
    };
    if let Some(meta) = unsafe { VIPS.get(&vip) } {
        return Some(meta);
    }
    vip.port = 0;
    unsafe { VIPS.get(&vip) }
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
    unsafe {
        for (i, w) in addr.iter().enumerate() {
            write_volatile(words.add(i), *w);
        }
        // Port 0, protocol 0, then the family byte, in memory order.
        write_volatile(words.add(4), u32::from_ne_bytes([0, 0, 0, family]));
        VIPS.get(marker.assume_init_ref())
    }
}
