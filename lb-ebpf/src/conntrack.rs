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

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{
    ATIME_GRANULARITY_NS, CONN_F_CLOSING, CONN_F_PEER, ConnEntry, Counter, FlowKey,
    LB_F_FLOW_EVENTS, LbConfig, VipMeta, flow_hash,
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
            if idle <= cfg.idle_timeout_ns(is_tcp, entry.flags) {
                match maglev::backend(entry.backend) {
                    Some(b) if b.generation == entry.generation => {
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
                    _ => stats::count(Counter::LruStaleBackend),
                }
            } else {
                stats::count(Counter::LruExpired);
            }
        }
    }
    let hash = flow_hash(key, cfg.hash_seed);
    let id = maglev::ring_lookup(vip.ring, hash)?;
    let Some(b) = maglev::backend(id) else {
        // The agent installs a backend before any slot points at it; this is a bug alarm.
        warn!(
            ctx,
            "ring {} points at backend id {}, which is not installed", vip.ring, id
        );
        return None;
    };
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
