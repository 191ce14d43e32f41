//! Health checks through the tunnel. The agent's check sockets carry a firewall mark naming
//! one backend; a TC egress program on the load balancer's NIC encapsulates their packets to
//! that backend exactly as the XDP program encapsulates client packets. A check therefore
//! tests the backend's decapsulation, its VIP on `lo` and its direct return path, not just
//! that something listens on its unicast address.

use crate::counters::counter_enum;

/// The TC program's name in the `lb-health-encap` object.
pub const PROGRAM_NAME: &str = "lb_health_encap";

/// Map names in the `lb-health-encap` object.
pub mod names {
    pub const HEALTH_TARGETS: &str = "HEALTH_TARGETS";
    pub const HEALTH_STATS: &str = "HEALTH_STATS";
    pub const HEALTH_VIPS: &str = "HEALTH_VIPS";
}

/// Most VIP addresses the TC program guards against stray resets (`HEALTH_VIPS`).
pub const MAX_HEALTH_VIPS: u32 = 4096;

/// Marks `HEALTH_MARK_BASE | index` (index < 2^16) belong to health checks. Other marks pass the
/// TC program untouched.
pub const HEALTH_MARK_BASE: u32 = 0x4c42_0000;
pub const HEALTH_MARK_MASK: u32 = 0xffff_0000;
pub const MAX_HEALTH_TARGETS: u32 = 1 << 16;

/// `HealthTarget::flags`: encapsulate in IPv6 + UDP (GUE variant 1), as for a GUE VIP.
pub const HEALTH_F_GUE: u16 = 1;

/// Where a marked check packet goes: the outer IPv6 header's addresses, per check.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthTarget {
    /// The load balancer's tunnel source (words as on the wire).
    pub src_ip6: [u32; 4],
    /// The backend's address.
    pub dst_ip6: [u32; 4],
    /// GUE destination port, network order (used with `HEALTH_F_GUE`).
    pub gue_port: u16,
    pub flags: u16,
    /// The NIC the backend's route leaves by (its first path), where the tunnelled check is
    /// sent with the kernel's route and neighbour for the backend (`bpf_redirect_neigh`); 0:
    /// it leaves as the VIP's route built it (static next hops). In what was padding.
    pub egress_ifindex: u32,
}

// SAFETY: repr(C), no implicit padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for HealthTarget {}

counter_enum! {
    /// `HEALTH_STATS` indices (per-CPU packet counts).
    pub enum HealthCounter {
        /// Check packets encapsulated.
        Encapsulated = "encapsulated",
        /// Check packets with a check mark but no target: dropped, never sent unencapsulated.
        DropNoTarget = "drop_no_target",
        /// The kernel refused to grow or rewrite the packet.
        DropEncap = "drop_encap",
        /// An unmarked TCP reset from this host to a VIP: the kernel answering a backend's late
        /// segment of a finished check (no socket, so no mark). Dropped: it would otherwise reach
        /// the VIP untunnelled through the router.
        DropStrayReset = "drop_stray_reset",
        /// Check packets sent out of another NIC than the VIP's route, because the backend's
        /// route leaves by it (two-arm: the backends behind another NIC). Not a verdict: the
        /// packet was also counted `Encapsulated`.
        Redirected = "redirected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_numbered_in_order_with_distinct_names() {
        let indices: Vec<u32> = HealthCounter::ALL.iter().map(|&c| c as u32).collect();
        let names: Vec<&str> = HealthCounter::ALL.iter().map(|c| c.name()).collect();
        crate::counters::check_counters(&indices, &names, HealthCounter::COUNT);
        assert_eq!(HealthCounter::DropStrayReset as u32, 3);
    }
}
