//! The dataplane handle: loads the XDP program and reads and writes its maps.
//!
//! This is the only code that touches the maps, so the write order that keeps the dataplane
//! consistent lives in one place: a backend is installed before any ring slot points at it,
//! a VIP's ring is filled before the VIP entry makes it reachable, and a VIP's filter bit is
//! set only once its entries exist.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{
    BACKEND_F_VALID, Backend, ConnEntry, Counter, CounterValue, FlowKey, LbConfig, VipFilter,
    VipKey, VipMeta, globals, names, v6_words,
};

/// Map sizes and the Maglev table size, fixed when the program is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneLimits {
    pub ring_size: u32,
    pub max_vips: u32,
    pub max_rings: u32,
    pub max_backends: u32,
    pub max_conns: u32,
}

impl Default for DataplaneLimits {
    fn default() -> Self {
        Self {
            ring_size: lb_common::DEFAULT_RING_SIZE,
            max_vips: lb_common::DEFAULT_MAX_VIPS,
            max_rings: lb_common::DEFAULT_MAX_RINGS,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_conns: lb_common::DEFAULT_MAX_CONNS,
        }
    }
}

impl DataplaneLimits {
    pub fn validate(&self) -> Result<()> {
        if !lb_common::maglev::is_prime(self.ring_size) {
            bail!(
                "ring size {} is not a prime (65537 is the default)",
                self.ring_size
            );
        }
        let ring_entries = self.ring_size as u64 * self.max_rings as u64;
        if ring_entries > u32::MAX as u64 / 2 {
            bail!(
                "{} rings of {} slots exceed the ring map's size limit",
                self.max_rings,
                self.ring_size
            );
        }
        for (what, v) in [
            ("max_vips", self.max_vips),
            ("max_rings", self.max_rings),
            ("max_backends", self.max_backends),
            ("max_conns", self.max_conns),
        ] {
            if v == 0 {
                bail!("{what} must be at least 1");
            }
        }
        Ok(())
    }
}

/// Sum of a per-CPU counter over all CPUs.
fn sum(values: &aya::maps::PerCpuValues<CounterValue>) -> CounterValue {
    values
        .iter()
        .fold(CounterValue::default(), |acc, v| CounterValue {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        })
}

pub struct Dataplane {
    ebpf: Ebpf,
    limits: DataplaneLimits,
    /// VIP addresses and how many services use each (for the marker entries and the filter).
    addresses: BTreeMap<(u8, [u32; 4]), u32>,
}

pub const PROGRAM_NAME: &str = "lb_xdp";

impl Dataplane {
    /// Loads and verifies the XDP program with these limits (it is not attached).
    pub fn load(limits: DataplaneLimits) -> Result<Self> {
        Self::load_object(crate::EBPF_OBJECT, limits)
    }

    /// Like `load`, from another build of the object (the bench compares variants).
    pub fn load_object(object: &[u8], limits: DataplaneLimits) -> Result<Self> {
        limits.validate()?;
        let ring_entries = limits.ring_size * limits.max_rings;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::RING_SIZE, &limits.ring_size, true)
            .map_max_entries(names::RINGS, ring_entries)
            // Services plus one address marker per VIP address.
            .map_max_entries(names::VIPS, limits.max_vips * 2)
            .map_max_entries(names::VIP_STATS, limits.max_vips)
            .map_max_entries(names::BACKENDS, limits.max_backends)
            .map_max_entries(names::BACKEND_STATS, limits.max_backends)
            .map_max_entries(names::CONNS, limits.max_conns)
            .load(object)
            .context("loading the XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("the verifier rejected the XDP program")?;
        Ok(Self {
            ebpf,
            limits,
            addresses: BTreeMap::new(),
        })
    }

    pub fn limits(&self) -> DataplaneLimits {
        self.limits
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap()
    }

    pub fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap()
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    fn array<T: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, T>> {
        Ok(Array::try_from(self.map(name)?)?)
    }

    fn per_cpu<T: aya::Pod>(&mut self, name: &str) -> Result<PerCpuArray<&mut MapData, T>> {
        Ok(PerCpuArray::try_from(self.map(name)?)?)
    }

    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<()> {
        self.array::<LbConfig>(names::CONFIG)?
            .set(0, cfg, 0)
            .context("writing LB_CONFIG")
    }

    /// Installs (or updates) backend `id`'s tunnel address.
    pub fn set_backend(&mut self, id: u32, addr: Ipv6Addr) -> Result<()> {
        self.check_backend_id(id)?;
        let b = Backend {
            addr: v6_words(addr),
            flags: BACKEND_F_VALID,
            _pad: 0,
        };
        self.array(names::BACKENDS)?
            .set(id, b, 0)
            .with_context(|| format!("writing backend {id}"))
    }

