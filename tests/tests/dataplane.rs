//! The XDP load balancer through BPF_PROG_TEST_RUN: frames in, exact frames out.
//! Needs root (loads BPF programs).

use std::collections::HashMap;
use std::net::IpAddr;

use lb_common::{Counter, PROTO_TCP, PROTO_UDP, maglev::MaglevTable};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tests::*;

const RING: u32 = 4099;
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A load balancer with an IPv4 TCP VIP on port 80 over backends 1, 2, 3 and an IPv6 one over
/// backends 4, 5, 6.
fn lb_two_vips() -> (Lb, Installed, Installed) {
    let mut lb = Lb::new(RING);
    let v4 = lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 1), (2, 1), (3, 1)]);
    let v6 = lb.add_vip(ip(VIP6), 80, PROTO_TCP, 1, false, &[(4, 1), (5, 1), (6, 1)]);
    (lb, v4, v6)
}

#[test]
fn ipv4_tcp_is_encapsulated_in_ipv6_exactly() {
    let (mut lb, v4, _) = lb_two_vips();
    let mut flow = Flow::new("198.51.100.7", 40000, VIP4, 80);
    flow.tclass = 0xB8; // DSCP EF: must be copied to the outer traffic class
    let frame = flow.tcp(Tcp::Syn, &[]);
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_TX);
    let key = flow.key(PROTO_TCP);
    let e = check_encap(
        &frame,
        &run.out,
        backend_addr(v4.backend_for(&key)),
        &key,
        false,
    )
    .unwrap();
    assert_eq!(e.ip6.next_header.0, 4, "IPv4 inside IPv6 is next header 4");
    assert_eq!(e.ip6.traffic_class, 0xB8);
    assert_eq!(run.out.len(), frame.len() + 40);
    assert_eq!(lb.counter(Counter::Tx), 1);
    assert_eq!(lb.counter(Counter::LruMissSyn), 1);
    // The exact output: our own reconstruction of the whole frame, byte for byte.
    let hash = lb_common::flow_hash(&key, SEED);
    let mut want = Vec::new();
    want.extend_from_slice(&NEXT_HOP_MAC);
    want.extend_from_slice(&NIC_MAC);
    want.extend_from_slice(&[0x86, 0xDD]);
    want.extend_from_slice(&((6u32 << 28) | (0xB8 << 20) | (hash & 0xF_FFFF).max(1)).to_be_bytes());
    want.extend_from_slice(&(ip_packet(&frame).len() as u16).to_be_bytes());
    want.extend_from_slice(&[4, 64]);
    want.extend_from_slice(&lb_tunnel_addr().octets());
    want.extend_from_slice(&backend_addr(v4.backend_for(&key)).octets());
    want.extend_from_slice(ip_packet(&frame));
    assert_eq!(run.out, want);
}

#[test]
fn ipv6_tcp_is_encapsulated_in_ipv6_exactly() {
    let (mut lb, _, v6) = lb_two_vips();
    let mut flow = Flow::new("2001:db8:c11e::7", 40001, VIP6, 80);
    flow.tclass = 0x28;
    for flags in [Tcp::Syn, Tcp::Ack, Tcp::Fin] {
        let frame = flow.tcp(flags, b"GET / HTTP/1.1\r\n\r\n");
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX);
        let key = flow.key(PROTO_TCP);
        let e = check_encap(
            &frame,
            &run.out,
            backend_addr(v6.backend_for(&key)),
            &key,
            false,
        )
        .unwrap();
        assert_eq!(
            e.ip6.next_header.0, 41,
            "IPv6 inside IPv6 is next header 41"
        );
        assert_eq!(e.ip6.traffic_class, 0x28);
    }
    assert_eq!(lb.counter(Counter::Tx), 3);
    assert_eq!(lb.counter(Counter::LruMissSyn), 1);
    assert_eq!(lb.counter(Counter::LruHit), 2);
}

