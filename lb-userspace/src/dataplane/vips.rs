//! VIP entries: the services (`VIPS`, `VIPS_BY_ID`), the VIP index the fast path probes
//! (`VIP_INDEX`), each address's marker entry, and the address filter (`VIP_FILTER`).

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, MapData};
use lb_common::{VipFilter, VipKey, VipMeta, VipSlot, names};

use super::handle::Dataplane;
use super::probe::Probed;

impl Dataplane {
    /// Makes a service reachable. Fill its ring first.
    pub fn set_vip(&mut self, vip: VipKey, meta: VipMeta) -> Result<()> {
        if meta.id >= self.limits.max_vips {
            bail!(
                "VIP id {} is beyond max_vips {}",
                meta.id,
                self.limits.max_vips
            );
        }
        self.check_ring(meta.ring)?;
        if vip.proto == 0 {
            bail!("a VIP needs a protocol (TCP or UDP)");
        }
        let addr = (vip.family, vip.addr);
        let marker = VipKey {
            port: 0,
            proto: 0,
            ..vip
        };
        // Its index slot first (read only): a service that finds none changes nothing.
        let slot = self.vip_index_slot(&vip)?;
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        let old = vips.get(&vip, 0).ok();
        let existed = old.is_some();
        vips.insert(vip, meta, 0).context("writing the VIP")?;
        self.array::<VipSlot>(names::VIP_INDEX)?
            .set(slot, VipSlot { key: vip, meta }, 0)
            .context("writing VIP_INDEX")?;
        let mut by_id = self.array::<VipMeta>(names::VIPS_BY_ID)?;
        if let Some(old) = old.filter(|o| o.id != meta.id) {
            by_id
                .set(old.id, VipMeta::default(), 0)
                .context("clearing VIPS_BY_ID")?;
        }
        by_id
            .set(
                meta.id,
                VipMeta {
                    flags: meta.flags | lb_common::VIP_F_LIVE,
                    ..meta
                },
                0,
            )
            .context("writing VIPS_BY_ID")?;
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        // The marker carries the address's own flags (ICMP echo): keep them.
        let flags = vips.get(&marker, 0).map_or(0, |m| m.flags);
        vips.insert(
            marker,
            VipMeta {
                flags,
                ..VipMeta::default()
            },
            0,
        )
        .context("writing the VIP address marker")?;
        if !existed {
            *self.addresses.entry(addr).or_default() += 1;
        }
        self.write_filter()
    }

    /// `vip`'s probe slots in `VIP_INDEX`, read once.
    fn vip_index_probe(&mut self, vip: &VipKey) -> Result<Probed<VipSlot>> {
        let size = lb_common::vip_index_size(self.limits.max_vips);
        let hash = lb_common::vip_index_hash(vip);
        let probes = (0..lb_common::VIP_PROBES).map(|p| lb_common::vip_index_slot(hash, p, size));
        let index = self.array::<VipSlot>(names::VIP_INDEX)?;
        Probed::read(&index, probes, |s| s.key == *vip, |s| s.key.proto == 0)
    }

    /// Where `vip` goes in `VIP_INDEX`: its own slot, else the first free one of its probes.
    fn vip_index_slot(&mut self, vip: &VipKey) -> Result<u32> {
        self.vip_index_probe(vip)?.placement().with_context(|| {
            format!(
                "the VIP index has no free slot among the {} for this service (max_vips {} gives \
                 {} slots); raise max_vips",
                lb_common::VIP_PROBES,
                self.limits.max_vips,
                lb_common::vip_index_size(self.limits.max_vips)
            )
        })
    }

    /// Sets the flags of a VIP address's marker entry (e.g. `VIP_F_NO_ECHO`); false if the
    /// address has no service (no marker) yet.
    pub fn set_address_flags(&mut self, addr: std::net::IpAddr, flags: u32) -> Result<bool> {
        let (family, words) = lb_common::addr_words(addr);
        let marker = VipKey {
            addr: words,
            port: 0,
            proto: 0,
            family,
        };
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        match vips.get(&marker, 0) {
            Ok(m) if m.flags == flags => Ok(true),
            Ok(m) => {
                vips.insert(marker, VipMeta { flags, ..m }, 0)
                    .context("writing the VIP address marker")?;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// Every VIP service (without the address markers).
    pub fn read_vips(&mut self) -> Result<Vec<(VipKey, VipMeta)>> {
        let vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        Ok(vips
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| k.proto != 0)
            .collect())
    }

    pub fn remove_vip(&mut self, vip: VipKey) -> Result<()> {
        let addr = (vip.family, vip.addr);
        let last_service = self.addresses.get(&addr) == Some(&1);
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        let id = vips.get(&vip, 0).ok().map(|m| m.id);
        vips.remove(&vip).context("removing the VIP")?;
        if let Some(slot) = self.vip_index_probe(&vip)?.own {
            self.array::<VipSlot>(names::VIP_INDEX)?
                .set(slot, VipSlot::default(), 0)
                .context("clearing VIP_INDEX")?;
        }
        if let Some(id) = id {
            // Established flows of its backends now take the slow path and find no VIP.
            self.array::<VipMeta>(names::VIPS_BY_ID)?
                .set(id, VipMeta::default(), 0)
                .context("clearing VIPS_BY_ID")?;
        }
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        if last_service {
            vips.remove(&VipKey {
                port: 0,
                proto: 0,
                ..vip
            })
            .context("removing the address marker")?;
            self.addresses.remove(&addr);
        } else if let Some(n) = self.addresses.get_mut(&addr) {
            *n -= 1;
        }
        self.write_filter()
    }

    fn write_filter(&mut self) -> Result<()> {
        let mut filter = VipFilter::default();
        for &(family, addr) in self.addresses.keys() {
            filter.set(
                VipKey {
                    addr,
                    port: 0,
                    proto: 0,
                    family,
                }
                .filter_bit(),
            );
        }
        self.array(names::VIP_FILTER)?
            .set(0, filter, 0)
            .context("writing the VIP filter")
    }
}
