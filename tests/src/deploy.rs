//! What the shipped monitoring files (deploy/prometheus, deploy/grafana) ask of `/metrics`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every `lb_*` metric name in `text` (PromQL expressions, or a file holding them).
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    for (i, _) in text.match_indices("lb_") {
        if i > 0 && word(bytes[i - 1]) {
            continue;
        }
        let end = text[i..]
            .bytes()
            .position(|b| !word(b))
            .map_or(text.len(), |n| i + n);
        names.insert(text[i..end].to_string());
    }
    names
}

/// The metrics the alert rules query (their `expr:` lines).
pub fn alert_metrics() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(deploy_dir().join("prometheus/lb-alerts.yml")).unwrap();
    // Annotations mention metric names too; only expressions are queries.
    let mut names = BTreeSet::new();
    let mut in_expr = false;
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let t = line.trim_start();
        if let Some(e) = t.strip_prefix("expr:") {
            names.extend(metric_names(e));
            in_expr = e.trim() == "|";
        } else if in_expr && line.starts_with("          ") {
            names.extend(metric_names(t));
        } else {
            in_expr = false;
        }
    }
    names
}

/// The metrics the Grafana dashboard queries (every panel target's `expr`, and variables).
pub fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(deploy_dir().join("grafana/lb-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            names.extend(metric_names(t["expr"].as_str().expect("expr")));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            names.extend(metric_names(q));
        }
    }
    names
}

/// The metric families a `/metrics` exposition declares (its `# TYPE` lines).
pub fn exposed_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_whole_words() {
        let got =
            metric_names("sum by (x) (rate(lb_a_total[1m])) / lb_b and xlb_c or lb_d{y=\"lb_e\"}");
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            ["lb_a_total", "lb_b", "lb_d", "lb_e"]
        );
    }
}
