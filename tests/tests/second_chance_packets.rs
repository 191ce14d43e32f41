//! Second chance at the load balancer through BPF_PROG_TEST_RUN: frames in, exact frames out
//! (docs/second-chance.md). A mid-flow packet without an entry, in a slot that remembers its
//! previous backend, leaves with a Segment Routing Header naming it; SYNs never do; the entry
//! remembers the pair; the header counts in the too-big limit. Needs root.

use std::net::IpAddr;

use lb_common::{Counter, PROTO_TCP, PROTO_UDP, RING_TICK_SHIFT, flow_hash};
use lb_userspace::dataplane::monotonic_ns;
use tests::*;

const RING: u32 = 4099;
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";
/// The previous backend every slot names (installed, in no ring).
const PREV: u32 = 9;
const PREV6: u32 = 19;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn now_ticks() -> u32 {
    (monotonic_ns() >> RING_TICK_SHIFT) as u32
}

/// VIP 0 (IPv4, port 80) over 1, 2, 3 and VIP 1 (IPv6, GUE) over 4, 5, 6, every slot
/// remembering PREV (resp. PREV6) until `until`.
fn lb_with_prev(gue: bool, until: u32) -> (Lb, Installed, Installed) {
    let mut lb = Lb::new(RING);
    let v4 = lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, gue, &[(1, 1), (2, 1), (3, 1)]);
    let v6 = lb.add_vip(ip(VIP6), 80, PROTO_TCP, 1, gue, &[(4, 1), (5, 1), (6, 1)]);
    lb.install_backend_of(PREV, 1, 0);
    lb.install_backend_of(PREV6, 1, 1);
    lb.set_ring_prev(0, &v4.slots, PREV, until);
    lb.set_ring_prev(1, &v6.slots, PREV6, until);
    (lb, v4, v6)
}

/// Every encapsulation kind: IPv4 and IPv6 inside, plain and GUE, with and without VLAN.
#[test]
fn a_mid_flow_packet_without_an_entry_carries_the_previous_backend_exactly() {
    for gue in [false, true] {
        let (mut lb, v4, v6) = lb_with_prev(gue, now_ticks() + 1000);
        let mut sent = 0;
        for (src, vip, table, prev) in [
            ("198.51.100.7", VIP4, &v4, PREV),
            ("2001:db8:c11e::7", VIP6, &v6, PREV6),
        ] {
            for vlan in [None, Some(0x123)] {
                let mut flow = Flow::new(src, 40000 + sent, vip, 80);
                flow.vlan = vlan;
                flow.tclass = 0x20;
                let frame = flow.tcp(Tcp::Ack, b"mid-flow");
                let run = lb.run(&frame);
                assert_eq!(run.verdict, XDP_TX);
                let key = flow.key(PROTO_TCP);
                let want = expected_encap_srh(
                    &frame,
                    backend_addr(table.backend_for(&key)),
                    Some(backend_addr(prev)),
                    flow_hash(&key, SEED),
                    gue,
                );
                assert_eq!(run.out, want, "gue {gue}, {src}, vlan {vlan:?}");
                assert_eq!(run.out.len(), frame.len() + if gue { 88 } else { 80 });
                sent += 1;
            }
        }
        assert_eq!(lb.counter(Counter::TxSecondChance), sent as u64);
        assert_eq!(lb.counter(Counter::SecondChancePaired), sent as u64);
        let tx = if gue { Counter::TxGue } else { Counter::Tx };
        assert_eq!(lb.counter(tx), sent as u64);
    }
}

