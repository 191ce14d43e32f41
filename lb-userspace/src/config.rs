//! The agent's TOML config file: where it attaches, how it tunnels, and the VIPs with their
//! backends. `examples/lb.toml` documents every field. Loading validates everything, so a bad
//! file is refused as a whole with the reason (and, on reload, nothing changes).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::dataplane::DataplaneLimits;
use crate::state::{BackendState, Capacity, Change, DesiredState, Vip, check_weight};

pub const DEFAULT_API_SOCKET: &str = "/run/lb/lb.sock";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb";

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

fn yes() -> bool {
    true
}

fn default_refresh_secs() -> u64 {
    300
}

fn default_flow_queue() -> usize {
    1024
}

fn default_startup_wait_secs() -> u64 {
    10
}

/// `[sync]`: see docs/sync.md.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// This load balancer's name in the fleet: unique, 1-64 of `A-Za-z0-9._-`.
    pub node: String,
    /// Where peers' links arrive (TCP).
    pub listen: SocketAddr,
    /// The fleet's pre-shared key: 64+ hex digits in a file only root can read.
    pub key_file: PathBuf,
    /// The replicated state, rewritten on every change and read at start, so a restarted
    /// agent resumes from what the fleet last agreed rather than from this file's [[vip]]s.
    pub state_file: PathBuf,
    /// Share new flows with peers (off: only the desired state is replicated).
    #[serde(default = "yes")]
    pub flows: bool,
    /// Every this many seconds, re-send the flows active since the last time, so peers'
    /// copies of long-lived flows do not idle out: keep it well under
    /// `dataplane.tcp_idle_timeout_secs` (the copies' timeout).
    #[serde(default = "default_refresh_secs")]
    pub refresh_secs: u64,
    /// Flow batches queued per peer before new ones are dropped (and counted).
    #[serde(default = "default_flow_queue")]
    pub flow_queue: usize,
    /// Received flow batches queued for installation before new ones are dropped.
    #[serde(default = "default_flow_queue")]
    pub import_queue: usize,
    /// At start, VIPs are announced only once every peer has sent its state and flows, or
    /// after this many seconds (a peer that is down must not keep this node out).
    #[serde(default = "default_startup_wait_secs")]
    pub startup_wait_secs: u64,
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// The peer's `[sync] listen` address.
    pub address: SocketAddr,
}

