//! `cargo xtask bench` checks itself: every scenario must take its intended path (the exact
//! output frame, counters risen by exactly the repeat count) or print FAILED. This runs the
//! bench's per-packet, scale and memory sections with few repetitions and requires every row to
//! pass those checks, so the bench cannot silently measure the wrong path after a dataplane
//! change. It times nothing. Needs root.

use std::process::Command;

use tests::require_root;

#[test]
fn every_bench_scenario_takes_its_intended_path() {
    require_root();
    let out = Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args(["dataplane", "scale", "memory"])
        .env("LB_BENCH_REPEAT", "2000")
        .output()
        .expect("running lb-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lb-bench failed:\n{stdout}\n{stderr}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.starts_with("| dataplane") || l.starts_with("| scale") || l.starts_with("| memory")
        })
        .collect();
    let count = |section: &str| rows.iter().filter(|l| l.starts_with(section)).count();
    // 13 per-packet rows (with the harness cost), 2 paths x 5 configurations, 6 memory rows.
    assert_eq!(
        (count("| dataplane"), count("| scale"), count("| memory")),
        (13, 10, 6),
        "{stdout}"
    );
    for row in &rows {
        assert!(
            row.ends_with("| ok |"),
            "a scenario failed its checks: {row}"
        );
    }
    // The target lines are computed from the same rows.
    assert!(stdout.contains("- established ≤ 2.0× floor: "), "{stdout}");
}
