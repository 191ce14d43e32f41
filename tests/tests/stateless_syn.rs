//! SYNs that write no state (`LB_F_SECOND_CHANCE`, docs/dataplane.md "Connection table"):
//! through BPF_PROG_TEST_RUN, frames in, exact frames out, and the connection table read back.
//! A SYN in an unchanged slot goes by Maglev and writes nothing; the flow's first packet after
//! it makes the entry (exported for peers, marked as not a SYN); a SYN in a changed slot, or
//! with second chance off, writes its entry as before; a table change between the SYN and the
//! first ACK sends that ACK with the SYN's backend as its second chance. Needs root.

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use lb_common::{
    Counter, FLOW_EVENT_F_SYN, FlowEvent, LB_F_FLOW_EVENTS, LB_F_SECOND_CHANCE, PROTO_TCP,
    RING_TICK_SHIFT, flow_hash,
};
use lb_userspace::dataplane::monotonic_ns;
use tests::*;

const RING: u32 = 4099;
const VIP: &str = "192.0.2.10";

fn now_ticks() -> u32 {
    (monotonic_ns() >> RING_TICK_SHIFT) as u32
}

/// VIP 0 (192.0.2.10:80) over backends 1, 2, 3, flow export on, `flags` added.
fn lb(flags: u16) -> (Lb, Installed, RingBuf<MapData>) {
    let mut lb = Lb::new(RING);
    let t = lb.add_vip(
        VIP.parse::<IpAddr>().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1), (2, 1), (3, 1)],
    );
    lb.set_config(|c| c.flags = LB_F_FLOW_EVENTS | flags);
    let events = lb.dp.take_flow_events().unwrap();
    (lb, t, events)
}

fn events(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: the program writes whole FlowEvents.
        out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
    }
    out
}

fn entries(lb: &Lb) -> usize {
    lb.dp.flow_table().unwrap().walk(|_, _| {}).unwrap()
}

#[test]
fn a_syn_writes_no_entry_and_the_first_packet_after_it_does() {
    let (mut lb, t, mut ring) = lb(LB_F_SECOND_CHANCE);
    let flow = Flow::new("198.51.100.7", 40000, VIP, 80);
    let key = flow.key(PROTO_TCP);
    let to = t.backend_for(&key);
    let syn = flow.tcp(Tcp::Syn, b"");
    let run = lb.run(&syn);
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(run.out, encap_to(&flow, PROTO_TCP, &syn, to));
    assert_eq!(lb.dp.conn(&key).unwrap(), None, "the SYN wrote an entry");
    assert!(events(&mut ring).is_empty(), "the SYN exported a flow");
    assert_eq!(lb.counter(Counter::LruMissSyn), 1);
    assert_eq!(lb.counter(Counter::SynPinned), 0);

    let ack = flow.tcp(Tcp::Ack, b"");
    assert_eq!(lb.run(&ack).out, encap_to(&flow, PROTO_TCP, &ack, to));
    let entry = lb
        .dp
        .conn(&key)
        .unwrap()
        .expect("the first ACK made the entry");
    assert_eq!((entry.backend, entry.prev), (to, 0));
    assert_eq!(lb.counter(Counter::LruMissNonSyn), 1);
    // Exported for peers as a first packet: they keep an entry of their own.
    let ev = events(&mut ring);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].key, ev[0].backend), (key, to));
    assert_eq!(ev[0].flags & FLOW_EVENT_F_SYN, 0);

    let data = flow.tcp(Tcp::Ack, b"data");
    assert_eq!(lb.run(&data).out, encap_to(&flow, PROTO_TCP, &data, to));
    assert_eq!(lb.counter(Counter::LruHit), 1);
    assert_eq!(lb.counter(Counter::Tx), 3);
}

