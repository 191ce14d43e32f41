//! The connection tables (IPv4 flows in `CONNS4`, IPv6 in `CONNS`): the flow-event ring
//! buffer, live-flow counts, and [`FlowTable`], a handle on their own file descriptors for peer
//! sync that speaks `FlowKey` for both.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, Map, MapData, RingBuf};
use lb_common::{
    ConnEntry, FAMILY_V4, FlowKey, FlowKey4, LbConfig, flow_cache_index, flow_cache_slot,
    flow_cache_slot6, names,
};

use super::batch;
use super::handle::Dataplane;

impl Dataplane {
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
        FlowTable::from_map_data(
            dup(names::CONNS)?,
            dup(names::CONNS4)?,
            dup(names::CONFIG)?,
            dup(names::FLOW_CACHE_EPOCHS)?,
        )
    }

    /// The connection-table entry of a flow, if any.
    pub fn conn(&mut self, key: &FlowKey) -> Result<Option<ConnEntry>> {
        let found = if key.family == FAMILY_V4 {
            let conns: HashMap<&mut MapData, FlowKey4, ConnEntry> =
                HashMap::try_from(self.map(names::CONNS4)?)?;
            conns.get(&key.v4(), 0)
        } else {
            let conns: HashMap<&mut MapData, FlowKey, ConnEntry> =
                HashMap::try_from(self.map(names::CONNS)?)?;
            conns.get(key, 0)
        };
        match found {
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

/// Walks a pinned connection table from its own file descriptor (in batches), so a long walk
/// does not hold up the agent's writes to the other maps: the entries the XDP program would
/// still follow (`is_live`), counted per backend.
pub fn flow_counts_pinned(pin_dir: &Path) -> Result<FlowCounts> {
    let table = FlowTable::open_pinned(pin_dir)?;
    let cfg = table.config()?;
    let now = monotonic_ns();
    let mut counts = FlowCounts::default();
    table.walk(|key, entry| {
        if is_live(&cfg, key, entry, now) {
            *counts
                .live
                .entry((entry.backend, entry.generation))
                .or_default() += 1;
        }
    })?;
    Ok(counts)
}

/// A handle on the connection table for peer flow sync: installs flows received from peers and
/// lists the live ones. It holds its own file descriptors, so it works alongside the agent's
/// `Dataplane` (and outlives it, as long as the maps are pinned or a program holds them).
pub struct FlowTable {
    /// IPv6 flows (`CONNS`).
    conns: HashMap<MapData, FlowKey, ConnEntry>,
    /// IPv4 flows (`CONNS4`).
    conns4: HashMap<MapData, FlowKey4, ConnEntry>,
    /// The tables' fds again, for the batch syscalls aya does not wrap.
    conns_fd: OwnedFd,
    conns4_fd: OwnedFd,
    config: Array<MapData, LbConfig>,
    /// `FLOW_CACHE_EPOCHS` (by slot index), written in batches: the indexes of the flows
    /// changed here get new epochs after each change, so no CPU's flow cache keeps answering
    /// for an entry changed here.
    cache_epochs_fd: OwnedFd,
    /// log2 of the slots per CPU (the epochs map has one per slot index).
    cache_bits: u32,
}

impl FlowTable {
    /// Opens the connection tables and config map pinned under `pin_dir`.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pin_dir.join(name))
                .with_context(|| format!("opening the pinned map {name}"))
        };
        Self::from_map_data(
            open(names::CONNS)?,
            open(names::CONNS4)?,
            open(names::CONFIG)?,
            open(names::FLOW_CACHE_EPOCHS)?,
        )
    }

    fn from_map_data(
        conns: MapData,
        conns4: MapData,
        config: MapData,
        cache_epochs: MapData,
    ) -> Result<Self> {
        let fd = |m: &MapData| {
            m.fd()
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating a connection table's fd")
        };
        let (conns_fd, conns4_fd, cache_epochs_fd) =
            (fd(&conns)?, fd(&conns4)?, fd(&cache_epochs)?);
        let conns = HashMap::try_from(Map::from_map_data(conns)?)
            .context("CONNS is not a (shared LRU) hash map of IPv6 flows")?;
        let conns4 = HashMap::try_from(Map::from_map_data(conns4)?)
            .context("CONNS4 is not a (shared LRU) hash map of IPv4 flows")?;
        let config = Array::try_from(Map::from_map_data(config)?)
            .context("the config map is not an array")?;
        let slots = cache_epochs
            .info()
            .context("reading the flow cache's epoch map")?
            .max_entries();
        if !slots.is_power_of_two() {
            bail!("the flow cache's epoch map has {slots} entries, not a power of two");
        }
        let cache_bits = lb_common::flow_cache_bits(slots);
        Array::<_, u64>::try_from(Map::from_map_data(cache_epochs)?)
            .context("the flow cache's epoch map is not an array of u64")?;
        Ok(Self {
            conns,
            conns4,
            conns_fd,
            conns4_fd,
            config,
            cache_epochs_fd,
            cache_bits,
        })
    }

    /// Retires every CPU's flow-cache slots of these slot indexes (lb-common/src/flow_cache.rs):
    /// called after a change to their flows' entries, never before it. Each index gets a fresh
    /// epoch: CLOCK_MONOTONIC, or one past the last this process wrote.
    fn retire_cached_flows(&mut self, slots: impl Iterator<Item = u32>) -> Result<()> {
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        static LAST: AtomicU64 = AtomicU64::new(0);
        let mut slots: Vec<u32> = slots.collect();
        slots.sort_unstable();
        slots.dedup();
        if slots.is_empty() {
            return Ok(());
        }
        let now = monotonic_ns();
        let fresh = |last: u64| now.max(last + 1);
        let last = LAST
            .fetch_update(SeqCst, SeqCst, |last| Some(fresh(last)))
            .unwrap_or_else(|last| last);
        let epochs = vec![fresh(last); slots.len()];
        match batch::update_all(self.cache_epochs_fd.as_fd(), &slots, &epochs) {
            (n, _) if n == slots.len() => Ok(()),
            (n, e) => Err(anyhow!(
                "writing flow cache epochs: {n} of {} written ({})",
                slots.len(),
                e.map_or_else(|| "no error given".to_string(), |e| e.to_string())
            )),
        }
    }

    /// The load balancer's current settings (`LB_CONFIG[0]`), for `live`'s timeouts.
    pub fn config(&self) -> Result<LbConfig> {
        self.config.get(&0, 0).context("reading LB_CONFIG")
    }

    /// A flow's entry, if any.
    pub fn get(&self, key: &FlowKey) -> Result<Option<ConnEntry>> {
        let found = if key.family == FAMILY_V4 {
            self.conns4.get(&key.v4(), 0)
        } else {
            self.conns.get(key, 0)
        };
        match found {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e).context("reading a connection entry"),
        }
    }

    /// Installs or replaces a flow's entry (BPF_ANY). The entry's `atime_ns` must be on this
    /// host's CLOCK_MONOTONIC (`monotonic_ns`) and its generation the local backend's.
    pub fn insert(&mut self, key: &FlowKey, entry: &ConnEntry) -> Result<()> {
        let written = if key.family == FAMILY_V4 {
            self.conns4.insert(key.v4(), entry, 0)
        } else {
            self.conns.insert(key, entry, 0)
        };
        written.context("writing a connection entry")?;
        self.retire_cached_flows(std::iter::once(flow_cache_index(key, self.cache_bits)))
    }

    /// Installs flows in batches (BPF_MAP_UPDATE_BATCH), each in its family's table. Returns
    /// how many were written; an entry the kernel refuses is skipped, unless every one is
    /// refused (then the first error).
    pub fn insert_batch(&mut self, flows: &[(FlowKey, ConnEntry)]) -> Result<usize> {
        let (mut keys4, mut values4, mut keys, mut values) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, v) in flows {
            if k.family == FAMILY_V4 {
                keys4.push(k.v4());
                values4.push(*v);
            } else {
                keys.push(*k);
                values.push(*v);
            }
        }
        let (n4, e4) = batch::update_all(self.conns4_fd.as_fd(), &keys4, &values4);
        let (n6, e6) = batch::update_all(self.conns_fd.as_fd(), &keys, &values);
        if n4 + n6 != 0 {
            // Refused entries too: which ones the kernel took is not known.
            let bits = self.cache_bits;
            self.retire_cached_flows(flows.iter().map(|(k, _)| flow_cache_index(k, bits)))?;
        }
        match (n4 + n6, e4.or(e6)) {
            (0, Some(e)) if !flows.is_empty() => Err(e).context("writing connection entries"),
            (written, _) => Ok(written),
        }
    }

    /// Calls `f` with every entry (live or not) of both tables, read in batches
    /// (BPF_MAP_LOOKUP_BATCH): one syscall per few thousand entries. Returns how many were read.
    pub fn walk(&self, mut f: impl FnMut(&FlowKey, &ConnEntry)) -> Result<usize> {
        let v4 =
            batch::lookup_all::<FlowKey4, ConnEntry>(self.conns4_fd.as_fd(), |keys, values| {
                for (k, v) in keys.iter().zip(values) {
                    f(&k.widen(), v);
                }
            })
            .context("reading the IPv4 connection table")?;
        let v6 = batch::lookup_all::<FlowKey, ConnEntry>(self.conns_fd.as_fd(), |keys, values| {
            for (k, v) in keys.iter().zip(values) {
                f(k, v);
            }
        })
        .context("reading the IPv6 connection table")?;
        Ok(v4 + v6)
    }

    /// Deletes every entry of flows to `dst` (a benchmark's fresh start). Returns how many.
    pub fn remove_to(&mut self, dst: std::net::IpAddr) -> Result<usize> {
        let (family, dst) = lb_common::addr_words(dst);
        let (mut keys4, mut keys) = (Vec::new(), Vec::new());
        self.walk(|k, _| {
            if k.family == family && k.dst == dst {
                if family == FAMILY_V4 {
                    keys4.push(k.v4());
                } else {
                    keys.push(*k);
                }
            }
        })?;
        let n4 = batch::delete_all(self.conns4_fd.as_fd(), &keys4);
        let n6 = batch::delete_all(self.conns_fd.as_fd(), &keys);
        // Even after a partial delete: whatever went is retired from the caches.
        let bits = self.cache_bits;
        let slots = keys4.iter().map(|k| flow_cache_slot(k, bits));
        self.retire_cached_flows(slots.chain(keys.iter().map(|k| flow_cache_slot6(k, bits))))?;
        Ok(n4.context("deleting connection entries")?
            + n6.context("deleting connection entries")?)
    }

    /// Every entry the XDP program would still follow at `now_ns` (`is_live` under `cfg`).
    pub fn live(&self, cfg: &LbConfig, now_ns: u64) -> Result<Vec<(FlowKey, ConnEntry)>> {
        let mut out = Vec::new();
        self.walk(|key, entry| {
            if is_live(cfg, key, entry, now_ns) {
                out.push((*key, *entry));
            }
        })?;
        Ok(out)
    }
}
