//! Map sizes and the Maglev table size, fixed at load, and the map layout they give (checked
//! against maps a previous agent pinned).

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::maps::MapInfo;
use lb_common::{
    Backend, ConnEntry, CounterValue, FlowKey, FlowKey4, IfaceSlot, LbConfig, RingSlot, VipFilter,
    VipKey, VipMeta, VipSlot, names,
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
    /// Flow cache slots per CPU and family (a power of two, `FLOW_CACHE_MIN_SLOTS` to
    /// `FLOW_CACHE_MAX_SLOTS`).
    pub flow_cache_slots: u32,
}

impl Default for DataplaneLimits {
    fn default() -> Self {
        Self {
            ring_size: lb_common::DEFAULT_RING_SIZE,
            max_vips: lb_common::DEFAULT_MAX_VIPS,
            max_rings: lb_common::DEFAULT_MAX_RINGS,
            max_backends: lb_common::DEFAULT_MAX_BACKENDS,
            max_conns: lb_common::DEFAULT_MAX_CONNS,
            flow_cache_slots: lb_common::DEFAULT_FLOW_CACHE_SLOTS,
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
        if self.max_backends > lb_common::MAX_BACKEND_IDS {
            bail!(
                "max_backends {} is over the limit of {} (ring slots name backends in 16 bits)",
                self.max_backends,
                lb_common::MAX_BACKEND_IDS
            );
        }
        if self.max_vips > MAX_VIPS_LIMIT {
            bail!(
                "max_vips {} is over the limit of {MAX_VIPS_LIMIT}",
                self.max_vips
            );
        }
        let (min, max) = (
            lb_common::FLOW_CACHE_MIN_SLOTS,
            lb_common::FLOW_CACHE_MAX_SLOTS,
        );
        if !self.flow_cache_slots.is_power_of_two() || !(min..=max).contains(&self.flow_cache_slots)
        {
            bail!(
                "flow_cache_slots {} must be a power of two from {min} to {max} (16384 is the default)",
                self.flow_cache_slots
            );
        }
        if self.flow_cache_slots as u64 * possible_cpus() as u64 > u32::MAX as u64 / 2 {
            bail!(
                "flow_cache_slots {} for each of {} possible CPUs exceed the cache map's size limit",
                self.flow_cache_slots,
                possible_cpus()
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

/// The size every map must have for these limits: `(name, key size, value size, entries)`.
/// Checked against pinned maps before a new agent adopts them.
pub(super) fn map_layout(limits: &DataplaneLimits) -> Vec<(&'static str, usize, usize, u32)> {
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
        (
            names::RINGS,
            4,
            size_of::<RingSlot>(),
            limits.ring_size * limits.max_rings,
        ),
        (
            names::CONNS,
            size_of::<FlowKey>(),
            size_of::<ConnEntry>(),
            limits.max_conns,
        ),
        (
            names::CONNS4,
            size_of::<FlowKey4>(),
            size_of::<ConnEntry>(),
            limits.max_conns,
        ),
        (names::FLOW_CACHE_EPOCHS, 4, 8, limits.flow_cache_slots),
        (
            names::STATS,
            4,
            size_of::<CounterValue>(),
            lb_common::STATS_SLOTS,
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
        // Not pinned (written after every load): sized here only.
        (
            names::EGRESS,
            4,
            size_of::<lb_common::Egress>(),
            limits.max_backends,
        ),
        // Each possible CPU's slots, back to back (lb-common/src/flow_cache.rs).
        (
            names::FLOW_CACHE,
            4,
            size_of::<lb_common::CachedFlow<FlowKey4>>(),
            limits.flow_cache_slots * possible_cpus(),
        ),
        (
            names::FLOW_CACHE6,
            4,
            size_of::<lb_common::CachedFlow<FlowKey>>(),
            limits.flow_cache_slots * possible_cpus(),
        ),
    ]
}

/// The CPUs the kernel may ever run the program on (`/sys/devices/system/cpu/possible`); 1 if
/// that cannot be read (then only CPU 0 has flow cache slots: the others read the table).
fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
}

/// Checks maps pinned by a previous agent against this build's layout and these limits.
/// Returns whether there was anything to adopt.
pub(super) fn check_pinned_layout(dir: &Path, limits: &DataplaneLimits) -> Result<bool> {
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
