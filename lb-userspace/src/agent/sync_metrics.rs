//! Peer sync in `/metrics` (with `[sync]`): the links, state versions and digest matches, flows
//! sent, received and dropped, refusals, held-back VIPs, tombstones and the state file.

use std::fmt::Write;

use super::text_format::{escape, family};
use crate::api::{PeerStatus, SyncStatus};

/// Peer sync's families: links, versions, digests, flows, refusals, the state file.
pub fn render_sync(o: &mut String, y: &SyncStatus) {
    let peer = |p: &PeerStatus| format!("peer=\"{}\"", escape(&p.name));
    family(
        o,
        "lb_sync_state_version",
        "gauge",
        "Version of the replicated desired state (its highest Lamport clock).",
        [(String::new(), y.version)],
    );
    family(
        o,
        "lb_sync_held_back_vips",
        "gauge",
        "VIPs of the replicated state not served here: past dataplane.max_vips, the newest are held back.",
        [(String::new(), y.held_back.len() as u64)],
    );
    family(
        o,
        "lb_sync_tombstones",
        "gauge",
        "Removed VIPs and backends held until every peer has seen them.",
        [(String::new(), y.tombstones)],
    );
    family(
        o,
        "lb_sync_tombstones_collected_total",
        "counter",
        "Tombstones dropped once every peer had seen them.",
        [(String::new(), y.tombstones_collected)],
    );
    family(
        o,
        "lb_sync_horizon",
        "gauge",
        "Every change stamped at or below this clock has reached this agent; tombstones under it are collected.",
        [(String::new(), y.horizon)],
    );
    family(
        o,
        "lb_sync_state_messages_sent_total",
        "counter",
        "Replicated-state messages sent to peers: a whole state when a link comes up, a delta per change.",
        [
            ("kind=\"full\"".to_string(), y.states_sent),
            ("kind=\"delta\"".to_string(), y.deltas_sent),
        ],
    );
    family(
        o,
        "lb_sync_state_bytes_sent_total",
        "counter",
        "Bytes of those messages (bodies), by kind.",
        [
            ("kind=\"full\"".to_string(), y.state_bytes_sent),
            ("kind=\"delta\"".to_string(), y.delta_bytes_sent),
        ],
    );
    family(
        o,
        "lb_sync_state_parts_sent_total",
        "counter",
        "Extra frames for state messages longer than one 1 MiB part.",
        [(String::new(), y.state_parts_sent)],
    );
    family(
        o,
        "lb_sync_peer_up",
        "gauge",
        "1 while both links with the peer are up.",
        y.peers
            .iter()
            .map(|p| (peer(p), u64::from(p.outbound && p.inbound))),
    );
    family(
        o,
        "lb_sync_peer_connects_total",
        "counter",
        "Links established with the peer since start, by direction (more than one: a link flapped).",
        y.peers.iter().flat_map(|p| {
            [
                (format!("{},dir=\"out\"", peer(p)), p.outbound_connects),
                (format!("{},dir=\"in\"", peer(p)), p.inbound_connects),
            ]
        }),
    );
    family(
        o,
        "lb_sync_peer_state_version",
        "gauge",
        "The peer's last reported state version.",
        y.peers
            .iter()
            .filter_map(|p| Some((peer(p), p.summary.as_ref()?.version))),
    );
    family(
        o,
        "lb_sync_peer_state_match",
        "gauge",
        "1 while the peer's desired-state digest equals ours.",
        y.peers.iter().map(|p| (peer(p), u64::from(p.state_match))),
    );
    family(
        o,
        "lb_sync_peer_table_match",
        "gauge",
        "1 while the peer's Maglev table digest equals ours.",
        y.peers.iter().map(|p| (peer(p), u64::from(p.table_match))),
    );
    family(
        o,
        "lb_sync_flows_sent_total",
        "counter",
        "Flows sent to the peer (new flows and refreshes).",
        y.peers.iter().map(|p| (peer(p), p.flows_sent)),
    );
    family(
        o,
        "lb_sync_flows_received_total",
        "counter",
        "Flows received from the peer.",
        y.peers.iter().map(|p| (peer(p), p.flows_received)),
    );
    family(
        o,
        "lb_sync_bytes_sent_total",
        "counter",
        "Bytes sent on the link to the peer, framing included.",
        y.peers.iter().map(|p| (peer(p), p.bytes_sent)),
    );
    family(
        o,
        "lb_sync_flows_total",
        "counter",
        "Flows exported from and imported into this load balancer's connection table.",
        [
            ("dir=\"exported\"".to_string(), y.flows_exported),
            ("dir=\"imported\"".to_string(), y.flows_imported),
        ],
    );
    family(
        o,
        "lb_sync_flows_dropped_total",
        "counter",
        "Flows not shared or not installed, by reason (overload policy: drop and count; unknown_backend_id: a new flow whose backend id no longer names a backend here, not exported).",
        [
            (
                "reason=\"send_queue_full\"".to_string(),
                y.flows_dropped_queue,
            ),
            (
                "reason=\"import_queue_full\"".to_string(),
                y.flows_dropped_import,
            ),
            (
                "reason=\"unknown_vip_or_backend\"".to_string(),
                y.flows_untranslated,
            ),
            (
                "reason=\"unknown_backend_id\"".to_string(),
                y.flows_unknown_id,
            ),
            (
                "reason=\"over_changes_max\"".to_string(),
                y.flows_moved_over,
            ),
        ],
    );
    family(
        o,
        "lb_sync_flows_moved_total",
        "counter",
        "flows = \"changes\": live flows queued to peers because a change of the tables moved their slot.",
        [(String::new(), y.flows_moved)],
    );
    family(
        o,
        "lb_sync_flow_walks_total",
        "counter",
        "Walks of the connection table for the flow refresh (one per period and per coalesced link connect, shared by every peer).",
        [(String::new(), y.flow_walks)],
    );
    for (name, help, us) in [
        (
            "lb_sync_flow_walk_seconds",
            "How long the last walk of the connection table took (batched reads, on the walker's own thread).",
            y.flow_walk_us,
        ),
        (
            "lb_sync_flow_walk_max_seconds",
            "The longest walk of the connection table since start.",
            y.flow_walk_max_us,
        ),
    ] {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
        let _ = writeln!(o, "{name} {}.{:06}", us / 1_000_000, us % 1_000_000);
    }
    family(
        o,
        "lb_sync_flow_walk_flows",
        "gauge",
        "Flows the last walk found to send (this load balancer's own, live, TCP).",
        [(String::new(), y.flow_walk_flows)],
    );
    family(
        o,
        "lb_sync_refreshes_skipped_total",
        "counter",
        "Periodic flow refreshes not queued for a peer still sending the previous one (bounded memory; the next refresh carries the flows).",
        [(String::new(), y.refreshes_skipped)],
    );
    family(
        o,
        "lb_sync_refused_total",
        "counter",
        "Peer links refused, by reason.",
        y.refused
            .iter()
            .map(|(r, n)| (format!("reason=\"{r}\""), *n)),
    );
    family(
        o,
        "lb_state_file_recovered_total",
        "counter",
        "Unusable state files (truncated, empty, garbage) moved aside at start.",
        [(String::new(), y.state_file.recovered)],
    );
    family(
        o,
        "lb_state_persist_errors_total",
        "counter",
        "Failed writes of the state file (retried with the next change).",
        [(String::new(), y.state_file.persist_errors)],
    );
}
