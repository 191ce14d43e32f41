//! The file's schema: one struct per table (`[agent]`, `[dataplane]`, `[[interface]]`,
//! `[[vip]]` with its `[[vip.backend]]`s, `[bgp]`, `[sync]` with its `[[sync.peer]]`s).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::checks::HealthOverride;
use super::defaults::{
    DEFAULT_API_MAX_CONNECTIONS, DEFAULT_API_SOCKET, DEFAULT_METRICS_MAX_CONNECTIONS,
    DEFAULT_PIN_DIR, default_changes_max, default_changes_rate, default_flow_cache_slots,
    default_flow_queue, default_gue_port, default_icmp_burst, default_icmp_rate,
    default_max_backends, default_max_clock_jump, default_max_flows, default_max_vips,
    default_refresh_secs, default_ring_size, default_startup_wait_secs,
    default_sync_max_connections, default_tcp_closing, default_tcp_idle, default_udp_idle, yes,
};
use super::flow_mode::FlowSync;
use crate::state::BackendState;

/// `[sync]`: see docs/sync.md.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// This load balancer's name in the fleet: unique, 1-64 of `A-Za-z0-9._-`.
    pub node: String,
    /// Where peers' links arrive (TCP).
    pub listen: SocketAddr,
    /// The fleet's pre-shared key: 64+ hex digits in a file only root can read.
    pub key_file: PathBuf,
    /// The replicated state, rewritten on every change and read at start, so a restarted
    /// agent resumes from what the fleet last agreed rather than from this file's [[vip]]s.
    pub state_file: PathBuf,
    /// Which flows to share with peers: `all`, `changes` (only those a change of the tables
    /// moves) or `off` (only the desired state is replicated). `true`/`false` read as all/off.
    #[serde(default)]
    pub flows: FlowSync,
    /// With `flows = "changes"`: flows per second sent to each peer after a change, at most.
    #[serde(default = "default_changes_rate")]
    pub changes_rate: u32,
    /// With `flows = "changes"`: flows one change sends at most (the rest are left to the
    /// backends' second chance, and counted).
    #[serde(default = "default_changes_max")]
    pub changes_max: u32,
    /// Every this many seconds, re-send the flows active since the last time, so peers'
    /// copies of long-lived flows do not idle out: keep it well under
    /// `dataplane.tcp_idle_timeout_secs` (the copies' timeout).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Flow batches queued per peer before new ones are dropped (and counted).
    #[serde(default = "default_flow_queue")]
    pub flow_queue: usize,
    /// Received flow batches queued for installation before new ones are dropped.
    #[serde(default = "default_flow_queue")]
    pub import_queue: usize,
    /// At start, VIPs are announced only once every peer has sent its state and flows, or
    /// after this many seconds (a peer that is down must not keep this node out).
    #[serde(default = "default_startup_wait_secs")]
    pub startup_wait_secs: u64,
    /// A peer's state whose clock is more than this above ours is refused (docs/sync.md).
    #[serde(default = "default_max_clock_jump")]
    pub max_clock_jump: u64,
    /// Concurrent connections still in their handshake (not yet authenticated); more are
    /// closed at once. Authenticated peer links do not count (docs/operating.md).
    #[serde(default = "default_sync_max_connections")]
    pub max_connections: usize,
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// The peer's `[sync] listen` address.
    pub address: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// The file bird.conf includes; the agent owns it and writes the VIP routes there.
    pub routes_file: PathBuf,
    /// The TUN interface the agent holds while it runs; every VIP route goes through it, so
    /// BIRD withdraws them all when the agent ends, however it ends (docs/bgp.md).
    #[serde(default = "default_alive_iface")]
    pub alive_iface: String,
}

