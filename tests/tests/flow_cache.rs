//! The per-CPU flow caches (`LB_F_FLOW_CACHE`, lb-common/src/flow_cache.rs, docs/dataplane.md
//! "The flow cache"): through BPF_PROG_TEST_RUN, frames in, exact frames out, counters read
//! back. An established IPv4 packet whose entry this CPU read moments ago is answered from the
//! cache with the same frame the table gives; every change to the tables (by userspace, or by
//! the program replacing an entry) and every backend change is seen by the very next packet;
//! SYN, FIN and RST and a cache switched off always read the table. IPv4 and IPv6 flows each
//! have a cache. Each test pins itself
//! to one CPU: the cache is per CPU. Needs root.

use std::net::IpAddr;

use lb_common::{
    CONN_F_PEER, ConnEntry, Counter, DEFAULT_FLOW_CACHE_SLOTS, FlowKey, LB_F_FLOW_CACHE, PROTO_TCP,
    flow_cache_bits, flow_cache_index, flow_hash,
};
use lb_userspace::dataplane::{DataplaneLimits, monotonic_ns};
use tests::*;

const RING: u32 = 4099;
const VIP: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:10::10";

/// VIP 0 (192.0.2.10:80) over backends 1, 2, 3, VIP 1 ([2001:db8:10::10]:80) over 4, 5, 6,
/// config flags `flags`; the calling thread pinned to its CPU.
fn lb(flags: u16) -> (Lb, Installed, Installed) {
    lb_sized(flags, DEFAULT_FLOW_CACHE_SLOTS)
}

/// The same with `slots` flow cache slots per CPU and family.
fn lb_sized(flags: u16, slots: u32) -> (Lb, Installed, Installed) {
    stay_on_this_cpu();
    let limits = DataplaneLimits {
        flow_cache_slots: slots,
        ..Lb::limits(RING, 200_000)
    };
    let mut lb = Lb::with_limits(lb_objects::EBPF_OBJECT, limits).unwrap();
    let v4 = lb.add_vip(
        VIP.parse::<IpAddr>().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1), (2, 1), (3, 1)],
    );
    let v6 = lb.add_vip(
        VIP6.parse::<IpAddr>().unwrap(),
        80,
        PROTO_TCP,
        1,
        false,
        &[(4, 1), (5, 1), (6, 1)],
    );
    lb.set_config(|c| c.flags = flags);
    (lb, v4, v6)
}

/// (lru_hit, flow_cache_hit) so far.
fn hits(lb: &mut Lb) -> (u64, u64) {
    (
        lb.counter(Counter::LruHit),
        lb.counter(Counter::FlowCacheHit),
    )
}

/// Another backend of VIP 0 than `than`.
fn other(than: u32) -> u32 {
    if than == 1 { 2 } else { 1 }
}

/// The entry the agent would install for a peer's flow `flow` on `backend`.
fn peer_entry(flow: &Flow, backend: u32) -> (FlowKey, ConnEntry) {
    let key = flow.key(PROTO_TCP);
    let entry = ConnEntry {
        backend,
        hash: flow_hash(&key, SEED),
        atime_ns: monotonic_ns(),
        generation: 1,
        flags: CONN_F_PEER,
        prev: 0,
    };
    (key, entry)
}

/// Pins `flow` to `backend` as the agent would install a peer's entry.
fn install(lb: &Lb, flow: &Flow, backend: u32) {
    let (key, entry) = peer_entry(flow, backend);
    lb.dp.flow_table().unwrap().insert(&key, &entry).unwrap();
}

/// The flow cache's slot index of `flow` (the same on every CPU), with `slots` per CPU.
fn slot_in(flow: &Flow, slots: u32) -> u32 {
    flow_cache_index(&flow.key(PROTO_TCP), flow_cache_bits(slots))
}

/// The same with the default slot count.
fn slot_of(flow: &Flow) -> u32 {
    slot_in(flow, DEFAULT_FLOW_CACHE_SLOTS)
}

