//! The connection table: pins a flow to the backend its first packet was sent to, so later
//! Maglev table changes (a backend added, drained or weighted) do not move established
//! connections.
//!
//! An established flow needs one hash lookup here: its entry names the backend, and the
//! backend names its VIP (`VIPS_BY_ID`), so the `VIPS` lookup by address is skipped
//! (`established`). Everything else finds its VIP by address first (`new_flow`). An established
//! flow whose entry this CPU read moments ago needs not even that lookup: its CPU's flow cache
//! answers (`cached`, flowcache.rs, lb-common/src/flow_cache.rs).
//!
//! SYN: always through Maglev. With second chance on (`LB_F_SECOND_CHANCE`) a SYN writes no
//! entry unless its ring slot changed recently (has a live previous backend): the flow's entry
//! is made by its first packet after the SYN, so a SYN flood cannot fill the table, and the
//! kernel's LRU insert leaves the SYN path. A table change between the SYN and that packet
//! moves the packet to the slot's new backend with the old one as its second chance, which
//! holds the handshake. In a changed slot, or with second chance off, the SYN (re)creates the
//! entry as before: a reused 5-tuple is re-pinned to Maglev's choice, and a new connection is
//! not paired with the slot's previous backend for its whole life. RST: the entry if any, else
//! Maglev, never creating one. Over the new-flow gate's rate (`ratelimit::allow_new_entry`), a
//! miss creates no entry either. Anything else: the entry if any, else Maglev and a new entry
//! (a mid-flow packet that arrives after a route shift gets pinned too). An entry expires after
//! its idle timeout: UDP, established TCP, or TCP after the client's FIN/RST (closing). An
//! entry whose backend id was removed or handed to another backend (generation) is stale.
//!
//! Peer flow sync: with `LB_F_FLOW_EVENTS`, the entry a SYN creates is exported (`flowsync`),
//! and with `LB_F_SECOND_CHANCE` also the entry a TCP flow's first packet after its SYN makes.
//! Entries the agent installs from peers carry `CONN_F_PEER`, which the first local refresh of
//! the entry's atime clears.
//!
//! ICMP errors about a flow (`Kind::IcmpError`) read the same choice a packet of the flow would
//! get now (`peek`, then Maglev through `new_flow`), without creating or refreshing an entry.
//!
//! Second chance (docs/second-chance.md): a TCP packet that is not a SYN and finds no entry is
//! mid-flow, so its connection may live on the backend that held its slot before the slot's
//! last change. If that previous backend is still live in the slot, the packet goes to the
//! slot's backend with the previous one as a second chance (`Target::prev`), and the entry it
//! creates remembers the pair, so every later packet of the flow carries it too. A SYN never
//! does: a new connection belongs to the slot's backend.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::warn;
use lb_common::{
    ATIME_GRANULARITY_NS, BACKEND_F_VALID, Backend, CONN_F_CLOSING, CONN_F_PEER, ConnEntry,
    Counter, FLOW_CACHE_MAX_LIFE_NS, FlowKey, LB_F_FLOW_CACHE, LB_F_FLOW_EVENTS,
    LB_F_SECOND_CHANCE, LbConfig, PROTO_TCP, RING_TICK_SHIFT, TcpEvent, VipMeta, decode_id,
    encode_id, flow_hash,
};

use crate::conns::Written;
use crate::flowcache::Slot;
use crate::maps::BACKENDS;
use crate::packet::{Kind, Target};
use crate::{clock::now_ns, conns, flowcache, flowsync, maglev, ratelimit, stats, vip};

