//! The control API's messages, shared by the agent (server) and the CLI (client). HTTP + JSON
//! over the agent's unix socket:
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /v1/status | | `Status` |
//! | GET | /v1/vips | | `[VipInfo]` |
//! | GET | /v1/backends[?vip=V] | | `[BackendInfo]` (with live flow counts) |
//! | GET | /v1/stats | | `Stats` |
//! | POST | /v1/change | `state::Change` | `ChangeReply` |
//! | POST | /v1/reload | `ReloadRequest` (optional) | `ReloadReply` |
//! | POST | /v1/node/drain, /v1/node/undrain | | `NodeReply` |
//! | GET | /v1/peers | | `SyncStatus` (404 without `[sync]`) |
//!
//! A change's body is `state::Change` itself, e.g. `{"op": "set_weight", "vip":
//! "192.0.2.10:80/tcp", "backend": "2001:db8::1", "weight": 300}`; the CLI builds it from
//! arguments it has already parsed, and the agent validates it again (any client may call).
//!
//! Errors answer 4xx/5xx with `{"error": "..."}` naming the problem: 400 for a malformed or
//! invalid request, 404 for an unknown endpoint or a missing VIP or backend, 409 for one that
//! exists already.

use serde::{Deserialize, Serialize};

use crate::reconcile::ApplyReport;
use crate::state::{BackendState, Vip};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChangeReply {
    pub change: String,
    pub report: ApplyReport,
    pub table_version: u64,
}

/// `POST /v1/reload`'s body. An empty body is the default: apply; with peer sync, the file's
/// node-local settings only (docs/sync.md, "Reloading a fleet member").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadRequest {
    /// Change nothing; answer what the reload would change.
    pub dry_run: bool,
    /// With peer sync: also turn the file's differences from the fleet's state into changes
    /// the whole fleet applies.
    pub fleet: bool,
    /// Refuse (409) unless the table version is still this one (the one a dry run showed), so
    /// a plan is applied only to the state it was made against.
    pub expect_version: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Nothing was changed: the lists say what a reload would do.
    pub dry_run: bool,
    /// Node-local settings the file changes, as `section.key: old -> new`.
    pub settings: Vec<String>,
    /// Changes to the desired state, applied (with peer sync: shared with the fleet).
    pub changes: Vec<String>,
    /// With peer sync and without `fleet`: where the file differs from the fleet's state. Not
    /// applied: the fleet's state rules, and a stale file must not undo a change everywhere.
    pub fleet_differences: Vec<String>,
    pub report: ApplyReport,
    pub table_version: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub attachment: String,
    pub next_hop_mac: String,
    /// Largest outer IP packet it sends; bigger client packets get ICMP "too big".
    pub mtu: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: String,
    pub pin_dir: String,
    pub adopted: bool,
    pub interfaces: Vec<InterfaceStatus>,
    pub tunnel_source: String,
    pub ring_size: u32,
    pub table_version: u64,
    pub vips: usize,
    pub backends: usize,
    pub max_flows: u32,
    /// Runtime changes the config file does not have (a reload or restart reverts them).
    pub drift: Vec<String>,
    pub metrics: Option<String>,
    /// `lb node drain` is in effect: every VIP withdrawn.
    pub node_drained: bool,
    /// Why the dataplane cannot forward (every VIP withdrawn), if so.
    pub dataplane_fault: Option<String>,
    /// VIP addresses this node should announce now.
    pub announcing: Vec<String>,
    /// BIRD, when the agent drives it.
    pub bgp: Option<BgpStatus>,
    /// Peer sync, when configured.
    pub sync: Option<SyncStatus>,
    /// The health-check encapsulation program's packet counts (`HEALTH_STATS`).
    #[serde(default)]
    pub health_encap: Vec<CounterInfo>,
    /// Second chance (docs/second-chance.md): the window (0: off) and the Maglev slots whose
    /// previous backend still counts.
    #[serde(default)]
    pub second_chance_secs: u64,
    #[serde(default)]
    pub second_chance_slots: u64,
    /// Each backend's way out (its route's NICs and next hops, or the static next hop).
    #[serde(default)]
    pub egress: Vec<EgressInfo>,
}

/// A backend address's way out, for `lb status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressInfo {
    pub backend: String,
    /// `route` (next hops from the kernel) or `static` (the ingress NIC's next hop).
    pub source: String,
    /// The route's paths (ECMP: several), empty for `static` or when there is no route.
    pub paths: Vec<EgressPathInfo>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EgressPathInfo {
    pub interface: String,
    /// The neighbour packets go to: the route's gateway, or the backend on a connected route.
    pub next_hop: String,
    /// Its MAC, or `unresolved` (packets dropped, `drop_no_next_hop`).
    pub mac: String,
}

