//! Reading the pinned dataplane: an agent's Maglev ring, polled until a change is applied.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::names;
use lb_common::{
    BACKEND_F_VALID, Backend, NO_BACKEND, PROTO_TCP, RingSlot, VipKey, VipMeta, v6_words,
};

use super::setup::*;

/// An agent's pinned maps: its VIP's ring and the backend ids.
pub(crate) struct Ring {
    pub(crate) rings: Array<MapData, RingSlot>,
    pub(crate) backends: Array<MapData, Backend>,
    pub(crate) vips: HashMap<MapData, VipKey, VipMeta>,
}

impl Ring {
    pub(crate) fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pin_dir.join(name))
                .with_context(|| format!("opening the pinned {name} under {}", pin_dir.display()))
        };
        Ok(Self {
            rings: Array::try_from(Map::Array(open(names::RINGS)?))?,
            backends: Array::try_from(Map::Array(open(names::BACKENDS)?))?,
            vips: HashMap::try_from(Map::HashMap(open(names::VIPS)?))?,
        })
    }

    /// The first slot of the VIP's ring in `RINGS`.
    pub(crate) fn base(&self) -> Result<u32> {
        let meta = self
            .vips
            .get(&VipKey::new(IpAddr::V4(VIP), PORT, PROTO_TCP), 0)
            .context("the VIP is not in the pinned VIPS map")?;
        Ok(meta.ring * RING)
    }

    /// The dataplane id of backend `addr` (installed, valid).
    pub(crate) fn backend_id(&self, addr: Ipv6Addr) -> Result<u32> {
        let words = v6_words(addr);
        for id in 0..self.backends.len() {
            let b = self.backends.get(&id, 0)?;
            if b.flags & BACKEND_F_VALID != 0 && b.addr == words {
                return Ok(id);
            }
        }
        bail!("backend {addr} is not installed in the pinned BACKENDS map")
    }

    /// The backend id in a slot (`NO_BACKEND` if empty).
    pub(crate) fn slot(&self, base: u32, slot: u32) -> Result<u32> {
        self.rings
            .get(&(base + slot), 0)
            .map(|s| s.backend_id())
            .context("reading a ring slot")
    }

    pub(crate) fn read(&self, base: u32) -> Result<Vec<u32>> {
        (0..RING).map(|s| self.slot(base, s)).collect()
    }
}

/// The slots of one ring that must change, and what they must become.
pub(crate) struct Watch<'a> {
    pub(crate) ring: &'a Ring,
    pub(crate) base: u32,
    /// Ascending: the order the reconciler writes them.
    pub(crate) slots: Vec<u32>,
    pub(crate) id: u32,
    /// true: each slot must stop pointing at `id` (drain); false: must point at it (undrain).
    pub(crate) away: bool,
    pub(crate) next: usize,
    pub(crate) done: Option<Duration>,
}

impl<'a> Watch<'a> {
    pub(crate) fn new(ring: &'a Ring, base: u32, slots: Vec<u32>, id: u32, away: bool) -> Self {
        Self {
            ring,
            base,
            slots,
            id,
            away,
            next: 0,
            done: None,
        }
    }

    /// Advances over the slots seen changed; true once all were.
    pub(crate) fn poll(&mut self) -> Result<bool> {
        while self.next < self.slots.len() {
            let v = self.ring.slot(self.base, self.slots[self.next])?;
            if (v == self.id) == self.away {
                return Ok(false);
            }
            self.next += 1;
        }
        Ok(true)
    }
}

/// What one timed change gave: when each watch was complete and when the CLI exited.
pub(crate) struct Timed {
    pub(crate) watches: Vec<Duration>,
    pub(crate) cli: Duration,
}

/// Spawns `lb ARGS` and polls `watches` until all are complete (bounded by `APPLY_TIMEOUT`).
pub(crate) fn timed_change(
    lb: &Path,
    socket: &Path,
    args: &[&str],
    watches: &mut [Watch],
) -> Result<Timed> {
    let mut cmd = Command::new(lb);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("running lb")?;
    let mut cli: Option<Duration> = None;
    let result = (|| -> Result<()> {
        loop {
            let mut all = true;
            for w in watches.iter_mut() {
                if w.done.is_none() {
                    if w.poll()? {
                        w.done = Some(start.elapsed());
                    } else {
                        all = false;
                    }
                }
            }
            if cli.is_none() && child.try_wait()?.is_some() {
                cli = Some(start.elapsed());
            }
            if all && cli.is_some() {
                return Ok(());
            }
            if start.elapsed() > APPLY_TIMEOUT {
                let left: Vec<String> = watches
                    .iter()
                    .filter(|w| w.done.is_none())
                    .map(|w| format!("{} of {} slots", w.slots.len() - w.next, w.slots.len()))
                    .collect();
                bail!(
                    "not applied within {APPLY_TIMEOUT:?} (still waiting for {}; CLI {})",
                    left.join(", "),
                    if cli.is_some() { "exited" } else { "running" }
                );
            }
            std::thread::sleep(POLL_SLEEP);
        }
    })();
    if result.is_err() && cli.is_none() {
        // Our own child, by PID.
        let _ = child.kill();
    }
    let out = child.wait_with_output().context("waiting for lb")?;
    result?;
    ensure!(
        out.status.success(),
        "lb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Timed {
        watches: watches.iter().map(|w| w.done.unwrap()).collect(),
        cli: cli.unwrap(),
    })
}

/// After a drain: no slot points at `id`, none is empty, and the others kept their backend
/// unless Maglev moved them (a drain moves little besides the drained slots).
pub(crate) fn check_drained(after: &[u32], before: &[u32], id: u32) -> Result<()> {
    let left = after.iter().filter(|&&s| s == id).count();
    let empty = after.iter().filter(|&&s| s == NO_BACKEND).count();
    ensure!(
        left == 0 && empty == 0,
        "after the drain: {left} slots still point at it, {empty} empty"
    );
    let others_moved = before
        .iter()
        .zip(after)
        .filter(|(b, a)| **b != id && b != a)
        .count();
    ensure!(
        others_moved < RING as usize / 50,
        "the drain moved {others_moved} slots of other backends"
    );
    Ok(())
}
