//! The dataplane handle: loads the XDP program and reads and writes its maps.
//!
//! This is the only code that touches the maps, so the write order that keeps the dataplane
//! consistent lives in one place: a backend is installed before any ring slot points at it,
//! a VIP's ring is filled before the VIP entry makes it reachable, and a VIP's filter bit is
//! set only once its entries exist.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuValues, RingBuf},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    Backend, ConnEntry, Counter, CounterValue, FlowKey, IfaceConfig, IfaceSlot, LbConfig,
    VipFilter, VipKey, VipMeta, VipSlot, globals, names,
};

/// Largest `max_vips` (the VIP index has 8 slots per VIP).
pub const MAX_VIPS_LIMIT: u32 = 1 << 20;

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
        if self.max_vips > MAX_VIPS_LIMIT {
            bail!(
                "max_vips {} is over the limit of {MAX_VIPS_LIMIT}",
                self.max_vips
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

/// The size every map must have for these limits: `(name, key size, value size, entries)`.
/// Checked against pinned maps before a new agent adopts them.
fn map_layout(limits: &DataplaneLimits) -> Vec<(&'static str, usize, usize, u32)> {
    use std::mem::size_of;
    vec![
        (names::CONFIG, 4, size_of::<LbConfig>(), 1),
        (names::VIP_FILTER, 4, size_of::<VipFilter>(), 1),
        // Services plus one address marker per VIP address.
        (
            names::VIPS,
            size_of::<VipKey>(),
            size_of::<VipMeta>(),
            limits.max_vips * 2,
        ),
        (names::VIPS_BY_ID, 4, size_of::<VipMeta>(), limits.max_vips),
        (
            names::VIP_INDEX,
            4,
            size_of::<VipSlot>(),
            lb_common::vip_index_size(limits.max_vips),
        ),
        (
            names::BACKENDS,
            4,
            size_of::<Backend>(),
            limits.max_backends,
        ),
        (names::RINGS, 4, 4, limits.ring_size * limits.max_rings),
        (
            names::CONNS,
            size_of::<FlowKey>(),
            size_of::<ConnEntry>(),
            limits.max_conns,
        ),
        (
            names::STATS,
            4,
            size_of::<CounterValue>(),
            lb_common::Counter::COUNT,
        ),
        (
            names::VIP_STATS,
            4,
            size_of::<CounterValue>(),
            limits.max_vips,
        ),
        (
            names::BACKEND_STATS,
            4,
            size_of::<CounterValue>(),
            limits.max_backends,
        ),
        (
            names::IFACES,
            4,
            size_of::<IfaceSlot>(),
            lb_common::DEFAULT_MAX_IFACES,
        ),
    ]
}

pub struct Dataplane {
    ebpf: Ebpf,
    limits: DataplaneLimits,
    /// Where maps and links are pinned (None: nothing pinned, the tests' throwaway dataplanes).
    pin_dir: Option<PathBuf>,
    /// Whether the maps were adopted from a previous agent rather than created empty.
    adopted: bool,
    /// VIP addresses and how many services use each (for the marker entries and the filter).
    addresses: BTreeMap<(u8, [u32; 4]), u32>,
}

pub const PROGRAM_NAME: &str = "lb_xdp";

/// How a NIC ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    Driver,
    /// Driver mode failed; the kernel's generic (skb) XDP runs the program, much slower.
    Generic,
    /// A previous agent's link, now running this agent's program (swapped atomically).
    Adopted,
}

impl Dataplane {
    /// Loads and verifies the XDP program with these limits (it is not attached).
    pub fn load(limits: DataplaneLimits) -> Result<Self> {
        Self::load_object(crate::EBPF_OBJECT, limits)
    }

    /// Like `load`, from another build of the object (the bench compares variants).
    pub fn load_object(object: &[u8], limits: DataplaneLimits) -> Result<Self> {
        Self::load_inner(object, limits, None)
    }

    /// Loads the program with its maps pinned under `pin_dir`. Maps a previous agent pinned
    /// there are reused as they are, state and all, after checking that their layout matches
    /// this build and these limits.
    pub fn load_pinned(limits: DataplaneLimits, pin_dir: &Path) -> Result<Self> {
        Self::load_inner(crate::EBPF_OBJECT, limits, Some(pin_dir))
    }

    fn load_inner(object: &[u8], limits: DataplaneLimits, pin_dir: Option<&Path>) -> Result<Self> {
        limits.validate()?;
        let mut adopted = false;
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the pin directory {}", dir.display()))?;
            adopted = check_pinned_layout(dir, &limits)?;
        }
        let layout = map_layout(&limits);
        let pin_paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => names::PINNED.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(globals::RING_SIZE, &limits.ring_size, true);
        let vip_index_size = lb_common::vip_index_size(limits.max_vips);
        loader.override_global(globals::VIP_INDEX_SIZE, &vip_index_size, true);
        for (name, _, _, entries) in &layout {
            loader.map_max_entries(name, *entries);
        }
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("the verifier rejected the XDP program")?;
        let mut dp = Self {
            ebpf,
            limits,
            pin_dir: pin_dir.map(Path::to_path_buf),
            adopted,
            addresses: BTreeMap::new(),
        };
        if adopted {
            for (key, _) in dp.read_vips()? {
                *dp.addresses.entry((key.family, key.addr)).or_default() += 1;
            }
        }
        Ok(dp)
    }

    /// True when the maps (and their state) came from a previous agent.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    fn link_pin(&self, iface: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| link_pin_path(d, iface))
    }

    /// Attaches the program to `iface`. A link a previous agent pinned for this NIC is kept and
    /// atomically switched to this program, so forwarding never stops; otherwise a new link is
    /// made (driver mode, falling back to generic) and pinned.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment> {
        let pin = self.link_pin(iface);
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(pin)
                .with_context(|| format!("opening the pinned link {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(link))
                .context("the pinned link is not an XDP link")?;
            self.program_mut()
                .attach_to_link(link)
                .with_context(|| format!("switching {iface}'s XDP link to the new program"))?;
            return Ok(Attachment::Adopted);
        }
        let (id, how) = match self.program_mut().attach(iface, mode) {
            Ok(id) => (
                id,
                if mode == XdpMode::Skb {
                    Attachment::Generic
                } else {
                    Attachment::Driver
                },
            ),
            Err(e) if mode == XdpMode::Driver => {
                tracing::warn!(
                    "driver-mode XDP failed on {iface} ({e}); falling back to generic mode, which is much slower"
                );
                let id = self
                    .program_mut()
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching to {iface}"))?;
                (id, Attachment::Generic)
            }
            Err(e) => return Err(e).with_context(|| format!("attaching to {iface}")),
        };
        if let Some(pin) = pin {
            let link = self.program_mut().take_link(id)?;
            let link = FdLink::try_from(link).context(
                "the kernel attached XDP without a bpf_link (needs Linux 5.9+ to pin it)",
            )?;
            let pinned = link
                .pin(&pin)
                .with_context(|| format!("pinning the link at {}", pin.display()))?;
            // The pin keeps the program attached after this agent exits.
            drop(pinned);
        }
        Ok(how)
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

    pub fn config(&mut self) -> Result<LbConfig> {
        Ok(self.array::<LbConfig>(names::CONFIG)?.get(&0, 0)?)
    }

    /// Installs (or updates) backend `id`.
    pub fn set_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        self.check_backend_id(id)?;
        self.array::<Backend>(names::BACKENDS)?
            .set(id, backend, 0)
            .with_context(|| format!("writing backend {id}"))
    }

    /// Every installed backend, by id.
    pub fn read_backends(&mut self) -> Result<Vec<(u32, Backend)>> {
        let n = self.limits.max_backends;
        let map = self.array::<Backend>(names::BACKENDS)?;
        let mut out = Vec::new();
        for id in 0..n {
            let b = map.get(&id, 0)?;
            if b.flags & lb_common::BACKEND_F_VALID != 0 {
                out.push((id, b));
            }
        }
        Ok(out)
    }

    /// The generation a backend id last had (kept when it is cleared, so reuse bumps it).
    pub fn backend_generation(&mut self, id: u32) -> Result<u32> {
        self.check_backend_id(id)?;
        Ok(self
            .array::<Backend>(names::BACKENDS)?
            .get(&id, 0)?
            .generation)
    }

    /// Uninstalls backend `id`: connection entries pointing at it fall back to Maglev.
    /// Call only once no ring slot points at it.
    pub fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.check_backend_id(id)?;
        let mut map = self.array::<Backend>(names::BACKENDS)?;
        let generation = map.get(&id, 0)?.generation;
        map.set(
            id,
            Backend {
                generation,
                ..Default::default()
            },
            0,
        )
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

    /// Zeroes a VIP's counters (its id is being given to a new VIP).
    pub fn reset_vip_counter(&mut self, id: u32) -> Result<()> {
        self.reset_per_cpu(names::VIP_STATS, id)
    }

    pub fn reset_backend_counter(&mut self, id: u32) -> Result<()> {
        self.reset_per_cpu(names::BACKEND_STATS, id)
    }

    fn reset_per_cpu(&mut self, name: &str, index: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let zeros = PerCpuValues::try_from(vec![CounterValue::default(); cpus])?;
        self.per_cpu::<CounterValue>(name)?
            .set(index, zeros, 0)
            .with_context(|| format!("zeroing {name}[{index}]"))
    }

    /// Takes the `FLOW_EVENTS` ring buffer (new TCP flows, `FlowEvent` records, written while
    /// `LB_F_FLOW_EVENTS` is set) out of the program object, for one reader to poll (its fd
    /// becomes readable when records arrive). Can be taken once per load.
    pub fn take_flow_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(names::FLOW_EVENTS).ok_or_else(|| {
            anyhow!(
                "map {} missing from the object (or already taken)",
                names::FLOW_EVENTS
            )
        })?;
        RingBuf::try_from(map).context("opening the flow event ring buffer")
    }

    /// A second handle on the connection table (and the config map), on its own file
    /// descriptors: it can live in another task or thread than this `Dataplane`.
    pub fn flow_table(&self) -> Result<FlowTable> {
        let dup = |name: &str| -> Result<MapData> {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
            let data = match map {
                Map::LruHashMap(m) | Map::HashMap(m) | Map::Array(m) => m,
                _ => bail!("map {name} has an unexpected type"),
            };
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("duplicating the fd of {name}"))?;
            MapData::from_fd(fd).with_context(|| format!("opening {name} from its fd"))
        };
        FlowTable::from_map_data(dup(names::CONNS)?, dup(names::CONFIG)?)
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
}

