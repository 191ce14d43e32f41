//! `cargo xtask bench` checks itself: every scenario must take its intended path (the exact
//! output frame, counters risen by exactly the repeat count) or print FAILED. This runs the
//! bench's per-packet, scale and memory sections with few repetitions and requires every
//! scenario of those sections to be in the table and to have passed those checks, so the bench
//! cannot silently measure the wrong path (or stop measuring one) after a dataplane change.
//! It times nothing. Needs root.

use std::process::Command;

use tests::netns::built_bin;
use tests::require_root;

/// The rows the three sections must produce: (section, measurement). A measurement ending in
/// `*` is a prefix (the rest names the agent's default sizes).
const EXPECTED: &[(&str, &str)] = &[
    ("dataplane", "empty program (XDP_TX), alone"),
    ("dataplane", "empty program, through the harness"),
    ("dataplane", "harness cost (the two rows above)"),
    ("dataplane", "floor: parse + IPv6 encap + XDP_TX"),
    ("dataplane", "TCP SYN, IPv4 VIP: Maglev, no entry"),
    (
        "dataplane",
        "TCP SYN in a changed slot, 250k new flows per run: Maglev + table insert",
    ),
    ("dataplane", "TCP established, IPv4 VIP, 1 flow"),
    ("dataplane", "TCP SYN, IPv4 VIP, 1M distinct flows cycled"),
    (
        "dataplane",
        "TCP first packet after the SYN, 250k new flows per run: table insert",
    ),
    ("dataplane", "TCP established, IPv4 VIP, 1M flows cycled"),
    ("dataplane", "TCP established, IPv6 VIP"),
    ("dataplane", "UDP, IPv4 VIP, established"),
    ("dataplane", "TCP established, IPv4 VIP, GUE"),
    ("dataplane", "not a VIP: XDP_PASS, alone"),
    ("dataplane", "not a VIP: XDP_PASS, through the harness"),
    (
        "dataplane",
        "machine: one dependent load at a random place in 96 MiB (a cold 1M-flow table)",
    ),
    (
        "dataplane",
        "machine: one dependent load at a random place in 16 MiB (the least 1M flows can take)",
    ),
    ("scale", "SYN, 1 VIP, 10 backends"),
    ("scale", "established, 1 VIP, 10 backends"),
    ("scale", "SYN, 100 VIPs, 10 backends"),
    ("scale", "established, 100 VIPs, 10 backends"),
    ("scale", "SYN, 10,000 VIPs, 10 backends"),
    ("scale", "established, 10,000 VIPs, 10 backends"),
    ("scale", "SYN, 1 VIP, 100 backends"),
    ("scale", "established, 1 VIP, 100 backends"),
    ("scale", "SYN, 1 VIP, 1,000 backends"),
    ("scale", "established, 1 VIP, 1,000 backends"),
    ("memory", "maps, agent defaults (*"),
    ("memory", "CONNS4: IPv4 connection table*"),
    ("memory", "CONNS: IPv6 connection table*"),
    ("memory", "RINGS: *"),
    ("memory", "the other * maps together"),
    ("memory", "maps, * flows written: total"),
    ("memory", "maps, agent defaults but *"),
];

/// A table row's cells: section, measurement, median, min–max, unit, ratio, check.
fn cells(line: &str) -> Vec<&str> {
    line.trim_matches('|').split('|').map(str::trim).collect()
}

/// `pattern` with `*` standing for any text.
fn matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn every_bench_scenario_takes_its_intended_path() {
    require_root();
    let out = Command::new(built_bin("lb-bench"))
        .args(["dataplane", "scale", "memory"])
        .env("LB_BENCH_REPEAT", "2000")
        .output()
        .expect("running lb-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lb-bench failed:\n{stdout}\n{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(cells)
        .filter(|c| c.len() == 7 && ["dataplane", "scale", "memory"].contains(&c[0]))
        .collect();
    for (section, name) in EXPECTED {
        let row = rows
            .iter()
            .find(|c| c[0] == *section && matches(name, c[1]))
            .unwrap_or_else(|| panic!("no `{section} | {name}` row in the table:\n{stdout}"));
        assert_eq!(
            row[6], "ok",
            "`{section} | {}` failed its path checks: {row:?}",
            row[1]
        );
    }
    // A row the list does not know yet must pass its checks too.
    for row in &rows {
        assert_eq!(row[6], "ok", "a scenario failed its checks: {row:?}");
    }
    // The target lines are computed from the same rows.
    assert!(stdout.contains("- established ≤ 1.5× floor: "), "{stdout}");
}

#[test]
fn a_measurement_pattern_matches_its_rows_only() {
    assert!(matches("RINGS: *", "RINGS: 64 Maglev rings of 65537 slots"));
    assert!(matches(
        "the other * maps together",
        "the other 14 maps together"
    ));
    assert!(matches(
        "SYN, 1 VIP, 10 backends",
        "SYN, 1 VIP, 10 backends"
    ));
    assert!(!matches(
        "SYN, 1 VIP, 10 backends",
        "SYN, 1 VIP, 100 backends"
    ));
    assert!(!matches(
        "maps, * flows written: total",
        "maps, agent defaults (1,000,000 flows): total"
    ));
}
