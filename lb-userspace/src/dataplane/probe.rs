//! Open-addressed arrays (`IFACES`, `VIP_INDEX`): one read of a key's probe slots.

use anyhow::Result;
use aya::maps::{Array, MapData};

/// One read of an open-addressed array's probe slots for a key (`IFACES`, `VIP_INDEX`): the
/// slot that holds the key, the first free one, and what the slots hold.
pub(super) struct Probed<T> {
    pub own: Option<u32>,
    pub free: Option<u32>,
    pub seen: Vec<T>,
}

impl<T: aya::Pod> Probed<T> {
    pub fn read(
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
    pub fn placement(&self) -> Option<u32> {
        self.own.or(self.free)
    }
}