#[test]
fn gue_adds_udp_with_flow_source_port_and_zero_checksum() {
    let mut lb = Lb::new(RING);
    let t4 = lb.add_vip(ip(VIP4), 443, PROTO_TCP, 0, true, &[(1, 1), (2, 1), (3, 1)]);
    let t6 = lb.add_vip(ip(VIP6), 443, PROTO_TCP, 1, true, &[(4, 1), (5, 1), (6, 1)]);
    for (flow, table) in [
        (Flow::new("203.0.113.9", 50000, VIP4, 443), &t4),
        (Flow::new("2001:db8:c11e::9", 50000, VIP6, 443), &t6),
    ] {
        let frame = flow.tcp(Tcp::Syn, &[]);
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX);
        let key = flow.key(PROTO_TCP);
        let e = check_encap(
            &frame,
            &run.out,
            backend_addr(table.backend_for(&key)),
            &key,
            true,
        )
        .unwrap();
        assert_eq!(e.ip6.next_header.0, 17);
        assert_eq!(run.out.len(), frame.len() + 48);
        // GUE variant 1: the inner IP header directly after UDP.
        assert_eq!(
            run.out[14 + 48] >> 4,
            if flow.src.is_ipv4() { 4 } else { 6 }
        );
    }
    assert_eq!(lb.counter(Counter::TxGue), 2);
    assert_eq!(lb.counter(Counter::Tx), 0);
}

#[test]
fn vlan_tagged_frames_keep_their_tag() {
    let (mut lb, v4, v6) = lb_two_vips();
    for (mut flow, table) in [
        (Flow::new("198.51.100.20", 1234, VIP4, 80), &v4),
        (Flow::new("2001:db8:c11e::20", 1234, VIP6, 80), &v6),
    ] {
        flow.vlan = Some(0x123);
        let frame = flow.tcp(Tcp::Syn, &[]);
        assert_eq!(l3_offset(&frame), 18);
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX);
        let key = flow.key(PROTO_TCP);
        let e = check_encap(
            &frame,
            &run.out,
            backend_addr(table.backend_for(&key)),
            &key,
            false,
        )
        .unwrap();
        assert_eq!(e.vlan.unwrap().vlan_id.value(), 0x123);
    }
    assert_eq!(lb.counter(Counter::Tx), 2);
}

#[test]
fn link_padding_is_trimmed_and_the_inner_packet_kept() {
    let (lb, v4, _) = lb_two_vips();
    let flow = Flow::new("198.51.100.21", 999, VIP4, 80);
    let mut frame = flow.tcp(Tcp::Ack, &[]);
    assert_eq!(frame.len(), 54);
    frame.resize(60, 0xAA); // minimum Ethernet frame: 6 bytes of padding
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_TX);
    let key = flow.key(PROTO_TCP);
    check_encap(
        &frame,
        &run.out,
        backend_addr(v4.backend_for(&key)),
        &key,
        false,
    )
    .unwrap();
    assert_eq!(run.out.len(), 54 + 40);
}

#[test]
fn port_zero_vip_matches_any_port_and_exact_port_wins() {
    let mut lb = Lb::new(RING);
    let any = lb.add_vip(ip(VIP4), 0, PROTO_TCP, 0, false, &[(1, 1)]);
    let exact = lb.add_vip(ip(VIP4), 8443, PROTO_TCP, 1, false, &[(2, 1)]);
    for port in [1u16, 22, 80, 65535] {
        let flow = Flow::new("198.51.100.30", 4000, VIP4, port);
        let frame = flow.tcp(Tcp::Syn, &[]);
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX, "port {port}");
        let key = flow.key(PROTO_TCP);
        check_encap(
            &frame,
            &run.out,
            backend_addr(any.backend_for(&key)),
            &key,
            false,
        )
        .unwrap();
    }
    let flow = Flow::new("198.51.100.30", 4000, VIP4, 8443);
    let frame = flow.tcp(Tcp::Syn, &[]);
    let run = lb.run(&frame);
    let key = flow.key(PROTO_TCP);
    check_encap(
        &frame,
        &run.out,
        backend_addr(exact.backend_for(&key)),
        &key,
        false,
    )
    .unwrap();
    assert_eq!(exact.backend_for(&key), 2);
    // UDP to the same address is another service: none exists, so the kernel gets it.
    let udp = Flow::new("198.51.100.30", 4000, VIP4, 53).udp(b"q");
    let run = lb.run(&udp);
    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(run.out, udp);
    assert_eq!(lb.counter(Counter::PassVipOtherService), 1);
}