#[test]
fn an_established_flow_is_answered_from_the_cache_with_the_tables_frame() {
    let (mut lb, t, _) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40000, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    // The first packet makes the entry, the second reads it from the table (and caches it).
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    assert_eq!(lb.counter(Counter::LruMissNonSyn), 1);
    let data = flow.tcp(Tcp::Ack, b"data");
    assert_eq!(lb.run(&data).out, encap_to(&flow, PROTO_TCP, &data, b));
    assert_eq!(hits(&mut lb), (1, 0));
    for i in 0..10 {
        let data = flow.tcp(Tcp::Ack, format!("data {i}").as_bytes());
        assert_eq!(lb.run(&data).out, encap_to(&flow, PROTO_TCP, &data, b));
    }
    let (table, cache) = hits(&mut lb);
    assert_eq!(table + cache, 11);
    // The cache reads the table again every 64 jiffies at most: nearly all from the cache.
    assert!(cache >= 9, "{cache} of 10 packets from the cache");
    assert_eq!(lb.counter(Counter::Tx), 12);
}

/// Without the epoch userspace writes after its changes, the cache would keep sending the flow
/// to the backend it read before the agent installed a peer's entry.
#[test]
fn an_entry_userspace_writes_is_followed_by_the_next_packet() {
    let (mut lb, t, _) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40001, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    for _ in 0..3 {
        assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    }
    assert_eq!(hits(&mut lb), (1, 1), "cached");
    // A peer says the flow is on another backend.
    let moved = other(b);
    install(&lb, &flow, moved);
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, moved));
    assert_eq!(hits(&mut lb), (2, 1), "read from the table, not the cache");
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, moved));
    assert_eq!(hits(&mut lb), (2, 2), "cached again");

    // Deleted by the agent: the next packet is a miss, pinned by Maglev again.
    let removed = lb.dp.flow_table().unwrap().remove_to(VIP.parse().unwrap());
    assert_eq!(removed.unwrap(), 1);
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    assert_eq!(lb.counter(Counter::LruMissNonSyn), 2);
    assert_eq!(hits(&mut lb), (2, 2));
}

/// Peers' flows arrive every few milliseconds in a fleet with flow sync. Each change retires
/// the slots of its own flows' index only: with one epoch for the whole cache, every flow on
/// every CPU would read the table again after each batch.
#[test]
fn a_change_retires_only_the_slots_of_its_own_flows() {
    let (mut lb, t, _) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40010, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    for _ in 0..3 {
        assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    }
    assert_eq!(hits(&mut lb), (1, 1), "cached");

    // A batch of peers' flows (the importer's path), none in the flow's slot index.
    let others: Vec<Flow> = (0..64u16)
        .map(|i| Flow::new("198.51.100.8", 41000 + i, VIP, 80))
        .filter(|f| slot_of(f) != slot_of(&flow))
        .collect();
    assert!(others.len() > 60);
    let batch: Vec<_> = others.iter().map(|f| peer_entry(f, 3)).collect();
    let written = lb.dp.flow_table().unwrap().insert_batch(&batch).unwrap();
    assert_eq!(written, batch.len());
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    assert_eq!(
        hits(&mut lb),
        (1, 2),
        "an unrelated batch retired the flow's slot"
    );
    // The batch's own flows go where the peer said.
    let theirs = others[0].tcp(Tcp::Ack, b"");
    assert_eq!(
        lb.run(&theirs).out,
        encap_to(&others[0], PROTO_TCP, &theirs, 3)
    );
    assert_eq!(hits(&mut lb), (2, 2));

    // A flow of the same slot index: that index's slots are retired on every CPU, and the
    // cached flow reads its (unchanged) entry from the table once.
    let twin = (0..u16::MAX)
        .map(|p| Flow::new("203.0.113.9", p, VIP, 80))
        .find(|f| slot_of(f) == slot_of(&flow))
        .expect("some port shares the slot index");
    install(&lb, &twin, other(b));
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    assert_eq!(
        hits(&mut lb),
        (3, 2),
        "read from the table after its index was retired"
    );
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    assert_eq!(hits(&mut lb), (3, 3), "cached again");
}

