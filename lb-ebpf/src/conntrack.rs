//! The connection table: pins a flow to the backend its first packet was sent to, so later
//! Maglev table changes do not move established connections.
//!
//! SYN: always through Maglev, (re)creating the entry. RST: the entry if any, else Maglev,
//! never creating one. Anything else: the entry if any, else Maglev and a new entry (a
//! mid-flow packet that arrives after a route shift gets pinned too). UDP entries expire after
//! `udp_timeout_ns` without packets; TCP entries live until the LRU evicts them.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{ConnEntry, Counter, FlowKey, LbConfig, VipMeta, flow_hash};

use crate::{maglev, maps::CONNS, stats};

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
    key: &FlowKey,
    is_tcp: bool,
    tcp_flags: u8,
    vip: &VipMeta,
    cfg: &LbConfig,
) -> Option<Target> {
    let syn = is_tcp && tcp_flags & (TCP_SYN | TCP_RST) == TCP_SYN;
    let rst = is_tcp && tcp_flags & TCP_RST != 0;
    if !syn {
        if let Some(entry) = CONNS.get_ptr_mut(key) {
            let entry = unsafe { &mut *entry };
            let live = is_tcp || {
                let now = now_ns();
                let live = now.wrapping_sub(entry.atime_ns) <= cfg.udp_timeout_ns;
                entry.atime_ns = now;
                live
            };
            if live {
                if let Some(b) = maglev::backend(entry.backend) {
                    stats::count(Counter::LruHit);
                    return Some(Target {
                        id: entry.backend,
                        addr: b.addr,
                        hash: entry.hash,
                    });
                }
                stats::count(Counter::LruStaleBackend);
            }
        }
    }
    let hash = flow_hash(key, cfg.hash_seed);
    let id = maglev::ring_lookup(vip.ring, hash)?;
    let b = maglev::backend(id)?;
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
            atime_ns: now_ns(),
        };
        // A full table evicts its least recently used entry; insert cannot fail otherwise.
        let _ = CONNS.insert(key, &entry, 0);
    }
    Some(Target {
        id,
        addr: b.addr,
        hash,
    })
}
