//! The `Dataplane` handle itself: the loaded object and what the agent knows of its maps. The
//! sibling files add its methods, one job each.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{LbConfig, names};

use super::limits::DataplaneLimits;

pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    pub(super) limits: DataplaneLimits,
    /// Where maps and links are pinned (None: nothing pinned, the tests' throwaway dataplanes).
    pub(super) pin_dir: Option<PathBuf>,
    /// Whether the maps were adopted from a previous agent rather than created empty.
    pub(super) adopted: bool,
    /// VIP addresses and how many services use each (for the marker entries and the filter).
    pub(super) addresses: BTreeMap<(u8, [u32; 4]), u32>,
    /// Installed backends' tunnel addresses by id, to write each one's `EGRESS` entry.
    pub(super) backend_addrs: BTreeMap<u32, [u32; 4]>,
    /// The way out of each backend address the agent resolved, and of the others.
    pub(super) egress_by_addr: std::collections::HashMap<[u32; 4], lb_common::Egress>,
    pub(super) egress_default: lb_common::Egress,
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

    pub(super) fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    pub(super) fn array<T: aya::Pod>(&mut self, name: &str) -> Result<Array<&mut MapData, T>> {
        Ok(Array::try_from(self.map(name)?)?)
    }

    pub(super) fn per_cpu<T: aya::Pod>(
        &mut self,
        name: &str,
    ) -> Result<PerCpuArray<&mut MapData, T>> {
        Ok(PerCpuArray::try_from(self.map(name)?)?)
    }

    pub fn set_config(&mut self, cfg: &LbConfig) -> Result<()> {
        self.array::<LbConfig>(names::CONFIG)?
            .set(0, cfg, 0)
            .context("writing LB_CONFIG")
    }

    /// The new-flow gate (`FLOW_GATE[0]`; rate 0: none). Not pinned: written after every load.
    pub fn set_flow_gate(&mut self, gate: lb_common::ratelimit::FlowGate) -> Result<()> {
        self.array::<lb_common::ratelimit::FlowGate>(names::FLOW_GATE)?
            .set(0, gate, 0)
            .context("writing FLOW_GATE")
    }

    pub fn config(&mut self) -> Result<LbConfig> {
        Ok(self.array::<LbConfig>(names::CONFIG)?.get(&0, 0)?)
    }
}
