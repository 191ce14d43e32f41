//! The agent's TOML config file: where it attaches, how it tunnels, and the VIPs with their
//! backends. `examples/lb.toml` documents every field. Loading validates everything, so a bad
//! file is refused as a whole with the reason (and, on reload, nothing changes).
//!
//! Files: `sections` (the file's schema, one struct per table), `checks` (health-check
//! settings and their per-VIP overrides), `defaults` (what an absent field means), `validate`
//! (what a loaded file must satisfy), `settings` (the file minus the desired state, to list
//! what a reload changes); here, the whole file and what the agent derives from it.

mod checks;
mod defaults;
mod flow_mode;
mod name;
mod sections;
mod settings;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;

use crate::dataplane::DataplaneLimits;
use crate::state::{Capacity, Change, DesiredState, Vip, check_weight};

pub use checks::{CheckKind, HealthConfig, HealthOverride};
pub use defaults::{
    DEFAULT_API_MAX_CONNECTIONS, DEFAULT_API_SOCKET, DEFAULT_METRICS_MAX_CONNECTIONS,
    DEFAULT_PIN_DIR, DEFAULT_SYNC_MAX_CONNECTIONS,
};
pub use flow_mode::FlowSync;
pub use name::{MAX_NAME, valid_name};
pub use sections::{
    AgentConfig, AttachMode, BackendConfig, BgpConfig, DataplaneConfig, InterfaceConfig,
    MIN_EGRESS_MTU, PeerConfig, SyncConfig, VipConfig,
};
pub use settings::Settings;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    pub dataplane: DataplaneConfig,
    #[serde(rename = "interface", default)]
    pub interfaces: Vec<InterfaceConfig>,
    #[serde(rename = "vip", default)]
    pub vips: Vec<VipConfig>,
    /// Health-check defaults for every VIP (a VIP's own `[vip.health]` overrides fields).
    #[serde(default)]
    pub health: HealthConfig,
    /// Announce VIPs through BIRD; absent = the agent does not touch BGP.
    pub bgp: Option<BgpConfig>,
    /// Peer sync with the fleet's other load balancers; absent = this agent stands alone.
    pub sync: Option<SyncConfig>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// The file, and its node-local settings (to list what a reload changes).
    pub fn load_with_settings(path: &Path) -> Result<(Self, Settings)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let cfg = Self::parse(&text).with_context(|| format!("config file {}", path.display()))?;
        Ok((cfg, Settings::parse(&text)?))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Config = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn limits(&self) -> DataplaneLimits {
        let d = &self.dataplane;
        DataplaneLimits {
            ring_size: d.ring_size,
            max_vips: d.max_vips,
            max_rings: d.max_vips,
            max_backends: d.max_backends,
            max_conns: d.max_flows,
            flow_cache_slots: d.flow_cache_slots,
        }
    }

    pub fn capacity(&self) -> Capacity {
        Capacity {
            vips: self.dataplane.max_vips,
            backends: self.dataplane.max_backends,
            backends_per_vip: self.dataplane.ring_size - 1,
        }
    }

    /// The health-check settings of `vip`: its own `[vip.health]` over `[health]`; VIPs added
    /// at run time (not in the file) get `[health]`.
    pub fn health_for(&self, vip: &Vip) -> HealthConfig {
        self.vips
            .iter()
            .find(|v| {
                v.address == vip.addr
                    && v.port == vip.port
                    && v.protocol.parse().ok() == Some(vip.proto)
            })
            .map_or_else(|| self.health.clone(), |v| self.health.with(&v.health))
    }

    /// VIP addresses that must not answer ping (`icmp_echo = false` on one of their services).
    /// Next hops from the kernel's routes and neighbours: no `[[interface]]` gives a static
    /// `next_hop_mac` or `gateway` (validate() refuses a mix).
    pub fn kernel_next_hops(&self) -> bool {
        self.interfaces
            .iter()
            .all(|i| i.next_hop_mac.is_none() && i.gateway.is_none())
    }

    pub fn echo_off(&self) -> BTreeSet<IpAddr> {
        self.vips
            .iter()
            .filter(|v| !v.icmp_echo)
            .map(|v| v.address)
            .collect()
    }

    /// The VIPs and backends of this file as a desired state, checked change by change.
    pub fn desired_state(&self) -> Result<DesiredState> {
        let cap = self.capacity();
        let mut state = DesiredState::default();
        for v in &self.vips {
            let proto = v
                .protocol
                .parse()
                .with_context(|| format!("VIP {}:{}", v.address, v.port))?;
            let vip = Vip {
                addr: v.address,
                port: v.port,
                proto,
            };
            state
                .apply(&Change::AddVip { vip, gue: v.gue }, &cap)
                .context("[[vip]]")?;
            for b in &v.backends {
                let backend = crate::state::parse_backend(&b.address)
                    .with_context(|| format!("VIP {vip}"))?;
                check_weight(b.weight).with_context(|| format!("VIP {vip} backend {backend}"))?;
                state
                    .apply(
                        &Change::AddBackend {
                            vip,
                            backend,
                            weight: b.weight,
                            state: b.state,
                        },
                        &cap,
                    )
                    .context("[[vip.backend]]")?;
            }
        }
        Ok(state)
    }

    /// What a reload cannot change in a running agent (the maps are sized and the NICs
    /// attached at start): returns the first such difference.
    pub fn restart_only_difference(&self, new: &Config) -> Option<String> {
        let (a, b) = (&self.dataplane, &new.dataplane);
        let checks = [
            ("dataplane.ring_size", a.ring_size != b.ring_size),
            ("dataplane.max_vips", a.max_vips != b.max_vips),
            ("dataplane.max_backends", a.max_backends != b.max_backends),
            ("dataplane.max_flows", a.max_flows != b.max_flows),
            (
                "dataplane.flow_cache_slots",
                a.flow_cache_slots != b.flow_cache_slots,
            ),
            ("dataplane.seed", a.seed != b.seed),
            (
                "agent.api_socket",
                self.agent.api_socket != new.agent.api_socket,
            ),
            ("agent.pin_dir", self.agent.pin_dir != new.agent.pin_dir),
            ("agent.metrics", self.agent.metrics != new.agent.metrics),
            (
                "agent.metrics_max_connections",
                self.agent.metrics_max_connections != new.agent.metrics_max_connections,
            ),
            (
                "agent.api_max_connections",
                self.agent.api_max_connections != new.agent.api_max_connections,
            ),
            ("[bgp]", self.bgp != new.bgp),
            ("[sync]", self.sync != new.sync),
            (
                "next hops from static settings or from the kernel's routes",
                self.kernel_next_hops() != new.kernel_next_hops(),
            ),
            (
                "the [[interface]] names or modes",
                self.interfaces
                    .iter()
                    .map(|i| (&i.name, i.mode))
                    .ne(new.interfaces.iter().map(|i| (&i.name, i.mode))),
            ),
        ];
        checks
            .iter()
            .find(|(_, differs)| *differs)
            .map(|(what, _)| what.to_string())
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    ensure!(
        parts.len() == 6 && parts.iter().all(|p| p.len() == 2),
        "`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"
    );
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16)
            .with_context(|| format!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    }
    Ok(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
