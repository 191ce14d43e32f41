//! `EGRESS` (each backend's way out, by backend id), `EGRESS_DEVS` (the NICs redirects may
//! use) and `EGRESS_STATS` (per-NIC counters). The handle keeps the way out per backend
//! address and writes it for every backend id of that address: when a backend is installed
//! (before any ring slot names it, so its first packet already has a way out) and whenever the
//! agent learns a new route or MAC.

use anyhow::{Context, Result};
use aya::maps::{PerCpuArray, xdp::DevMap};
use lb_common::{CounterValue, EGRESS_MAX_DEVS, Egress, names};

use super::handle::Dataplane;

impl Dataplane {
    /// The way out of backends whose address has none of its own (`set_egress`): `INGRESS`
    /// (the NIC's static next hop, the default) or `UNRESOLVED` (next hops from the kernel).
    pub fn set_egress_default(&mut self, e: Egress) -> Result<()> {
        self.egress_default = e;
        self.rewrite_egress(|dp, addr| !dp.egress_by_addr.contains_key(addr))
    }

    /// The way out of every backend with tunnel address `addr` (None: back to the default).
    pub fn set_egress(&mut self, addr: [u32; 4], e: Option<Egress>) -> Result<()> {
        match e {
            Some(e) => self.egress_by_addr.insert(addr, e),
            None => self.egress_by_addr.remove(&addr),
        };
        self.rewrite_egress(|_, a| *a == addr)
    }

    /// What `EGRESS` gets for a backend at `addr`.
    pub(super) fn egress_for(&self, addr: &[u32; 4]) -> Egress {
        self.egress_by_addr
            .get(addr)
            .copied()
            .unwrap_or(self.egress_default)
    }

    pub(super) fn write_egress(&mut self, id: u32, e: &Egress) -> Result<()> {
        // A build from before the egress cache (the bench compares them) behaves as
        // `EGRESS_INGRESS` everywhere: nothing to write for that.
        if e.state == lb_common::EGRESS_INGRESS && self.ebpf.map(names::EGRESS).is_none() {
            return Ok(());
        }
        self.array::<Egress>(names::EGRESS)?
            .set(id, e, 0)
            .with_context(|| format!("writing EGRESS[{id}]"))
    }

    fn rewrite_egress(&mut self, which: impl Fn(&Self, &[u32; 4]) -> bool) -> Result<()> {
        let ids: Vec<(u32, Egress)> = self
            .backend_addrs
            .iter()
            .filter(|(_, a)| which(self, a))
            .map(|(id, a)| (*id, self.egress_for(a)))
            .collect();
        for (id, e) in ids {
            self.write_egress(id, &e)?;
        }
        Ok(())
    }

    /// What `EGRESS[id]` holds now.
    pub fn egress(&mut self, id: u32) -> Result<Egress> {
        Ok(self.array::<Egress>(names::EGRESS)?.get(&id, 0)?)
    }

    /// Puts the NIC `ifindex` in `EGRESS_DEVS[dev]`, where redirects to it look it up.
    pub fn set_egress_dev(&mut self, dev: u32, ifindex: u32) -> Result<()> {
        let mut map = DevMap::try_from(self.map(names::EGRESS_DEVS)?)?;
        map.set(dev, ifindex, None, 0)
            .with_context(|| format!("writing EGRESS_DEVS[{dev}] = ifindex {ifindex}"))
    }

    /// Packets the egress step sent through NIC slot `dev`: (XDP_TX, XDP_REDIRECT).
    pub fn egress_counters(&mut self, dev: u32) -> Result<(CounterValue, CounterValue)> {
        let map: PerCpuArray<_, CounterValue> =
            PerCpuArray::try_from(self.map(names::EGRESS_STATS)?)?;
        let sum = |i: u32| -> Result<CounterValue> {
            Ok(map
                .get(&i, 0)?
                .iter()
                .fold(CounterValue::default(), |a, v| CounterValue {
                    packets: a.packets + v.packets,
                    bytes: a.bytes + v.bytes,
                }))
        };
        anyhow::ensure!(dev < EGRESS_MAX_DEVS, "egress NIC slot {dev} out of range");
        Ok((sum(dev * 2)?, sum(dev * 2 + 1)?))
    }
}
