//! Prometheus text exposition of the agent's counters.

use std::fmt::Write;

use crate::api::{BackendInfo, CounterInfo, Stats};

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

pub fn render(stats: &Stats, backends: &[BackendInfo]) -> String {
    let mut o = String::new();
    let vip = |v: &crate::state::Vip| format!("vip=\"{}\"", escape(&v.to_string()));
    let backend = |v: &crate::state::Vip, b: &str| format!("{},backend=\"{b}\"", vip(v));
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
        stats.counters.iter().filter_map(|c| {
            let encap = match c.name.as_str() {
                "tx" => "ipip6",
                "tx_gue" => "gue",
                _ => return None,
            };
            Some((format!("encap=\"{encap}\""), c.packets))
        }),
    );
    family(
        &mut o,
        "lb_conntrack_lookups_total",
        "counter",
        "Connection-table lookups, by result (hit, miss_syn, miss_non_syn, miss_udp, stale_backend, expired).",
        by_prefix(&stats.counters, "lru_", "result"),
    );
    family(
        &mut o,
        "lb_table_version",
        "gauge",
        "Bumped by every change the agent wrote to the dataplane.",
        [(String::new(), stats.table_version)],
    );
    o
}
