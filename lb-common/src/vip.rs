//! VIP services (`VIPS`, `VIPS_BY_ID`): a service's key (address, port, protocol) and what the
//! XDP program needs to balance it.

#[cfg(feature = "user")]
use crate::addr::{FAMILY_V4, addr_words, fold_v6};
#[cfg(feature = "user")]
use crate::vip_filter::vip_filter_bit;

pub const DEFAULT_MAX_VIPS: u32 = 512;

/// A VIP service: address, port (0 = any port) and protocol. A VIP address's marker entry has
/// port 0 and protocol 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

// SAFETY: repr(C), no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for VipKey {}

#[cfg(feature = "user")]
impl VipKey {
    pub fn new(addr: std::net::IpAddr, port: u16, proto: u8) -> Self {
        let (family, addr) = addr_words(addr);
        Self {
            addr,
            port: port.to_be(),
            proto,
            family,
        }
    }

    pub fn filter_bit(&self) -> u32 {
        let folded = if self.family == FAMILY_V4 {
            self.addr[0]
        } else {
            fold_v6(&self.addr)
        };
        vip_filter_bit(folded)
    }
}

/// `VipMeta::flags`: encapsulate in IPv6 + UDP (GUE variant 1) instead of plain IPv6.
pub const VIP_F_GUE: u32 = 1;
/// `VipMeta::flags` of a VIP address's marker entry (port 0, protocol 0): do not answer ICMP
/// echo requests to this address.
pub const VIP_F_NO_ECHO: u32 = 2;
/// `VipMeta::flags` in `VIPS_BY_ID`: the slot holds an installed service (cleared when the
/// service is removed, so connection entries of its backends stop taking the fast path).
pub const VIP_F_LIVE: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipMeta {
    /// Index into `VIP_STATS`.
    pub id: u32,
    /// Which Maglev ring (`RINGS[ring * RING_SIZE ..]`) this VIP uses.
    pub ring: u32,
    pub flags: u32,
    pub _pad: u32,
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for VipMeta {}

const _: () = assert!(core::mem::size_of::<VipKey>() == 20);
const _: () = assert!(core::mem::size_of::<VipMeta>() == 16);