#[test]
fn a_syn_never_carries_it_and_its_entry_has_no_pair() {
    let (mut lb, v4, _) = lb_with_prev(false, now_ticks() + 1000);
    let flow = Flow::new("198.51.100.8", 41000, VIP4, 80);
    let to = v4.backend_for(&flow.key(PROTO_TCP));
    for (flags, payload) in [(Tcp::Syn, &b""[..]), (Tcp::Ack, b"data"), (Tcp::Fin, b"")] {
        let frame = flow.tcp(flags, payload);
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX);
        assert_eq!(run.out, encap_to(&flow, PROTO_TCP, &frame, to));
    }
    assert_eq!(lb.counter(Counter::TxSecondChance), 0);
    assert_eq!(lb.counter(Counter::SecondChancePaired), 0);
    // UDP is not covered: no TCP state at the backends to look up.
    let udp = Flow::new("198.51.100.8", 41001, VIP4, 53);
    let _ = lb.add_vip(ip(VIP4), 53, PROTO_UDP, 2, false, &[(7, 1)]);
    lb.set_ring_prev(2, &vec![7; RING as usize], PREV, now_ticks() + 1000);
    let frame = udp.udp(b"q");
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(lb.counter(Counter::TxSecondChance), 0);
}

#[test]
fn the_entry_remembers_the_pair_after_the_slot_forgets_it() {
    let (mut lb, v4, _) = lb_with_prev(false, now_ticks() + 1000);
    let flow = Flow::new("198.51.100.9", 42000, VIP4, 80);
    let key = flow.key(PROTO_TCP);
    let hash = flow_hash(&key, SEED);
    let backend = backend_addr(v4.backend_for(&key));
    let first = flow.tcp(Tcp::Ack, b"one");
    assert_eq!(
        lb.run(&first).out,
        expected_encap_srh(&first, backend, Some(backend_addr(PREV)), hash, false)
    );
    // The ring forgets its previous backends (the window ended, or the agent rewrote it):
    // this flow's entry still names the pair, so its packets keep their second chance.
    lb.dp.write_ring(0, &v4.slots).unwrap();
    for payload in [&b"two"[..], b"three"] {
        let frame = flow.tcp(Tcp::Ack, payload);
        let run = lb.run(&frame);
        assert_eq!(
            run.out,
            expected_encap_srh(&frame, backend, Some(backend_addr(PREV)), hash, false)
        );
    }
    assert_eq!(lb.counter(Counter::LruHit), 2);
    assert_eq!(lb.counter(Counter::TxSecondChance), 3);
    assert_eq!(lb.counter(Counter::SecondChancePaired), 1, "paired once");
    // A new flow in the rewritten ring has no pair.
    let other = Flow::new("198.51.100.9", 42001, VIP4, 80);
    let frame = other.tcp(Tcp::Ack, b"x");
    let to = v4.backend_for(&other.key(PROTO_TCP));
    assert_eq!(lb.run(&frame).out, encap_to(&other, PROTO_TCP, &frame, to));
}

#[test]
fn an_expired_or_same_or_uninstalled_previous_backend_is_no_second_chance() {
    // Expired: the window ended one tick ago.
    let (mut lb, v4, _) = lb_with_prev(false, now_ticks().saturating_sub(1));
    let flow = Flow::new("198.51.100.10", 43000, VIP4, 80);
    let frame = flow.tcp(Tcp::Ack, b"x");
    let to = v4.backend_for(&flow.key(PROTO_TCP));
    assert_eq!(lb.run(&frame).out, encap_to(&flow, PROTO_TCP, &frame, to));
    // The slot's own backend as previous (every slot: backend 1, previous 1): nothing to hand
    // on to.
    lb.set_ring_prev(0, &vec![1; RING as usize], 1, now_ticks() + 1000);
    let flow = Flow::new("198.51.100.10", 43001, VIP4, 80);
    let frame = flow.tcp(Tcp::Ack, b"x");
    assert_eq!(lb.run(&frame).out, encap_to(&flow, PROTO_TCP, &frame, 1));
    // A previous backend whose entry is no longer valid (uninstalled): plain encapsulation.
    lb.set_ring_prev(0, &v4.slots, 200, now_ticks() + 1000);
    let flow = Flow::new("198.51.100.10", 43002, VIP4, 80);
    let frame = flow.tcp(Tcp::Ack, b"x");
    let to = v4.backend_for(&flow.key(PROTO_TCP));
    assert_eq!(lb.run(&frame).out, encap_to(&flow, PROTO_TCP, &frame, to));
    assert_eq!(lb.counter(Counter::TxSecondChance), 0);
}

