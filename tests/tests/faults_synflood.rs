//! Fault model, spoofed SYN floods (issue 15 §10), through BPF_PROG_TEST_RUN: what a flood of
//! ten times `max_flows` new flows does to the connection table, with and without the new-flow
//! gate (`dataplane.new_flow_rate`), and that the gate changes no packet.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use aya::maps::{MapData, RingBuf};
use lb_common::{Counter, LB_F_FLOW_EVENTS, PROTO_TCP};
use tests::*;

const VIP: &str = "192.0.2.10";
const MAX_FLOWS: u32 = 10_000;
const ESTABLISHED: u32 = 1000;

/// A load balancer with a `MAX_FLOWS` table, one TCP VIP on backends 1..=3, flow export on,
/// and the gate at `rate`/`burst` (0: none).
fn lb(rate: u32, burst: u32) -> (Lb, Installed, RingBuf<MapData>) {
    let mut lb = Lb::with_object(lb_objects::EBPF_OBJECT, 4099, MAX_FLOWS).unwrap();
    let t = lb.add_vip(
        VIP.parse().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1), (2, 1), (3, 1)],
    );
    lb.set_config(|c| c.flags = LB_F_FLOW_EVENTS);
    lb.set_flow_gate(rate, burst);
    let events = lb.dp.take_flow_events().unwrap();
    (lb, t, events)
}

/// A spoofed client: 100.64.0.0/10.
fn spoofed(i: u32) -> Flow {
    let mut f = Flow::new("100.64.0.1", 1024, VIP, 80);
    f.src = IpAddr::V4(Ipv4Addr::from(0x6440_0000 | i));
    f.sport = 1024 + (i % 60_000) as u16;
    f
}

fn client(i: u32) -> Flow {
    Flow::new(
        &format!("198.51.100.{}", 1 + i % 200),
        20_000 + i as u16,
        VIP,
        80,
    )
}

fn drain(events: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while events.next().is_some() {
        n += 1;
    }
    n
}

fn has_entry(lb: &mut Lb, f: &Flow) -> bool {
    lb.dp.conn(&f.key(PROTO_TCP)).unwrap().is_some()
}

/// Over its budget, the gate forwards a new flow exactly as Maglev does without the gate, and
/// only leaves out its entry (and so its export): counted `lru_insert_gated`. Established
/// flows are not gated.
#[test]
fn over_the_gate_a_new_flow_is_forwarded_the_same_without_an_entry() {
    stay_on_this_cpu();
    // 1 per second after a burst of 10: the test's 50 SYNs take far less than a second.
    let (mut gated, table, mut gated_events) = lb(1, 10);
    let (mut plain, _, mut plain_events) = lb(0, 0);
    for i in 0..50 {
        let f = spoofed(i);
        let syn = f.tcp(Tcp::Syn, b"");
        let (a, b) = (gated.run(&syn), plain.run(&syn));
        assert_eq!((a.verdict, b.verdict), (XDP_TX, XDP_TX), "SYN {i}");
        assert_eq!(a.out, b.out, "SYN {i}: the same packet out");
        assert_eq!(
            decode(&a.out).unwrap().backend(),
            backend_addr(table.backend_for(&f.key(PROTO_TCP)))
        );
        assert_eq!(has_entry(&mut gated, &f), i < 10, "SYN {i}'s entry");
        assert!(has_entry(&mut plain, &f));
    }
    assert_eq!(gated.counter(Counter::LruInsertGated), 40);
    assert_eq!(gated.counter(Counter::LruMissSyn), 50);
    assert_eq!(plain.counter(Counter::LruInsertGated), 0);
    assert_eq!(drain(&mut gated_events), 10, "only entries are exported");
    assert_eq!(drain(&mut plain_events), 50);
    // An established flow (it has an entry) hits it; a gated flow's next packet is forwarded
    // by Maglev again, still without an entry.
    for (i, hit) in [(3, true), (30, false)] {
        let f = spoofed(i);
        let ack = f.tcp(Tcp::Ack, b"data");
        let (a, b) = (gated.run(&ack), plain.run(&ack));
        assert_eq!((a.verdict, a.out), (b.verdict, b.out), "ACK of flow {i}");
        assert_eq!(has_entry(&mut gated, &f), hit);
    }
    assert_eq!(gated.counter(Counter::LruHit), 1);
    assert_eq!(gated.counter(Counter::LruMissNonSyn), 1);
    assert_eq!(gated.counter(Counter::LruInsertGated), 41);
    // One verdict per packet: the gate is not one.
    let verdicts: u64 = gated
        .counters()
        .iter()
        .filter(|(c, _)| is_verdict_counter(*c))
        .map(|(_, v)| v.packets)
        .sum();
    assert_eq!(verdicts, 52);
}