    /// Uninstalls backend `id`: connection entries pointing at it fall back to Maglev.
    /// Call only once no ring slot points at it.
    pub fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.check_backend_id(id)?;
        self.array(names::BACKENDS)?
            .set(id, Backend::default(), 0)
            .context("clearing backend")
    }

    fn check_backend_id(&self, id: u32) -> Result<()> {
        if id >= self.limits.max_backends {
            bail!(
                "backend id {id} is beyond max_backends {}",
                self.limits.max_backends
            );
        }
        Ok(())
    }

    fn check_ring(&self, ring: u32) -> Result<()> {
        if ring >= self.limits.max_rings {
            bail!("ring {ring} is beyond max_rings {}", self.limits.max_rings);
        }
        Ok(())
    }

    /// Writes a whole ring (`slots.len()` must be the ring size).
    pub fn write_ring(&mut self, ring: u32, slots: &[u32]) -> Result<()> {
        if slots.len() != self.limits.ring_size as usize {
            bail!(
                "a ring has {} slots, got {}",
                self.limits.ring_size,
                slots.len()
            );
        }
        self.write_ring_slots(
            ring,
            slots
                .iter()
                .copied()
                .enumerate()
                .map(|(i, s)| (i as u32, s)),
        )
    }

    /// Writes the given `(slot, backend id)` pairs of one ring.
    pub fn write_ring_slots(
        &mut self,
        ring: u32,
        slots: impl IntoIterator<Item = (u32, u32)>,
    ) -> Result<()> {
        self.check_ring(ring)?;
        let m = self.limits.ring_size;
        let mut rings = self.array::<u32>(names::RINGS)?;
        for (slot, id) in slots {
            if slot >= m {
                bail!("slot {slot} is beyond the ring size {m}");
            }
            rings
                .set(ring * m + slot, id, 0)
                .context("writing a ring slot")?;
        }
        Ok(())
    }

    pub fn read_ring(&mut self, ring: u32) -> Result<Vec<u32>> {
        self.check_ring(ring)?;
        let m = self.limits.ring_size;
        let rings = self.array::<u32>(names::RINGS)?;
        (0..m)
            .map(|s| rings.get(&(ring * m + s), 0).context("reading a ring slot"))
            .collect()
    }

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
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        let existed = vips.get(&vip, 0).is_ok();
        vips.insert(vip, meta, 0).context("writing the VIP")?;
        vips.insert(marker, VipMeta::default(), 0)
            .context("writing the VIP address marker")?;
        if !existed {
            *self.addresses.entry(addr).or_default() += 1;
        }
        self.write_filter()
    }

    pub fn remove_vip(&mut self, vip: VipKey) -> Result<()> {
        let addr = (vip.family, vip.addr);
        let last_service = self.addresses.get(&addr) == Some(&1);
        let mut vips: HashMap<&mut MapData, VipKey, VipMeta> =
            HashMap::try_from(self.map(names::VIPS)?)?;
        vips.remove(&vip).context("removing the VIP")?;
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

    /// A global counter, summed over CPUs.
    pub fn counter(&mut self, c: Counter) -> Result<CounterValue> {
        Ok(sum(&self
            .per_cpu::<CounterValue>(names::STATS)?
            .get(&(c as u32), 0)?))
    }

    /// All global counters, summed over CPUs.
    pub fn counters(&mut self) -> Result<Vec<(Counter, CounterValue)>> {
        Counter::ALL
            .iter()
            .map(|&c| Ok((c, self.counter(c)?)))
            .collect()
    }

    pub fn vip_counter(&mut self, id: u32) -> Result<CounterValue> {
        Ok(sum(&self
            .per_cpu::<CounterValue>(names::VIP_STATS)?
            .get(&id, 0)?))
    }

    pub fn backend_counter(&mut self, id: u32) -> Result<CounterValue> {
        Ok(sum(&self
            .per_cpu::<CounterValue>(names::BACKEND_STATS)?
            .get(&id, 0)?))
    }

    /// The connection-table entry of a flow, if any.
    pub fn conn(&mut self, key: &FlowKey) -> Result<Option<ConnEntry>> {
        let conns: HashMap<&mut MapData, FlowKey, ConnEntry> =
            HashMap::try_from(self.map(names::CONNS)?)?;
        match conns.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Number of connection-table entries (walks the table).
    pub fn conn_count(&mut self) -> Result<usize> {
        let conns: HashMap<&mut MapData, FlowKey, ConnEntry> =
            HashMap::try_from(self.map(names::CONNS)?)?;
        Ok(conns.keys().filter(|k| k.is_ok()).count())
    }
}
