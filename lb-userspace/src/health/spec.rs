//! What a check is (`CheckSpec`), the tunnel its packets take (`Tunnel`) and the TC program's
//! target entry for it.

use std::net::Ipv6Addr;
use std::time::Duration;

use lb_common::health::{HEALTH_F_GUE, HealthTarget};
use lb_common::v6_words;

use crate::config::{CheckKind, HealthConfig};
use crate::state::Vip;

/// What one check does, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub vip: Vip,
    pub backend: Ipv6Addr,
    pub gue: bool,
    pub port: u16,
    pub kind: CheckKind,
    pub http_path: String,
    pub http_status: u16,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The NIC the backend's route leaves by (0: the VIP route's); a change rewrites the
    /// check's target in place, without restarting the check.
    pub egress: u32,
}

impl CheckSpec {
    /// The check of `backend` under `vip`, if `cfg` checks this VIP at all.
    pub fn new(vip: Vip, backend: Ipv6Addr, gue: bool, cfg: &HealthConfig) -> Option<Self> {
        Some(CheckSpec {
            vip,
            backend,
            gue,
            port: cfg.port_for(&vip)?,
            kind: cfg.kind,
            http_path: cfg.http_path.clone(),
            http_status: cfg.http_status,
            interval: Duration::from_millis(cfg.interval_ms),
            timeout: Duration::from_millis(cfg.timeout_ms),
            rise: cfg.rise,
            fall: cfg.fall,
            egress: 0,
        })
    }

    /// The same check, whatever NIC its packets leave by.
    pub(super) fn same_check(&self, other: &Self) -> bool {
        *self
            == Self {
                egress: self.egress,
                ..other.clone()
            }
    }

    pub(super) fn describe(&self) -> String {
        match self.kind {
            CheckKind::Tcp => format!("tcp:{}", self.port),
            CheckKind::Http => format!(
                "http:{}{} = {}",
                self.port, self.http_path, self.http_status
            ),
        }
    }
}

/// The tunnel parameters every check shares.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub source: Ipv6Addr,
    /// GUE destination port (host order).
    pub gue_port: u16,
    /// The NIC check sockets are bound to, so they can only leave where the TC program runs.
    pub iface: String,
}

/// The tunnel a check's packets take (`HEALTH_TARGETS[mark]`).
pub(super) fn target(tunnel: &Tunnel, spec: &CheckSpec) -> HealthTarget {
    HealthTarget {
        src_ip6: v6_words(tunnel.source),
        dst_ip6: v6_words(spec.backend),
        gue_port: tunnel.gue_port.to_be(),
        flags: if spec.gue { HEALTH_F_GUE } else { 0 },
        egress_ifindex: spec.egress,
    }
}
