//! `IFACES`: each NIC's link layer (source and next-hop MAC, egress MTU), in an
//! open-addressed array keyed by ifindex.

use anyhow::{Context, Result, bail};
use lb_common::{IfaceConfig, IfaceSlot, names};

use super::handle::Dataplane;
use super::probe::Probed;

impl Dataplane {
    /// The link layer of the NIC with this ifindex: its slot if it has one, else the first
    /// free slot among its probes (`lb_common::iface_slot`).
    pub fn set_iface(&mut self, ifindex: u32, iface: IfaceConfig) -> Result<()> {
        if ifindex == 0 {
            bail!("ifindex 0 is not a NIC");
        }
        let mut map = self.array::<IfaceSlot>(names::IFACES)?;
        let probed = Probed::read(
            &map,
            iface_probes(ifindex),
            |s| s.ifindex == ifindex,
            |s| s.ifindex == 0,
        )?;
        let Some(slot) = probed.placement() else {
            let taken: Vec<String> = probed.seen.iter().map(|s| s.ifindex.to_string()).collect();
            bail!(
                "no free IFACES slot for ifindex {ifindex}: its {} slots hold the NICs with \
                 ifindex {}",
                lb_common::IFACE_PROBES,
                taken.join(", ")
            );
        };
        map.set(
            slot,
            IfaceSlot {
                ifindex,
                config: iface,
            },
            0,
        )
        .with_context(|| format!("writing IFACES[{slot}] for ifindex {ifindex}"))
    }

    pub fn ifaces(&mut self) -> Result<Vec<(u32, IfaceConfig)>> {
        let map = self.array::<IfaceSlot>(names::IFACES)?;
        Ok(map
            .iter()
            .filter_map(|r| r.ok())
            .filter(|s| s.ifindex != 0)
            .map(|s| (s.ifindex, s.config))
            .collect())
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        let mut map = self.array::<IfaceSlot>(names::IFACES)?;
        let slot = Probed::read(
            &map,
            iface_probes(ifindex),
            |s| s.ifindex == ifindex,
            |_| false,
        )?
        .own
        .with_context(|| format!("ifindex {ifindex} has no IFACES slot"))?;
        map.set(slot, IfaceSlot::default(), 0)
            .with_context(|| format!("clearing IFACES[{slot}]"))
    }
}

/// The `IFACES` probe slots of `ifindex`.
fn iface_probes(ifindex: u32) -> impl Iterator<Item = u32> {
    (0..lb_common::IFACE_PROBES).map(move |p| lb_common::iface_slot(ifindex, p))
}
