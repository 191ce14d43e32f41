//! The connection table: pins a flow to the backend its first packet was sent to, so later
//! Maglev table changes (a backend added, drained or weighted) do not move established
//! connections.
//!
//! SYN: always through Maglev, (re)creating the entry. RST: the entry if any, else Maglev,
//! never creating one. Anything else: the entry if any, else Maglev and a new entry (a
//! mid-flow packet that arrives after a route shift gets pinned too). An entry expires after
//! its idle timeout: UDP, established TCP, or TCP after the client's FIN/RST (closing). An
//! entry whose backend id was removed or handed to another backend (generation) is stale.
//!
//! Peer flow sync: with `LB_F_FLOW_EVENTS`, the entry a SYN creates is exported (`flowsync`).
//! Entries the agent installs from peers carry `CONN_F_PEER`, which the first local refresh of
//! the entry's atime clears.
//!
//! `lookup_backend` is the read-only variant for ICMP errors about a flow (icmp.rs): the same
//! choice a packet of the flow would get now, without creating or refreshing an entry.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{
    ATIME_GRANULARITY_NS, Backend, CONN_F_CLOSING, CONN_F_PEER, ConnEntry, Counter, FlowKey,
    LB_F_FLOW_EVENTS, LbConfig, PROTO_TCP, VipMeta, flow_hash,
};

use crate::{flowsync, maglev, maps::CONNS, stats};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

pub struct Target {
    pub id: u32,
    pub addr: [u32; 4],
    pub hash: u32,
}

#[inline(always)]
fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
pub fn pick_backend(
    ctx: &XdpContext,
    key: &FlowKey,
    is_tcp: bool,
    tcp_flags: u8,
    vip: &VipMeta,
    cfg: &LbConfig,
) -> Option<Target> {
    let syn = is_tcp && tcp_flags & (TCP_SYN | TCP_RST) == TCP_SYN;
    let rst = is_tcp && tcp_flags & TCP_RST != 0;
    let closing = is_tcp && tcp_flags & (TCP_FIN | TCP_RST) != 0;
    let now = now_ns();
    if !syn {
        if let Some(entry) = CONNS.get_ptr_mut(key) {
            let entry = unsafe { &mut *entry };
            // The agent writes peers' entries with CLOCK_MONOTONIC, which runs up to a tick
            // ahead of this coarse clock: an atime in the future is idle 0, not expired.
            let idle = now.saturating_sub(entry.atime_ns);
            match entry_backend(entry, idle, is_tcp, cfg) {
                Ok(b) => {
                    stats::count(Counter::LruHit);
                    // A refresh also takes over a peer's entry: local traffic now owns it.
                    if closing && entry.flags & CONN_F_CLOSING == 0 {
                        entry.flags = (entry.flags | CONN_F_CLOSING) & !CONN_F_PEER;
                        entry.atime_ns = now;
                    } else if idle > ATIME_GRANULARITY_NS {
                        entry.flags &= !CONN_F_PEER;
                        entry.atime_ns = now;
                    }
                    return Some(Target {
                        id: entry.backend,
                        addr: b.addr,
                        hash: entry.hash,
                    });
                }
                Err(why) => stats::count(why),
            }
        }
    }
    let hash = flow_hash(key, cfg.hash_seed);
    let (id, b) = ring_backend(ctx, vip, hash)?;
    stats::count(if syn {
        Counter::LruMissSyn
    } else if is_tcp {
        Counter::LruMissNonSyn
    } else {
        Counter::LruMissUdp
    });
    if !rst {
        let entry = ConnEntry {
            backend: id,
            hash,
            atime_ns: now,
            generation: b.generation,
            flags: if closing { CONN_F_CLOSING } else { 0 },
        };
        // A full table evicts its least recently used entry; insert cannot fail otherwise.
        let inserted = CONNS.insert(key, &entry, 0).is_ok();
        if syn && inserted && cfg.flags & LB_F_FLOW_EVENTS != 0 {
            flowsync::export(key, id, hash);
        }
    }
    Some(Target {
        id,
        addr: b.addr,
        hash,
    })
}

/// Where a packet of this flow would go now, read-only: the connection entry if it is live
/// and valid (the same rules as `pick_backend`), else the Maglev choice. Creates, refreshes and
/// counts nothing: for ICMP errors about a flow, which must not pin or keep alive anything.
#[inline(always)]
pub fn lookup_backend(
    ctx: &XdpContext,
    key: &FlowKey,
    vip: &VipMeta,
    cfg: &LbConfig,
) -> Option<Target> {
    if let Some(entry) = CONNS.get_ptr(key) {
        let entry = unsafe { &*entry };
        let idle = now_ns().saturating_sub(entry.atime_ns);
        if let Ok(b) = entry_backend(entry, idle, key.proto == PROTO_TCP, cfg) {
            return Some(Target {
                id: entry.backend,
                addr: b.addr,
                hash: entry.hash,
            });
        }
    }
    let hash = flow_hash(key, cfg.hash_seed);
    let (id, b) = ring_backend(ctx, vip, hash)?;
    Some(Target {
        id,
        addr: b.addr,
        hash,
    })
}

/// The backend of a connection entry idle for `idle` ns, or why the entry no longer counts:
/// `LruExpired` (idle past its timeout) or `LruStaleBackend` (its backend id was removed or
/// handed to another backend).
#[inline(always)]
fn entry_backend(
    entry: &ConnEntry,
    idle: u64,
    is_tcp: bool,
    cfg: &LbConfig,
) -> Result<&'static Backend, Counter> {
    if idle > cfg.idle_timeout_ns(is_tcp, entry.flags) {
        return Err(Counter::LruExpired);
    }
    match maglev::backend(entry.backend) {
        Some(b) if b.generation == entry.generation => Ok(b),
        _ => Err(Counter::LruStaleBackend),
    }
}

/// The Maglev choice for `hash` in the VIP's ring: None for an empty slot, or (logged) a slot
/// naming an uninstalled backend.
#[inline(always)]
fn ring_backend(ctx: &XdpContext, vip: &VipMeta, hash: u32) -> Option<(u32, &'static Backend)> {
    let id = maglev::ring_lookup(vip.ring, hash)?;
    let Some(b) = maglev::backend(id) else {
        // The agent installs a backend before any slot points at it; this is a bug alarm.
        warn!(
            ctx,
            "ring {} points at backend id {}, which is not installed", vip.ring, id
        );
        return None;
    };
    Some((id, b))
}
