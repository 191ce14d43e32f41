//! Flow records on the wire, and their translation between the dataplane's local backend ids
//! and the fleet's names for backends (VIP and tunnel address).
//!
//! A record is 58 bytes: the 5-tuple (38), the backend's IPv6 address (16) and the flow hash
//! (4). Ids never cross the wire: each agent allocates its own.

use std::collections::HashMap;
use std::net::Ipv6Addr;

use anyhow::{Result, bail, ensure};
use lb_common::maglev::MaglevTable;
use lb_common::{
    CONN_F_PEER, ConnEntry, FAMILY_V4, FAMILY_V6, FlowKey, PROTO_TCP, v6_words, words_v6,
};
use sha2::{Digest, Sha256};

use crate::reconcile::Reconciler;
use crate::state::{DesiredState, Vip};

pub const RECORD_LEN: usize = 58;
/// Records per message: a batch stays far below the frame limit.
pub const MAX_BATCH: usize = 4096;

/// How a receiver treats a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Flows a peer just saw start (SYN): installed over any entry.
    New = 0,
    /// A peer's live flows (on connect, and refreshed periodically), and new flows whose entry
    /// their first packet after the SYN made (which may be a flow that moved mid-way): installed
    /// where there is no entry or only a peer's; a flow this load balancer forwards itself is
    /// left alone.
    Refresh = 1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub backend: Ipv6Addr,
    pub hash: u32,
}

fn words_bytes(w: &[u32; 4]) -> [u8; 16] {
    words_v6(w).octets()
}

impl FlowRecord {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&words_bytes(&self.key.src));
        out.extend_from_slice(&words_bytes(&self.key.dst));
        out.extend_from_slice(&self.key.src_port.to_ne_bytes());
        out.extend_from_slice(&self.key.dst_port.to_ne_bytes());
        out.push(self.key.proto);
        out.push(self.key.family);
        out.extend_from_slice(&self.backend.octets());
        out.extend_from_slice(&self.hash.to_be_bytes());
    }

    pub fn decode(b: &[u8]) -> Result<Self> {
        ensure!(b.len() == RECORD_LEN, "a flow record of {} bytes", b.len());
        let addr =
            |o: usize| v6_words(Ipv6Addr::from(<[u8; 16]>::try_from(&b[o..o + 16]).unwrap()));
        let key = FlowKey {
            src: addr(0),
            dst: addr(16),
            src_port: u16::from_ne_bytes([b[32], b[33]]),
            dst_port: u16::from_ne_bytes([b[34], b[35]]),
            proto: b[36],
            family: b[37],
            _pad: [0; 2],
        };
        ensure!(key.proto == PROTO_TCP, "flow protocol {}", key.proto);
        match key.family {
            FAMILY_V4 => ensure!(
                key.src[1..] == [0; 3] && key.dst[1..] == [0; 3],
                "an IPv4 flow with IPv6 address bytes"
            ),
            FAMILY_V6 => {}
            f => bail!("flow family {f}"),
        }
        let backend = Ipv6Addr::from(<[u8; 16]>::try_from(&b[38..54]).unwrap());
        let hash = u32::from_be_bytes(b[54..58].try_into().unwrap());
        Ok(Self { key, backend, hash })
    }
}

/// A Flows message body: mode, count, records.
pub fn encode_batch(mode: Mode, records: &[FlowRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + records.len() * RECORD_LEN);
    out.push(mode as u8);
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        r.encode(&mut out);
    }
    out
}

pub fn decode_batch(body: &[u8]) -> Result<(Mode, Vec<FlowRecord>)> {
    ensure!(body.len() >= 5, "a flow batch of {} bytes", body.len());
    let mode = match body[0] {
        0 => Mode::New,
        1 => Mode::Refresh,
        m => bail!("flow batch mode {m}"),
    };
    let n = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    ensure!(n <= MAX_BATCH, "a batch of {n} flows (at most {MAX_BATCH})");
    ensure!(
        body.len() == 5 + n * RECORD_LEN,
        "a batch of {n} flows in {} bytes",
        body.len()
    );
    let records = body[5..]
        .chunks_exact(RECORD_LEN)
        .map(FlowRecord::decode)
        .collect::<Result<_>>()?;
    Ok((mode, records))
}

/// Local backend ids and the fleet's names for them, as the agent last installed them.
#[derive(Clone, Debug, Default)]
pub struct FlowIndex {
    /// id -> (generation, address)
    by_id: HashMap<u32, (u32, Ipv6Addr)>,
    /// VIP -> address -> (id, generation)
    by_vip: HashMap<Vip, HashMap<Ipv6Addr, (u32, u32)>>,
}

