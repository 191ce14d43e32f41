//! Peer flow sync, the dataplane half, through BPF_PROG_TEST_RUN: SYN-created connection entries
//! exported on the FLOW_EVENTS ring buffer (and nothing else), entries installed from peers
//! through `FlowTable`, and their hand-over to local traffic (`CONN_F_PEER` cleared).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use lb_common::{
    ATIME_GRANULARITY_NS, CONN_F_CLOSING, CONN_F_PEER, ConnEntry, Counter, FLOW_EVENTS_BYTES,
    FlowEvent, FlowKey, LB_F_FLOW_EVENTS, PROTO_TCP, PROTO_UDP,
};
use lb_userspace::dataplane::{Dataplane, DataplaneLimits, FlowTable, monotonic_ns};
use tests::*;

const RING: u32 = 4099;
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:10::10";
const SEC: u64 = 1_000_000_000;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP VIP on backends 1..=3 (IPv4) and 6..=8 (IPv6) and a UDP VIP on 4..=5, flow export on
/// or off, and the ring buffer's reader.
fn lb(export: bool) -> (Lb, TcpTables, RingBuf<MapData>) {
    let mut lb = Lb::new(RING);
    let tcp = TcpTables {
        v4: lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 1), (2, 1), (3, 1)]),
        v6: lb.add_vip(ip(VIP6), 80, PROTO_TCP, 1, false, &[(6, 1), (7, 1), (8, 1)]),
    };
    lb.add_vip(ip(VIP4), 53, PROTO_UDP, 2, false, &[(4, 1), (5, 1)]);
    lb.set_config(|c| c.flags = if export { LB_F_FLOW_EVENTS } else { 0 });
    let events = lb.dp.take_flow_events().unwrap();
    (lb, tcp, events)
}

/// The TCP VIPs' Maglev tables, by the flow's family.
struct TcpTables {
    v4: Installed,
    v6: Installed,
}

impl TcpTables {
    fn backend_for(&self, key: &lb_common::FlowKey) -> u32 {
        if key.family == lb_common::FAMILY_V4 {
            self.v4.backend_for(key)
        } else {
            self.v6.backend_for(key)
        }
    }
}

/// Everything waiting on the ring buffer.
fn drain(events: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = events.next() {
        assert_eq!(item.len(), size_of::<FlowEvent>(), "record size");
        // SAFETY: a FlowEvent is plain data and the record holds exactly one.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
    }
    out
}

fn forward(lb: &Lb, frame: &[u8]) -> std::net::Ipv6Addr {
    let run = lb.run(frame);
    assert_eq!(run.verdict, XDP_TX);
    decode(&run.out).unwrap().backend()
}

/// A backend other than the one the Maglev table gives `key` (1..=3).
fn other_backend(t: &Installed, key: &FlowKey) -> u32 {
    let maglev = t.backend_for(key);
    [1, 2, 3].into_iter().find(|&b| b != maglev).unwrap()
}

fn peer_entry(backend: u32, atime_ns: u64) -> ConnEntry {
    ConnEntry {
        backend,
        hash: 0x5eed,
        atime_ns,
        generation: 1,
        flags: CONN_F_PEER,
        prev: 0,
    }
}

#[test]
fn a_syn_exports_exactly_its_new_entry() {
    let (mut lb, t, mut events) = lb(true);
    for (n, flow) in [
        Flow::new("198.51.100.7", 40001, VIP4, 80),
        Flow::new("2001:db8:c::7", 40001, VIP6, 80),
    ]
    .into_iter()
    .enumerate()
    {
        let key = flow.key(PROTO_TCP);
        assert_eq!(
            forward(&lb, &flow.tcp(Tcp::Syn, &[])),
            backend_addr(t.backend_for(&key))
        );
        let entry = lb.dp.conn(&key).unwrap().unwrap();
        let got = drain(&mut events);
        assert_eq!(
            got,
            [FlowEvent {
                key,
                backend: entry.backend,
                hash: entry.hash,
                flags: lb_common::FLOW_EVENT_F_SYN,
            }],
            "{flow:?}"
        );
        assert_eq!(entry.hash, lb_common::flow_hash(&key, SEED));
        assert_eq!(lb.counter(Counter::FlowEvents), n as u64 + 1);
        // Established packets of the flow hit the entry: nothing more is exported.
        forward(&lb, &flow.tcp(Tcp::Ack, b"data"));
        assert!(drain(&mut events).is_empty());
    }
    assert_eq!(lb.counter(Counter::DropFlowEvent), 0);
}