/// `[dataplane] flow_cache_slots` sizes the caches and the epochs at load (here 256 slots per
/// CPU, the least): flows of different slot indexes are cached side by side, one of the same
/// index takes the slot over, and a change retires that index only, as with the default size.
#[test]
fn a_smaller_cache_indexes_and_retires_by_its_own_size() {
    const SLOTS: u32 = lb_common::FLOW_CACHE_MIN_SLOTS;
    let (mut lb, t, _) = lb_sized(LB_F_FLOW_CACHE, SLOTS);
    assert_eq!(lb.dp.limits().flow_cache_slots, SLOTS);
    // Two flows of different indexes (of 256), and a third of the first one's index.
    let flows: Vec<Flow> = (0..2000u16)
        .map(|p| Flow::new("198.51.100.9", 20000 + p, VIP, 80))
        .collect();
    let a = flows[0].clone();
    let b = flows
        .iter()
        .find(|f| slot_in(f, SLOTS) != slot_in(&a, SLOTS))
        .unwrap()
        .clone();
    let c = flows[1..]
        .iter()
        .find(|f| slot_in(f, SLOTS) == slot_in(&a, SLOTS))
        .expect("2000 ports fill every one of 256 indexes")
        .clone();
    let run = |lb: &mut Lb, f: &Flow| {
        let ack = f.tcp(Tcp::Ack, b"");
        let want = encap_to(f, PROTO_TCP, &ack, t.backend_for(&f.key(PROTO_TCP)));
        assert_eq!(lb.run(&ack).out, want);
    };
    for f in [&a, &b, &a, &b] {
        run(&mut lb, f);
    }
    assert_eq!(
        hits(&mut lb),
        (2, 0),
        "each flow's second packet read the table"
    );
    for f in [&a, &b] {
        run(&mut lb, f);
    }
    assert_eq!(hits(&mut lb), (2, 2), "both cached side by side");
    // The third flow takes the first one's slot: each reads the table after the other.
    for f in [&c, &c, &a, &a] {
        run(&mut lb, f);
    }
    assert_eq!(hits(&mut lb), (4, 3));
    // A peer's entry for the second flow retires its index only: the first stays cached.
    install(&lb, &b, other(t.backend_for(&b.key(PROTO_TCP))));
    run(&mut lb, &a);
    assert_eq!(
        hits(&mut lb),
        (4, 4),
        "another index's change retired this slot"
    );
    let ack = b.tcp(Tcp::Ack, b"");
    let moved = other(t.backend_for(&b.key(PROTO_TCP)));
    assert_eq!(lb.run(&ack).out, encap_to(&b, PROTO_TCP, &ack, moved));
    assert_eq!(
        hits(&mut lb),
        (5, 4),
        "read from the table after its index was retired"
    );
}

/// With second chance off every SYN writes its entry; a SYN of a reused 5-tuple replaces the
/// old connection's entry, and no CPU's cache may keep the old backend.
#[test]
fn a_syn_that_replaces_an_entry_retires_the_cache() {
    let (mut lb, t, _) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40002, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let old = other(b);
    install(&lb, &flow, old);
    let ack = flow.tcp(Tcp::Ack, b"");
    for _ in 0..3 {
        assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, old));
    }
    assert_eq!(hits(&mut lb), (1, 2), "the old connection is cached");
    // A new connection on the same 5-tuple: Maglev's backend, and its entry replaces the old.
    let syn = flow.tcp(Tcp::Syn, b"");
    assert_eq!(lb.run(&syn).out, encap_to(&flow, PROTO_TCP, &syn, b));
    assert_eq!(lb.counter(Counter::SynPinned), 1);
    assert_eq!(
        lb.run(&ack).out,
        encap_to(&flow, PROTO_TCP, &ack, b),
        "the new connection went to the cached old backend"
    );
    assert_eq!(hits(&mut lb), (2, 2));
}

