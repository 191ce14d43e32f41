//! Prometheus text exposition: one family at a time, with escaped label values.

use std::fmt::Write;

use crate::api::CounterInfo;

/// A label value as the text format wants it: backslash, quote and newline escaped.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: HELP, TYPE, then a sample per (label set, value).
pub fn family(
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
pub fn by_prefix<'a>(
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
pub fn relabel<'a>(
    counters: &'a [CounterInfo],
    label: &'a str,
    names: &'a [(&str, &str)],
) -> impl Iterator<Item = (String, u64)> + 'a {
    names.iter().filter_map(move |(name, value)| {
        let c = counters.iter().find(|c| c.name == *name)?;
        Some((format!("{label}=\"{value}\""), c.packets))
    })
}
