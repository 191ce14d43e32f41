//! The bodies that carry replicated states on a link: a whole state when the link comes up,
//! then deltas (the entries that changed since the state sent before on the same link), and
//! parts, so that no state or delta meets the frame limit (docs/sync.md, "State messages").
//!
//! A body longer than [`PART_BYTES`] is cut: every piece but the last goes in a
//! `state part` frame, the last in the frame of the body's own kind, which the receiver
//! reassembles, up to [`MAX_STATE_BYTES`].

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::link::KIND_STATE_PART;
use super::replicated::backend_list::Item;
use super::replicated::{ReplicatedState, VipEntry};
use super::wire::{self, Refusal, refused};
use crate::state::Vip;

/// The largest piece of a body in one frame (a frame holds 4 MiB; parts stay well under).
pub const PART_BYTES: usize = 1 << 20;
/// The largest state or delta a receiver reassembles: a state at its caps is about 25 MiB.
pub const MAX_STATE_BYTES: usize = 64 << 20;

/// What changed between two states sent on one link. Applied to the first, it gives the
/// second exactly (removed entries are named, the horizon is carried).
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateDelta {
    pub horizon: u64,
    #[serde(default)]
    pub vips: BTreeMap<Vip, VipEntry>,
    #[serde(default)]
    pub gone_vips: Vec<Vip>,
    #[serde(default)]
    pub backends: Vec<Item>,
    #[serde(default)]
    pub gone_backends: Vec<(Vip, Ipv6Addr)>,
}

impl StateDelta {
    /// The entries of `new` that differ from `old`, and those `new` no longer has.
    pub fn between(old: &ReplicatedState, new: &ReplicatedState) -> Self {
        let vips = new
            .vips
            .iter()
            .filter(|(k, e)| old.vips.get(k) != Some(e))
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        let gone_vips = old
            .vips
            .keys()
            .filter(|k| !new.vips.contains_key(k))
            .copied()
            .collect();
        let backends = new
            .backends
            .iter()
            .filter(|(k, e)| old.backends.get(k) != Some(e))
            .map(|((vip, backend), e)| Item {
                vip: *vip,
                backend: *backend,
                entry: e.clone(),
            })
            .collect();
        let gone_backends = old
            .backends
            .keys()
            .filter(|k| !new.backends.contains_key(k))
            .copied()
            .collect();
        Self {
            horizon: new.horizon,
            vips,
            gone_vips,
            backends,
            gone_backends,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.vips.is_empty()
            && self.gone_vips.is_empty()
            && self.backends.is_empty()
            && self.gone_backends.is_empty()
    }

    /// The state sent before, updated to the one this delta was made for.
    pub fn apply_to(self, state: &mut ReplicatedState) {
        state.horizon = self.horizon;
        for k in &self.gone_vips {
            state.vips.remove(k);
        }
        for k in &self.gone_backends {
            state.backends.remove(k);
        }
        state.vips.extend(self.vips);
        state.backends.extend(
            self.backends
                .into_iter()
                .map(|i| ((i.vip, i.backend), i.entry)),
        );
    }
}

/// A body cut in pieces for frames: all but the last go as parts.
pub fn pieces(body: &[u8]) -> Vec<&[u8]> {
    if body.is_empty() {
        return vec![body];
    }
    body.chunks(PART_BYTES).collect()
}

/// Sends a state or delta body of `kind`, in parts if it is longer than one; the frames sent.
pub async fn send_body<W: tokio::io::AsyncWrite + Unpin>(
    tx: &mut wire::Sender<W>,
    kind: u8,
    body: &[u8],
) -> Result<usize> {
    let pieces = pieces(body);
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        let k = if i == last { kind } else { KIND_STATE_PART };
        tx.send(k, piece).await?;
    }
    Ok(pieces.len())
}

/// Reassembles a body from parts, refusing one over [`MAX_STATE_BYTES`] as soon as it gets
/// there (nothing more is buffered).
#[derive(Debug, Default)]
pub struct Assembly {
    buf: Vec<u8>,
    parts: usize,
}

impl Assembly {
    /// One more part: more follow.
    pub fn part(&mut self, body: &[u8]) -> Result<()> {
        self.grow(body)?;
        self.parts += 1;
        Ok(())
    }

    /// The last piece: the whole body (the assembly is empty again).
    pub fn finish(&mut self, body: Vec<u8>) -> Result<Vec<u8>> {
        if self.parts == 0 {
            return Ok(body);
        }
        self.grow(&body)?;
        self.parts = 0;
        Ok(std::mem::take(&mut self.buf))
    }

    /// Whether parts wait for their last piece.
    pub fn pending(&self) -> bool {
        self.parts > 0
    }

    fn grow(&mut self, body: &[u8]) -> Result<()> {
        if self.buf.len() + body.len() > MAX_STATE_BYTES {
            return Err(refused(
                Refusal::TooLarge,
                format!(
                    "a state message of more than {} bytes (at most {MAX_STATE_BYTES})",
                    self.buf.len() + body.len()
                ),
            ));
        }
        self.buf.extend_from_slice(body);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
