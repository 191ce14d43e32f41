//! The decapsulation program loaded with its own, new maps: configure, read counters, pin.

use std::net::Ipv6Addr;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::{
    CounterValue,
    decap::{DecapConfig, DecapCounter, PROGRAM_NAME, names},
    v6_words,
};

use crate::pins::remove_if_present;

/// A loaded (verified, not attached) decapsulation program with its own, new maps.
pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(lb_objects::DECAP_OBJECT)
            .context("loading the lb-decap object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("the verifier rejected the decapsulation program")?;
        Ok(Self { ebpf })
    }

    /// Fills the (new, empty) maps: the tunnel addresses and the GUE port.
    pub fn configure(&mut self, addresses: &[Ipv6Addr], gue_port: u16) -> Result<()> {
        let mut addrs: HashMap<&mut MapData, [u32; 4], u32> =
            HashMap::try_from(self.map_mut(names::ADDRS)?)?;
        for (i, a) in addresses.iter().enumerate() {
            addrs
                .insert(v6_words(*a), i as u32, 0)
                .with_context(|| format!("writing {a} to {}", names::ADDRS))?;
        }
        let cfg = DecapConfig {
            gue_port: gue_port.to_be(),
            _pad: [0; 6],
        };
        let mut map: Array<&mut MapData, DecapConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?)?;
        map.set(0, cfg, 0).context("writing DECAP_CONFIG")
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap()
    }

    pub(crate) fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&mut self) -> Result<Vec<(DecapCounter, CounterValue)>> {
        let map: PerCpuArray<&mut MapData, CounterValue> =
            PerCpuArray::try_from(self.map_mut(names::STATS)?)?;
        read_counters(&map)
    }

    pub fn counter(&mut self, c: DecapCounter) -> Result<CounterValue> {
        Ok(self.counters()?[c as usize].1)
    }

    /// Pins every map under `dir`, replacing what a previous run pinned there.
    pub(crate) fn pin_maps(&self, dir: &Path) -> Result<()> {
        for name in names::PINNED {
            let path = dir.join(name);
            remove_if_present(&path)?;
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))?
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }
}

pub(crate) fn read_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, CounterValue>,
) -> Result<Vec<(DecapCounter, CounterValue)>> {
    DecapCounter::ALL
        .iter()
        .map(|&c| {
            let v = map
                .get(&(c as u32), 0)
                .with_context(|| format!("reading counter {}", c.name()))?;
            let sum = v.iter().fold(CounterValue::default(), |a, v| CounterValue {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            });
            Ok((c, sum))
        })
        .collect()
}