impl SyncConfig {
    fn validate(&self) -> Result<()> {
        use crate::sync::wire::valid_name;
        ensure!(
            valid_name(&self.node),
            "[sync] node `{}`: use 1-64 of A-Za-z0-9._-",
            self.node
        );
        ensure!(
            self.key_file.is_absolute() && self.state_file.is_absolute(),
            "[sync] key_file and state_file must be absolute paths"
        );
        ensure!(
            (1..=86_400).contains(&self.refresh_secs),
            "[sync] refresh_secs = {}: use 1 second to 1 day",
            self.refresh_secs
        );
        ensure!(
            (1..=1_000_000).contains(&self.flow_queue)
                && (1..=1_000_000).contains(&self.import_queue),
            "[sync] flow_queue and import_queue: use 1 to 1000000 batches"
        );
        ensure!(
            self.startup_wait_secs <= 600,
            "[sync] startup_wait_secs = {}: use 0 to 600",
            self.startup_wait_secs
        );
        let mut names = BTreeSet::new();
        for p in &self.peers {
            ensure!(
                valid_name(&p.name),
                "[[sync.peer]] name `{}`: use 1-64 of A-Za-z0-9._-",
                p.name
            );
            ensure!(
                p.name != self.node,
                "[[sync.peer]] `{}` is this node's own name",
                p.name
            );
            ensure!(
                names.insert(&p.name),
                "[[sync.peer]] `{}` is listed twice",
                p.name
            );
            ensure!(
                !p.address.ip().is_unspecified() && p.address.port() != 0,
                "[[sync.peer]] `{}`: {} is not an address to connect to",
                p.name,
                p.address
            );
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// BIRD's control socket.
    pub bird_socket: PathBuf,
    /// The file bird.conf includes; the agent owns it and writes the VIP routes there.
    pub routes_file: PathBuf,
}

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
    fn with(&self, o: &HealthOverride) -> HealthConfig {
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

    fn validate(&self) -> Result<()> {
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
            (None, crate::state::Proto::Tcp, p) if p != 0 => Some(p),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The control API's unix socket (root only).
    pub api_socket: PathBuf,
    /// bpffs directory for the pinned maps and links.
    pub pin_dir: PathBuf,
    /// Prometheus `/metrics` listen address; absent = no metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Seconds between next-hop MAC lookups for interfaces configured with `gateway`.
    pub neighbour_refresh_secs: u64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            api_socket: DEFAULT_API_SOCKET.into(),
            pin_dir: DEFAULT_PIN_DIR.into(),
            metrics: None,
            neighbour_refresh_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// This load balancer's IPv6 address: the outer source of every tunnelled packet.
    pub tunnel_source: Ipv6Addr,
    /// Fleet-wide flow hash seed; every load balancer of the fleet must use the same one.
    pub seed: u64,
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    #[serde(default = "default_max_vips")]
    pub max_vips: u32,
    #[serde(default = "default_max_backends")]
    pub max_backends: u32,
    #[serde(default = "default_max_flows")]
    pub max_flows: u32,
    #[serde(default = "default_gue_port")]
    pub gue_port: u16,
    #[serde(default = "default_udp_idle")]
    pub udp_idle_timeout_secs: u64,
    #[serde(default = "default_tcp_idle")]
    pub tcp_idle_timeout_secs: u64,
    #[serde(default = "default_tcp_closing")]
    pub tcp_closing_timeout_secs: u64,
}

fn default_ring_size() -> u32 {
    lb_common::DEFAULT_RING_SIZE
}
fn default_max_vips() -> u32 {
    lb_common::DEFAULT_MAX_RINGS
}
fn default_max_backends() -> u32 {
    lb_common::DEFAULT_MAX_BACKENDS
}
fn default_max_flows() -> u32 {
    lb_common::DEFAULT_MAX_CONNS
}
fn default_gue_port() -> u16 {
    lb_common::DEFAULT_GUE_PORT
}
fn default_udp_idle() -> u64 {
    lb_common::DEFAULT_UDP_TIMEOUT_NS / 1_000_000_000
}
fn default_tcp_idle() -> u64 {
    lb_common::DEFAULT_TCP_IDLE_TIMEOUT_NS / 1_000_000_000
}
fn default_tcp_closing() -> u64 {
    lb_common::DEFAULT_TCP_CLOSING_TIMEOUT_NS / 1_000_000_000
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic with a warning.
    #[default]
    Driver,
    Generic,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    pub name: String,
    #[serde(default)]
    pub mode: AttachMode,
    /// The next hop's MAC; or leave it out and give `gateway`.
    pub next_hop_mac: Option<String>,
    /// The next hop's IP address, resolved to a MAC from the kernel's neighbour table.
    pub gateway: Option<IpAddr>,
    /// The largest IP packet (tunnel header included) that may leave this NIC towards the
    /// backends. Default: the NIC's MTU. A client packet that would exceed it once
    /// encapsulated is answered with ICMP "too big" (docs/dataplane.md).
    pub mtu: Option<u32>,
}

/// The smallest egress MTU accepted: an IPv6 minimum-MTU packet (1280) plus GUE (48).
pub const MIN_EGRESS_MTU: u32 = 1328;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub gue: bool,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub health: HealthOverride,
    /// Answer ICMP echo requests (ping) to this VIP's address. ICMP has no ports, so the
    /// switch is per address: `false` on any service of an address turns echo off for it.
    #[serde(default = "yes")]
    pub icmp_echo: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: String,
    #[serde(default = "crate::state::default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: BackendState,
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

impl Config {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
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
        }
    }

    pub fn capacity(&self) -> Capacity {
        Capacity {
            vips: self.dataplane.max_vips,
            backends: self.dataplane.max_backends,
            backends_per_vip: self.dataplane.ring_size - 1,
        }
    }

    fn validate(&self) -> Result<()> {
        let d = &self.dataplane;
        self.limits().validate()?;
        ensure!(
            !d.tunnel_source.is_unspecified() && !d.tunnel_source.is_multicast(),
            "dataplane.tunnel_source {} cannot be a tunnel source",
            d.tunnel_source
        );
        ensure!(d.gue_port != 0, "dataplane.gue_port must not be 0");
        for (what, v) in [
            ("udp_idle_timeout_secs", d.udp_idle_timeout_secs),
            ("tcp_idle_timeout_secs", d.tcp_idle_timeout_secs),
            ("tcp_closing_timeout_secs", d.tcp_closing_timeout_secs),
        ] {
            ensure!(
                (1..=7 * 86_400).contains(&v),
                "dataplane.{what} = {v}: use 1 second to 7 days"
            );
        }
        ensure!(
            !self.interfaces.is_empty(),
            "no [[interface]]: the agent needs at least one NIC to attach to"
        );
        ensure!(
            self.interfaces.len() as u32 <= lb_common::DEFAULT_MAX_IFACES,
            "at most {} interfaces",
            lb_common::DEFAULT_MAX_IFACES
        );
        let mut names = BTreeSet::new();
        for i in &self.interfaces {
            ensure!(
                !i.name.is_empty() && i.name.len() < 16 && !i.name.contains('/'),
                "interface name `{}` is not a valid Linux interface name",
                i.name
            );
            ensure!(
                names.insert(&i.name),
                "interface {} is listed twice",
                i.name
            );
            if let Some(mtu) = i.mtu {
                ensure!(
                    (MIN_EGRESS_MTU..=65535).contains(&mtu),
                    "interface {}: mtu {mtu} is outside {MIN_EGRESS_MTU}..=65535 (IPv6's 1280 plus the tunnel's 48 bytes must fit)",
                    i.name
                );
            }
            match (&i.next_hop_mac, &i.gateway) {
                (Some(mac), None) => {
                    parse_mac(mac).with_context(|| format!("interface {}", i.name))?;
                }
                (None, Some(_)) => {}
                _ => bail!(
                    "interface {}: give exactly one of next_hop_mac and gateway",
                    i.name
                ),
            }
        }
        self.health.validate().context("[health]")?;
        for v in &self.vips {
            self.health
                .with(&v.health)
                .validate()
                .with_context(|| format!("VIP {}:{} [vip.health]", v.address, v.port))?;
        }
        if let Some(s) = &self.sync {
            s.validate()?;
            ensure!(
                s.refresh_secs < d.tcp_idle_timeout_secs,
                "[sync] refresh_secs = {} must be below dataplane.tcp_idle_timeout_secs = {}: peers' copies of a flow idle out after that",
                s.refresh_secs,
                d.tcp_idle_timeout_secs
            );
        }
        if let Some(b) = &self.bgp {
            ensure!(
                b.routes_file.is_absolute() && b.bird_socket.is_absolute(),
                "[bgp] bird_socket and routes_file must be absolute paths"
            );
        }
        self.desired_state()?;
        Ok(())
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
            ("dataplane.seed", a.seed != b.seed),
            (
                "agent.api_socket",
                self.agent.api_socket != new.agent.api_socket,
            ),
            ("agent.pin_dir", self.agent.pin_dir != new.agent.pin_dir),
            ("agent.metrics", self.agent.metrics != new.agent.metrics),
            ("[bgp]", self.bgp != new.bgp),
            ("[sync]", self.sync != new.sync),
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

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = include_str!("../../examples/lb.toml");

    #[test]
    fn the_example_config_is_valid() {
        let cfg = Config::parse(EXAMPLE).unwrap();
        let state = cfg.desired_state().unwrap();
        assert_eq!(state.vips.len(), 2);
        assert_eq!(cfg.interfaces[0].name, "eth1");
        // The first VIP's [vip.health] overrides kind and path; the rest comes from [health].
        let web = cfg.health_for(&"192.0.2.10:80/tcp".parse().unwrap());
        assert_eq!(
            (web.kind, web.http_path.as_str()),
            (CheckKind::Http, "/healthz")
        );
        assert_eq!(
            (web.interval_ms, web.timeout_ms, web.rise, web.fall),
            (2000, 1000, 3, 3)
        );
        let other = cfg.health_for(&"[2001:db8:5::10]:443/tcp".parse().unwrap());
        assert_eq!(other.kind, CheckKind::Tcp);
        assert_eq!(
            other.port_for(&"[2001:db8:5::10]:443/tcp".parse().unwrap()),
            Some(443)
        );
        // A VIP added at run time gets [health]; UDP and every-port VIPs need a port.
        assert_eq!(
            cfg.health_for(&"192.0.2.99:53/udp".parse().unwrap())
                .port_for(&"192.0.2.99:53/udp".parse().unwrap()),
            None
        );
        assert!(cfg.bgp.is_some());
        assert!(cfg.sync.is_none());
        // The commented [sync] example is valid once uncommented.
        let mut in_sync = false;
        let text: String = EXAMPLE
            .lines()
            .map(|l| {
                in_sync |= l == "# [sync]";
                in_sync &= l.starts_with('#');
                let l = if in_sync {
                    l.trim_start_matches('#').trim_start()
                } else {
                    l
                };
                format!("{}\n", l.split(" #").next().unwrap())
            })
            .collect();
        let with_sync = Config::parse(&text).unwrap();
        let sync = with_sync.sync.expect("[sync] uncommented");
        assert_eq!((sync.node.as_str(), sync.peers.len()), ("lb1", 1));
    }

    #[test]
    fn refuses_bad_sync_sections_with_the_reason() {
        let base = r#"
[dataplane]
tunnel_source = "2001:db8:1b::1"
seed = 7
[[interface]]
name = "eth1"
next_hop_mac = "02:00:00:00:00:01"
[sync]
node = "lb1"
listen = "[2001:db8:5::1]:7946"
key_file = "/etc/lb/fleet.key"
state_file = "/var/lib/lb/state.json"
[[sync.peer]]
name = "lb2"
address = "[2001:db8:5::2]:7946"
"#;
        let ok = Config::parse(base).unwrap();
        let sync = ok.sync.as_ref().unwrap();
        assert!(sync.flows, "flow sync is on by default");
        assert_eq!(
            (sync.refresh_secs, sync.startup_wait_secs),
            (300, 10),
            "defaults"
        );
        for (edit, why) in [
            (("node = \"lb1\"", "node = \"lb 1\""), "use 1-64 of"),
            (("name = \"lb2\"", "name = \"lb1\""), "this node's own name"),
            (
                ("\"/etc/lb/fleet.key\"", "\"fleet.key\""),
                "must be absolute",
            ),
            (
                ("[2001:db8:5::2]:7946", "[::]:7946"),
                "not an address to connect to",
            ),
            (
                (
                    "address = \"[2001:db8:5::2]:7946\"",
                    "address = \"[2001:db8:5::2]:7946\"\n[[sync.peer]]\nname = \"lb2\"\naddress = \"[2001:db8:5::3]:7946\"",
                ),
                "listed twice",
            ),
            (
                ("node = \"lb1\"", "node = \"lb1\"\nrefresh_secs = 0"),
                "refresh_secs = 0",
            ),
            (
                ("node = \"lb1\"", "node = \"lb1\"\nsecret = \"x\""),
                "unknown field `secret`",
            ),
            (
                ("listen = \"[2001:db8:5::1]:7946\"\n", ""),
                "missing field `listen`",
            ),
        ] {
            let text = base.replace(edit.0, edit.1);
            assert_ne!(text, base, "edit {edit:?} applies");
            let e = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(e.contains(why), "{edit:?}: `{e}` should say `{why}`");
        }
        // [sync] cannot change under a running agent.
        let mut other = ok.clone();
        other.sync.as_mut().unwrap().flows = false;
        assert_eq!(
            ok.restart_only_difference(&other).as_deref(),
            Some("[sync]")
        );
    }

    #[test]
    fn refuses_bad_configs_with_the_reason() {
        let base = r#"
[dataplane]
tunnel_source = "2001:db8:1b::1"
seed = 7
[[interface]]
name = "eth1"
next_hop_mac = "02:00:00:00:00:01"
[[vip]]
address = "192.0.2.10"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:db8:be::1"
"#;
        Config::parse(base).unwrap();
        for (edit, why) in [
            (("seed = 7", "seed = -1"), "invalid value"),
            (("seed = 7", "seed = 7\nring_size = 65536"), "not a prime"),
            (
                ("seed = 7", "seed = 7\ncolour = 1"),
                "unknown field `colour`",
            ),
            (("2001:db8:1b::1", "192.0.2.1"), "invalid IPv6 address"),
            (("02:00:00:00:00:01", "02:00:00:00:01"), "not a MAC address"),
            (
                (
                    "next_hop_mac = \"02:00:00:00:00:01\"",
                    "next_hop_mac = \"02:00:00:00:00:01\"\nmtu = 1000",
                ),
                "outside 1328..=65535",
            ),
            (
                ("next_hop_mac = \"02:00:00:00:00:01\"", ""),
                "exactly one of next_hop_mac and gateway",
            ),
            (
                ("protocol = \"tcp\"", "protocol = \"icmp\""),
                "use tcp or udp",
            ),
            (
                ("address = \"2001:db8:be::1\"", "address = \"192.0.2.5\""),
                "not an IPv6",
            ),
            (
                (
                    "address = \"2001:db8:be::1\"",
                    "address = \"2001:db8:be::1\"\nweight = 0",
                ),
                "outside 1..=1000",
            ),
            (
                (
                    "address = \"2001:db8:be::1\"",
                    "address = \"2001:db8:be::1\"\n[[vip.backend]]\naddress = \"2001:db8:be::1\"",
                ),
                "already has backend",
            ),
            (
                (
                    "address = \"2001:db8:be::1\"",
                    "address = \"2001:db8:be::1\"\n[[vip]]\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"",
                ),
                "already exists",
            ),
            (
                ("name = \"eth1\"", "name = \"eth1/x\""),
                "not a valid Linux interface",
            ),
            (("[dataplane]", "[dataplan]"), "unknown field `dataplan`"),
            (
                ("seed = 7", "seed = 7\ntcp_idle_timeout_secs = 0"),
                "use 1 second",
            ),
            (
                ("[dataplane]", "[health]\ninterval_ms = 50\n[dataplane]"),
                "use 100 ms",
            ),
            (
                ("[dataplane]", "[health]\ntimeout_ms = 3000\n[dataplane]"),
                "up to interval_ms",
            ),
            (
                ("[dataplane]", "[health]\nkind = \"icmp\"\n[dataplane]"),
                "unknown variant `icmp`",
            ),
            (
                ("[dataplane]", "[health]\nrise = 0\n[dataplane]"),
                "rise and fall",
            ),
            (
                (
                    "protocol = \"tcp\"",
                    "protocol = \"tcp\"\n[vip.health]\nhttp_path = \"/a b\"",
                ),
                "[vip.health]",
            ),
            (
                (
                    "[dataplane]",
                    "[bgp]\nbird_socket = \"bird.ctl\"\nroutes_file = \"/etc/v.conf\"\n[dataplane]",
                ),
                "absolute paths",
            ),
        ] {
            let text = base.replacen(edit.0, edit.1, 1);
            assert_ne!(text, base, "edit {edit:?} did not apply");
            let e = format!("{:#}", Config::parse(&text).unwrap_err());
            assert!(e.contains(why), "{edit:?}: `{e}` should say `{why}`");
        }
    }
}
