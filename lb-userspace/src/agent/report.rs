//! What the actor reports: status, VIPs, backends and counters, read from its own state and
//! the maps.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use anyhow::Result;
use tracing::warn;

use super::actor::Agent;
use crate::api::{BackendInfo, CounterInfo, InterfaceStatus, Stats, Status, VipInfo};
use crate::config::format_mac;
use crate::dataplane::monotonic_ns;
use crate::health::Health;
use crate::state::{BackendState, Vip};

impl Agent {
    pub(super) fn status(&mut self) -> Result<Status> {
        let drift = self
            .config
            .desired_state()?
            .changes_to(&self.desired)
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.display().to_string(),
            pin_dir: self.config.agent.pin_dir.display().to_string(),
            adopted: self.dp.adopted(),
            interfaces: self
                .ifaces
                .iter()
                .map(|i| InterfaceStatus {
                    name: i.name.clone(),
                    ifindex: i.ifindex,
                    attachment: i
                        .attachment
                        .map_or("none".into(), |a| format!("{a:?}").to_lowercase()),
                    next_hop_mac: match i.next_hop {
                        Some(m) => format_mac(&m),
                        None if i.routed => "kernel routes".into(),
                        None => "unresolved".into(),
                    },
                    mtu: i.mtu,
                })
                .collect(),
            tunnel_source: self.config.dataplane.tunnel_source.to_string(),
            ring_size: self.config.dataplane.ring_size,
            table_version: self.reconciler.version,
            vips: self.desired.vips.len(),
            backends: self.desired.backend_count(),
            max_flows: self.config.dataplane.max_flows,
            drift,
            metrics: self.config.agent.metrics.map(|m| m.to_string()),
            node_drained: self.node_drained,
            dataplane_fault: self.fault.as_ref().map(ToString::to_string),
            announcing: self
                .announcements()
                .iter()
                .map(ToString::to_string)
                .collect(),
            bgp: self.config.bgp.as_ref().map(|_| self.bgp.clone()),
            sync: self.sync_status(),
            health_encap: self.health_encap(),
            second_chance_secs: self.second_chance_ms() / 1000,
            second_chance_slots: self.second_chance_slots(),
            egress: self.egress_status(),
        })
    }

    pub(super) fn vips(&mut self) -> Result<Vec<VipInfo>> {
        let mut out = Vec::new();
        let installed: Vec<(Vip, u32, bool, usize, usize, Vec<u32>)> = self
            .reconciler
            .vips()
            .iter()
            .map(|(vip, v)| {
                let draining = v
                    .backends
                    .values()
                    .filter(|b| b.spec.state == BackendState::Draining)
                    .count();
                let ids = v.backends.values().map(|b| b.id).collect();
                (
                    *vip,
                    v.id,
                    v.gue,
                    v.backends.len() - draining,
                    draining,
                    ids,
                )
            })
            .collect();
        for (vip, id, gue, active, draining, backends) in installed {
            let c = self.dp.vip_counter_of(id, &backends)?;
            out.push(VipInfo {
                vip,
                id,
                gue,
                active,
                draining,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(out)
    }

    pub(super) fn backends(&mut self, only: Option<Vip>) -> Result<Vec<(BackendInfo, u32)>> {
        if let Some(v) = only {
            self.desired.vip(&v)?;
        }
        let mut rows = Vec::new();
        for (vip, v) in self.reconciler.vips() {
            if only.is_some_and(|o| o != *vip) {
                continue;
            }
            let slots = v.slot_counts();
            for (addr, b) in &v.backends {
                rows.push((*vip, *addr, *b, slots.get(&b.id).copied().unwrap_or(0)));
            }
        }
        let checked: BTreeSet<(Vip, Ipv6Addr)> = self
            .checks
            .borrow()
            .iter()
            .map(|c| (c.vip, c.backend))
            .collect();
        let mut out = Vec::new();
        for (vip, addr, mut b, slots) in rows {
            let c = self.dp.backend_counter(b.id)?;
            // The operator's state; health shows separately (a down backend is drained in
            // the maps but not in `desired`).
            if let Some(d) = self
                .desired
                .vips
                .get(&vip)
                .and_then(|v| v.backends.get(&addr))
            {
                b.spec.state = d.state;
            }
            let (health, health_detail) = match self.health.get(&(vip, addr)) {
                Some(h) => (
                    h.health.to_string(),
                    if h.health == Health::Down {
                        h.detail.clone()
                    } else {
                        String::new()
                    },
                ),
                None if checked.contains(&(vip, addr)) => ("unknown".into(), String::new()),
                None => ("unchecked".into(), String::new()),
            };
            out.push((
                BackendInfo {
                    vip,
                    backend: addr.to_string(),
                    id: b.id,
                    weight: b.spec.weight,
                    state: b.spec.state,
                    slots,
                    flows: 0,
                    health,
                    health_detail,
                    packets: c.packets,
                    bytes: c.bytes,
                },
                b.generation,
            ));
        }
        Ok(out)
    }

    pub(super) fn stats(&mut self) -> Result<Stats> {
        let time_ns = monotonic_ns();
        let counters = self
            .dp
            .counters()?
            .into_iter()
            .map(|(c, v)| CounterInfo {
                name: c.name().into(),
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect();
        let vips = self
            .vips()?
            .into_iter()
            .map(|v| {
                (
                    v.vip,
                    CounterInfo {
                        name: "vip".into(),
                        packets: v.packets,
                        bytes: v.bytes,
                    },
                )
            })
            .collect();
        let backends = self
            .backends(None)?
            .into_iter()
            .map(|(b, _)| {
                (
                    b.vip,
                    b.backend,
                    CounterInfo {
                        name: "backend".into(),
                        packets: b.packets,
                        bytes: b.bytes,
                    },
                )
            })
            .collect();
        Ok(Stats {
            time_ns,
            table_version: self.reconciler.version,
            counters,
            vips,
            backends,
            sync: self.sync_status(),
            health_encap: self.health_encap(),
            egress: self.egress_counters(),
        })
    }

    /// The health-check program's counters, as packets (a failed read is logged, not fatal).
    fn health_encap(&self) -> Vec<CounterInfo> {
        let Some(c) = &self.health_encap else {
            return Vec::new();
        };
        match c.read() {
            Ok(v) => v
                .into_iter()
                .map(|(name, packets)| CounterInfo {
                    name: name.into(),
                    packets,
                    bytes: 0,
                })
                .collect(),
            Err(e) => {
                warn!("reading the health-check counters: {e:#}");
                Vec::new()
            }
        }
    }
}