/// Live connection-table entries per (backend id, generation).
#[derive(Clone, Debug, Default)]
pub struct FlowCounts {
    pub live: std::collections::HashMap<(u32, u32), u64>,
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `ConnEntry::atime_ns` and of `Stats::time_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass and nothing else.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether the XDP program would still follow this entry at `now_ns` (CLOCK_MONOTONIC, which
/// `bpf_ktime_get_coarse_ns` reads at tick granularity): the same idle timeouts. Backend
/// validity and generation are not checked here.
pub fn is_live(cfg: &LbConfig, key: &FlowKey, entry: &ConnEntry, now_ns: u64) -> bool {
    let timeout = cfg.idle_timeout_ns(key.proto == lb_common::PROTO_TCP, entry.flags);
    // The coarse clock may trail CLOCK_MONOTONIC by a tick: saturate rather than wrap.
    now_ns.saturating_sub(entry.atime_ns) <= timeout
}

/// Counts entries the XDP program would still follow (`is_live`).
fn count_flows(conns: &HashMap<MapData, FlowKey, ConnEntry>, cfg: &LbConfig) -> FlowCounts {
    let now = monotonic_ns();
    let mut counts = FlowCounts::default();
    for (key, entry) in conns.iter().filter_map(|r| r.ok()) {
        if is_live(cfg, &key, &entry, now) {
            *counts
                .live
                .entry((entry.backend, entry.generation))
                .or_default() += 1;
        }
    }
    counts
}

/// Walks a pinned connection table from its own file descriptor, so a long walk does not hold
/// up the agent's writes to the other maps.
pub fn flow_counts_pinned(pin_dir: &Path) -> Result<FlowCounts> {
    let conns = MapData::from_pin(pin_dir.join(names::CONNS))
        .context("opening the pinned connection table")?;
    let cfg_map =
        MapData::from_pin(pin_dir.join(names::CONFIG)).context("opening the pinned config map")?;
    let cfg_map: Array<MapData, LbConfig> = Array::try_from(aya::maps::Map::Array(cfg_map))?;
    let cfg = cfg_map.get(&0, 0)?;
    let conns: HashMap<MapData, FlowKey, ConnEntry> =
        HashMap::try_from(aya::maps::Map::LruHashMap(conns))?;
    Ok(count_flows(&conns, &cfg))
}

/// A handle on the connection table for peer flow sync: installs flows received from peers and
/// lists the live ones. It holds its own file descriptors, so it works alongside the agent's
/// `Dataplane` (and outlives it, as long as the maps are pinned or a program holds them).
pub struct FlowTable {
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    config: Array<MapData, LbConfig>,
}

impl FlowTable {
    /// Opens the connection table and config map pinned under `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let conns = MapData::from_pin(pin_dir.join(names::CONNS))
            .context("opening the pinned connection table")?;
        let config = MapData::from_pin(pin_dir.join(names::CONFIG))
            .context("opening the pinned config map")?;
        Self::from_map_data(conns, config)
    }

    fn from_map_data(conns: MapData, config: MapData) -> Result<Self> {
        let conns = HashMap::try_from(Map::from_map_data(conns)?)
            .context("the connection table is not a (shared LRU) hash map of flows")?;
        let config = Array::try_from(Map::from_map_data(config)?)
            .context("the config map is not an array")?;
        Ok(Self { conns, config })
    }

    /// The load balancer's current settings (`LB_CONFIG[0]`), for `live`'s timeouts.
    pub fn config(&self) -> Result<LbConfig> {
        self.config.get(&0, 0).context("reading LB_CONFIG")
    }

    /// A flow's entry, if any.
    pub fn get(&self, key: &FlowKey) -> Result<Option<ConnEntry>> {
        match self.conns.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a connection entry"),
        }
    }

    /// Installs or replaces a flow's entry (BPF_ANY). The entry's `atime_ns` must be on this
    /// host's CLOCK_MONOTONIC (`monotonic_ns`) and its generation the local backend's.
    pub fn insert(&mut self, key: &FlowKey, entry: &ConnEntry) -> Result<()> {
        self.conns
            .insert(key, entry, 0)
            .context("writing a connection entry")
    }

    /// Installs flows one by one (aya 0.14 has no batch update). Returns how many were written;
    /// an entry the kernel refuses is skipped, unless every one is refused (then the first error).
    pub fn insert_batch(&mut self, flows: &[(FlowKey, ConnEntry)]) -> Result<usize> {
        let mut written = 0;
        let mut first_err = None;
        for (key, entry) in flows {
            match self.conns.insert(key, entry, 0) {
                Ok(()) => written += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if written == 0 => Err(e).context("writing connection entries"),
            _ => Ok(written),
        }
    }

    /// Every entry the XDP program would still follow at `now_ns` (`is_live` under `cfg`).
    pub fn live(&self, cfg: &LbConfig, now_ns: u64) -> Vec<(FlowKey, ConnEntry)> {
        self.conns
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(key, entry)| is_live(cfg, key, entry, now_ns))
            .collect()
    }
}

pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

/// Checks maps pinned by a previous agent against this build's layout and these limits.
/// Returns whether there was anything to adopt.
/// The `IFACES` probe slots of `ifindex`.
fn iface_probes(ifindex: u32) -> impl Iterator<Item = u32> {
    (0..lb_common::IFACE_PROBES).map(move |p| lb_common::iface_slot(ifindex, p))
}

/// One read of an open-addressed array's probe slots for a key (`IFACES`, `VIP_INDEX`): the
/// slot that holds the key, the first free one, and what the slots hold.
struct Probed<T> {
    own: Option<u32>,
    free: Option<u32>,
    seen: Vec<T>,
}

impl<T: aya::Pod> Probed<T> {
    fn read(
        map: &Array<&mut MapData, T>,
        probes: impl Iterator<Item = u32>,
        is_own: impl Fn(&T) -> bool,
        is_free: impl Fn(&T) -> bool,
    ) -> Result<Self> {
        let mut p = Self {
            own: None,
            free: None,
            seen: Vec::new(),
        };
        for slot in probes {
            let v = map.get(&slot, 0)?;
            if p.own.is_none() && is_own(&v) {
                p.own = Some(slot);
            } else if p.free.is_none() && is_free(&v) {
                p.free = Some(slot);
            }
            p.seen.push(v);
        }
        Ok(p)
    }

