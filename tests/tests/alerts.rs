//! Issue 17: the shipped Prometheus alerts pass `promtool check rules` and their unit tests
//! (`promtool test rules`, deploy/prometheus/lb-alerts.test.yml), and the Grafana dashboard is
//! well-formed. That each metric they query exists in a real agent's `/metrics` is checked by
//! the status-page test, which has a lab running.

use std::process::Command;

use tests::deploy::*;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy_dir().join("prometheus"))
        .output()
        .expect("promtool (installed by `cargo xtask setup`)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    let checked = promtool(&["check", "rules", "lb-alerts.yml"]);
    assert!(checked.contains("SUCCESS: 8 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "lb-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test.
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/lb-alerts.yml")).unwrap();
    let tests =
        std::fs::read_to_string(deploy_dir().join("prometheus/lb-alerts.test.yml")).unwrap();
    for name in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "no unit test for {name}"
        );
    }
}

#[test]
fn the_dashboard_queries_only_lb_metrics_the_alerts_know_too() {
    let dash = dashboard_metrics();
    let alerts = alert_metrics();
    assert!(dash.len() >= 15, "{dash:?}");
    // The alerts' metrics are all on the dashboard, so an alert can be looked at there.
    let missing: Vec<_> = alerts.difference(&dash).collect();
    assert!(
        missing.is_empty(),
        "alert metrics not on the dashboard: {missing:?}"
    );
}