/// Why a flow was not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untranslated {
    /// No VIP here serves the flow's destination.
    UnknownVip,
    /// The VIP here has no such backend (yet, or any more).
    UnknownBackend,
}

impl FlowIndex {
    pub fn from_reconciler(r: &Reconciler) -> Self {
        let mut ix = Self::default();
        for (vip, v) in r.vips() {
            let m = ix.by_vip.entry(*vip).or_default();
            for (addr, b) in &v.backends {
                ix.by_id.insert(b.id, (b.generation, *addr));
                m.insert(*addr, (b.id, b.generation));
            }
        }
        ix
    }

    /// The address of a local backend id (of a live generation, if given).
    pub fn address(&self, id: u32, generation: Option<u32>) -> Option<Ipv6Addr> {
        let (g, a) = self.by_id.get(&id)?;
        (generation.is_none_or(|want| want == *g)).then_some(*a)
    }

    /// The service a flow belongs to: the exact port, else the VIP's every-port service.
    fn vip_of(&self, key: &FlowKey) -> Option<Vip> {
        let mut vip = Vip::from_key(&lb_common::VipKey {
            addr: key.dst,
            port: key.dst_port,
            proto: key.proto,
            family: key.family,
        })?;
        if self.by_vip.contains_key(&vip) {
            return Some(vip);
        }
        vip.port = 0;
        self.by_vip.contains_key(&vip).then_some(vip)
    }

    /// The connection entry a peer's flow becomes here.
    pub fn entry(&self, r: &FlowRecord, now_ns: u64) -> Result<ConnEntry, Untranslated> {
        let vip = self.vip_of(&r.key).ok_or(Untranslated::UnknownVip)?;
        let (id, generation) = *self.by_vip[&vip]
            .get(&r.backend)
            .ok_or(Untranslated::UnknownBackend)?;
        Ok(ConnEntry {
            backend: id,
            hash: r.hash,
            atime_ns: now_ns,
            generation,
            flags: CONN_F_PEER,
            // A peer's flow is pinned to the backend that serves it: no second chance needed.
            prev: 0,
        })
    }
}

/// A short digest of the Maglev tables `state` gives (slot by slot, by backend address), so
/// agents can compare tables without sending them.
pub fn table_digest(state: &DesiredState, ring_size: u32, seed: u64) -> String {
    let mut h = Sha256::new();
    h.update(ring_size.to_be_bytes());
    for (vip, spec) in &state.vips {
        h.update(vip.to_string().as_bytes());
        let members = crate::reconcile::members(&spec.backends);
        match MaglevTable::build(ring_size, seed, &members) {
            Ok(t) => {
                for m in t.members() {
                    h.update(m.addr.octets());
                }
                for s in t.slots() {
                    h.update(s.to_le_bytes());
                }
            }
            Err(e) => h.update(e.to_string().as_bytes()),
        }
    }
    super::replicated::hex16(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn rec(src: &str, dst: &str, backend: u16) -> FlowRecord {
        FlowRecord {
            key: FlowKey::new(
                src.parse::<IpAddr>().unwrap(),
                40000,
                dst.parse::<IpAddr>().unwrap(),
                80,
                PROTO_TCP,
            ),
            backend: Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, backend),
            hash: 0xdead_beef,
        }
    }

    #[test]
    fn records_round_trip_and_bad_batches_are_refused() {
        let rs = vec![
            rec("198.51.100.7", "192.0.2.10", 1),
            rec("2001:db8:c::10", "2001:db8:100::10", 2),
        ];
        let body = encode_batch(Mode::New, &rs);
        assert_eq!(body.len(), 5 + 2 * RECORD_LEN);
        assert_eq!(decode_batch(&body).unwrap(), (Mode::New, rs.clone()));
        let mut short = body.clone();
        short.pop();
        assert!(decode_batch(&short).is_err());
        let mut mode = body.clone();
        mode[0] = 9;
        assert!(decode_batch(&mode).is_err());
        let mut udp = body.clone();
        udp[5 + 36] = 17;
        assert!(decode_batch(&udp).is_err());
        let mut v4junk = body.clone();
        v4junk[5 + 5] = 1; // a v4 source with bytes past the first word
        assert!(decode_batch(&v4junk).is_err());
        let mut count = body.clone();
        count[1..5].copy_from_slice(&(MAX_BATCH as u32 + 1).to_be_bytes());
        assert!(decode_batch(&count).is_err());
    }
}
