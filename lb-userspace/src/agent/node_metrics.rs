//! The node's own state in `/metrics`, for alerts (deploy/prometheus/lb-alerts.yml): which VIPs
//! it announces, whether it is drained or faulted, when the agent started, and how full the
//! connection table is.

use std::net::IpAddr;

use super::text_format::{escape, family};
use crate::api::{Stats, Status};

/// What the node exports beside the counters. `live_flows` is the last count of live
/// connection-table entries (None until the first walk).
pub fn render_node(
    o: &mut String,
    status: &Status,
    stats: &Stats,
    started_unix: u64,
    live_flows: Option<u64>,
) {
    // What BIRD was told when the agent drives it; otherwise what the node would announce.
    let announced: Vec<IpAddr> = status
        .bgp
        .as_ref()
        .map_or(&status.announcing, |b| &b.announced)
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    family(
        o,
        "lb_vip_announced",
        "gauge",
        "1 while the VIP's address is announced through BGP, 0 while it is withdrawn.",
        stats.vips.iter().map(|(v, _)| {
            (
                format!("vip=\"{}\"", escape(&v.to_string())),
                u64::from(announced.contains(&v.addr)),
            )
        }),
    );
    family(
        o,
        "lb_node_drained",
        "gauge",
        "1 while an operator has drained the node (`lb node drain`): every VIP withdrawn on purpose.",
        [(String::new(), u64::from(status.node_drained))],
    );
    family(
        o,
        "lb_dataplane_fault",
        "gauge",
        "1 while the dataplane cannot forward (a NIC gone or down, a failed map write), with the reason; every VIP is withdrawn then.",
        [match &status.dataplane_fault {
            Some(reason) => (format!("reason=\"{}\"", escape(reason)), 1),
            None => (String::new(), 0),
        }],
    );
    family(
        o,
        "lb_agent_start_time_seconds",
        "gauge",
        "When this agent process started, in seconds since the Unix epoch (restarts change it).",
        [(String::new(), started_unix)],
    );
    family(
        o,
        "lb_second_chance_slots",
        "gauge",
        "Maglev slots (all VIPs) that remember a live previous backend: flows they moved get a second chance at it (docs/second-chance.md).",
        [(String::new(), status.second_chance_slots)],
    );
    family(
        o,
        "lb_conntrack_capacity",
        "gauge",
        "Entries the connection table holds (dataplane.max_flows); past it, the least recently used are evicted.",
        [(String::new(), u64::from(status.max_flows))],
    );
    family(
        o,
        "lb_conntrack_entries",
        "gauge",
        "Live connection-table entries (not idled out), counted by a walk every 10 seconds.",
        live_flows.map(|n| (String::new(), n)),
    );
}