#[test]
fn a_removed_or_reused_backend_is_seen_by_the_next_packet() {
    let (mut lb, t, _) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40003, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    for _ in 0..3 {
        assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    }
    assert_eq!(hits(&mut lb), (1, 1));
    // The backend id is handed to another backend (a new generation): the entry is stale.
    lb.install_backend_generation(b, 2);
    let run = lb.run(&ack);
    assert_eq!(lb.counter(Counter::LruStaleBackend), 1);
    assert_eq!(lb.counter(Counter::LruMissNonSyn), 2);
    assert_eq!(
        run.out,
        encap_to(&flow, PROTO_TCP, &ack, b),
        "re-pinned by Maglev to the same slot"
    );
    assert_eq!(hits(&mut lb), (1, 1));
    // Removed: Maglev's slot now names no installed backend, so nothing is sent to it.
    lb.dp.clear_backend(b).unwrap();
    let run = lb.run(&ack);
    assert_ne!(run.verdict, XDP_TX, "sent to a removed backend");
    assert_eq!(hits(&mut lb), (1, 1));
}

#[test]
fn syn_fin_rst_and_a_cache_switched_off_read_the_table() {
    let (mut lb, t, v6) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40004, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    for _ in 0..2 {
        lb.run(&ack);
    }
    // FIN and RST change the entry (the closing timeout): the table, every time.
    for flags in [Tcp::Fin, Tcp::Rst] {
        let frame = flow.tcp(flags, b"");
        assert_eq!(lb.run(&frame).out, encap_to(&flow, PROTO_TCP, &frame, b));
    }
    assert_eq!(hits(&mut lb), (3, 0));

    let f6 = Flow::new("2001:db8:c::7", 40004, VIP6, 80);
    let b6 = v6.backend_for(&f6.key(PROTO_TCP));
    let ack6 = f6.tcp(Tcp::Ack, b"");
    for _ in 0..2 {
        lb.run(&ack6);
    }
    for flags in [Tcp::Fin, Tcp::Rst] {
        let frame = f6.tcp(flags, b"");
        assert_eq!(lb.run(&frame).out, encap_to(&f6, PROTO_TCP, &frame, b6));
    }
    assert_eq!(
        hits(&mut lb),
        (6, 0),
        "IPv6: FIN and RST read the table too"
    );

    lb.set_config(|c| c.flags = 0);
    for f in [
        Flow::new("198.51.100.7", 40005, VIP, 80),
        Flow::new("2001:db8:c::7", 40005, VIP6, 80),
    ] {
        let ack = f.tcp(Tcp::Ack, b"");
        for _ in 0..4 {
            lb.run(&ack);
        }
    }
    assert_eq!(hits(&mut lb), (12, 0), "the cache is off");
}

