//! The desired state: which VIPs exist and which backends serve them, with weights and drain
//! state. Operators change it one `Change` at a time (CLI, API) or all at once (config file);
//! either way it is validated here, and a refused change leaves it untouched.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;

use anyhow::{Result, anyhow, ensure};
use lb_common::maglev::MAX_WEIGHT;
use serde::{Deserialize, Serialize};

/// A backend's tunnel endpoint, checked for use as an outer IPv6 destination.
pub fn parse_backend(s: &str) -> Result<Ipv6Addr> {
    let addr: Ipv6Addr = s.parse().map_err(|_| {
        anyhow!("backend `{s}` is not an IPv6 address (backends are reached through IPv6 tunnels)")
    })?;
    check_backend(&addr)?;
    Ok(addr)
}

/// Refuses addresses a tunnel cannot be sent to.
pub fn check_backend(addr: &Ipv6Addr) -> Result<()> {
    ensure!(
        !addr.is_unspecified() && !addr.is_multicast() && !addr.is_loopback(),
        "backend {addr} cannot be a tunnel endpoint"
    );
    Ok(())
}

/// The weight of a backend given without one (config file, CLI, control API).
pub const DEFAULT_WEIGHT: u32 = 100;

/// [`DEFAULT_WEIGHT`], for serde's `default = "..."`.
pub fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

pub fn check_weight(weight: u32) -> Result<()> {
    ensure!(
        (1..=MAX_WEIGHT).contains(&weight),
        "weight {weight} is outside 1..={MAX_WEIGHT} (drain a backend to stop new flows to it)"
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// In the Maglev table: takes new flows.
    #[default]
    Active,
    /// Out of the Maglev table: no new flows; pinned flows continue until they end.
    Draining,
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub weight: u32,
    pub state: BackendState,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipSpec {
    pub gue: bool,
    pub backends: BTreeMap<Ipv6Addr, BackendSpec>,
}

/// Capacity the dataplane was loaded with; the state never asks for more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub vips: u32,
    pub backends: u32,
    /// Backends per VIP: fewer than the Maglev table has slots.
    pub backends_per_vip: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub vips: BTreeMap<Vip, VipSpec>,
}

/// One operator change. Its JSON form is the control API's `POST /v1/change` body, e.g.
/// `{"op": "add_backend", "vip": "192.0.2.10:80/tcp", "backend": "2001:db8::1"}`; an omitted
/// `gue`, `weight` or `state` takes its default. Deserializing checks the VIP;
/// [`Change::validate`] (run by [`DesiredState::apply`]) checks the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    AddVip {
        vip: Vip,
        #[serde(default)]
        gue: bool,
    },
    RemoveVip {
        vip: Vip,
    },
    AddBackend {
        vip: Vip,
        backend: Ipv6Addr,
        #[serde(default = "default_weight")]
        weight: u32,
        #[serde(default)]
        state: BackendState,
    },
    RemoveBackend {
        vip: Vip,
        backend: Ipv6Addr,
    },
    SetState {
        vip: Vip,
        backend: Ipv6Addr,
        state: BackendState,
    },
    SetWeight {
        vip: Vip,
        backend: Ipv6Addr,
        weight: u32,
    },
}

impl Change {
    /// Checks what a change carries by itself, before it meets a state: a backend must be a
    /// usable tunnel endpoint and a weight in range (a `Vip` is checked when it is parsed).
    pub fn validate(&self) -> Result<()> {
        match self {
            Change::AddVip { vip, .. } => check_vip_addr(&vip.addr),
            Change::RemoveVip { .. } => Ok(()),
            Change::AddBackend {
                backend, weight, ..
            }
            | Change::SetWeight {
                backend, weight, ..
            } => {
                check_backend(backend)?;
                check_weight(*weight)
            }
            Change::RemoveBackend { backend, .. } | Change::SetState { backend, .. } => {
                check_backend(backend)
            }
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Change::AddVip { vip, gue } => {
                write!(f, "add VIP {vip}{}", if *gue { " (GUE)" } else { "" })
            }
            Change::RemoveVip { vip } => write!(f, "remove VIP {vip}"),
            Change::AddBackend {
                vip,
                backend,
                weight,
                state,
            } => write!(
                f,
                "add backend {backend} to {vip} (weight {weight}, {state})"
            ),
            Change::RemoveBackend { vip, backend } => {
                write!(f, "remove backend {backend} from {vip}")
            }
            Change::SetState {
                vip,
                backend,
                state,
            } => write!(f, "set backend {backend} of {vip} {state}"),
            Change::SetWeight {
                vip,
                backend,
                weight,
            } => write!(f, "set backend {backend} of {vip} to weight {weight}"),
        }
    }
}

/// A refusal that names a missing or an already existing object; the control API answers it
/// with 404 or 409 (any other refusal is a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    Conflict,
}