/// The Segment Routing Header's 40 bytes count in the too-big check, only for the packets
/// that carry it.
#[test]
fn the_header_counts_in_the_too_big_limit_only_when_carried() {
    let (mut lb, v4, _) = lb_with_prev(false, now_ticks() + 1000);
    // 1000-byte IP packets: fit with 40 bytes of tunnel (1040), not with 80 (1080).
    lb.set_mtu(1060);
    let payload = vec![0x5a; 1000 - 20 - 20];
    // A flow pinned by its SYN has no pair: its 1000-byte packet is encapsulated.
    let pinned = Flow::new("198.51.100.11", 44000, VIP4, 80);
    assert_eq!(lb.run(&pinned.tcp(Tcp::Syn, &[])).verdict, XDP_TX);
    let frame = pinned.tcp(Tcp::Ack, &payload);
    assert_eq!(ip_packet(&frame).len(), 1000);
    let to = v4.backend_for(&pinned.key(PROTO_TCP));
    assert_eq!(lb.run(&frame).out, encap_to(&pinned, PROTO_TCP, &frame, to));
    // A mid-flow packet with a second chance would be 1080 bytes: "too big" (IPv4 with DF),
    // advertising the MTU minus both headers.
    let moved = Flow::new("198.51.100.11", 44001, VIP4, 80);
    let run = lb.run(&moved.tcp(Tcp::Ack, &payload));
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 1);
    let icmp = ip_packet(&run.out);
    assert_eq!(icmp[9], 1, "ICMP");
    let icmp_body = &icmp[20..];
    assert_eq!((icmp_body[0], icmp_body[1]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp_body[6], icmp_body[7]]), 1060 - 80);
    // At the limit with the header (920 + 80 = 1000 <= 1060) it goes, with the header.
    let small = vec![0x5a; 920 - 40];
    let frame = moved.tcp(Tcp::Ack, &small);
    let km = moved.key(PROTO_TCP);
    assert_eq!(
        lb.run(&frame).out,
        expected_encap_srh(
            &frame,
            backend_addr(v4.backend_for(&km)),
            Some(backend_addr(PREV)),
            flow_hash(&km, SEED),
            false
        )
    );
}

/// ICMP errors about a flow with a second chance carry it too: read from the flow's entry, or
/// from its slot when it has none (a quoted mid-flow packet).
#[test]
fn icmp_errors_about_such_a_flow_carry_the_previous_backend() {
    let (mut lb, v4, _) = lb_with_prev(false, now_ticks() + 1000);
    for (port, with_entry) in [(46000, true), (46001, false)] {
        let flow = Flow::new("198.51.100.12", port, VIP4, 80);
        let key = flow.key(PROTO_TCP);
        if with_entry {
            assert_eq!(lb.run(&flow.tcp(Tcp::Ack, b"x")).verdict, XDP_TX);
        }
        // The backend's reply (VIP -> client), quoted by a router that found it too big.
        let back = Flow::new(VIP4, 80, "198.51.100.12", port);
        let reply = ip_packet(&back.tcp(Tcp::Ack, &[0x42; 200])).to_vec();
        let mut error = IcmpFrame::new("203.0.113.1", VIP4, 3, 4);
        error.rest = [0, 0, 0x05, 0x78];
        let frame = error.build(&reply);
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX, "entry {with_entry}");
        assert_eq!(
            run.out,
            expected_encap_srh(
                &frame,
                backend_addr(v4.backend_for(&key)),
                Some(backend_addr(PREV)),
                flow_hash(&key, SEED),
                false
            ),
            "entry {with_entry}"
        );
    }
    assert_eq!(lb.counter(Counter::IcmpErrorForwarded), 2);
    assert_eq!(lb.counter(Counter::TxSecondChance), 3);
}