#[test]
fn nothing_is_exported_with_the_flag_off() {
    let (mut lb, _, mut events) = lb(false);
    let flow = Flow::new("198.51.100.7", 40002, VIP4, 80);
    forward(&lb, &flow.tcp(Tcp::Syn, &[]));
    assert!(lb.dp.conn(&flow.key(PROTO_TCP)).unwrap().is_some());
    assert!(drain(&mut events).is_empty());
    assert_eq!(lb.counter(Counter::FlowEvents), 0);
    assert_eq!(lb.counter(Counter::DropFlowEvent), 0);
}

#[test]
fn only_syn_created_entries_are_exported() {
    let (mut lb, _, mut events) = lb(true);
    // A mid-flow miss is pinned locally but not exported: the flow may have moved here before
    // its peer's entry arrived.
    let ack = Flow::new("198.51.100.7", 40003, VIP4, 80);
    forward(&lb, &ack.tcp(Tcp::Ack, b"data"));
    assert!(lb.dp.conn(&ack.key(PROTO_TCP)).unwrap().is_some());
    assert_eq!(lb.counter(Counter::LruMissNonSyn), 1);
    // UDP: a new entry, no export.
    let udp = Flow::new("198.51.100.7", 40004, VIP4, 53);
    forward(&lb, &udp.udp(b"query"));
    assert!(lb.dp.conn(&udp.key(PROTO_UDP)).unwrap().is_some());
    assert_eq!(lb.counter(Counter::LruMissUdp), 1);
    // RST never creates an entry, so there is nothing to export.
    let rst = Flow::new("198.51.100.7", 40005, VIP4, 80);
    forward(&lb, &rst.tcp(Tcp::Rst, &[]));
    assert!(lb.dp.conn(&rst.key(PROTO_TCP)).unwrap().is_none());

    assert!(drain(&mut events).is_empty());
    assert_eq!(lb.counter(Counter::FlowEvents), 0);
    assert_eq!(lb.counter(Counter::DropFlowEvent), 0);
}

#[test]
fn a_peer_entry_steers_established_packets_away_from_the_table() {
    let (mut lb, t, mut events) = lb(true);
    let mut table = lb.dp.flow_table().unwrap();
    let flow = Flow::new("198.51.100.7", 40006, VIP4, 80);
    let key = flow.key(PROTO_TCP);
    let b = other_backend(&t.v4, &key);
    // CLOCK_MONOTONIC: up to a tick ahead of the program's coarse clock, still fresh there.
    let installed = peer_entry(b, monotonic_ns());
    table.insert(&key, &installed).unwrap();
    assert_eq!(table.get(&key).unwrap(), Some(installed));

    assert_eq!(forward(&lb, &flow.tcp(Tcp::Ack, b"data")), backend_addr(b));
    assert_eq!(lb.counter(Counter::LruHit), 1);
    // Fresh: not refreshed, so still the peer's.
    assert_eq!(lb.dp.conn(&key).unwrap(), Some(installed));
    assert!(drain(&mut events).is_empty());

    // A SYN always goes through the table and re-creates (and exports) the entry as its own.
    let maglev = t.backend_for(&key);
    assert_eq!(forward(&lb, &flow.tcp(Tcp::Syn, &[])), backend_addr(maglev));
    let e = lb.dp.conn(&key).unwrap().unwrap();
    assert_eq!((e.backend, e.flags & CONN_F_PEER), (maglev, 0));
    assert_eq!(drain(&mut events).len(), 1);
}

#[test]
fn local_traffic_takes_over_a_peer_entry_when_it_refreshes_it() {
    let (mut lb, t, mut events) = lb(true);
    let mut table = lb.dp.flow_table().unwrap();
    let now = monotonic_ns();

    // Refresh branch: an entry idle longer than the atime granularity.
    let flow = Flow::new("198.51.100.7", 40007, VIP4, 80);
    let key = flow.key(PROTO_TCP);
    let b = other_backend(&t.v4, &key);
    const { assert!(2 * SEC > ATIME_GRANULARITY_NS) };
    let old = now - 2 * SEC;
    table.insert(&key, &peer_entry(b, old)).unwrap();
    assert_eq!(forward(&lb, &flow.tcp(Tcp::Ack, b"data")), backend_addr(b));
    let e = lb.dp.conn(&key).unwrap().unwrap();
    assert_eq!(e.backend, b);
    assert_eq!(e.flags & CONN_F_PEER, 0, "refreshed by local traffic");
    assert!(e.atime_ns > old + SEC, "atime refreshed");

    // Closing branch: the client's FIN marks a fresh entry closing and takes it over too.
    let fin = Flow::new("198.51.100.7", 40008, VIP4, 80);
    let fin_key = fin.key(PROTO_TCP);
    let b = other_backend(&t.v4, &fin_key);
    table
        .insert(&fin_key, &peer_entry(b, monotonic_ns()))
        .unwrap();
    assert_eq!(forward(&lb, &fin.tcp(Tcp::Fin, &[])), backend_addr(b));
    let e = lb.dp.conn(&fin_key).unwrap().unwrap();
    assert_eq!(e.flags, CONN_F_CLOSING);

    // Taking over is not a new flow: nothing is exported.
    assert!(drain(&mut events).is_empty());
    assert_eq!(lb.counter(Counter::FlowEvents), 0);
}