#[test]
fn same_flow_same_backend_and_even_spread() {
    let (lb, v4, _) = lb_two_vips();
    let mut rng = StdRng::seed_from_u64(7);
    let mut per_backend: HashMap<std::net::Ipv6Addr, u32> = HashMap::new();
    const FLOWS: u32 = 30_000;
    for _ in 0..FLOWS {
        let src = format!("198.51.100.{}", rng.random_range(1..255));
        let flow = Flow::new(&src, rng.random_range(1024..65535), VIP4, 80);
        let frame = flow.tcp(Tcp::Ack, b"x");
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_TX);
        let got = decode(&run.out).unwrap().backend();
        assert_eq!(got, backend_addr(v4.backend_for(&flow.key(PROTO_TCP))));
        *per_backend.entry(got).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3);
    for (b, n) in &per_backend {
        let share = *n as f64 / FLOWS as f64;
        println!("backend {b}: {n} flows ({:.2}%)", share * 100.0);
        assert!(
            (share - 1.0 / 3.0).abs() < 0.05 / 3.0,
            "backend {b} got {share} of the flows"
        );
    }
    // The same flow again: the same backend, every time.
    let flow = Flow::new("198.51.100.99", 5555, VIP4, 80);
    let first = decode(&lb.run(&flow.tcp(Tcp::Syn, &[])).out)
        .unwrap()
        .backend();
    for _ in 0..20 {
        assert_eq!(
            decode(&lb.run(&flow.tcp(Tcp::Ack, b"y")).out)
                .unwrap()
                .backend(),
            first
        );
    }
}

#[test]
fn weights_shift_the_spread() {
    let mut lb = Lb::new(RING);
    let t = lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 1), (2, 1), (3, 2)]);
    let mut rng = StdRng::seed_from_u64(8);
    let mut per: HashMap<std::net::Ipv6Addr, u32> = HashMap::new();
    const FLOWS: u32 = 20_000;
    for _ in 0..FLOWS {
        let flow = Flow::new(
            &format!("203.0.113.{}", rng.random_range(1..255)),
            rng.random_range(1024..65535),
            VIP4,
            80,
        );
        let run = lb.run(&flow.tcp(Tcp::Syn, &[]));
        let got = decode(&run.out).unwrap().backend();
        assert_eq!(got, backend_addr(t.backend_for(&flow.key(PROTO_TCP))));
        *per.entry(got).or_default() += 1;
    }
    for (id, want) in [(1, 0.25), (2, 0.25), (3, 0.5)] {
        let share = per[&backend_addr(id)] as f64 / FLOWS as f64;
        println!(
            "backend {id} (weight {}): {:.2}%",
            if id == 3 { 2 } else { 1 },
            share * 100.0
        );
        assert!(
            (share - want).abs() < want * 0.05,
            "backend {id}: {share}, want {want}"
        );
    }
}

#[test]
fn connection_table_pins_flows_across_table_changes() {
    let (mut lb, v4, _) = lb_two_vips();
    let flow = Flow::new("198.51.100.40", 41000, VIP4, 80);
    let key = flow.key(PROTO_TCP);
    let original = v4.backend_for(&key);

    // The SYN creates the entry.
    assert_eq!(lb.dp.conn(&key).unwrap(), None);
    let run = lb.run(&flow.tcp(Tcp::Syn, &[]));
    assert_eq!(decode(&run.out).unwrap().backend(), backend_addr(original));
    let entry = lb.dp.conn(&key).unwrap().expect("a SYN creates an entry");
    assert_eq!(entry.backend, original);
    assert_eq!(entry.hash, lb_common::flow_hash(&key, SEED));

    // Replace the table with backends that exclude the original one.
    let others: Vec<(u32, u32)> = [1, 2, 3, 7]
        .iter()
        .filter(|&&b| b != original)
        .map(|&b| (b, 1))
        .collect();
    let new = lb.fill_ring(0, &others);
    assert_ne!(new.backend_for(&key), original);

    // Established packets stay on the original backend (it is still installed).
    for flags in [Tcp::Ack, Tcp::Ack, Tcp::Fin] {
        let frame = flow.tcp(flags, b"data");
        let run = lb.run(&frame);
        check_encap(&frame, &run.out, backend_addr(original), &key, false).unwrap();
    }
    assert_eq!(lb.counter(Counter::LruHit), 3);

    // A non-SYN packet of a flow with no entry follows the (new) table, and pins it.
    let stranger = Flow::new("198.51.100.41", 41001, VIP4, 80);
    let skey = stranger.key(PROTO_TCP);
    let run = lb.run(&stranger.tcp(Tcp::Ack, b"mid-flow"));
    assert_eq!(
        decode(&run.out).unwrap().backend(),
        backend_addr(new.backend_for(&skey))
    );
    assert_eq!(lb.counter(Counter::LruMissNonSyn), 1);
    assert_eq!(
        lb.dp.conn(&skey).unwrap().unwrap().backend,
        new.backend_for(&skey)
    );

    // An RST with no entry follows the table and creates nothing.
    let rst = Flow::new("198.51.100.42", 41002, VIP4, 80);
    let rkey = rst.key(PROTO_TCP);
    let run = lb.run(&rst.tcp(Tcp::Rst, &[]));
    assert_eq!(
        decode(&run.out).unwrap().backend(),
        backend_addr(new.backend_for(&rkey))
    );
    assert_eq!(
        lb.dp.conn(&rkey).unwrap(),
        None,
        "an RST never creates an entry"
    );

    // A new SYN of the pinned flow consults the table again and re-pins it.
    let run = lb.run(&flow.tcp(Tcp::Syn, &[]));
    assert_eq!(
        decode(&run.out).unwrap().backend(),
        backend_addr(new.backend_for(&key))
    );
    assert_eq!(
        lb.dp.conn(&key).unwrap().unwrap().backend,
        new.backend_for(&key)
    );
    assert_eq!(lb.counter(Counter::LruMissSyn), 2);
}

