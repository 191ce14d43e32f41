//! The program's packet counters: global (`STATS`), per VIP and per backend, all per-CPU.

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use lb_common::{Counter, CounterValue, names};

use super::handle::Dataplane;

/// Sum of a per-CPU counter over all CPUs.
fn sum(values: &aya::maps::PerCpuValues<CounterValue>) -> CounterValue {
    values
        .iter()
        .fold(CounterValue::default(), |acc, v| CounterValue {
            packets: acc.packets + v.packets,
            bytes: acc.bytes + v.bytes,
        })
}

impl Dataplane {
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
}