/// The flood protection: 2,000 spoofed SYNs leave the table as it was. Without the flag (the
/// behaviour before, and with second chance off) the same SYNs write 2,000 entries.
#[test]
fn a_syn_flood_writes_nothing_to_the_table() {
    for (flags, want) in [(LB_F_SECOND_CHANCE, 0), (0, 2000)] {
        let (mut lb, t, mut ring) = lb(flags);
        for i in 0..2000u16 {
            let flow = Flow::new("203.0.113.9", 1024 + i, VIP, 80);
            let syn = flow.tcp(Tcp::Syn, b"");
            let run = lb.run(&syn);
            assert_eq!(run.verdict, XDP_TX);
            assert_eq!(
                run.out,
                encap_to(&flow, PROTO_TCP, &syn, t.backend_for(&flow.key(PROTO_TCP)))
            );
        }
        assert_eq!(entries(&lb), want, "flags {flags}");
        assert_eq!(events(&mut ring).len(), want, "exports, flags {flags}");
        assert_eq!(lb.counter(Counter::SynPinned), want as u64);
    }
}

/// A slot with a live previous backend: the SYN writes its entry (not paired), so the new
/// connection's packets never carry the previous backend. The same with second chance off.
#[test]
fn a_syn_in_a_changed_slot_or_with_second_chance_off_writes_its_entry() {
    for (flags, changed) in [(LB_F_SECOND_CHANCE, true), (0, false)] {
        let (mut lb, t, mut ring) = lb(flags);
        if changed {
            lb.install_backend_of(9, 1, 0);
            lb.set_ring_prev(0, &t.slots, 9, now_ticks() + 1000);
        }
        let flow = Flow::new("198.51.100.8", 41000, VIP, 80);
        let key = flow.key(PROTO_TCP);
        let to = t.backend_for(&key);
        let syn = flow.tcp(Tcp::Syn, b"");
        assert_eq!(lb.run(&syn).out, encap_to(&flow, PROTO_TCP, &syn, to));
        let entry = lb.dp.conn(&key).unwrap().expect("the SYN pinned its flow");
        assert_eq!((entry.backend, entry.prev), (to, 0));
        let ev = events(&mut ring);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].flags & FLOW_EVENT_F_SYN, FLOW_EVENT_F_SYN);
        assert_eq!(lb.counter(Counter::SynPinned), 1);
        for payload in [&b""[..], b"data"] {
            let ack = flow.tcp(Tcp::Ack, payload);
            assert_eq!(
                lb.run(&ack).out,
                encap_to(&flow, PROTO_TCP, &ack, to),
                "changed {changed}"
            );
        }
        assert_eq!(lb.counter(Counter::TxSecondChance), 0);
        assert_eq!(lb.counter(Counter::LruHit), 2);
    }
}

/// The window the entry no longer covers: the table changes between a SYN (no entry) and its
/// first ACK. The ACK goes to the slot's new backend with the SYN's backend as its second
/// chance, which holds the half-open connection (docs/second-chance.md), and the entry the ACK
/// makes keeps the pair.
#[test]
fn a_table_change_between_syn_and_ack_gives_the_ack_a_second_chance() {
    let (mut lb, t, _ring) = lb(LB_F_SECOND_CHANCE);
    let flow = Flow::new("198.51.100.9", 42000, VIP, 80);
    let key = flow.key(PROTO_TCP);
    let hash = flow_hash(&key, SEED);
    let before = t.backend_for(&key);
    let syn = flow.tcp(Tcp::Syn, b"");
    assert_eq!(lb.run(&syn).out, encap_to(&flow, PROTO_TCP, &syn, before));
    // The agent moves every slot to backend 4 and remembers the previous owner, as it does
    // after a change.
    lb.install_backend_of(4, 1, 0);
    lb.set_ring_prev(0, &vec![4; RING as usize], before, now_ticks() + 1000);
    for payload in [&b""[..], b"request"] {
        let ack = flow.tcp(Tcp::Ack, payload);
        let run = lb.run(&ack);
        assert_eq!(
            run.out,
            expected_encap_srh(
                &ack,
                backend_addr(4),
                Some(backend_addr(before)),
                hash,
                false
            )
        );
    }
    let entry = lb.dp.conn(&key).unwrap().unwrap();
    assert_eq!(entry.backend, 4);
    assert_eq!(lb.counter(Counter::TxSecondChance), 2);
    assert_eq!(lb.counter(Counter::SecondChancePaired), 1);
}
