//! The metrics endpoint (`agent.metrics` in the config): Prometheus text exposition of the
//! agent's counters on `GET /metrics` (the node's own state in `node_metrics`), and the live
//! status page on `GET /` and `GET /status.json` (`status_page`).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::actor::Command;
use super::api_server::ask;
use super::node_metrics::render_node;
use super::status_page::{self, SharedHistory};
use super::sync_metrics::render_sync;
use super::text_format::{by_prefix, escape, family, relabel};
use crate::api::{BackendInfo, Stats};
use crate::http::{self, Response};
use crate::listen::{self, Gate, Listener};
use crate::state::Vip;

/// Serves `/metrics`, the status page (`/`) and its data (`/status.json`) to at most
/// `max_connections` clients at once (a scraper needs one).
pub(super) async fn serve_metrics(
    listener: tokio::net::TcpListener,
    tx: mpsc::Sender<Command>,
    max_connections: usize,
    pin_dir: PathBuf,
) {
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let history = SharedHistory::default();
    tokio::spawn(status_page::sample(tx.clone(), history.clone(), pin_dir));
    let mut gate = Gate::new(Listener::Metrics, max_connections);
    loop {
        let accepted = listener.accept().await;
        let Some(((mut stream, _), slot)) = gate.admit(accepted).await else {
            continue;
        };
        let tx = tx.clone();
        let history = history.clone();
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
                    exposition(&tx, &history, started_unix).await
                }
                Ok(req) if req.method == "GET" && req.path == "/" => Response::text(
                    200,
                    "text/html; charset=utf-8",
                    status_page::PAGE.to_string(),
                ),
                Ok(req) if req.method == "GET" && req.path == "/status.json" => {
                    match status_page::json(&tx, &history).await {
                        Ok(page) => Response::json(200, &page),
                        Err(e) => Response::error(500, format!("{e:#}")),
                    }
                }
                Ok(req) => Response::error(
                    404,
                    format!(
                        "only GET /metrics, / and /status.json here, not {} {}",
                        req.method, req.path
                    ),
                ),
            };
            let _ = http::write_response(&mut stream, &resp).await;
        });
    }
}

/// The Prometheus text for one scrape.
async fn exposition(
    tx: &mpsc::Sender<Command>,
    history: &SharedHistory,
    started_unix: u64,
) -> Response {
    let stats = ask(tx, Command::Stats).await;
    let status = ask(tx, Command::Status).await;
    // No flow counts from a walk here: the sampler counts them every few seconds.
    let backends = ask(tx, |r| Command::Backends(None, r))
        .await
        .map(|rows| rows.into_iter().map(|(b, _)| b).collect::<Vec<_>>());
    match (stats, status, backends) {
        (Ok(s), Ok(st), Ok(b)) => {
            let mut text = render(&s, &b);
            render_process(&mut text);
            let live = history.lock().expect("history lock").live_flows();
            render_node(&mut text, &st, &s, started_unix, live);
            Response::text(200, "text/plain; version=0.0.4", text)
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Response::error(500, format!("{e:#}")),
    }
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
        "Connection-table lookups, by result (hit, miss_syn, miss_non_syn, miss_udp, stale_backend, expired; insert_gated: a miss over the new-flow gate, forwarded without an entry; cache_hit: answered by the CPU's flow cache without a table lookup).",
        by_prefix(&stats.counters, "lru_", "result").chain(relabel(
            &stats.counters,
            "result",
            &[("flow_cache_hit", "cache_hit")],
        )),
    );
    family(
        &mut o,
        "lb_second_chance_total",
        "counter",
        "Second chance: packets sent with the slot's previous backend in a routing header, flows paired with one, and SYNs that wrote their connection entry (in a slot that changed within the window, or with second chance off; other SYNs write none).",
        relabel(
            &stats.counters,
            "event",
            &[
                ("tx_second_chance", "tx"),
                ("second_chance_paired", "paired"),
                ("syn_pinned", "syn_pinned"),
            ],
        ),
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
        "lb_egress_packets_total",
        "counter",
        "Encapsulated packets sent by the route's NIC, by interface and action (tx: back out of the NIC they came in on; redirect: out of another NIC). Static next hops are counted in lb_tx_total only; unresolved next hops in lb_drops_total{reason=\"no_next_hop\"}.",
        stats.egress.iter().flat_map(|(nic, tx, redirect)| {
            [tx, redirect].map(|c| {
                (
                    format!("interface=\"{}\",action=\"{}\"", escape(nic), c.name),
                    c.packets,
                )
            })
        }),
    );
    family(
        &mut o,
        "lb_table_version",
        "gauge",
        "Bumped by every change the agent wrote to the dataplane.",
        [(String::new(), stats.table_version)],
    );
    if let Some(y) = &stats.sync {
        render_sync(&mut o, y);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CounterInfo, SyncStatus};

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