/// What the connection table says about a packet's flow.
pub enum Found {
    /// A live entry whose backend's VIP is installed: everything the rewrite needs.
    Hit(&'static VipMeta, Target),
    /// A live entry whose backend names no installed VIP id (maps adopted from an agent
    /// without `VIPS_BY_ID`, or the VIP was removed): the caller looks the VIP up by address.
    Pinned(Target),
    /// No live entry (a SYN never looks): Maglev decides.
    Miss,
}

/// What this CPU's flow cache says about a client packet (step 0).
pub enum Cached {
    /// The flow's cached entry, its backend and VIP still installed: the table is not read.
    Hit(&'static VipMeta, Target),
    /// Not cached: the table decides. `Some(slot)`: the entry it finds may be cached there
    /// (under the epoch read before the lookup).
    Miss(Option<Slot>),
}

/// Step 0, for a client packet: this CPU's flow cache (flowcache.rs), for established packets
/// only (no SYN, FIN or RST: they change the entry). Array reads, no hash lookup, and not even
/// the clock.
#[inline(always)]
pub fn cached(key: &FlowKey, tcp_flags: u8, cfg: &LbConfig) -> Cached {
    let event = TcpEvent::of(key.proto == PROTO_TCP, tcp_flags);
    if cfg.flags & LB_F_FLOW_CACHE == 0 || event.syn || event.closing {
        return Cached::Miss(None);
    }
    let (slot, answer) = flowcache::probe(key);
    let Some(c) = answer else {
        return Cached::Miss(Some(slot));
    };
    let vip = match maglev::backend(c.backend) {
        Some(b) if b.generation == c.generation => vip::by_id(b.vip).map(|vip| (vip, b)),
        _ => None,
    };
    let Some((vip, b)) = vip else {
        // The table says why (stale backend, VIP removed) and counts it.
        return Cached::Miss(Some(slot));
    };
    stats::count(Counter::FlowCacheHit);
    Cached::Hit(
        vip,
        Target {
            id: c.backend,
            addr: b.addr,
            hash: c.hash,
            prev: c.prev,
        },
    )
}

/// Step 1 of the backend choice: the flow's connection entry, refreshed. One hash lookup (the
/// entry) and array reads (backend, VIP by id) for an established flow. `cache`: the flow
/// cache's slot to keep a live entry in (see `Cached::Miss`).
#[inline(always)]
pub fn established(key: &FlowKey, flow: &FlowPacket, cfg: &LbConfig, cache: Option<Slot>) -> Found {
    if flow.syn {
        return Found::Miss;
    }
    let Some(entry) = conns::get_mut(key) else {
        return Found::Miss;
    };
    // SAFETY: a valid pointer to the entry's value; the kernel keeps it alive for the program
    // run (an LRU eviction meanwhile only recycles it), and the program runs to completion.
    let entry = unsafe { &mut *entry };
    // The agent writes peers' entries with CLOCK_MONOTONIC, which runs up to a tick or two
    // ahead of the cached coarse clock: an atime in the future is idle 0, not expired.
    let idle = flow.now.saturating_sub(entry.atime_ns);
    let b = match entry_backend(entry, idle, flow.is_tcp, cfg) {
        Ok(b) => b,
        Err(why) => {
            stats::count(why);
            return Found::Miss;
        }
    };
    stats::count(Counter::LruHit);
    // A refresh also takes over a peer's entry: local traffic now owns it.
    let idle = if flow.closing && entry.flags & CONN_F_CLOSING == 0 {
        entry.flags = (entry.flags | CONN_F_CLOSING) & !CONN_F_PEER;
        entry.atime_ns = flow.now;
        0
    } else if idle > ATIME_GRANULARITY_NS {
        entry.flags &= !CONN_F_PEER;
        entry.atime_ns = flow.now;
        0
    } else {
        idle
    };
    // Cached only if the entry outlives the slot: no cache ever answers for an expired entry,
    // so replacing one needs no retiring (`pin`).
    if let Some(slot) = cache
        && idle + FLOW_CACHE_MAX_LIFE_NS <= cfg.idle_timeout_ns(flow.is_tcp, entry.flags)
    {
        flowcache::fill(key, entry, slot);
    }
    let target = Target {
        id: entry.backend,
        addr: b.addr,
        hash: entry.hash,
        prev: entry.prev,
    };
    match vip::by_id(b.vip) {
        Some(vip) => Found::Hit(vip, target),
        None => Found::Pinned(target),
    }
}

/// The TCP flags that matter to the connection table, and the time, read once per packet.
pub struct FlowPacket {
    pub is_tcp: bool,
    pub syn: bool,
    pub rst: bool,
    pub closing: bool,
    pub now: u64,
}

impl FlowPacket {
    #[inline(always)]
    pub fn new(is_tcp: bool, tcp_flags: u8) -> Self {
        let TcpEvent { syn, rst, closing } = TcpEvent::of(is_tcp, tcp_flags);
        Self {
            is_tcp,
            syn,
            rst,
            closing,
            now: now_ns(),
        }
    }
}

/// Step 1 for an ICMP error about a flow (`Kind::IcmpError`), read-only: the flow's entry if
/// it is live and valid (the same rules as `established`), as `Pinned` (the error's VIP is
/// always looked up by address), else `Miss`. Refreshes and counts nothing.
#[inline(always)]
pub fn peek(key: &FlowKey, flow: &FlowPacket, cfg: &LbConfig) -> Found {
    let Some(entry) = conns::get(key) else {
        return Found::Miss;
    };
    // SAFETY: a valid pointer to the entry's value for the program run (see `established`).
    let entry = unsafe { &*entry };
    let idle = flow.now.saturating_sub(entry.atime_ns);
    match entry_backend(entry, idle, flow.is_tcp, cfg) {
        Ok(b) => Found::Pinned(Target {
            id: entry.backend,
            addr: b.addr,
            hash: entry.hash,
            prev: entry.prev,
        }),
        Err(_) => Found::Miss,
    }
}

/// Step 2, when step 1 found no live entry: the Maglev choice of `vip`'s ring. A client
/// packet's flow is pinned with a new entry (except for RST) and the miss counted; an ICMP
/// error (`Kind::IcmpError`) only reads the choice. None: the ring has no backend for this
/// hash.
#[inline(always)]
pub fn new_flow(
    ctx: &XdpContext,
    key: &FlowKey,
    flow: &FlowPacket,
    vip: &VipMeta,
    cfg: &LbConfig,
    kind: Kind,
) -> Option<Target> {
    let hash = flow_hash(key, cfg.hash_seed);
    let (id, b, slot_prev) = ring_backend(ctx, vip, hash, flow)?;
    // A new connection belongs to the slot's backend alone.
    let prev = if flow.syn { 0 } else { slot_prev };
    if kind == Kind::Client {
        pin(key, flow, cfg, id, b, hash, prev, slot_prev != 0);
    }
    Some(Target {
        id,
        addr: b.addr,
        hash,
        prev,
    })
}

/// Counts a client packet's miss and, unless it is a reset or a SYN that needs no entry, pins
/// its flow to backend `id` (with its second chance `prev`, id + 1 or 0). `changed`: the slot
/// has a live previous backend.
#[allow(
    clippy::too_many_arguments,
    reason = "inlined: the values stay in registers"
)]
#[inline(always)]
fn pin(
    key: &FlowKey,
    flow: &FlowPacket,
    cfg: &LbConfig,
    id: u32,
    b: &Backend,
    hash: u32,
    prev: u16,
    changed: bool,
) {
    stats::count(if flow.syn {
        Counter::LruMissSyn
    } else if flow.is_tcp {
        Counter::LruMissNonSyn
    } else {
        Counter::LruMissUdp
    });
    let second_chance = cfg.flags & LB_F_SECOND_CHANCE != 0;
    if flow.syn {
        if second_chance && !changed {
            return;
        }
        stats::count(Counter::SynPinned);
    }
    if prev != 0 {
        stats::count(Counter::SecondChancePaired);
    }
    // Over the new-flow gate's budget (a flood of new flows): forwarded by Maglev without an
    // entry, so the flood cannot evict established flows' entries (nor be exported).
    if !flow.rst && ratelimit::allow_new_entry() {
        let entry = ConnEntry {
            backend: id,
            hash,
            atime_ns: flow.now,
            generation: b.generation,
            flags: if flow.closing { CONN_F_CLOSING } else { 0 },
            prev,
        };
        // A full table evicts its least recently used entry; insert cannot fail otherwise.
        // A SYN may replace a live entry (a reused 5-tuple) that any CPU's flow cache holds:
        // then every CPU's slot of the flow is retired. Any other packet gets here only when
        // its flow's entry was missing, expired or stale, which no cache answers for
        // (`established`).
        let cached = flow.syn && cfg.flags & LB_F_FLOW_CACHE != 0;
        let written = conns::insert(key, &entry, cached);
        if written == Written::Replaced {
            flowcache::retire(key);
        }
        let inserted = written != Written::Refused;
        // Exported: a flow's start, by its SYN or (second chance on) by its first packet after
        // the SYN. UDP has no start to tell a new flow by.
        if inserted
            && flow.is_tcp
            && (flow.syn || second_chance)
            && cfg.flags & LB_F_FLOW_EVENTS != 0
        {
            flowsync::export(key, id, hash, flow.syn);
        }
    }
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

/// The Maglev choice for `hash` in the VIP's ring, and for TCP the slot's live previous backend
/// (id + 1, or 0): None for an empty slot, or (logged) a slot naming an uninstalled backend.
#[inline(always)]
fn ring_backend(
    ctx: &XdpContext,
    vip: &VipMeta,
    hash: u32,
    flow: &FlowPacket,
) -> Option<(u32, &'static Backend, u16)> {
    let (id, slot) = maglev::ring_lookup(vip.ring, hash)?;
    let Some(b) = maglev::backend(id) else {
        uninstalled_backend(ctx, vip.ring, id);
        return None;
    };
    let prev = if flow.is_tcp {
        match slot.live_prev((flow.now >> RING_TICK_SHIFT) as u32) {
            Some(p) => encode_id(p),
            None => 0,
        }
    } else {
        0
    };
    Some((id, b, prev))
}

/// The address of the previous backend a packet to `target` carries as its second chance:
/// installed, and not the target itself (an entry's pair outlives neither). An address, not
/// a reference: LLVM turns "valid ? pointer : null" into pointer arithmetic the verifier
/// refuses.
#[inline(always)]
pub fn second_chance(target: &Target) -> Option<[u32; 4]> {
    if target.prev == 0 {
        return None;
    }
    let id = decode_id(target.prev);
    if id == target.id {
        return None;
    }
    let b = BACKENDS.get(id)?;
    if b.flags & BACKEND_F_VALID == 0 {
        return None;
    }
    Some(b.addr)
}

/// The agent installs a backend before any slot points at it; this is a bug alarm, the one log
/// line of the forwarding path. Out of line: the logging code stays out of the hot function.
#[inline(never)]
fn uninstalled_backend(ctx: &XdpContext, ring: u32, id: u32) {
    warn!(
        ctx,
        "ring {} points at backend id {}, which is not installed", ring, id
    );
}
