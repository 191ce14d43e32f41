//! A reload: the agent re-reads its config file. Alone, the file is the desired state; with
//! peer sync the fleet's state rules and a reload applies the file's node-local settings,
//! listing the rest (docs/sync.md, "Reloading a fleet member").

use anyhow::{Result, bail};
use tracing::{info, warn};

use super::actor::{Agent, flow_gate, lb_config};
use super::nic::egress_mtus;
use crate::api::{ReloadReply, ReloadRequest};
use crate::config::{Config, parse_mac};
use crate::neighbour;
use crate::reconcile::ApplyReport;
use crate::state::{Change, Refusal, Refused};

impl Agent {
    /// Re-reads the config file. Alone, the file is the desired state; with peer sync the
    /// fleet's state rules, and the file's differences from it apply only with `req.fleet`.
    pub fn reload(&mut self, req: &ReloadRequest) -> Result<ReloadReply> {
        let (new, settings) = Config::load_with_settings(&self.config_path)?;
        if let Some(what) = self.config.restart_only_difference(&new) {
            bail!("{what} changed; that needs an agent restart (and, for map sizes, `lb detach`)");
        }
        let fleet = self.fleet.is_some();
        if req.fleet && !fleet {
            bail!("a fleet reload needs peer sync ([sync]); this agent stands alone");
        }
        if let Some(v) = req.expect_version.filter(|v| *v != self.reconciler.version) {
            return Err(Refused {
                kind: Refusal::Conflict,
                message: format!(
                    "the table version is {} now, not {v}: the state changed since the plan; \
                     look at the new plan (lb reload --dry-run) and run again",
                    self.reconciler.version
                ),
            }
            .into());
        }
        let desired = new.desired_state()?;
        let diff = self.desired.changes_to(&desired);
        let (apply, held) = if fleet && !req.fleet {
            (Vec::new(), diff)
        } else {
            (diff, Vec::new())
        };
        let strings = |cs: &[Change]| cs.iter().map(ToString::to_string).collect::<Vec<_>>();
        let mut reply = ReloadReply {
            dry_run: req.dry_run,
            settings: self.settings.changes_to(&settings),
            changes: strings(&apply),
            fleet_differences: strings(&held),
            report: ApplyReport::default(),
            table_version: self.reconciler.version,
        };
        if req.dry_run {
            return Ok(reply);
        }
        // Next hops first (a resolution failure must not leave half a reload behind).
        let mut hops = Vec::new();
        for (iface, cfg) in self.ifaces.iter().zip(&new.interfaces) {
            let mac = match (&cfg.next_hop_mac, cfg.gateway) {
                (Some(m), _) => Some(parse_mac(m)?),
                (None, Some(gw)) => neighbour::lookup(gw, &iface.name)?.or(iface.next_hop),
                _ => None,
            };
            hops.push(mac);
        }
        let old = std::mem::replace(&mut self.config, new.clone());
        // With peers, the applied differences become operator changes the fleet shares; with
        // none, the same commit rewrites the per-VIP settings (echo) from the new file.
        let installed = if fleet {
            self.commit_changes(&apply)
        } else {
            self.install(desired)
        };
        reply.report = match installed {
            Ok(r) => r,
            Err(e) => {
                self.config = old;
                return Err(e);
            }
        };
        self.settings = settings;
        self.dp.set_config(&lb_config(&new))?;
        self.dp.set_flow_gate(flow_gate(&new))?;
        let mtus = egress_mtus(&new)?;
        for ((iface, mac), mtu) in self.ifaces.iter_mut().zip(hops).zip(mtus) {
            iface.set_mtu(&mut self.dp, mtu)?;
            if let Some(mac) = mac {
                iface.set_next_hop(&mut self.dp, mac)?;
            }
        }
        for s in &reply.settings {
            info!("reload: setting {s}");
        }
        for c in &reply.changes {
            info!("reload: {c}");
        }
        if !reply.fleet_differences.is_empty() {
            warn!(
                "reload: {} difference(s) between the config file and the fleet's state not \
                 applied (the fleet's state rules; `lb reload --fleet` makes them fleet-wide)",
                reply.fleet_differences.len()
            );
        }
        // New check settings take effect now.
        self.publish();
        reply.table_version = self.reconciler.version;
        Ok(reply)
    }
}