/// IPv6 flows have a cache of their own (`FLOW_CACHE6`, the whole 40-byte key), kept coherent
/// by the same epochs: a peer's entry and a re-pinning SYN are followed by the next packet.
#[test]
fn an_ipv6_flow_is_cached_and_follows_every_change() {
    let (mut lb, _, v6) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("2001:db8:c::7", 40008, VIP6, 80);
    let b = v6.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    for i in 0..12 {
        let data = flow.tcp(Tcp::Ack, format!("data {i}").as_bytes());
        assert_eq!(lb.run(&data).out, encap_to(&flow, PROTO_TCP, &data, b));
    }
    let (table, cache) = hits(&mut lb);
    assert_eq!(table + cache, 11, "the first packet pins the flow");
    assert!(cache >= 9, "{cache} of 11 packets from the cache");

    // A peer says the flow is on another backend of the VIP.
    let moved = if b == 4 { 5 } else { 4 };
    install(&lb, &flow, moved);
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, moved));
    assert_eq!(hits(&mut lb), (table + 1, cache), "read from the table");
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, moved));
    assert_eq!(hits(&mut lb), (table + 1, cache + 1), "cached again");

    // A new connection on the same 5-tuple (second chance off: the SYN writes its entry) goes
    // to Maglev's backend, and so does the next packet: the replaced entry's slot is retired.
    let syn = flow.tcp(Tcp::Syn, b"");
    assert_eq!(lb.run(&syn).out, encap_to(&flow, PROTO_TCP, &syn, b));
    assert_eq!(
        lb.run(&ack).out,
        encap_to(&flow, PROTO_TCP, &ack, b),
        "the new connection went to the cached old backend"
    );
    assert_eq!(hits(&mut lb), (table + 2, cache + 1));
}

/// A busy flow still reads its entry every 64 jiffies at most (at most 640 ms, at HZ=100): its
/// idle time stays current, and an expired or evicted entry is noticed.
#[test]
fn a_cached_flow_reads_the_table_again_after_64_jiffies() {
    let (mut lb, t, _) = lb(LB_F_FLOW_CACHE);
    let flow = Flow::new("198.51.100.7", 40006, VIP, 80);
    let b = t.backend_for(&flow.key(PROTO_TCP));
    let ack = flow.tcp(Tcp::Ack, b"");
    for _ in 0..3 {
        lb.run(&ack);
    }
    assert_eq!(hits(&mut lb), (1, 1));
    // Past 64 jiffies and past the 1 s an entry's idle time may lag.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, b));
    assert_eq!(
        hits(&mut lb),
        (2, 1),
        "read from the table after 64 jiffies"
    );
    // The entry's idle time was refreshed by that read.
    let entry = lb.dp.conn(&flow.key(PROTO_TCP)).unwrap().unwrap();
    assert!(monotonic_ns() - entry.atime_ns < 500_000_000);
}

/// A slot never outlives its entry: an entry read when it has less than the slot's longest life
/// (640 ms) left is not cached, so a flow whose entry expires meanwhile is seen expired by its
/// next packet. Without that rule, the packet below, 50 ms past the entry's 1 s timeout, would
/// still be answered by a slot filled 150 ms earlier.
#[test]
fn an_entry_close_to_its_timeout_is_not_cached() {
    let (mut lb, _, _) = lb(LB_F_FLOW_CACHE);
    lb.set_udp_timeout_ns(1_000_000_000);
    let t = lb.add_vip(
        "192.0.2.11".parse::<IpAddr>().unwrap(),
        53,
        lb_common::PROTO_UDP,
        2,
        false,
        &[(7, 1), (8, 1), (9, 1)],
    );
    let flow = Flow::new("198.51.100.7", 40007, "192.0.2.11", 53);
    let b = t.backend_for(&flow.key(lb_common::PROTO_UDP));
    let query = flow.udp(b"query");
    let want = encap_to(&flow, lb_common::PROTO_UDP, &query, b);
    assert_eq!(lb.run(&query).out, want);
    assert_eq!(lb.counter(Counter::LruMissUdp), 1);
    // 900 ms later the entry has 100 ms to live: read from the table, not cached.
    std::thread::sleep(std::time::Duration::from_millis(900));
    assert_eq!(lb.run(&query).out, want);
    assert_eq!(hits(&mut lb), (1, 0));
    // Past the timeout: expired, and the flow is pinned again.
    std::thread::sleep(std::time::Duration::from_millis(150));
    assert_eq!(lb.run(&query).out, want);
    assert_eq!(
        hits(&mut lb),
        (1, 0),
        "answered by a slot past its entry's life"
    );
    assert_eq!(lb.counter(Counter::LruExpired), 1);
    assert_eq!(lb.counter(Counter::LruMissUdp), 2);
}