#[test]
fn entries_of_removed_backends_fall_back_to_the_table() {
    let (mut lb, v4, _) = lb_two_vips();
    let flow = Flow::new("198.51.100.43", 41003, VIP4, 80);
    let key = flow.key(PROTO_TCP);
    let original = v4.backend_for(&key);
    lb.run(&flow.tcp(Tcp::Syn, &[]));
    let others: Vec<(u32, u32)> = [1, 2, 3]
        .iter()
        .filter(|&&b| b != original)
        .map(|&b| (b, 1))
        .collect();
    let new = lb.fill_ring(0, &others);
    lb.dp.clear_backend(original).unwrap();
    let frame = flow.tcp(Tcp::Ack, b"z");
    let run = lb.run(&frame);
    check_encap(
        &frame,
        &run.out,
        backend_addr(new.backend_for(&key)),
        &key,
        false,
    )
    .unwrap();
    assert_eq!(lb.counter(Counter::LruStaleBackend), 1);
    assert_eq!(
        lb.dp.conn(&key).unwrap().unwrap().backend,
        new.backend_for(&key)
    );
}

#[test]
fn udp_flows_are_pinned_until_idle() {
    let mut lb = Lb::new(RING);
    let t = lb.add_vip(ip(VIP6), 53, PROTO_UDP, 0, false, &[(1, 1), (2, 1), (3, 1)]);
    let flow = Flow::new("2001:db8:c11e::53", 5353, VIP6, 53);
    let key = flow.key(PROTO_UDP);
    let original = t.backend_for(&key);
    let frame = flow.udp(b"query");
    let run = lb.run(&frame);
    check_encap(&frame, &run.out, backend_addr(original), &key, false).unwrap();
    assert_eq!(lb.counter(Counter::LruMissUdp), 1);
    assert_eq!(lb.dp.conn(&key).unwrap().unwrap().backend, original);

    let others: Vec<(u32, u32)> = [1, 2, 3, 7]
        .iter()
        .filter(|&&b| b != original)
        .map(|&b| (b, 1))
        .collect();
    let new = lb.fill_ring(0, &others);
    // Within the idle timeout: still pinned.
    let run = lb.run(&frame);
    check_encap(&frame, &run.out, backend_addr(original), &key, false).unwrap();
    assert_eq!(lb.counter(Counter::LruHit), 1);
    // Idle longer than the timeout: the flow follows the table again.
    lb.set_udp_timeout_ns(1_000_000);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let run = lb.run(&frame);
    check_encap(
        &frame,
        &run.out,
        backend_addr(new.backend_for(&key)),
        &key,
        false,
    )
    .unwrap();
    assert_eq!(lb.counter(Counter::LruMissUdp), 2);
}

#[test]
fn non_vip_and_non_ip_traffic_passes_untouched() {
    let (mut lb, _, _) = lb_two_vips();
    let frames = [
        Flow::new("198.51.100.50", 1, "192.0.2.99", 80).tcp(Tcp::Syn, &[]),
        Flow::new("2001:db8:c11e::50", 1, "2001:db8:f00d::99", 80).tcp(Tcp::Syn, &[]),
        Flow::new("198.51.100.50", 1, "203.0.113.80", 53).udp(b"x"),
    ];
    for f in &frames {
        let run = lb.run(f);
        assert_eq!(run.verdict, XDP_PASS);
        assert_eq!(&run.out, f);
    }
    assert_eq!(lb.counter(Counter::PassNotVip), 3);
    // ARP and an unknown ethertype.
    let mut arp = vec![0xFF; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let mut odd = arp.clone();
    odd[12..14].copy_from_slice(&[0x88, 0xB5]);
    for f in [&arp, &odd] {
        let run = lb.run(f);
        assert_eq!(run.verdict, XDP_PASS);
        assert_eq!(&run.out, f);
    }
    assert_eq!(lb.counter(Counter::PassNonIp), 2);
    // Other protocols to a VIP address (SCTP here) go to the kernel too. ICMP is answered or
    // routed: tests/icmp.rs.
    let mut sctp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NIC_MAC)
        .ipv4([198, 51, 100, 50], [192, 0, 2, 10], 64)
        .write(&mut sctp, etherparse::IpNumber::SCTP, &[0; 16])
        .unwrap();
    let run = lb.run(&sctp);
    assert_eq!((run.verdict, &run.out), (XDP_PASS, &sctp));
    assert_eq!(lb.counter(Counter::PassVipOtherService), 1);
}

