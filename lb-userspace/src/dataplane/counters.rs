//! The program's packet counters: global (`STATS`), per backend, and per VIP, all per-CPU.
//!
//! The XDP program counts a forwarded packet once, under its backend (`BACKEND_STATS`). A VIP's
//! count is the sum of its installed backends' plus `VIP_STATS`, which only the agent writes:
//! the counts of the VIP's backends since uninstalled (`clear_backend` moves them there). One
//! per-CPU counter update fewer per packet (about 3 ns, BENCHMARKS.md); a few packets in flight
//! at the instant a backend is uninstalled may be missed.

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use lb_common::{BACKEND_F_VALID, Backend, Counter, CounterValue, names};

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

    /// VIP `id`'s count: its installed backends' (found in `BACKENDS`) and its retired ones'.
    /// The agent, which knows its backends' ids, uses `vip_counter_of`.
    pub fn vip_counter(&mut self, id: u32) -> Result<CounterValue> {
        let max = self.limits.max_backends;
        let backends = self.array::<Backend>(names::BACKENDS)?;
        let mut ids = Vec::new();
        for i in 0..max {
            let b = backends.get(&i, 0)?;
            if b.flags & BACKEND_F_VALID != 0 && b.vip == id {
                ids.push(i);
            }
        }
        self.vip_counter_of(id, &ids)
    }

    /// VIP `id`'s count given its installed backends' ids.
    pub fn vip_counter_of(&mut self, id: u32, backends: &[u32]) -> Result<CounterValue> {
        let mut total = sum(&self
            .per_cpu::<CounterValue>(names::VIP_STATS)?
            .get(&id, 0)?);
        for &b in backends {
            let c = self.backend_counter(b)?;
            total.packets += c.packets;
            total.bytes += c.bytes;
        }
        Ok(total)
    }

    /// Adds backend `id`'s counts to VIP `vip`'s retired counts, CPU by CPU, and zeroes them.
    pub(super) fn retire_backend_counter(&mut self, id: u32, vip: u32) -> Result<()> {
        let from: Vec<CounterValue> = self
            .per_cpu::<CounterValue>(names::BACKEND_STATS)?
            .get(&id, 0)?
            .iter()
            .copied()
            .collect();
        let mut stats = self.per_cpu::<CounterValue>(names::VIP_STATS)?;
        let to: Vec<CounterValue> = stats
            .get(&vip, 0)?
            .iter()
            .zip(&from)
            .map(|(a, b)| CounterValue {
                packets: a.packets + b.packets,
                bytes: a.bytes + b.bytes,
            })
            .collect();
        stats
            .set(vip, PerCpuValues::try_from(to)?, 0)
            .with_context(|| format!("adding backend {id}'s counts to VIP {vip}'s"))?;
        self.reset_backend_counter(id)
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
