//! The egress cache (`EGRESS[backend id]`): how a backend's packets leave the load balancer.
//! Either by the NIC they came in on, to that NIC's configured next hop (`EGRESS_INGRESS`: the
//! static `next_hop_mac` / `gateway` setups), or by the route the kernel has to the backend
//! (`EGRESS_ROUTED`: up to `EGRESS_MAX_PATHS` ECMP paths, one picked per flow by its hash),
//! each path with its NIC and the MACs to write. Anything else (`EGRESS_UNRESOLVED`, and a
//! zeroed entry) is dropped and counted: a packet never leaves with a zero or stale MAC.
//! `EGRESS_DEVS` (a DEVMAP) holds the NICs by `EgressPath::dev`, for XDP_REDIRECT.

use crate::config::IfaceConfig;

/// Paths of one ECMP route the cache holds per backend.
pub const EGRESS_MAX_PATHS: usize = 4;
/// NICs `EGRESS_DEVS` (and the per-NIC counters) can hold.
pub const EGRESS_MAX_DEVS: u32 = 64;

/// `Egress::state`: no usable next hop (a zeroed entry means the same): drop, count.
pub const EGRESS_UNRESOLVED: u32 = 0;
/// Out of the NIC the packet came in on, with its `IFACES` MACs (XDP_TX).
pub const EGRESS_INGRESS: u32 = 1;
/// By `paths[hash-chosen]`: XDP_TX if its NIC is the ingress one, else XDP_REDIRECT.
pub const EGRESS_ROUTED: u32 = 2;

/// One path to a backend: the NIC and the MACs (in an `IfaceConfig`, the layout the
/// encapsulation reads MACs from; its `mtu` is informational here).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressPath {
    pub link: IfaceConfig,
    pub ifindex: u32,
    /// The NIC's slot in `EGRESS_DEVS` and the per-NIC counters.
    pub dev: u32,
}

// SAFETY: repr(C), no implicit padding (16 + 4 + 4 bytes), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for EgressPath {}

/// `EGRESS[backend id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Egress {
    pub state: u32,
    /// Paths in use (1 to `EGRESS_MAX_PATHS` when routed).
    pub paths_len: u32,
    pub paths: [EgressPath; EGRESS_MAX_PATHS],
}

// SAFETY: repr(C), no implicit padding (8 + 4 x 24 bytes), every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Egress {}

impl Egress {
    pub const UNRESOLVED: Egress = Egress {
        state: EGRESS_UNRESOLVED,
        paths_len: 0,
        paths: [EgressPath {
            link: IfaceConfig {
                src_mac: [0; 6],
                dst_mac: [0; 6],
                mtu: 0,
                _pad: 0,
            },
            ifindex: 0,
            dev: 0,
        }; EGRESS_MAX_PATHS],
    };

    pub const INGRESS: Egress = Egress {
        state: EGRESS_INGRESS,
        ..Self::UNRESOLVED
    };
}

/// The path a flow with `hash` takes among `len` (a multiply, not a modulo, as for Maglev;
/// `len` 0 is treated as 1).
#[inline(always)]
pub const fn egress_path_index(hash: u32, len: u32) -> u32 {
    let len = if len == 0 { 1 } else { len };
    ((hash as u64 * len as u64) >> 32) as u32
}

/// Slots of the per-NIC counters (`EGRESS_STATS`): two per NIC, XDP_TX then XDP_REDIRECT.
pub const EGRESS_STATS_SLOTS: u32 = EGRESS_MAX_DEVS * 2;

const _: () = assert!(core::mem::size_of::<EgressPath>() == 24);
const _: () = assert!(core::mem::size_of::<Egress>() == 104);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_index_spreads_and_stays_in_range() {
        for len in 1..=EGRESS_MAX_PATHS as u32 {
            let mut seen = [0u32; EGRESS_MAX_PATHS];
            for i in 0..4096u32 {
                let h = i.wrapping_mul(0x9E37_79B9);
                let p = egress_path_index(h, len);
                assert!(p < len);
                seen[p as usize] += 1;
            }
            for &n in &seen[..len as usize] {
                assert!(n > 4096 / len / 2, "len {len}: {seen:?}");
            }
        }
        assert_eq!(egress_path_index(u32::MAX, 0), 0);
    }
}
