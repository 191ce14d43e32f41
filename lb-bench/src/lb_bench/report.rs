//! The one markdown table `cargo xtask bench` prints: every section adds rows to it.

use std::fmt::Write as _;

/// One measurement: a median with its min–max over the runs, or why it has no number.
pub struct Row {
    /// Which part of the bench: "dataplane", "scale", "live", "control plane", "memory".
    pub section: &'static str,
    pub name: String,
    /// Err: the check failed (or the measurement could not be made); printed as FAILED.
    pub result: Result<Figure, String>,
}

pub struct Figure {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// "ns/packet", "Mpps", "ms", "MiB", ...
    pub unit: &'static str,
    /// E.g. "2.10× floor"; empty when the row has no reference.
    pub ratio: String,
    /// Every run's value in the order measured (round by round where a section interleaves).
    pub runs: Vec<f64>,
}

impl Figure {
    /// From the runs' values (any order; at least one).
    pub fn of(values: &[f64], unit: &'static str) -> Self {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        Self {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
            unit,
            ratio: String::new(),
            runs: values.to_vec(),
        }
    }

    /// The median of the run-by-run ratios `self / base`: runs of the same round were measured
    /// moments apart, so their ratio cancels the machine's slower and faster phases. Falls back
    /// to the ratio of the medians when the runs do not pair up.
    pub fn ratio_to(&self, base: &Figure) -> f64 {
        if self.runs.len() == base.runs.len() && !self.runs.is_empty() {
            let mut r: Vec<f64> = self
                .runs
                .iter()
                .zip(&base.runs)
                .map(|(a, b)| a / b)
                .collect();
            r.sort_by(|a, b| a.total_cmp(b));
            r[r.len() / 2]
        } else {
            self.median / base.median
        }
    }

    /// A single value (no spread), e.g. a memory size.
    pub fn single(value: f64, unit: &'static str) -> Self {
        Self::of(&[value], unit)
    }
}

impl Row {
    pub fn ok(section: &'static str, name: impl Into<String>, figure: Figure) -> Self {
        Self {
            section,
            name: name.into(),
            result: Ok(figure),
        }
    }

    pub fn failed(section: &'static str, name: impl Into<String>, why: &anyhow::Error) -> Self {
        Self {
            section,
            name: name.into(),
            result: Err(format!("{why:#}")),
        }
    }

    pub fn from_result(
        section: &'static str,
        name: impl Into<String>,
        r: anyhow::Result<Figure>,
    ) -> Self {
        let name = name.into();
        match r {
            Ok(f) => Self::ok(section, name, f),
            Err(e) => {
                eprintln!("    FAILED: {name}: {e:#}");
                Self::failed(section, name, &e)
            }
        }
    }

    /// The median, when measured.
    pub fn median(&self) -> Option<f64> {
        self.result.as_ref().ok().map(|f| f.median)
    }
}

/// Numbers with as many decimals as they need to be read: 1234, 12.3, 0.123.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The markdown table of all rows, in order.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| section | measurement | median | min–max | unit | ratio | check |\n");
    out.push_str("| --- | --- | ---: | ---: | --- | ---: | --- |\n");
    for r in rows {
        let line = match &r.result {
            Ok(f) => format!(
                "| {} | {} | {} | {}–{} | {} | {} | ok |",
                r.section,
                r.name,
                num(f.median),
                num(f.min),
                num(f.max),
                f.unit,
                f.ratio
            ),
            // A pipe in the reason would split the cell.
            Err(why) => format!(
                "| {} | {} | FAILED | | | | FAILED: {} |",
                r.section,
                r.name,
                why.replace('|', "/")
            ),
        };
        let _ = writeln!(out, "{line}");
    }
    out
}
