//! The metrics endpoint: Prometheus text exposition of the agent's counters on
//! `GET /metrics` (`agent.metrics` in the config).

use std::fmt::Write;

use tokio::sync::mpsc;

use super::actor::Command;
use super::api_server::ask;
use crate::api::{BackendInfo, CounterInfo, PeerStatus, Stats, SyncStatus};
use crate::http::{self, Response};
use crate::listen::{self, Gate, Listener};
use crate::state::Vip;

/// Serves `/metrics` to at most `max_connections` clients at once (a scraper needs one).
pub(super) async fn serve_metrics(
    listener: tokio::net::TcpListener,
    tx: mpsc::Sender<Command>,
    max_connections: usize,
) {
    let mut gate = Gate::new(Listener::Metrics, max_connections);
    loop {
        let accepted = listener.accept().await;
        let Some(((mut stream, _), slot)) = gate.admit(accepted).await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // No body: a scrape is a GET.
            let resp = match http::read_request(&mut stream, 0).await {
                Err(http::HttpError(s, m)) => {
                    if s == 408 {
                        listen::refused(Listener::Metrics, listen::Reason::Deadline);
                    }
                    Response::error(s, m)
                }
                Ok(req) if req.method == "GET" && req.path == "/metrics" => {
                    let stats = ask(&tx, Command::Stats).await;
                    // No flow counts here: walking the connection table on every scrape costs
                    // too much; `lb backend list` has them.
                    let backends = ask(&tx, |r| Command::Backends(None, r))
                        .await
                        .map(|rows| rows.into_iter().map(|(b, _)| b).collect::<Vec<_>>());
                    match (stats, backends) {
                        (Ok(s), Ok(b)) => {
                            let mut text = render(&s, &b);
                            render_process(&mut text);
                            Response::text(200, "text/plain; version=0.0.4", text)
                        }
                        (Err(e), _) | (_, Err(e)) => Response::error(500, format!("{e:#}")),
                    }
                }
                Ok(req) => Response::error(
                    404,
                    format!("only GET /metrics here, not {} {}", req.method, req.path),
                ),
            };
            let _ = http::write_response(&mut stream, &resp).await;
        });
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One metric family: HELP, TYPE, then a sample per (label set, value).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The dataplane counters whose name starts with `prefix`, labelled by the rest of the name.
fn by_prefix<'a>(
    counters: &'a [CounterInfo],
    prefix: &'a str,
    label: &'a str,
) -> impl Iterator<Item = (String, u64)> + 'a {
    counters.iter().filter_map(move |c| {
        let rest = c.name.strip_prefix(prefix)?;
        Some((format!("{label}=\"{rest}\""), c.packets))
    })
}

/// The dataplane counters named in `names` (counter, label value), labelled `label`.
fn relabel<'a>(
    counters: &'a [CounterInfo],
    label: &'a str,
    names: &'a [(&str, &str)],
) -> impl Iterator<Item = (String, u64)> + 'a {
    names.iter().filter_map(move |(name, value)| {
        let c = counters.iter().find(|c| c.name == *name)?;
        Some((format!("{label}=\"{value}\""), c.packets))
    })
}

