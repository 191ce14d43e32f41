//! The dataplane handle: loads the XDP program and reads and writes its maps.
//!
//! Each write here keeps its own map consistent (a VIP's index slot, marker and filter bit
//! follow its entry). The order across maps that keeps every packet on a valid backend lives in
//! `crate::reconcile`, which drives these writes: a backend is installed before any ring slot
//! points at it, and a VIP's ring is filled before the VIP entry makes it reachable. Besides the
//! agent's `Dataplane`, a [`FlowTable`] (peer sync's importer) writes the connection table.
//!
//! Files: `limits` (map sizes and the pinned layout), `load` (load, adopt, attach, pin),
//! `vips` (VIP entries, the VIP index and the address filter), `backends` (backends and
//! rings), `ifaces` (the NICs' link layer), `probe` (open-addressed slot lookup), `counters`,
//! `flows` (the connection table).

mod backends;
mod counters;
mod flows;
mod ifaces;
mod limits;
mod load;
mod probe;
mod vips;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{LbConfig, names};

pub use flows::{FlowCounts, FlowTable, flow_counts_pinned, is_live, monotonic_ns};
pub use limits::{DataplaneLimits, MAX_VIPS_LIMIT};
pub use load::{detach_pinned, ensure_bpffs, link_pin_path, unpin_link};

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
    /// True when the maps (and their state) came from a previous agent.
    pub fn adopted(&self) -> bool {
        self.adopted
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

    pub fn config(&mut self) -> Result<LbConfig> {
        Ok(self.array::<LbConfig>(names::CONFIG)?.get(&0, 0)?)
    }
}