fn default_alive_iface() -> String {
    crate::bgp::DEFAULT_ALIVE_IFACE.to_string()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The control API's unix socket (root only).
    pub api_socket: PathBuf,
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Prometheus `/metrics` listen address; absent = no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Seconds between next-hop MAC lookups for interfaces configured with `gateway`.
    pub neighbour_refresh_secs: u64,
    /// Concurrent connections to `/metrics`; more are closed at once (docs/operating.md).
    pub metrics_max_connections: usize,
    /// Concurrent connections to the control API socket; more are closed at once.
    pub api_max_connections: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            api_socket: DEFAULT_API_SOCKET.into(),
            pin_dir: DEFAULT_PIN_DIR.into(),
            metrics: None,
            neighbour_refresh_secs: 10,
            metrics_max_connections: DEFAULT_METRICS_MAX_CONNECTIONS,
            api_max_connections: DEFAULT_API_MAX_CONNECTIONS,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// This load balancer's IPv6 address: the outer source of every tunnelled packet.
    pub tunnel_source: Ipv6Addr,
    /// Fleet-wide flow hash seed; every load balancer of the fleet must use the same one.
    pub seed: u64,
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    #[serde(default = "default_max_vips")]
    pub max_vips: u32,
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout_secs: u64,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    #[serde(default = "default_tcp_closing")]
    pub tcp_closing_timeout_secs: u64,
    /// ICMP the XDP program generates (echo replies, "too big"), per second per CPU; 0: no
    /// limit. At most 65535.
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate: u32,
    /// How many such messages one CPU may send at once after a quiet spell (1 to 65535).
    #[serde(default = "default_icmp_burst")]
    pub icmp_burst: u32,
    /// The new-flow gate: new connection entries per second per CPU (0: no gate, the
    /// default). Above it new flows are forwarded by Maglev without an entry, so a SYN flood
    /// cannot evict established flows from the connection table (docs/dataplane.md).
    #[serde(default)]
    pub new_flow_rate: u32,
    /// How many entries one CPU may create at once above the rate (0: as many as the rate).
    #[serde(default)]
    pub new_flow_burst: u32,
    /// Second chance (docs/second-chance.md): how long a Maglev slot remembers the backend it
    /// held before a change, in seconds; 0 turns second chance off. Default: the TCP idle
    /// timeout, the longest an idle connection keeps its entry.
    #[serde(default)]
    pub second_chance_secs: Option<u64>,
    /// The per-CPU flow caches in front of the connection tables (docs/dataplane.md, "The flow
    /// cache"): on by default; off, every established packet reads the table.
    #[serde(default = "yes")]
    pub flow_cache: bool,
    /// Flow cache slots per CPU and family (a power of two, 256 to 1,048,576): 120 bytes per
    /// slot and CPU for both families together. Fixed at load; a change needs `lb detach`.
    #[serde(default = "default_flow_cache_slots")]
    pub flow_cache_slots: u32,
}

impl DataplaneConfig {
    /// The second-chance window in ms (0: off).
    pub fn second_chance_ms(&self) -> u64 {
        self.second_chance_secs
            .unwrap_or(self.tcp_idle_timeout_secs)
            .saturating_mul(1000)
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic with a warning.
    #[default]
    Driver,
    Generic,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    #[serde(default)]
    pub mode: AttachMode,
    /// The next hop's MAC; or leave it out and give `gateway`.
    pub next_hop_mac: Option<String>,
    /// The next hop's IP address, resolved to a MAC from the kernel's neighbour table.
    pub gateway: Option<IpAddr>,
    /// The largest IP packet (tunnel header included) that may leave this NIC towards the
    /// backends. Default: the NIC's MTU. A client packet that would exceed it once
    /// encapsulated is answered with ICMP "too big" (docs/dataplane.md).
    pub mtu: Option<u32>,
}

/// The smallest egress MTU accepted: an IPv6 minimum-MTU packet (1280) plus GUE (48).
pub const MIN_EGRESS_MTU: u32 = 1328;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub gue: bool,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub health: HealthOverride,
    /// Answer ICMP echo requests (ping) to this VIP's address. ICMP has no ports, so the
    /// switch is per address: `false` on any service of an address turns echo off for it.
    #[serde(default = "yes")]
    pub icmp_echo: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: String,
    #[serde(default = "crate::state::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: BackendState,
}
