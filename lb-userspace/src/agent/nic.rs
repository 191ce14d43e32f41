//! The NICs the program is attached to: their link layer in `IFACES`, and the watchdog's check.

use std::sync::Arc;

use anyhow::Result;
use lb_common::IfaceConfig;
use tracing::{info, warn};

use super::fault::NicFault;
use crate::config::{InterfaceConfig, MIN_EGRESS_MTU};
use crate::dataplane::{Attachment, Dataplane};
use crate::ifctl::IfaceControl;
use crate::neighbour;

pub(super) struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub attachment: Option<Attachment>,
    pub src_mac: [u8; 6],
    pub next_hop: Option<[u8; 6]>,
    /// Next hops from the kernel's routes: `IFACES` holds only the NIC's MAC and MTU (its next
    /// hop is never used: every backend's `EGRESS` entry is routed or unresolved).
    pub routed: bool,
    /// The NIC's slot in `EGRESS_DEVS` (its place in the config).
    pub dev: u32,
    /// Largest outer IP packet this NIC may send (`[[interface]] mtu`, else the NIC's MTU).
    pub mtu: u16,
    /// The watchdog's checks go through this socket, opened at start: out of descriptors,
    /// a fresh lookup would fail and every NIC would look gone.
    pub ctl: Arc<IfaceControl>,
}

impl Iface {
    /// Points the NIC's encapsulated packets at `mac`; true if that changed anything.
    pub fn set_next_hop(&mut self, dp: &mut Dataplane, mac: [u8; 6]) -> Result<bool> {
        if self.next_hop == Some(mac) {
            return Ok(false);
        }
        self.write(dp, mac)?;
        self.next_hop = Some(mac);
        Ok(true)
    }

    /// Next hops from the kernel: the NIC's `IFACES` entry (MAC, MTU) without a next hop.
    pub fn set_routed(&mut self, dp: &mut Dataplane) -> Result<()> {
        self.routed = true;
        self.write(dp, [0; 6])
    }

    /// A new egress MTU; written at once if the next hop is known.
    pub fn set_mtu(&mut self, dp: &mut Dataplane, mtu: u16) -> Result<()> {
        if self.mtu != mtu {
            self.mtu = mtu;
            if let Some(mac) = self.next_hop {
                self.write(dp, mac)?;
            } else if self.routed {
                self.write(dp, [0; 6])?;
            }
            info!(iface = self.name, mtu, "egress MTU set");
        }
        Ok(())
    }

    fn write(&self, dp: &mut Dataplane, mac: [u8; 6]) -> Result<()> {
        dp.set_iface(
            self.ifindex,
            IfaceConfig {
                src_mac: self.src_mac,
                dst_mac: mac,
                mtu: self.mtu,
                _pad: 0,
            },
        )
    }

    /// Whether the NIC is still there, with the index we attached to, and up.
    pub fn check(&self) -> Option<NicFault> {
        match self.ctl.index(&self.name) {
            Ok(idx) if idx == self.ifindex => {}
            Ok(_) => return Some(NicFault::Replaced(self.name.clone())),
            Err(_) => return Some(NicFault::Gone(self.name.clone())),
        }
        (!self.ctl.is_up(&self.name).unwrap_or(false)).then(|| NicFault::Down(self.name.clone()))
    }
}

/// What the actor keeps of the egress cache (`agent::egress` writes it).
pub(super) struct EgressState {
    /// Next hops from the kernel's routes (no static next hop configured).
    pub kernel: bool,
    /// The last routes the follower reported, by backend address.
    pub routes: crate::routes::Routes,
    /// The backend addresses the follower resolves (None: static next hops, no follower).
    pub addrs: Option<tokio::sync::watch::Sender<std::collections::BTreeSet<std::net::Ipv6Addr>>>,
}

/// The too-big limit of each NIC (`IFACES` mtu, checked on the NIC a packet arrives on).
/// Static next hops: each NIC's own egress MTU, since packets leave by the NIC they came in.
/// From the kernel's routes a packet may leave by any of them: the smallest.
pub(super) fn egress_mtus(cfg: &crate::config::Config) -> Result<Vec<u16>> {
    let mtus = cfg
        .interfaces
        .iter()
        .map(egress_mtu)
        .collect::<Result<Vec<u16>>>()?;
    if !cfg.kernel_next_hops() {
        return Ok(mtus);
    }
    let min = mtus.iter().copied().min().unwrap_or(0);
    Ok(vec![min; mtus.len()])
}

/// The egress MTU of a NIC: the config's, else the NIC's own.
pub(super) fn egress_mtu(cfg: &InterfaceConfig) -> Result<u16> {
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => {
            let m = neighbour::mtu(&cfg.name)?;
            if m < MIN_EGRESS_MTU {
                warn!(
                    iface = cfg.name,
                    mtu = m,
                    "the NIC's MTU is below {MIN_EGRESS_MTU} bytes: IPv6 clients cannot be served through it",
                );
            }
            m
        }
    };
    Ok(mtu.min(u16::MAX as u32) as u16)
}
