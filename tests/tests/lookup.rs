//! The hot path's lookups that replaced kernel hash lookups (issue 7): the open-addressed VIP
//! index, established flows finding their VIP through their backend, and the NIC slots.
//! BPF_PROG_TEST_RUN; needs root.

use std::net::IpAddr;

use lb_common::{Counter, IfaceConfig, PROTO_TCP, VipKey, VipMeta};
use lb_userspace::dataplane::DataplaneLimits;
use lb_userspace::reconcile::SecondChance;
use tests::*;

const VIPS: u32 = 4096;

/// Service `i` of the many-VIP load balancer: 4096 services over 1024 addresses of two
/// documentation ranges, 4 ports each.
fn service(i: u32) -> (IpAddr, u16) {
    let net = if i.is_multiple_of(2) {
        "198.51.100"
    } else {
        "203.0.113"
    };
    let addr = format!("{net}.{}", (i / 2) % 250 + 1).parse().unwrap();
    (addr, 1000 + (i / 500) as u16)
}

fn lb_with_limits(max_vips: u32) -> Lb {
    Lb::with_limits(
        lb_objects::EBPF_OBJECT,
        DataplaneLimits {
            ring_size: 4099,
            max_vips,
            max_rings: 2,
            max_backends: 16,
            max_conns: 1 << 16,
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn the_vip_index_finds_every_one_of_thousands_of_services_and_forgets_removed_ones() {
    let mut lb = lb_with_limits(VIPS);
    // Ring 0 holds backends 1..3 (VIP id 0); every service uses it, each with its own id.
    let installed = lb.fill_ring(0, &[(1, 1), (2, 1), (3, 1)]);
    for i in 0..VIPS {
        let (addr, port) = service(i);
        let meta = VipMeta {
            id: i,
            ring: 0,
            flags: 0,
            _pad: 0,
        };
        lb.dp
            .set_vip(VipKey::new(addr, port, PROTO_TCP), meta)
            .unwrap_or_else(|e| panic!("service {i} ({addr}:{port}): {e:#}"));
    }
    let syn_of = |i: u32| {
        let (addr, port) = service(i);
        Flow::new(
            "192.0.2.99",
            40000 + (i % 1000) as u16,
            &addr.to_string(),
            port,
        )
    };
    for i in 0..VIPS {
        let flow = syn_of(i);
        let run = lb.run(&flow.tcp(Tcp::Syn, &[]));
        assert_eq!(run.verdict, XDP_TX, "service {i}");
        let key = flow.key(PROTO_TCP);
        assert_eq!(
            decode(&run.out).unwrap().backend(),
            backend_addr(installed.backend_for(&key)),
            "service {i}"
        );
    }
    assert_eq!(lb.counter(Counter::Tx), VIPS as u64);
    // A port that is not a service on a VIP address goes to the kernel.
    let (addr, _) = service(0);
    let other = Flow::new("192.0.2.99", 40000, &addr.to_string(), 9);
    assert_eq!(lb.run(&other.tcp(Tcp::Syn, &[])).verdict, XDP_PASS);
    // Remove every other service: new flows to them pass to the kernel, the rest still forward.
    for i in (0..VIPS).step_by(2) {
        let (addr, port) = service(i);
        lb.dp
            .remove_vip(VipKey::new(addr, port, PROTO_TCP))
            .unwrap();
    }
    for i in 0..VIPS {
        let flow = Flow::new("192.0.2.98", 50000, &service(i).0.to_string(), service(i).1);
        let verdict = lb.run(&flow.tcp(Tcp::Syn, &[])).verdict;
        let want = if i % 2 == 0 { XDP_PASS } else { XDP_TX };
        assert_eq!(verdict, want, "service {i} after removing the even ones");
    }
}

#[test]
fn a_service_that_finds_no_index_slot_is_refused_and_changes_nothing() {
    // max_vips 8: an index of 64 slots. Eight services whose probes start where the ninth's
    // do take all of the ninth's slots.
    let mut lb = lb_with_limits(8);
    lb.fill_ring(0, &[(1, 1)]);
    let addr: IpAddr = "192.0.2.10".parse().unwrap();
    let size = lb_common::vip_index_size(8);
    let base = |port| {
        let key = VipKey::new(addr, port, PROTO_TCP);
        lb_common::vip_index_slot(lb_common::vip_index_hash(&key), 0, size)
    };
    let ninth_port = 9;
    let same: Vec<u16> = (10..u16::MAX)
        .filter(|&p| base(p) == base(ninth_port))
        .take(8)
        .collect();
    assert_eq!(same.len(), 8, "ports sharing the ninth's first slot");
    let meta = VipMeta::default();
    for &port in &same {
        lb.dp
            .set_vip(VipKey::new(addr, port, PROTO_TCP), meta)
            .unwrap();
    }
    let ninth = VipKey::new(addr, ninth_port, PROTO_TCP);
    let err = lb.dp.set_vip(ninth, meta).unwrap_err();
    assert!(
        format!("{err:#}").contains("max_vips"),
        "the error names the limit to raise: {err:#}"
    );
    assert!(!lb.dp.read_vips().unwrap().iter().any(|(k, _)| *k == ninth));
    let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", ninth_port);
    assert_eq!(lb.run(&flow.tcp(Tcp::Syn, &[])).verdict, XDP_PASS);
    for &port in &same {
        let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", port);
        assert_eq!(
            lb.run(&flow.tcp(Tcp::Syn, &[])).verdict,
            XDP_TX,
            "port {port}"
        );
    }
    // One of them goes: the ninth now fits.
    lb.dp
        .remove_vip(VipKey::new(addr, same[3], PROTO_TCP))
        .unwrap();
    lb.dp.set_vip(ninth, meta).unwrap();
    let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", ninth_port);
    assert_eq!(lb.run(&flow.tcp(Tcp::Syn, &[])).verdict, XDP_TX);
}

#[test]
fn an_established_flow_stops_when_its_vip_is_removed() {
    let mut lb = Lb::new(4099);
    let vip: IpAddr = "192.0.2.10".parse().unwrap();
    let installed = lb.add_vip(vip, 80, PROTO_TCP, 0, true, &[(1, 1), (2, 1)]);
    let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    assert_eq!(lb.run(&flow.tcp(Tcp::Syn, &[])).verdict, XDP_TX);
    // Established: found through its entry and its backend's VIP, with that VIP's options
    // (GUE here).
    let ack = flow.tcp(Tcp::Ack, b"data");
    let run = lb.run(&ack);
    assert_eq!(run.verdict, XDP_TX);
    let key = flow.key(PROTO_TCP);
    let want = expected_encap(
        &ack,
        backend_addr(installed.backend_for(&key)),
        lb_common::flow_hash(&key, SEED),
        true,
    );
    assert_eq!(run.out, want);
    assert_eq!(lb.counter(Counter::LruHit), 1);
    assert_eq!(lb.counter(Counter::TxGue), 2);
    // The service goes (its backends stay installed, as during a reconcile): the entry alone
    // must not keep forwarding.
    lb.dp.remove_vip(VipKey::new(vip, 80, PROTO_TCP)).unwrap();
    assert_eq!(lb.run(&ack).verdict, XDP_PASS);
    assert_eq!(lb.counter(Counter::TxGue), 2);
}

fn iface(mac_last: u8) -> IfaceConfig {
    IfaceConfig {
        src_mac: NIC_MAC,
        dst_mac: [0x02, 0, 0, 0, 0x0b, mac_last],
        mtu: 0,
        _pad: 0,
    }
}

#[test]
fn nics_share_slots_by_probing_and_a_fifth_in_one_bucket_is_refused() {
    let mut lb = Lb::new(4099);
    let installed = lb.add_vip(
        "192.0.2.10".parse().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1)],
    );
    let lo = lb_userspace::neighbour::ifindex("lo").unwrap();
    let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    let syn = flow.tcp(Tcp::Syn, &[]);
    let forwarded_via = |lb: &Lb| {
        let run = lb.run(&syn);
        assert_eq!(run.verdict, XDP_TX);
        assert_eq!(
            decode(&run.out).unwrap().backend(),
            backend_addr(installed.backend_for(&flow.key(PROTO_TCP)))
        );
        run.out[5]
    };
    assert_eq!(forwarded_via(&lb), NEXT_HOP_MAC[5]);
    // Three more NICs whose ifindex falls in lo's slot take the next three probe slots.
    for k in 1..=3 {
        lb.dp.set_iface(lo + 64 * k, iface(k as u8)).unwrap();
    }
    let err = lb.dp.set_iface(lo + 64 * 4, iface(4)).unwrap_err();
    assert!(
        format!("{err:#}").contains("no free IFACES slot"),
        "{err:#}"
    );
    assert_eq!(lb.dp.ifaces().unwrap().len(), 4);
    // lo still finds its own link layer, and rewriting it keeps its slot.
    assert_eq!(forwarded_via(&lb), NEXT_HOP_MAC[5]);
    lb.dp.set_iface(lo, iface(0x77)).unwrap();
    assert_eq!(forwarded_via(&lb), 0x77);
    // Removing a NIC frees its slot for another; lo is unaffected.
    lb.dp.remove_iface(lo + 64).unwrap();
    lb.dp.set_iface(lo + 64 * 4, iface(4)).unwrap();
    assert_eq!(forwarded_via(&lb), 0x77);
    // Without its slot, lo's VIP traffic is a misconfiguration: dropped and counted.
    lb.dp.remove_iface(lo).unwrap();
    assert_eq!(lb.run(&syn).verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoIface), 1);
}

