//! A config file's node-local settings: everything in it except the desired state (which VIPs
//! exist, their encapsulation and their backends). With peer sync the desired state belongs to
//! the fleet, so a reload applies these and only reports the rest; `lb reload` lists what
//! changes here as `section.key: old -> new` lines.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use toml::{Table, Value};

/// The keys of a `[[vip]]` that are desired state, not settings.
const VIP_STATE_KEYS: [&str; 5] = ["address", "port", "protocol", "gue", "backend"];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings(Table);

impl Settings {
    pub fn parse(text: &str) -> Result<Self> {
        let mut file: Table = toml::from_str(text).context("parsing the config file")?;
        // `[[vip]]` sections become one table keyed by their service, holding only settings,
        // so that reordering the file or adding a VIP without settings lists nothing.
        if let Some(Value::Array(vips)) = file.remove("vip") {
            let mut keyed = Table::new();
            for v in vips {
                let Value::Table(mut v) = v else { continue };
                let key = format!(
                    "{}:{}/{}",
                    v.get("address").map(plain).unwrap_or_default(),
                    v.get("port").map(plain).unwrap_or_default(),
                    v.get("protocol").map(plain).unwrap_or_default()
                );
                for k in VIP_STATE_KEYS {
                    v.remove(k);
                }
                if !v.is_empty() {
                    keyed.insert(key, Value::Table(v));
                }
            }
            if !keyed.is_empty() {
                file.insert("vip".into(), Value::Table(keyed));
            }
        }
        Ok(Self(file))
    }

    /// What differs from `self` in `new`, one `path: old -> new` line per leaf, in path order.
    /// An absent key shows as `(default)`.
    pub fn changes_to(&self, new: &Settings) -> Vec<String> {
        let (mut old_leaves, mut new_leaves) = (BTreeMap::new(), BTreeMap::new());
        leaves("", &self.0, &mut old_leaves);
        leaves("", &new.0, &mut new_leaves);
        let mut keys: Vec<&String> = old_leaves.keys().chain(new_leaves.keys()).collect();
        keys.sort();
        keys.dedup();
        let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(default)".into());
        keys.into_iter()
            .filter(|k| old_leaves.get(*k) != new_leaves.get(*k))
            .map(|k| {
                format!(
                    "{k}: {} -> {}",
                    show(old_leaves.get(k)),
                    show(new_leaves.get(k))
                )
            })
            .collect()
    }
}

/// A scalar without TOML's quotes, for keys.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Flattens tables to dotted paths; arrays (interfaces, peers) are leaves keyed by position,
/// so a changed element shows by its index.
fn leaves(prefix: &str, table: &Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else if k.contains(['.', ':', '/', '[']) {
            format!("{prefix}.\"{k}\"")
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => leaves(&path, t, out),
            Value::Array(items) if items.iter().all(Value::is_table) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Table(t) = item {
                        leaves(&format!("{path}[{i}]"), t, out);
                    }
                }
            }
            other => {
                out.insert(path, other.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
tunnel_source = "2001:db8::1"
icmp_rate = 1000

[[interface]]
name = "eth0"
mtu = 1500

[[vip]]
address = "192.0.2.10"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:db8:be::1"
weight = 100

[[vip]]
address = "192.0.2.11"
port = 443
protocol = "tcp"
icmp_echo = false
"#;

    fn diff(old: &str, new: &str) -> Vec<String> {
        Settings::parse(old)
            .unwrap()
            .changes_to(&Settings::parse(new).unwrap())
    }

    #[test]
    fn desired_state_edits_are_not_settings() {
        // A new backend, a weight, a drain, a new VIP, a reordering: none is a setting.
        let new = BASE
            .replace("weight = 100", "weight = 7\nstate = \"drain\"")
            .replace(
                "[[vip]]\naddress = \"192.0.2.11\"",
                "[[vip]]\ngue = true\naddress = \"192.0.2.11\"",
            )
            + "\n[[vip]]\naddress = \"192.0.2.12\"\nport = 0\nprotocol = \"udp\"\n";
        assert_eq!(diff(BASE, &new), Vec::<String>::new());
        assert_eq!(diff(BASE, BASE), Vec::<String>::new());
    }

    #[test]
    fn settings_edits_list_one_line_each() {
        let new = BASE
            .replace("icmp_rate = 1000", "icmp_rate = 50")
            .replace("mtu = 1500", "")
            .replace("icmp_echo = false", "");
        assert_eq!(
            diff(BASE, &new),
            [
                "dataplane.icmp_rate: 1000 -> 50",
                "interface[0].mtu: 1500 -> (default)",
                "vip.\"192.0.2.11:443/tcp\".icmp_echo: false -> (default)",
            ]
        );
        let health = BASE.replace(
            "icmp_echo = false",
            "icmp_echo = false\n[vip.health]\ninterval_ms = 500",
        );
        assert_eq!(
            diff(BASE, &health),
            ["vip.\"192.0.2.11:443/tcp\".health.interval_ms: (default) -> 500"]
        );
    }
}
