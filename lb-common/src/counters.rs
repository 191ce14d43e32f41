//! Per-CPU counters: the value every counter map holds, the macro that declares each
//! program's counter enum, and the load balancer's own (`Counter`, `STATS[Counter as u32]`).
//! The other programs declare theirs beside their maps: `DecapCounter` (decap.rs) and
//! `HealthCounter` (health.rs).

/// A packets/bytes pair, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

// SAFETY: repr(C), two u64s: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CounterValue {}

/// Declares a program's counters: a `#[repr(u32)]` enum numbered in order (its map index),
/// `ALL` in that order, `COUNT` (the map's size) and each counter's stable `name` (CLI, JSON
/// and Prometheus label). Append new counters: indices are stable across upgrades.
macro_rules! counter_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$doc:meta])* $variant:ident = $label:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$doc])* $variant,)*
        }

        impl $name {
            /// Every counter, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// How many counters there are: the size of the program's counter map.
            pub const COUNT: u32 = Self::ALL.len() as u32;
            /// The counter's stable name (CLI, JSON and Prometheus label).
            pub const fn name(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)*
                }
            }
        }
    };
}
pub(crate) use counter_enum;

counter_enum! {
    /// The load balancer's (`lb_xdp`) counters, by cause (`STATS[Counter as u32]`).
    pub enum Counter {
        PassNonIp = "pass_non_ip",
        PassNotVip = "pass_not_vip",
        PassVipOtherService = "pass_vip_other_service",
        Tx = "tx",
        TxGue = "tx_gue",
        LruHit = "lru_hit",
        LruMissSyn = "lru_miss_syn",
        LruMissNonSyn = "lru_miss_non_syn",
        LruMissUdp = "lru_miss_udp",
        LruStaleBackend = "lru_stale_backend",
        LruExpired = "lru_expired",
        DropTruncated = "drop_truncated",
        DropBadIpHeader = "drop_bad_ip_header",
        DropIpv4Options = "drop_ipv4_options",
        DropIpv4Fragment = "drop_ipv4_fragment",
        DropIpv6Fragment = "drop_ipv6_fragment",
        DropIpv6ExtHeader = "drop_ipv6_ext_header",
        DropNoBackend = "drop_no_backend",
        DropEncap = "drop_encap",
        DropNoIface = "drop_no_iface",
        // Appended: indices above are stable.
        // A SYN-created entry exported on FLOW_EVENTS for peer sync.
        FlowEvents = "flow_events",
        // FLOW_EVENTS was full: the flow was forwarded normally, only its export is lost.
        DropFlowEvent = "flow_events_lost",
        // ICMP to VIP addresses (lb-ebpf/src/bin/lb_xdp/icmp.rs).
        IcmpEchoReply = "icmp_echo_reply",
        DropIcmpEchoOff = "drop_icmp_echo_off",
        IcmpErrorForwarded = "icmp_error_forwarded",
        DropIcmpBadEmbedded = "drop_icmp_bad_embedded",
        DropIcmpNoFlow = "drop_icmp_no_flow",
        PassIcmpOther = "pass_icmp_other",
        // Client packets too big to encapsulate (lb-ebpf/src/bin/lb_xdp/toobig.rs).
        IcmpTooBigSent = "icmp_too_big_sent",
        DropTooBigNoDf = "drop_too_big_no_df",
        // Generated ICMP's source rules and rate limit (lb-ebpf/src/bin/lb_xdp/ratelimit.rs).
        // An echo request from a source that is not one host (broadcast, multicast, loopback,
        // unspecified): not answered.
        DropIcmpEchoBadSource = "drop_icmp_echo_bad_source",
        // An echo reply or "too big" message over this CPU's ICMP budget: not sent.
        DropIcmpRateLimited = "drop_icmp_rate_limited",
        // The new-flow gate (lb-ebpf/src/bin/lb_xdp/ratelimit.rs): a new flow over this CPU's
        // budget of new connection entries, forwarded by Maglev without an entry (and not
        // exported to peers). Not a verdict: the packet was forwarded.
        LruInsertGated = "lru_insert_gated",
        // Second chance (docs/second-chance.md). Not verdicts: the packets were forwarded.
        // A packet sent with a Segment Routing Header naming its slot's previous backend.
        TxSecondChance = "tx_second_chance",
        // A mid-flow packet without an entry met a slot with a live previous backend: its flow
        // is paired (and its entry, if the gate lets it create one, remembers the pair).
        SecondChancePaired = "second_chance_paired",
        // A SYN that wrote its connection entry: its ring slot has a live previous backend, or
        // second chance is off (`LB_F_SECOND_CHANCE`). Other SYNs write nothing.
        SynPinned = "syn_pinned",
        // The egress step (lb-ebpf/src/bin/lb_xdp/egress.rs, docs/dataplane.md).
        // The backend's next hop is not resolved (or its egress entry is not written): dropped,
        // never sent to a zero or stale MAC.
        DropNoNextHop = "drop_no_next_hop",
        // Sent out of another NIC than the one it came in on (XDP_REDIRECT through EGRESS_DEVS).
        TxRedirect = "tx_redirect",
        // The redirect's NIC was not in EGRESS_DEVS: dropped.
        DropRedirect = "drop_redirect",
        // An established IPv4 packet answered by this CPU's flow cache (lb-common/src/
        // flow_cache.rs) instead of a connection-table lookup (`lru_hit`).
        FlowCacheHit = "flow_cache_hit",
    }
}

/// Slots in lb_xdp's pinned `STATS` map, more than `Counter::COUNT`: a map's size is fixed
/// when it is created, so a build that adds counters must still fit the map a previous agent
/// pinned, or it could not adopt the dataplane without `lb detach` (which drops connections).
pub const STATS_SLOTS: u32 = 128;
const _: () = assert!(
    Counter::COUNT <= STATS_SLOTS,
    "raise STATS_SLOTS: a layout change"
);

/// Test helper for any `counter_enum!` enum: `ALL` is in index order, `COUNT` matches, and
/// the names are distinct (they are keys in JSON and Prometheus).
#[cfg(test)]
pub(crate) fn check_counters(indices: &[u32], names: &[&str], count: u32) {
    assert_eq!(indices.len() as u32, count);
    for (i, &index) in indices.iter().enumerate() {
        assert_eq!(index, i as u32);
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len(), "duplicate counter name");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_numbered_in_order_with_distinct_names() {
        let indices: Vec<u32> = Counter::ALL.iter().map(|&c| c as u32).collect();
        let names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        check_counters(&indices, &names, Counter::COUNT);
        // Indices earlier releases wrote: appended counters never move them.
        assert_eq!(Counter::DropNoIface as u32, 19);
        assert_eq!(Counter::DropTooBigNoDf as u32, 29);
        assert_eq!(Counter::DropIcmpRateLimited as u32, 31);
        assert_eq!(Counter::LruInsertGated as u32, 32);
        assert_eq!(Counter::SecondChancePaired as u32, 34);
    }
}
