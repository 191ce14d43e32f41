//! Taking over the maps a previous agent left pinned: the installed state, read back.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use lb_common::{BACKEND_F_DRAINING, VIP_F_GUE, words_v6};

use super::{InstalledBackend, InstalledVip, Reconciler};
use crate::dataplane::Dataplane;
use crate::state::{BackendSpec, BackendState, Vip};

impl Reconciler {
    /// Rebuilds the installed state from maps a previous agent left pinned.
    pub fn adopt(dp: &mut Dataplane, seed: u64) -> Result<Self> {
        let limits = dp.limits();
        let max_vips = limits.max_vips.min(limits.max_rings);
        let mut r = Self::new(limits.ring_size, seed, max_vips, limits.max_backends);
        let backends = dp.read_backends()?;
        for (key, meta) in dp.read_vips()? {
            let vip = Vip::from_key(&key)
                .ok_or_else(|| anyhow!("pinned VIP entry with protocol {}", key.proto))?;
            if meta.id != meta.ring || meta.id >= max_vips {
                bail!(
                    "pinned VIP {vip} has id {} / ring {}, which this agent does not use",
                    meta.id,
                    meta.ring
                );
            }
            let slots = dp.read_ring(meta.ring)?;
            let mut installed = BTreeMap::new();
            for (id, b) in backends.iter().filter(|(_, b)| b.vip == meta.id) {
                installed.insert(
                    words_v6(&b.addr),
                    InstalledBackend {
                        id: *id,
                        generation: b.generation,
                        spec: BackendSpec {
                            weight: b.weight,
                            state: if b.flags & BACKEND_F_DRAINING != 0 {
                                BackendState::Draining
                            } else {
                                BackendState::Active
                            },
                        },
                    },
                );
                r.used_backends.insert(*id);
            }
            r.free_rings.remove(&meta.ring);
            r.vips.insert(
                vip,
                InstalledVip {
                    id: meta.id,
                    gue: meta.flags & VIP_F_GUE != 0,
                    backends: installed,
                    slots: Some(slots),
                    // Unknown: the first apply rebuilds the table and compares slot by slot.
                    members: None,
                    chance: None,
                    reachable: true,
                },
            );
        }
        // Backends of no VIP (an agent stopped mid-change): uninstall on the first apply.
        let orphans: Vec<u32> = backends
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !r.used_backends.contains(id))
            .collect();
        for id in orphans {
            dp.clear_backend(id)?;
        }
        r.next_backend = r.used_backends.last().map_or(0, |l| l + 1) % r.max_backends.max(1);
        Ok(r)
    }
}