#[test]
fn a_vip_whose_entry_finds_no_index_slot_is_not_recorded_and_a_later_pass_installs_it() {
    use lb_userspace::reconcile::Reconciler;
    use lb_userspace::state::{BackendState, Capacity, Change, DesiredState, Vip};
    // max_vips 9: an index of 128 slots; eight services whose probes start where the ninth's
    // do take all of its slots, so the ninth's entry cannot be written.
    let mut lb = Lb::with_limits(
        lb_objects::EBPF_OBJECT,
        DataplaneLimits {
            ring_size: 4099,
            max_vips: 9,
            max_rings: 9,
            max_backends: 32,
            max_conns: 1 << 16,
            ..Default::default()
        },
    )
    .unwrap();
    let addr: IpAddr = "192.0.2.10".parse().unwrap();
    let size = lb_common::vip_index_size(9);
    let base = |port| {
        let key = VipKey::new(addr, port, PROTO_TCP);
        lb_common::vip_index_slot(lb_common::vip_index_hash(&key), 0, size)
    };
    let ninth_port = 9;
    let same: Vec<u16> = (10..u16::MAX)
        .filter(|&p| base(p) == base(ninth_port))
        .take(8)
        .collect();
    assert_eq!(same.len(), 8, "ports sharing the ninth's first slot");
    let svc = |port: u16| -> Vip { format!("192.0.2.10:{port}/tcp").parse().unwrap() };
    let cap = Capacity {
        vips: 9,
        backends: 32,
        backends_per_vip: 4,
    };
    let add = |s: &mut DesiredState, port: u16, backend: u16| {
        let vip = svc(port);
        s.apply(&Change::AddVip { vip, gue: false }, &cap).unwrap();
        let backend = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, backend);
        let c = Change::AddBackend {
            vip,
            backend,
            weight: 1,
            state: BackendState::Active,
        };
        s.apply(&c, &cap).unwrap();
    };
    let mut eight = DesiredState::default();
    for &p in &same {
        add(&mut eight, p, 1);
    }
    let mut r = Reconciler::new(4099, SEED, 9, 32);
    r.apply(&mut lb.dp, &eight, &SecondChance::default())
        .unwrap();
    let mut nine = eight.clone();
    add(&mut nine, ninth_port, 2);
    let syn = |port| Flow::new("198.51.100.7", 40000, "192.0.2.10", port).tcp(Tcp::Syn, &[]);

    // The pass writes the ninth's backend and ring, then fails at its entry: not installed,
    // so not announced, and the maps serve the eight as before.
    for _ in 0..2 {
        let err = r
            .apply(&mut lb.dp, &nine, &SecondChance::default())
            .unwrap_err();
        assert!(format!("{err:#}").contains("max_vips"), "{err:#}");
        assert!(!r.is_reachable(&svc(ninth_port)));
        assert_eq!(r.installed_state(), eight);
        assert_eq!(lb.run(&syn(ninth_port)).verdict, XDP_PASS);
    }
    // Back to the eight (the operator's change failed): nothing to remove for the ninth.
    r.apply(&mut lb.dp, &eight, &SecondChance::default())
        .unwrap();
    assert_eq!(r.installed_state(), eight);
    r.apply(&mut lb.dp, &nine, &SecondChance::default())
        .unwrap_err();
    // Room is made: the next pass writes what was missing, and the ninth forwards.
    let mut room = nine.clone();
    room.apply(&Change::RemoveVip { vip: svc(same[3]) }, &cap)
        .unwrap();
    r.apply(&mut lb.dp, &room, &SecondChance::default())
        .unwrap();
    assert!(r.is_reachable(&svc(ninth_port)));
    assert_eq!(r.installed_state(), room);
    assert_eq!(lb.run(&syn(ninth_port)).verdict, XDP_TX);
    assert_eq!(lb.run(&syn(same[3])).verdict, XDP_PASS);
    for &p in same.iter().filter(|&&p| p != same[3]) {
        assert_eq!(lb.run(&syn(p)).verdict, XDP_TX, "port {p}");
    }
}