#[test]
fn live_lists_fresh_entries_and_omits_expired_ones() {
    let (mut lb, _, _events) = lb(true);
    lb.set_config(|c| {
        c.tcp_idle_timeout_ns = 100 * SEC;
        c.tcp_closing_timeout_ns = 10 * SEC;
        c.udp_timeout_ns = 10 * SEC;
    });
    let mut table = lb.dp.flow_table().unwrap();
    let cfg = table.config().unwrap();
    assert_eq!(cfg, lb.cfg);
    let now = monotonic_ns();
    // (flow, proto, idle seconds, flags, live)
    let cases = [
        (40010, PROTO_TCP, 0, CONN_F_PEER, true),
        (40011, PROTO_TCP, 50, 0, true),
        (40012, PROTO_TCP, 150, 0, false),
        (40013, PROTO_TCP, 5, CONN_F_CLOSING, true),
        (40014, PROTO_TCP, 50, CONN_F_CLOSING, false),
        (40015, PROTO_UDP, 5, 0, true),
        (40016, PROTO_UDP, 50, CONN_F_PEER, false),
    ];
    let flows: Vec<(FlowKey, ConnEntry)> = cases
        .iter()
        .map(|&(port, proto, idle, flags, _)| {
            let key = Flow::new("198.51.100.7", port, VIP4, 80).key(proto);
            let entry = ConnEntry {
                backend: 1,
                hash: port as u32,
                atime_ns: now - idle * SEC,
                generation: 1,
                flags,
                prev: 0,
            };
            (key, entry)
        })
        .collect();
    assert_eq!(table.insert_batch(&flows).unwrap(), flows.len());
    let mut live = table.live(&cfg, now).unwrap();
    live.sort_by_key(|(k, _)| k.src_port);
    let want: Vec<(FlowKey, ConnEntry)> = flows
        .iter()
        .zip(&cases)
        .filter(|(_, c)| c.4)
        .map(|(f, _)| *f)
        .collect();
    assert_eq!(live, want);
    // An hour on, nothing is live.
    assert!(table.live(&cfg, now + 3600 * SEC).unwrap().is_empty());
}

/// The batched walk (BPF_MAP_LOOKUP_BATCH, several chunks) reads every entry exactly once, as
/// written by the batched insert (BPF_MAP_UPDATE_BATCH), and an empty table reads as empty.
#[test]
fn the_batched_walk_reads_every_entry_once() {
    let (lb, _, _events) = lb(true);
    let mut table = lb.dp.flow_table().unwrap();
    assert_eq!(table.walk(|_, _| panic!("an empty table")).unwrap(), 0);
    let now = monotonic_ns();
    let flows: Vec<(FlowKey, ConnEntry)> = (0..20_000u32)
        .map(|i| {
            let src = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let key = Flow::new(&src, 40000, VIP4, 80).key(PROTO_TCP);
            (key, peer_entry(1 + i % 3, now - i as u64))
        })
        .collect();
    assert_eq!(table.insert_batch(&flows).unwrap(), flows.len());
    let mut seen = std::collections::HashMap::new();
    let n = table
        .walk(|k, e| {
            assert!(seen.insert(*k, *e).is_none(), "{k:?} read twice");
        })
        .unwrap();
    assert_eq!(n, flows.len());
    assert_eq!(seen.len(), flows.len());
    for (k, e) in &flows {
        assert_eq!(seen.get(k), Some(e));
    }
}

/// A pin directory under /sys/fs/bpf, removed on drop.
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = lb_userspace::dataplane::detach_pinned(&self.0);
    }
}

impl PinDir {
    /// A fresh, empty pin directory `/sys/fs/bpf/lbt-<name>-<pid>`.
    fn new(name: &str) -> Self {
        require_root();
        let pins = PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lbt-{name}-{}",
            std::process::id()
        )));
        let _ = std::fs::remove_dir_all(&pins.0);
        // bpffs may not be mounted yet on a fresh machine (the agent mounts it when it starts).
        lb_userspace::dataplane::ensure_bpffs(&pins.0).unwrap();
        pins
    }
}

