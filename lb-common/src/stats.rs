//! Global per-CPU counters, by cause (`STATS[Counter as u32]`).

macro_rules! counters {
    ($($variant:ident = $name:literal,)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $($variant,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            /// The counter's stable name (CLI, JSON and Prometheus label).
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
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
    // ICMP to VIP addresses (lb-ebpf/src/icmp.rs).
    IcmpEchoReply = "icmp_echo_reply",
    DropIcmpEchoOff = "drop_icmp_echo_off",
    IcmpErrorForwarded = "icmp_error_forwarded",
    DropIcmpBadEmbedded = "drop_icmp_bad_embedded",
    DropIcmpNoFlow = "drop_icmp_no_flow",
    PassIcmpOther = "pass_icmp_other",
    // Client packets too big to encapsulate (lb-ebpf/src/toobig.rs).
    IcmpTooBigSent = "icmp_too_big_sent",
    DropTooBigNoDf = "drop_too_big_no_df",
}

pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;
