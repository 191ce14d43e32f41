//! VIP lookup: a one-bit pre-filter on the destination address, then the exact service.

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
    let marker = VipKey {
        addr: *addr,
        port: 0,
        proto: 0,
        family,
    };
    unsafe { VIPS.get(&marker) }.is_some()
}
