//! The egress cache's writer: with next hops from the kernel, each backend address's route
//! and neighbours (`crate::routes`, followed from netlink events) become its `EGRESS` entry:
//! the resolved paths through configured NICs, each with that NIC's MAC and the neighbour's,
//! or unresolved (dropped and counted) while there is none. With static next hops every
//! backend leaves by its ingress NIC's next hop, as before.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;

use anyhow::Result;
use lb_common::{EGRESS_MAX_PATHS, EGRESS_ROUTED, Egress, EgressPath, IfaceConfig, v6_words};
use tracing::{info, warn};

use super::actor::Agent;
use super::nic::Iface;
use crate::api::{EgressInfo, EgressPathInfo};
use crate::config::format_mac;
use crate::dataplane::Dataplane;
use crate::routes::{Path, Routes};

/// The `EGRESS` entry for these paths: the resolved ones through configured NICs (at most
/// `EGRESS_MAX_PATHS`, in the kernel's order), else unresolved.
pub(super) fn entry(paths: &[Path], ifaces: &[Iface]) -> Egress {
    let mut e = Egress::UNRESOLVED;
    let usable = paths.iter().filter_map(|p| {
        let nic = ifaces.iter().find(|i| i.ifindex == p.ifindex)?;
        Some(EgressPath {
            link: IfaceConfig {
                src_mac: nic.src_mac,
                dst_mac: p.mac?,
                mtu: nic.mtu,
                _pad: 0,
            },
            ifindex: nic.ifindex,
            dev: nic.dev,
        })
    });
    for (slot, p) in e.paths.iter_mut().zip(usable.take(EGRESS_MAX_PATHS)) {
        *slot = p;
        e.paths_len += 1;
    }
    if e.paths_len > 0 {
        e.state = EGRESS_ROUTED;
    }
    e
}

/// Writes every address's entry (the dataplane writes it to each backend id of the address).
pub(super) fn write_routes(dp: &mut Dataplane, ifaces: &[Iface], routes: &Routes) -> Result<()> {
    for (addr, paths) in routes {
        dp.set_egress(v6_words(*addr), Some(entry(paths, ifaces)))?;
    }
    Ok(())
}

impl Agent {
    /// The follower's news: rewrites the entries of addresses whose paths changed, and moves
    /// the health checks with them.
    pub(super) fn apply_routes(&mut self, routes: Routes) {
        self.write_changed_routes(routes);
        self.publish();
    }

    /// Backends about to be installed whose address has no route known yet are resolved now,
    /// so their first packets have a way out (the follower takes them over at once). Only what
    /// the kernel already knows: an unresolved neighbour is left to the follower.
    pub(super) fn resolve_new_backends(&mut self, next: &crate::state::DesiredState) {
        if !self.egress.kernel {
            return;
        }
        let new: BTreeSet<Ipv6Addr> = next
            .vips
            .values()
            .flat_map(|v| v.backends.keys().copied())
            .filter(|a| !self.egress.routes.contains_key(a))
            .collect();
        if new.is_empty() {
            return;
        }
        let found = crate::routes::Netlink::requests()
            .and_then(|mut nl| crate::routes::resolve(&mut nl, &new));
        match found {
            Ok(found) => {
                let mut all = self.egress.routes.clone();
                all.extend(found);
                self.write_changed_routes(all);
            }
            Err(e) => warn!("resolving new backends' routes: {e:#}"),
        }
    }

    fn write_changed_routes(&mut self, routes: Routes) {
        for (addr, paths) in &routes {
            if self.egress.routes.get(addr) == Some(paths) {
                continue;
            }
            let e = entry(paths, &self.ifaces);
            if e.paths_len == 0 {
                warn!(backend = %addr, "no resolved next hop through a configured NIC: its packets are dropped (drop_no_next_hop) until there is");
            } else {
                info!(backend = %addr, paths = describe(paths, &self.ifaces), "egress updated");
            }
            if let Err(e) = self.dp.set_egress(v6_words(*addr), Some(e)) {
                error_write(addr, &e);
            }
        }
        for addr in self.egress.routes.keys() {
            if !routes.contains_key(addr)
                && let Err(e) = self.dp.set_egress(v6_words(*addr), None)
            {
                error_write(addr, &e);
            }
        }
        self.egress.routes = routes;
    }

    /// The NIC a backend's health checks leave by: its route's first resolved path (next hops
    /// from the kernel), else 0 (the VIP route's NIC, as with static next hops).
    pub(super) fn health_egress(&self, addr: &Ipv6Addr) -> u32 {
        let paths = self
            .egress
            .routes
            .get(addr)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        entry(paths, &self.ifaces).paths[0].ifindex
    }

    /// Tells the follower which backend addresses to resolve (every backend of every VIP).
    pub(super) fn publish_backend_addrs(&self) {
        let Some(tx) = &self.egress.addrs else { return };
        let want: BTreeSet<Ipv6Addr> = self
            .desired
            .vips
            .values()
            .flat_map(|v| v.backends.keys().copied())
            .collect();
        tx.send_if_modified(|cur| {
            let changed = *cur != want;
            if changed {
                *cur = want;
            }
            changed
        });
    }

    /// Each backend's way out, for `lb status`.
    pub(super) fn egress_status(&self) -> Vec<EgressInfo> {
        let addrs: BTreeSet<Ipv6Addr> = self
            .desired
            .vips
            .values()
            .flat_map(|v| v.backends.keys().copied())
            .collect();
        addrs
            .into_iter()
            .map(|addr| {
                if !self.egress.kernel {
                    return EgressInfo {
                        backend: addr.to_string(),
                        source: "static".into(),
                        paths: Vec::new(),
                    };
                }
                let paths = self.egress.routes.get(&addr).cloned().unwrap_or_default();
                EgressInfo {
                    backend: addr.to_string(),
                    source: "route".into(),
                    paths: paths
                        .iter()
                        .map(|p| EgressPathInfo {
                            interface: nic_name(p.ifindex, &self.ifaces),
                            next_hop: p.neighbour.to_string(),
                            mac: p.mac.map_or("unresolved".into(), |m| format_mac(&m)),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Per-NIC egress counters for `/metrics`: (NIC, XDP_TX, XDP_REDIRECT).
    pub(super) fn egress_counters(
        &mut self,
    ) -> Vec<(String, crate::api::CounterInfo, crate::api::CounterInfo)> {
        let mut out = Vec::new();
        for i in 0..self.ifaces.len() {
            let (name, dev) = (self.ifaces[i].name.clone(), self.ifaces[i].dev);
            if let Ok((tx, redirect)) = self.dp.egress_counters(dev) {
                let info = |name: &str, v: lb_common::CounterValue| crate::api::CounterInfo {
                    name: name.into(),
                    packets: v.packets,
                    bytes: v.bytes,
                };
                out.push((name, info("tx", tx), info("redirect", redirect)));
            }
        }
        out
    }
}

fn nic_name(ifindex: u32, ifaces: &[Iface]) -> String {
    ifaces
        .iter()
        .find(|i| i.ifindex == ifindex)
        .map_or(format!("ifindex {ifindex} (not configured)"), |i| {
            i.name.clone()
        })
}

fn describe(paths: &[Path], ifaces: &[Iface]) -> String {
    paths
        .iter()
        .map(|p| {
            format!(
                "{} via {} ({})",
                nic_name(p.ifindex, ifaces),
                p.neighbour,
                p.mac.map_or("unresolved".into(), |m| format_mac(&m))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn error_write(addr: &Ipv6Addr, e: &anyhow::Error) {
    tracing::error!(backend = %addr, "writing the egress cache: {e:#}");
}
