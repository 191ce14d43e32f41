//! The targets, evaluated on one run's rows: the lines printed after the table.

use crate::report::{Figure, Row};

use super::{
    EMPTY, EMPTY_H, EST, EST_1M, FLOOR, GUE, HARNESS, LATENCY, LATENCY_LEAST, NOT_VIP, NOT_VIP_H,
    SYN,
};

/// The targets, evaluated on this run's rows (lines to print after the table).
pub fn targets(rows: &[Row]) -> Vec<String> {
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.result.as_ref().ok())
    };
    let line = |label: &str, value: Option<&Figure>, base: Option<&Figure>, max: f64| match (
        value, base,
    ) {
        (Some(v), Some(b)) => {
            let r = v.ratio_to(b);
            let verdict = if r <= max { "met" } else { "MISSED" };
            format!("- {label}: {r:.2}× (limit {max}×): {verdict}")
        }
        _ => format!("- {label}: not measured"),
    };
    if get(FLOOR).is_none() {
        return vec![];
    }
    vec![
        "Targets (median of the run-by-run ratios; runs of one round are moments apart):".into(),
        match get(HARNESS) {
            Some(h) => {
                let verdict = if h.median <= 20.0 { "met" } else { "MISSED" };
                format!("- harness cost ≤ 20 ns: {:.0} ns: {verdict}", h.median)
            }
            None => "- harness cost ≤ 20 ns: not measured".into(),
        },
        line("established ≤ 1.5× floor", get(EST), get(FLOOR), 1.5),
        line("SYN ≤ 2.5× floor", get(SYN), get(FLOOR), 2.5),
        line(
            "established, 1M flows cycled ≤ 3.0× floor",
            get(EST_1M),
            get(FLOOR),
            3.0,
        ),
        line(
            "non-VIP pass ≤ 1.3× the empty program (both alone)",
            get(NOT_VIP),
            get(EMPTY),
            1.3,
        ),
        line(
            "non-VIP pass ≤ 1.3× the empty program (both through the harness)",
            get(NOT_VIP_H),
            get(EMPTY_H),
            1.3,
        ),
        line(
            "GUE ≤ 1.1× plain IPv6 encapsulation (established)",
            get(GUE),
            get(EST),
            1.1,
        ),
        match (get(LATENCY), get(FLOOR)) {
            (Some(l), Some(f)) => format!(
                "- one random load in 96 MiB alone (a cold table's least): {:.2}× floor",
                l.median / f.median
            ),
            _ => "- one random load in 96 MiB: not measured".into(),
        },
        match (get(LATENCY_LEAST), get(FLOOR)) {
            (Some(l), Some(f)) => format!(
                "- one random load in 16 MiB alone (any 1M-flow table's least): {:.2}× floor",
                l.median / f.median
            ),
            _ => "- one random load in 16 MiB: not measured".into(),
        },
        format!(
            "- 1M flows cycled vs 1 flow (cache-cold table): {}",
            match (get(EST_1M), get(EST)) {
                (Some(a), Some(b)) => format!("{:.2}×", a.ratio_to(b)),
                _ => "not measured".into(),
            }
        ),
    ]
}
