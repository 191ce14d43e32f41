//! What an absent field means.

pub const DEFAULT_API_SOCKET: &str = "/run/lb/lb.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

pub(super) fn yes() -> bool {
    true
}

pub(super) fn default_refresh_secs() -> u64 {
    300
}

/// 20,000 flows/s: about 1.2 MB/s on a link and, at the 1.6 µs per imported flow measured
/// (BENCHMARKS.md), about 3% of a receiving core per sending peer; a drain that moves 100,000
/// live flows reaches every peer in 5 s.
pub(super) fn default_changes_rate() -> u32 {
    20_000
}

/// 262,144 flows (15 MB of records, sent in about 13 s at the default rate).
pub(super) fn default_changes_max() -> u32 {
    262_144
}

pub(super) fn default_flow_queue() -> usize {
    1024
}

pub(super) fn default_startup_wait_secs() -> u64 {
    10
}

/// A million changes: years of operator changes, yet far from u64::MAX.
pub const DEFAULT_MAX_CLOCK_JUMP: u64 = 1_000_000;

pub(super) fn default_max_clock_jump() -> u64 {
    DEFAULT_MAX_CLOCK_JUMP
}

/// Listener caps (docs/operating.md, "Listener limits"). A Prometheus server scrapes with one
/// connection at a time; a few operators' `lb` commands run at once; a fleet's peers handshake
/// a few times a minute at most. Each cap is far below any open-file limit, so together they
/// cannot exhaust the agent's descriptors.
pub const DEFAULT_METRICS_MAX_CONNECTIONS: usize = 16;
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 16;
pub const DEFAULT_SYNC_MAX_CONNECTIONS: usize = 64;
/// The largest cap accepted for any listener.
pub const MAX_LISTENER_CONNECTIONS: usize = 4096;

pub(super) fn default_sync_max_connections() -> usize {
    DEFAULT_SYNC_MAX_CONNECTIONS
}

pub(super) fn default_ring_size() -> u32 {
    lb_common::DEFAULT_RING_SIZE
}
pub(super) fn default_flow_cache_slots() -> u32 {
    lb_common::DEFAULT_FLOW_CACHE_SLOTS
}
pub(super) fn default_max_vips() -> u32 {
    lb_common::DEFAULT_MAX_RINGS
}
pub(super) fn default_max_backends() -> u32 {
    lb_common::DEFAULT_MAX_BACKENDS
}
pub(super) fn default_max_flows() -> u32 {
    lb_common::DEFAULT_MAX_CONNS
}
pub(super) fn default_gue_port() -> u16 {
    lb_common::DEFAULT_GUE_PORT
}
pub(super) fn default_udp_idle() -> u64 {
    lb_common::DEFAULT_UDP_TIMEOUT_NS / 1_000_000_000
}
pub(super) fn default_tcp_idle() -> u64 {
    lb_common::DEFAULT_TCP_IDLE_TIMEOUT_NS / 1_000_000_000
}
pub(super) fn default_tcp_closing() -> u64 {
    lb_common::DEFAULT_TCP_CLOSING_TIMEOUT_NS / 1_000_000_000
}
/// Linux's own ICMP budget is 1000 per second with a burst of 50 (net.ipv4.icmp_msgs_per_sec,
/// icmp_msgs_burst), for the whole host; ours is per CPU.
pub(super) fn default_icmp_rate() -> u32 {
    1000
}
pub(super) fn default_icmp_burst() -> u32 {
    50
}
