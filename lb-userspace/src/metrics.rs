//! Prometheus text exposition of the agent's counters.

use std::fmt::Write;

use crate::api::{BackendInfo, Stats};

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub fn render(stats: &Stats, backends: &[BackendInfo]) -> String {
    let mut o = String::new();
    family(
        &mut o,
        "lb_vip_packets_total",
        "counter",
        "Packets forwarded per VIP.",
    );
    for (vip, c) in &stats.vips {
        let _ = writeln!(
            o,
            "lb_vip_packets_total{{vip=\"{}\"}} {}",
            escape(&vip.to_string()),
            c.packets
        );
    }
    family(
        &mut o,
        "lb_vip_bytes_total",
        "counter",
        "Bytes (client frames) forwarded per VIP.",
    );
    for (vip, c) in &stats.vips {
        let _ = writeln!(
            o,
            "lb_vip_bytes_total{{vip=\"{}\"}} {}",
            escape(&vip.to_string()),
            c.bytes
        );
    }
    family(
        &mut o,
        "lb_backend_packets_total",
        "counter",
        "Packets tunnelled per backend.",
    );
    for (vip, b, c) in &stats.backends {
        let _ = writeln!(
            o,
            "lb_backend_packets_total{{vip=\"{}\",backend=\"{b}\"}} {}",
            escape(&vip.to_string()),
            c.packets
        );
    }
    family(
        &mut o,
        "lb_backend_bytes_total",
        "counter",
        "Bytes tunnelled per backend (client frames).",
    );
    for (vip, b, c) in &stats.backends {
        let _ = writeln!(
            o,
            "lb_backend_bytes_total{{vip=\"{}\",backend=\"{b}\"}} {}",
            escape(&vip.to_string()),
            c.bytes
        );
    }
    family(
        &mut o,
        "lb_backend_weight",
        "gauge",
        "Configured weight per backend.",
    );
    for b in backends {
        let _ = writeln!(
            o,
            "lb_backend_weight{{vip=\"{}\",backend=\"{}\",state=\"{}\"}} {}",
            escape(&b.vip.to_string()),
            b.backend,
            b.state,
            b.weight
        );
    }
    family(
        &mut o,
        "lb_backend_slots",
        "gauge",
        "Maglev slots per backend (its share of new flows).",
    );
    for b in backends {
        let _ = writeln!(
            o,
            "lb_backend_slots{{vip=\"{}\",backend=\"{}\"}} {}",
            escape(&b.vip.to_string()),
            b.backend,
            b.slots
        );
    }
    family(
        &mut o,
        "lb_drops_total",
        "counter",
        "Packets dropped, by reason.",
    );
    for c in stats
        .counters
        .iter()
        .filter(|c| c.name.starts_with("drop_"))
    {
        let _ = writeln!(
            o,
            "lb_drops_total{{reason=\"{}\"}} {}",
            &c.name[5..],
            c.packets
        );
    }
    family(
        &mut o,
        "lb_passed_total",
        "counter",
        "Packets handed to the kernel, by reason.",
    );
    for c in stats
        .counters
        .iter()
        .filter(|c| c.name.starts_with("pass_"))
    {
        let _ = writeln!(
            o,
            "lb_passed_total{{reason=\"{}\"}} {}",
            &c.name[5..],
            c.packets
        );
    }
    family(
        &mut o,
        "lb_tx_total",
        "counter",
        "Packets encapsulated and transmitted, by encapsulation.",
    );
    for c in stats
        .counters
        .iter()
        .filter(|c| c.name == "tx" || c.name == "tx_gue")
    {
        let encap = if c.name == "tx" { "ipip6" } else { "gue" };
        let _ = writeln!(o, "lb_tx_total{{encap=\"{encap}\"}} {}", c.packets);
    }
    family(
        &mut o,
        "lb_conntrack_lookups_total",
        "counter",
        "Connection-table lookups, by result (hit, miss_syn, miss_non_syn, miss_udp, stale_backend, expired).",
    );
    for c in stats.counters.iter().filter(|c| c.name.starts_with("lru_")) {
        let _ = writeln!(
            o,
            "lb_conntrack_lookups_total{{result=\"{}\"}} {}",
            &c.name[4..],
            c.packets
        );
    }
    family(
        &mut o,
        "lb_table_version",
        "gauge",
        "Bumped by every change the agent wrote to the dataplane.",
    );
    let _ = writeln!(o, "lb_table_version {}", stats.table_version);
    o
}