#[derive(Debug)]
pub struct Refused {
    pub kind: Refusal,
    pub message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

pub fn not_found(message: String) -> anyhow::Error {
    Refused {
        kind: Refusal::NotFound,
        message,
    }
    .into()
}

pub fn conflict(message: String) -> anyhow::Error {
    Refused {
        kind: Refusal::Conflict,
        message,
    }
    .into()
}

impl DesiredState {
    /// A VIP of this state, or the refusal to use for an unknown one.
    pub fn vip(&self, vip: &Vip) -> Result<&VipSpec> {
        self.vips
            .get(vip)
            .ok_or_else(|| not_found(format!("no VIP {vip} (see `lb vip list`)")))
    }

    fn vip_mut(&mut self, vip: &Vip) -> Result<&mut VipSpec> {
        self.vip(vip)?;
        Ok(self.vips.get_mut(vip).expect("checked"))
    }

    fn backend_mut(&mut self, vip: &Vip, backend: &Ipv6Addr) -> Result<&mut BackendSpec> {
        self.vip_mut(vip)?.backends.get_mut(backend).ok_or_else(|| {
            not_found(format!(
                "VIP {vip} has no backend {backend} (see `lb backend list`)"
            ))
        })
    }

    pub fn backend_count(&self) -> usize {
        self.vips.values().map(|v| v.backends.len()).sum()
    }

    /// Applies one change, or refuses it with the reason and changes nothing.
    pub fn apply(&mut self, change: &Change, cap: &Capacity) -> Result<()> {
        change.validate()?;
        match change {
            Change::AddVip { vip, gue } => {
                if self.vips.contains_key(vip) {
                    return Err(conflict(format!("VIP {vip} already exists")));
                }
                ensure!(
                    (self.vips.len() as u32) < cap.vips,
                    "cannot add VIP {vip}: all {} VIP slots are in use (dataplane.max_vips)",
                    cap.vips
                );
                self.vips.insert(
                    *vip,
                    VipSpec {
                        gue: *gue,
                        backends: BTreeMap::new(),
                    },
                );
            }
            Change::RemoveVip { vip } => {
                self.vip(vip)?;
                self.vips.remove(vip);
            }
            Change::AddBackend {
                vip,
                backend,
                weight,
                state,
            } => {
                let total = self.backend_count() as u32;
                let spec = self.vip_mut(vip)?;
                if spec.backends.contains_key(backend) {
                    return Err(conflict(format!("VIP {vip} already has backend {backend}")));
                }
                ensure!(
                    (spec.backends.len() as u32) < cap.backends_per_vip,
                    "VIP {vip} has {} backends, the most its Maglev table takes",
                    spec.backends.len()
                );
                ensure!(
                    total < cap.backends,
                    "cannot add backend {backend}: all {} backend slots are in use (dataplane.max_backends)",
                    cap.backends
                );
                spec.backends.insert(
                    *backend,
                    BackendSpec {
                        weight: *weight,
                        state: *state,
                    },
                );
            }
            Change::RemoveBackend { vip, backend } => {
                self.backend_mut(vip, backend)?;
                self.vip_mut(vip)?.backends.remove(backend);
            }
            Change::SetState {
                vip,
                backend,
                state,
            } => self.backend_mut(vip, backend)?.state = *state,
            Change::SetWeight {
                vip,
                backend,
                weight,
            } => self.backend_mut(vip, backend)?.weight = *weight,
        }
        Ok(())
    }

    /// The changes that turn `self` into `to`, in an order `apply` accepts: removals first
    /// (they free capacity), then additions and updates.
    pub fn changes_to(&self, to: &DesiredState) -> Vec<Change> {
        let mut removals = Vec::new();
        let mut rest = Vec::new();
        for (vip, spec) in &self.vips {
            match to.vips.get(vip) {
                None => removals.push(Change::RemoveVip { vip: *vip }),
                Some(new) if new.gue != spec.gue => {
                    // The encapsulation of a live VIP does not change in place: re-create it.
                    removals.push(Change::RemoveVip { vip: *vip });
                }
                Some(new) => {
                    for b in spec.backends.keys() {
                        if !new.backends.contains_key(b) {
                            removals.push(Change::RemoveBackend {
                                vip: *vip,
                                backend: *b,
                            });
                        }
                    }
                }
            }
        }
        for (vip, new) in &to.vips {
            let old = self.vips.get(vip).filter(|o| o.gue == new.gue);
            if old.is_none() {
                rest.push(Change::AddVip {
                    vip: *vip,
                    gue: new.gue,
                });
            }
            for (b, spec) in &new.backends {
                match old.and_then(|o| o.backends.get(b)) {
                    None => rest.push(Change::AddBackend {
                        vip: *vip,
                        backend: *b,
                        weight: spec.weight,
                        state: spec.state,
                    }),
                    Some(cur) => {
                        if cur.weight != spec.weight {
                            rest.push(Change::SetWeight {
                                vip: *vip,
                                backend: *b,
                                weight: spec.weight,
                            });
                        }
                        if cur.state != spec.state {
                            rest.push(Change::SetState {
                                vip: *vip,
                                backend: *b,
                                state: spec.state,
                            });
                        }
                    }
                }
            }
        }
        removals.extend(rest);
        removals
    }
}

pub mod history;
#[cfg(test)]
mod tests;
mod vip;

pub use vip::{Proto, Vip, check_vip_addr};
