//! Second chance in the replicated state: the steps of each VIP's members (`state::history`),
//! kept beside the VIP and stamped like its other fields (docs/second-chance.md).

use std::collections::BTreeMap;

use super::{Lww, ReplicatedState, Stamp};
use crate::state::history::{self, History};
use crate::state::{DesiredState, Vip};

impl ReplicatedState {
    /// Second chance: records, under `stamp`, a step for every VIP whose members differ between
    /// `old` and `new` (the states materialized before and after an operator's changes).
    pub fn record_history(
        &mut self,
        old: &DesiredState,
        new: &DesiredState,
        stamp: &Stamp,
        now_ms: u64,
        window_ms: u64,
    ) {
        if window_ms == 0 {
            return;
        }
        for vip in history::changed_vips(old, new) {
            let Some(entry) = self.vips.get_mut(&vip) else {
                continue;
            };
            let steps = entry.history.take().map(|h| h.value).unwrap_or_default();
            let before = history::members_of(&old.vips[&vip]);
            entry.history = Some(Lww::new(
                stamp,
                history::with_step(steps, before, now_ms, window_ms),
            ));
        }
    }

    /// Every live VIP's steps (second chance).
    pub fn histories(&self) -> BTreeMap<Vip, History> {
        self.vips
            .iter()
            .filter(|(_, e)| e.exists.value.is_some())
            .filter_map(|(vip, e)| Some((*vip, e.history.as_ref()?.value.clone())))
            .filter(|(_, h)| !h.is_empty())
            .collect()
    }
}