/// `ESTABLISHED` idle established flows, then `10 * MAX_FLOWS` spoofed SYNs as fast as this
/// thread can run them: how many flows keep their entry, and how many flood entries were
/// exported (or lost to the full ring buffer nobody reads here). Returns (kept, exported +
/// lost, SYNs per second).
fn flood(rate: u32, burst: u32) -> (u32, u64, f64) {
    stay_on_this_cpu();
    let (mut lb, _, mut events) = lb(rate, burst);
    let clients: Vec<Flow> = (0..ESTABLISHED).map(client).collect();
    for c in &clients {
        assert_eq!(lb.run(&c.tcp(Tcp::Syn, b"")).verdict, XDP_TX);
        assert_eq!(lb.run(&c.tcp(Tcp::Ack, b"x")).verdict, XDP_TX);
    }
    drain(&mut events);
    let frames: Vec<Vec<u8>> = (0..10 * MAX_FLOWS)
        .map(|i| spoofed(i).tcp(Tcp::Syn, b""))
        .collect();
    let started = Instant::now();
    for f in &frames {
        assert_eq!(lb.run(f).verdict, XDP_TX);
    }
    let pps = frames.len() as f64 / started.elapsed().as_secs_f64();
    let exported = drain(&mut events);
    let lost = lb.counter(Counter::DropFlowEvent);
    let kept = clients.iter().filter(|c| has_entry(&mut lb, c)).count() as u32;
    let gated = lb.counter(Counter::LruInsertGated);
    eprintln!(
        "gate {rate}/s burst {burst}: {} SYNs at {:.0}/s; {kept}/{ESTABLISHED} idle established flows kept their entry; {exported} flood entries exported and {lost} lost to the full ring, {gated} gated",
        frames.len(),
        pps
    );
    // Every established flow is still forwarded to its backend, entry or not, as long as the
    // Maglev table does not change: what an eviction costs shows on a drain or a route shift.
    (kept, exported + lost, pps)
}

/// The measurement behind the gate (docs/dataplane.md, "SYN floods"): without it, a flood of
/// new flows evicts established flows' entries (the kernel's LRU keeps some that were used
/// more than once); with it, every established flow keeps its entry and the flood's exports
/// to peers stay within the gate's budget.
#[test]
fn a_flood_of_ten_times_max_flows_evicts_established_flows_unless_gated() {
    let (kept, exported, _) = flood(0, 0);
    assert!(
        kept < ESTABLISHED,
        "without the gate the flood evicted no established flow ({kept} kept): the measurement changed, revisit the docs"
    );
    assert_eq!(
        exported as u32,
        10 * MAX_FLOWS,
        "every flood entry exported or counted lost"
    );
    // 1000 new entries per second, 1000 at once: the table's free room absorbs the burst.
    let (kept, exported, pps) = flood(1000, 1000);
    assert_eq!(
        kept, ESTABLISHED,
        "with the gate every established flow kept its entry"
    );
    // The burst, plus the rate over the flood's duration.
    let bound = 1000 + (1000.0 * 10.0 * MAX_FLOWS as f64 / pps).ceil() as u64 + 1;
    assert!(
        exported <= bound,
        "{exported} flood entries exported or lost (at most {bound})"
    );
}
