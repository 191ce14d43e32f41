//! Health-check settings: `[health]` for every VIP, and a VIP's own `[vip.health]` over it.

use anyhow::{Result, ensure};
use serde::Deserialize;

use crate::state::{Proto, Vip};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection to the VIP's port completes.
    #[default]
    Tcp,
    /// `GET http_path` over that connection answers `http_status`.
    Http,
}

/// Health-check settings; defaults are GLB's: every 2 s, 1 s timeout, 3 to rise or fall.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    pub kind: CheckKind,
    /// The port to check; default the VIP's. VIPs on every port (0) or UDP are only checked
    /// when this is set.
    pub port: Option<u16>,
    pub http_path: String,
    pub http_status: u16,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kind: CheckKind::Tcp,
            port: None,
            http_path: "/".into(),
            http_status: 200,
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 3,
            fall: 3,
        }
    }
}

/// A VIP's `[vip.health]`: each field given replaces the `[health]` default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthOverride {
    pub enabled: Option<bool>,
    pub kind: Option<CheckKind>,
    pub port: Option<u16>,
    pub http_path: Option<String>,
    pub http_status: Option<u16>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

impl HealthConfig {
    pub(super) fn with(&self, o: &HealthOverride) -> HealthConfig {
        HealthConfig {
            enabled: o.enabled.unwrap_or(self.enabled),
            kind: o.kind.unwrap_or(self.kind),
            port: o.port.or(self.port),
            http_path: o
                .http_path
                .clone()
                .unwrap_or_else(|| self.http_path.clone()),
            http_status: o.http_status.unwrap_or(self.http_status),
            interval_ms: o.interval_ms.unwrap_or(self.interval_ms),
            timeout_ms: o.timeout_ms.unwrap_or(self.timeout_ms),
            rise: o.rise.unwrap_or(self.rise),
            fall: o.fall.unwrap_or(self.fall),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        ensure!(
            (100..=3_600_000).contains(&self.interval_ms),
            "interval_ms = {}: use 100 ms to 1 hour",
            self.interval_ms
        );
        ensure!(
            self.timeout_ms >= 10 && self.timeout_ms <= self.interval_ms,
            "timeout_ms = {}: use 10 ms up to interval_ms ({})",
            self.timeout_ms,
            self.interval_ms
        );
        ensure!(
            (1..=100).contains(&self.rise) && (1..=100).contains(&self.fall),
            "rise and fall must be 1 to 100"
        );
        ensure!(self.port != Some(0), "port 0 cannot be checked");
        ensure!(
            self.http_path.starts_with('/')
                && self.http_path.len() <= 1024
                && self.http_path.bytes().all(|b| b.is_ascii_graphic()),
            "http_path `{}` must start with / and hold no spaces or control characters",
            self.http_path.escape_default()
        );
        ensure!(
            (100..=599).contains(&self.http_status),
            "http_status {} is not an HTTP status",
            self.http_status
        );
        Ok(())
    }

    /// The port this VIP's backends are checked on, if it is checked at all.
    pub fn port_for(&self, vip: &Vip) -> Option<u16> {
        if !self.enabled {
            return None;
        }
        match (self.port, vip.proto, vip.port) {
            (Some(p), _, _) => Some(p),
            (None, Proto::Tcp, p) if p != 0 => Some(p),
            _ => None,
        }
    }
}
