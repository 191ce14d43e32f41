//! What a loaded file must satisfy, beyond its schema.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};

use super::defaults::MAX_LISTENER_CONNECTIONS;
use super::name::valid_name;
use super::sections::SyncConfig;
use super::{Config, MIN_EGRESS_MTU, parse_mac};

impl Config {
    pub(super) fn validate(&self) -> Result<()> {
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
        if let Some(v) = d.second_chance_secs {
            ensure!(
                v <= 7 * 86_400,
                "dataplane.second_chance_secs = {v}: use 0 (off) to 7 days"
            );
        }
        ensure!(
            d.icmp_rate <= u16::MAX as u32,
            "dataplane.icmp_rate = {}: use 0 (no limit) to 65535 per second per CPU",
            d.icmp_rate
        );
        ensure!(
            (1..=u16::MAX as u32).contains(&d.icmp_burst),
            "dataplane.icmp_burst = {}: use 1 to 65535",
            d.icmp_burst
        );
        for (what, v) in [
            (
                "metrics_max_connections",
                self.agent.metrics_max_connections,
            ),
            ("api_max_connections", self.agent.api_max_connections),
        ] {
            ensure!(
                (1..=MAX_LISTENER_CONNECTIONS).contains(&v),
                "agent.{what} = {v}: use 1 to {MAX_LISTENER_CONNECTIONS}"
            );
        }
        ensure!(
            d.new_flow_rate <= lb_common::ratelimit::MAX_GATE_RATE,
            "dataplane.new_flow_rate = {}: use 0 (no gate) to {} per second per CPU",
            d.new_flow_rate,
            lb_common::ratelimit::MAX_GATE_RATE
        );
        ensure!(
            d.new_flow_burst as u64 <= 4 * d.new_flow_rate as u64,
            "dataplane.new_flow_burst = {}: use 0 (the rate) to 4 times new_flow_rate ({})",
            d.new_flow_burst,
            d.new_flow_rate
        );
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
                (None, Some(_)) | (None, None) => {}
                _ => bail!(
                    "interface {}: give at most one of next_hop_mac and gateway",
                    i.name
                ),
            }
        }
        // Static next hops (each NIC's own) or the kernel's routes (no next hop anywhere):
        // mixing them would leave some backends' way out unclear.
        let static_hops = self
            .interfaces
            .iter()
            .filter(|i| i.next_hop_mac.is_some() || i.gateway.is_some())
            .count();
        ensure!(
            static_hops == 0 || static_hops == self.interfaces.len(),
            "give next_hop_mac or gateway on every [[interface]], or on none (next hops from the kernel's routes)"
        );
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
            ensure!(
                (1..=15).contains(&b.alive_iface.len())
                    && b.alive_iface
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c)),
                "[bgp] alive_iface `{}`: use 1-15 of A-Za-z0-9._- (an interface name)",
                b.alive_iface
            );
        }
        self.desired_state()?;
        Ok(())
    }
}

impl SyncConfig {
    pub(super) fn validate(&self) -> Result<()> {
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
            (100..=1_000_000).contains(&self.changes_rate),
            "[sync] changes_rate = {}: use 100 to 1000000 flows per second",
            self.changes_rate
        );
        ensure!(
            (1..=16_777_216).contains(&self.changes_max),
            "[sync] changes_max = {}: use 1 to 16777216 flows",
            self.changes_max
        );
        ensure!(
            self.startup_wait_secs <= 600,
            "[sync] startup_wait_secs = {}: use 0 to 600",
            self.startup_wait_secs
        );
        // Below 1000 a busy afternoon of changes made while this agent was away would be
        // refused; above 2^48 the bound no longer keeps clocks far from u64::MAX.
        ensure!(
            (1_000..=1 << 48).contains(&self.max_clock_jump),
            "[sync] max_clock_jump = {}: use 1000 to 2^48",
            self.max_clock_jump
        );
        ensure!(
            (1..=MAX_LISTENER_CONNECTIONS).contains(&self.max_connections),
            "[sync] max_connections = {}: use 1 to {MAX_LISTENER_CONNECTIONS}",
            self.max_connections
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