pub fn render(stats: &Stats, backends: &[BackendInfo]) -> String {
    let mut o = String::new();
    let vip = |v: &Vip| format!("vip=\"{}\"", escape(&v.to_string()));
    let backend = |v: &Vip, b: &str| format!("{},backend=\"{b}\"", vip(v));
    family(
        &mut o,
        "lb_vip_packets_total",
        "counter",
        "Packets forwarded per VIP.",
        stats.vips.iter().map(|(v, c)| (vip(v), c.packets)),
    );
    family(
        &mut o,
        "lb_vip_bytes_total",
        "counter",
        "Bytes (client frames) forwarded per VIP.",
        stats.vips.iter().map(|(v, c)| (vip(v), c.bytes)),
    );
    family(
        &mut o,
        "lb_backend_packets_total",
        "counter",
        "Packets tunnelled per backend.",
        stats
            .backends
            .iter()
            .map(|(v, b, c)| (backend(v, b), c.packets)),
    );
    family(
        &mut o,
        "lb_backend_bytes_total",
        "counter",
        "Bytes tunnelled per backend (client frames).",
        stats
            .backends
            .iter()
            .map(|(v, b, c)| (backend(v, b), c.bytes)),
    );
    family(
        &mut o,
        "lb_backend_weight",
        "gauge",
        "Configured weight per backend.",
        backends.iter().map(|b| {
            (
                format!("{},state=\"{}\"", backend(&b.vip, &b.backend), b.state),
                b.weight as u64,
            )
        }),
    );
    family(
        &mut o,
        "lb_backend_slots",
        "gauge",
        "Maglev slots per backend (its share of new flows).",
        backends
            .iter()
            .map(|b| (backend(&b.vip, &b.backend), b.slots as u64)),
    );
    family(
        &mut o,
        "lb_backend_healthy",
        "gauge",
        "1 while a backend's health check passes (or has not run yet), 0 when it is down; checked backends only.",
        backends
            .iter()
            .filter(|b| b.health != "unchecked")
            .map(|b| (backend(&b.vip, &b.backend), u64::from(b.health != "down"))),
    );
    family(
        &mut o,
        "lb_drops_total",
        "counter",
        "Packets dropped, by reason.",
        by_prefix(&stats.counters, "drop_", "reason"),
    );
    family(
        &mut o,
        "lb_passed_total",
        "counter",
        "Packets handed to the kernel, by reason.",
        by_prefix(&stats.counters, "pass_", "reason"),
    );
    family(
        &mut o,
        "lb_tx_total",
        "counter",
        "Packets encapsulated and transmitted, by encapsulation.",
        relabel(
            &stats.counters,
            "encap",
            &[("tx", "ipip6"), ("tx_gue", "gue")],
        ),
    );
    family(
        &mut o,
        "lb_conntrack_lookups_total",
        "counter",
        "Connection-table lookups, by result (hit, miss_syn, miss_non_syn, miss_udp, stale_backend, expired; insert_gated: a miss over the new-flow gate, forwarded without an entry).",
        by_prefix(&stats.counters, "lru_", "result"),
    );
    family(
        &mut o,
        "lb_icmp_total",
        "counter",
        "ICMP the XDP program handled itself: echo replies sent, errors forwarded to the flow's backend, too-big replies sent (drops are in lb_drops_total).",
        relabel(
            &stats.counters,
            "action",
            &[
                ("icmp_echo_reply", "echo_reply"),
                ("icmp_error_forwarded", "error_forwarded"),
                ("icmp_too_big_sent", "too_big_sent"),
            ],
        ),
    );
    family(
        &mut o,
        "lb_flow_events_total",
        "counter",
        "New flows the XDP program exported for peer sync, and those lost to a full ring buffer.",
        relabel(
            &stats.counters,
            "result",
            &[("flow_events", "exported"), ("flow_events_lost", "lost")],
        ),
    );
    family(
        &mut o,
        "lb_health_encap_packets_total",
        "counter",
        "Health-check packets the TC encapsulation program handled, by result.",
        stats
            .health_encap
            .iter()
            .map(|c| (format!("result=\"{}\"", c.name), c.packets)),
    );
    family(
        &mut o,
        "lb_table_version",
        "gauge",
        "Bumped by every change the agent wrote to the dataplane.",
        [(String::new(), stats.table_version)],
    );
    if let Some(y) = &stats.sync {
        sync(&mut o, y);
    }
    o
}

/// What the process counts itself, outside the actor: the listeners and the health checks
/// that could not run here.
pub fn render_process(o: &mut String) {
    let all: Vec<(&str, listen::Snapshot)> = Listener::ALL
        .iter()
        .map(|l| (l.name(), listen::snapshot(*l)))
        .collect();
    family(
        o,
        "lb_listener_connections",
        "gauge",
        "Connections being served, per listener (sync: handshakes not yet authenticated).",
        all.iter()
            .map(|(l, s)| (format!("listener=\"{l}\""), s.open)),
    );
    family(
        o,
        "lb_listener_refused_total",
        "counter",
        "Connections closed unserved, per listener and reason (cap: over max_connections; deadline: handshake or request not complete in time).",
        all.iter().flat_map(|(l, s)| {
            s.refused
                .iter()
                .map(move |(r, n)| (format!("listener=\"{l}\",reason=\"{r}\""), *n))
        }),
    );
    family(
        o,
        "lb_listener_accept_errors_total",
        "counter",
        "Failed accepts per listener (out of descriptors, say), each followed by a backoff.",
        all.iter()
            .map(|(l, s)| (format!("listener=\"{l}\""), s.accept_errors)),
    );
    family(
        o,
        "lb_health_checks_local_errors_total",
        "counter",
        "Health checks that could not run for a local reason (no descriptor, memory or port): their backend's state was left as it was.",
        [(String::new(), crate::health::local_errors())],
    );
}

fn sync(o: &mut String, y: &SyncStatus) {
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
        ],
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_health_encap_counters_and_unknown_flow_ids() {
        let stats = Stats {
            health_encap: vec![CounterInfo {
                name: "encapsulated".into(),
                packets: 4,
                bytes: 0,
            }],
            sync: Some(SyncStatus {
                flows_unknown_id: 3,
                held_back: vec!["192.0.2.9:80/tcp".into(), "192.0.2.8:80/tcp".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let text = render(&stats, &[]);
        assert!(
            text.contains("lb_health_encap_packets_total{result=\"encapsulated\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("lb_sync_flows_dropped_total{reason=\"unknown_backend_id\"} 3"),
            "{text}"
        );
        assert!(text.contains("\nlb_sync_held_back_vips 2\n"), "{text}");
    }
}
