//! `VIP_FILTER`: a one-bit-per-hash pre-filter on the destination address. A non-VIP packet
//! leaves after one array lookup and a bit test, before any hash-map lookup; false positives
//! only cost the exact VIP lookup.

/// Bits in the filter.
pub const VIP_FILTER_BITS: u32 = 1 << 16;
pub const VIP_FILTER_WORDS: usize = (VIP_FILTER_BITS / 64) as usize;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipFilter {
    pub words: [u64; VIP_FILTER_WORDS],
}

// SAFETY: repr(C), an array of u64: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for VipFilter {}

impl Default for VipFilter {
    fn default() -> Self {
        Self {
            words: [0; VIP_FILTER_WORDS],
        }
    }
}

#[cfg(feature = "user")]
impl VipFilter {
    pub fn set(&mut self, bit: u32) {
        self.words[(bit / 64) as usize] |= 1 << (bit % 64);
    }
    pub fn contains(&self, bit: u32) -> bool {
        self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }
}

/// The filter bit of an address (its words as loaded from the packet; IPv6 folded with
/// `fold_v6`).
#[inline(always)]
pub const fn vip_filter_bit(folded_addr: u32) -> u32 {
    (folded_addr.wrapping_mul(0x9E37_79B1) >> 16) & (VIP_FILTER_BITS - 1)
}