/// This agent's place in the fleet, and what it knows of each peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncStatus {
    pub node: String,
    /// The replicated state's version (the highest Lamport clock in it).
    pub version: u64,
    /// Digest of the desired state (the same on every agent that has seen the same changes).
    pub state_digest: String,
    /// Digest of the Maglev tables this agent computes (health included).
    pub table_digest: String,
    /// Whether flows are shared with peers (`flows` is `all` or `changes`).
    pub flows: bool,
    /// `[sync] flows`: all, changes or off.
    #[serde(default)]
    pub flow_mode: String,
    /// `changes`: live flows sent because a change moved their slot, and those left out past
    /// `changes_max`.
    #[serde(default)]
    pub flows_moved: u64,
    #[serde(default)]
    pub flows_moved_over: u64,
    /// Peers this agent, just started, still waits for before it announces its VIPs.
    pub waiting_for: Vec<String>,
    /// VIPs of the fleet's state this agent does not serve: past `dataplane.max_vips`, the
    /// newest (by the clock that added them) are held back.
    #[serde(default)]
    pub held_back: Vec<String>,
    pub peers: Vec<PeerStatus>,
    pub flows_exported: u64,
    pub flows_imported: u64,
    /// Flow batches not queued for a slow or absent peer, in flows.
    pub flows_dropped_queue: u64,
    /// Received flows not installed because the import queue was full.
    pub flows_dropped_import: u64,
    /// Received flows for a VIP or backend this agent does not have.
    pub flows_untranslated: u64,
    /// New flows not exported because their backend id no longer names a backend here.
    #[serde(default)]
    pub flows_unknown_id: u64,
    /// Links refused, by reason.
    pub refused: Vec<(String, u64)>,
    /// The flow walker (refreshes of live flows to peers): walks done, the last one's and the
    /// longest one's duration in microseconds, and the flows the last one found.
    #[serde(default)]
    pub flow_walks: u64,
    #[serde(default)]
    pub flow_walk_us: u64,
    #[serde(default)]
    pub flow_walk_max_us: u64,
    #[serde(default)]
    pub flow_walk_flows: u64,
    /// Periodic refreshes not queued for a peer still sending the previous one.
    #[serde(default)]
    pub refreshes_skipped: u64,
    /// The state file: recoveries at start and failed writes (docs/operating.md).
    #[serde(default)]
    pub state_file: StateFileStatus,
    /// Removed VIPs and backends held until every peer has seen them (docs/sync.md).
    #[serde(default)]
    pub tombstones: u64,
    /// Tombstones collected since the agent started.
    #[serde(default)]
    pub tombstones_collected: u64,
    /// Every change stamped at or below this clock has reached this agent.
    #[serde(default)]
    pub horizon: u64,
    /// Whole states sent to peers (one per link that comes up), and their bytes.
    #[serde(default)]
    pub states_sent: u64,
    #[serde(default)]
    pub state_bytes_sent: u64,
    /// Deltas sent (what changed, one per change a link carries), and their bytes.
    #[serde(default)]
    pub deltas_sent: u64,
    #[serde(default)]
    pub delta_bytes_sent: u64,
    /// Extra frames for states or deltas longer than one part (1 MiB).
    #[serde(default)]
    pub state_parts_sent: u64,
}

/// The replicated state's file, as this agent found and keeps it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StateFileStatus {
    pub path: String,
    /// Unusable state files this agent started without (0 or 1: counted at start).
    pub recovered: u64,
    /// Why the file was unusable.
    pub recovered_reason: Option<String>,
    /// Where the unusable file was moved (`<file>.corrupt-<unix time>`).
    pub moved_to: Option<String>,
    /// Failed writes since the agent started (each retried with the next change).
    pub persist_errors: u64,
    /// The last write's error; None once a write succeeds.
    pub last_error: Option<String>,
}

/// What this agent knows of one peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    /// Our link to it is up (handshake done).
    pub outbound: bool,
    /// Why our link to it is not up, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_error: Option<String>,
    /// Its link to us is up.
    pub inbound: bool,
    /// How many of its links to us are up (a reconnect may overlap the old link's end).
    #[serde(skip)]
    pub inbound_links: u32,
    /// Milliseconds since its last message (None: never heard from).
    pub last_heard_ms: Option<u64>,
    /// Its last summary.
    pub summary: Option<PeerSummary>,
    pub state_match: bool,
    pub table_match: bool,
    pub flows_sent: u64,
    pub flows_received: u64,
    pub flows_dropped: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Links established with the peer since start, ours to it and its to us: more than one
    /// each means a link went down and came back (a flap).
    #[serde(default)]
    pub outbound_connects: u64,
    #[serde(default)]
    pub inbound_connects: u64,
}

/// What a peer last said of its state (its sync summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSummary {
    pub version: u64,
    pub state_digest: String,
    pub table_digest: String,
    pub flows: bool,
}

/// The BGP task's last exchange with BIRD.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BgpStatus {
    /// What BIRD was last told to announce.
    pub announced: Vec<String>,
    /// BIRD's error, if the last attempt failed (retried).
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReply {
    pub drained: bool,
    pub announcing: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VipInfo {
    pub vip: Vip,
    pub id: u32,
    pub gue: bool,
    pub active: usize,
    pub draining: usize,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendInfo {
    pub vip: Vip,
    pub backend: String,
    pub id: u32,
    pub weight: u32,
    pub state: BackendState,
    /// Maglev slots: its share of new flows.
    pub slots: u32,
    /// Live connection-table entries pinned to it.
    pub flows: u64,
    /// Its health check: up, down, unknown (not checked yet) or unchecked.
    pub health: String,
    /// The last check's result, when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub health_detail: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CounterInfo {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// CLOCK_MONOTONIC nanoseconds when the counters were read (for rates).
    pub time_ns: u64,
    pub table_version: u64,
    pub counters: Vec<CounterInfo>,
    pub vips: Vec<(Vip, CounterInfo)>,
    pub backends: Vec<(Vip, String, CounterInfo)>,
    pub sync: Option<SyncStatus>,
    /// The health-check encapsulation program's packet counts (`HEALTH_STATS`).
    #[serde(default)]
    pub health_encap: Vec<CounterInfo>,
    /// Per NIC: packets the egress step sent with XDP_TX and with XDP_REDIRECT.
    #[serde(default)]
    pub egress: Vec<(String, CounterInfo, CounterInfo)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