#[test]
fn a_flow_table_opened_from_the_pins_writes_the_programs_table() {
    let pins = PinDir::new("flowsync");
    let limits = Lb::limits(RING, 1024);
    let mut dp = Dataplane::load_pinned(limits, &pins.0).unwrap();
    let mut table = FlowTable::open_pinned(&pins.0).unwrap();
    let key = Flow::new("198.51.100.7", 40020, VIP4, 80).key(PROTO_TCP);
    let entry = peer_entry(7, monotonic_ns());
    table.insert(&key, &entry).unwrap();
    assert_eq!(dp.conn(&key).unwrap(), Some(entry));
    assert_eq!(table.config().unwrap(), dp.config().unwrap());
    // The ring buffer is not among the pins: each load has its own.
    assert!(!pins.0.join(lb_common::names::FLOW_EVENTS).exists());
    assert!(dp.take_flow_events().is_ok());
    assert!(dp.take_flow_events().is_err(), "taken once");
}

/// `flow_cache_slots` sizes the pinned epochs: an agent with another size is refused with the
/// way out (`lb detach`), and the pins stay as they were for the agent of the right size.
#[test]
fn a_pinned_flow_cache_of_another_size_is_refused_and_kept() {
    let pins = PinDir::new("cachesize");
    let limits = DataplaneLimits {
        flow_cache_slots: 1024,
        ..Lb::limits(RING, 1024)
    };
    let dp = Dataplane::load_pinned(limits, &pins.0).unwrap();
    let key = Flow::new("198.51.100.7", 40021, VIP4, 80).key(PROTO_TCP);
    let entry = peer_entry(7, monotonic_ns());
    dp.flow_table().unwrap().insert(&key, &entry).unwrap();
    drop(dp);
    let bigger = DataplaneLimits {
        flow_cache_slots: 4096,
        ..limits
    };
    let Err(e) = Dataplane::load_pinned(bigger, &pins.0) else {
        panic!("an agent with another cache size adopted the pins");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains(lb_common::names::FLOW_CACHE_EPOCHS) && e.contains("lb detach"),
        "{e}"
    );
    // The agent of the right size adopts the pins, the flow's entry with them, and its flow
    // table retires by the same index width as the program.
    let mut dp = Dataplane::load_pinned(limits, &pins.0).unwrap();
    assert_eq!(dp.conn(&key).unwrap(), Some(entry));
    assert_eq!(dp.limits().flow_cache_slots, 1024);
}

#[test]
fn a_full_ring_loses_exports_not_packets() {
    let (mut lb, _, mut events) = lb(true);
    // Each record takes an 8-byte header and the event, rounded up to 8 bytes, and a full ring
    // keeps one byte free; nobody reads until the end.
    let record = (8 + size_of::<FlowEvent>() as u64).next_multiple_of(8);
    let capacity = (FLOW_EVENTS_BYTES as u64 - 1) / record;
    let extra = 50;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..capacity + extra {
        assert!(Instant::now() < deadline, "too slow: {i} SYNs sent");
        // Distinct flows: 200 ports on each of up to 254 addresses.
        let src = format!("198.51.100.{}", 1 + i / 200);
        let flow = Flow::new(&src, 1024 + (i % 200) as u16, VIP4, 80);
        let run = lb.run(&flow.tcp(Tcp::Syn, &[]));
        assert_eq!(run.verdict, XDP_TX, "SYN {i} must be forwarded");
    }
    let sent = capacity + extra;
    assert_eq!(lb.counter(Counter::FlowEvents), capacity);
    assert_eq!(lb.counter(Counter::DropFlowEvent), extra);
    assert_eq!(lb.counter(Counter::LruMissSyn), sent);
    assert_eq!(lb.counter(Counter::Tx), sent);
    let got = drain(&mut events);
    assert_eq!(got.len() as u64, capacity);
    assert_eq!(
        got[0].key,
        Flow::new("198.51.100.1", 1024, VIP4, 80).key(PROTO_TCP)
    );
    // Read out, the ring takes events again.
    let flow = Flow::new("203.0.113.9", 40030, VIP4, 80);
    forward(&lb, &flow.tcp(Tcp::Syn, &[]));
    let got = drain(&mut events);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, flow.key(PROTO_TCP));
    assert_eq!(lb.counter(Counter::FlowEvents), capacity + 1);
}