    /// Where the key goes: its own slot, else the first free one.
    fn placement(&self) -> Option<u32> {
        self.own.or(self.free)
    }
}

fn check_pinned_layout(dir: &Path, limits: &DataplaneLimits) -> Result<bool> {
    let mut found = 0;
    for (name, key, value, entries) in map_layout(limits) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found += 1;
        let info = MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        let have = (
            info.key_size() as usize,
            info.value_size() as usize,
            info.max_entries(),
        );
        if have != (key, value, entries) {
            bail!(
                "the pinned map {} has key/value size {}/{} and {} entries, but this agent needs \
                 {}/{} and {} (the map layout or a limit such as the ring size changed); \
                 run `lb detach` first, which stops forwarding and drops connection state",
                path.display(),
                have.0,
                have.1,
                have.2,
                key,
                value,
                entries
            );
        }
    }
    if found != 0 && found != names::PINNED.len() {
        bail!(
            "{} holds {found} of the {} maps: a partial pin set; run `lb detach` to clear it",
            dir.display(),
            names::PINNED.len()
        );
    }
    Ok(found != 0)
}

/// Detaches the NICs pinned under `pin_dir` and removes every pin: forwarding stops and the
/// maps are freed once no program holds them.
pub fn detach_pinned(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        std::fs::remove_file(entry.path())
            .with_context(|| format!("removing {}", entry.path().display()))?;
        removed.push(name);
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    removed.sort();
    Ok(removed)
}

/// Removes one NIC's pinned link (detaching it once no agent holds it).
pub fn unpin_link(pin_dir: &Path, iface: &str) -> Result<bool> {
    let path = link_pin_path(pin_dir, iface);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure `/sys/fs/bpf` is a bpffs (mounting it if needed) and that `pin_dir` is on one.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let is_bpffs = |p: &Path| -> bool {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            return false;
        };
        // SAFETY: statfs fills the struct for a NUL-terminated path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
    };
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        tracing::info!("mounting bpffs on /sys/fs/bpf");
        let (src, target, fstype, opts) = (c"bpf", c"/sys/fs/bpf", c"bpf", c"mode=0700");
        // SAFETY: constant NUL-terminated strings.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        bail!(
            "agent.pin_dir {} is not on a bpffs (mount one, or use a directory under /sys/fs/bpf)",
            pin_dir.display()
        );
    }
    Ok(())
}