use etherparse::PacketBuilder;

#[test]
fn empty_ring_drops_with_a_counter() {
    let mut lb = Lb::new(RING);
    lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 0)]);
    let run = lb.run(&Flow::new("198.51.100.60", 1, VIP4, 80).tcp(Tcp::Syn, &[]));
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoBackend), 1);
}

#[test]
fn per_vip_and_per_backend_counters() {
    let (mut lb, v4, _) = lb_two_vips();
    let mut per: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut vip_bytes = 0;
    for i in 0..50u16 {
        let flow = Flow::new("198.51.100.70", 2000 + i, VIP4, 80);
        let frame = flow.tcp(Tcp::Ack, &vec![0u8; i as usize]);
        lb.run(&frame);
        let e = per.entry(v4.backend_for(&flow.key(PROTO_TCP))).or_default();
        e.0 += 1;
        e.1 += frame.len() as u64;
        vip_bytes += frame.len() as u64;
    }
    let v = lb.dp.vip_counter(0).unwrap();
    assert_eq!((v.packets, v.bytes), (50, vip_bytes));
    assert_eq!(lb.dp.vip_counter(1).unwrap().packets, 0);
    for (id, (p, b)) in &per {
        let c = lb.dp.backend_counter(*id).unwrap();
        assert_eq!((c.packets, c.bytes), (*p, *b), "backend {id}");
    }
    // The program counts per backend only; a VIP keeps the counts of a backend that leaves it.
    let (&gone, &(p, _)) = per.iter().next().unwrap();
    lb.dp.clear_backend(gone).unwrap();
    assert_eq!(lb.dp.backend_counter(gone).unwrap().packets, 0);
    let v = lb.dp.vip_counter(0).unwrap();
    assert_eq!(
        (v.packets, v.bytes),
        (50, vip_bytes),
        "after backend {gone} left ({p} packets)"
    );
    // Its id, given to a new backend of the VIP, starts from zero and adds to the VIP.
    lb.install_backend_of(gone, 2, 0);
    let flow = (0..1000u16)
        .map(|i| Flow::new("198.51.100.71", 3000 + i, VIP4, 80))
        .find(|f| v4.backend_for(&f.key(PROTO_TCP)) == gone)
        .unwrap();
    let frame = flow.tcp(Tcp::Ack, b"again");
    assert_eq!(lb.run(&frame).verdict, XDP_TX);
    assert_eq!(lb.dp.backend_counter(gone).unwrap().packets, 1);
    let v = lb.dp.vip_counter(0).unwrap();
    assert_eq!(v.packets, 51);
    assert_eq!(v.bytes, vip_bytes + frame.len() as u64);
}

#[test]
fn default_ring_size_65537() {
    let mut lb = Lb::new(lb_common::DEFAULT_RING_SIZE);
    let t = lb.add_vip(ip(VIP4), 80, PROTO_TCP, 2, false, &[(7, 1), (8, 1), (9, 1)]);
    assert_eq!(t.slots.len(), 65537);
    let ring = lb.dp.read_ring_ids(2).unwrap();
    assert_eq!(ring, t.slots);
    let table_counts = MaglevTable::build(65537, SEED, &[]).unwrap();
    assert_eq!(table_counts.size(), 65537);
    for i in 0..200u16 {
        let flow = Flow::new("203.0.113.77", 10000 + i, VIP4, 80);
        let frame = flow.tcp(Tcp::Syn, &[]);
        let run = lb.run(&frame);
        let key = flow.key(PROTO_TCP);
        check_encap(
            &frame,
            &run.out,
            backend_addr(t.backend_for(&key)),
            &key,
            false,
        )
        .unwrap();
    }
}
