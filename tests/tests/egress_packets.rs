//! The egress step of `lb_xdp` through BPF_PROG_TEST_RUN: a backend's packets leave by its
//! route's NIC with that route's MACs (XDP_TX on the NIC they came in on, XDP_REDIRECT through
//! `EGRESS_DEVS` on another), one ECMP path per flow, and a backend whose next hop is not
//! resolved is dropped and counted, never sent with a zero or stale MAC. Needs root.

use std::net::IpAddr;

use lb_common::{Counter, Egress, EgressPath, IfaceConfig, PROTO_TCP, egress_path_index, v6_words};
use tests::*;

const RING: u32 = 4099;
const VIP: &str = "192.0.2.10";
const XDP_REDIRECT: u32 = 4;
const ROUTER_A: [u8; 6] = [0x02, 0, 0, 0, 0xaa, 0x01];
const ROUTER_B: [u8; 6] = [0x02, 0, 0, 0, 0xbb, 0x01];
const NIC_A: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const NIC_B: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x02];
/// An ifindex that is not the test run's ingress (loopback): a packet routed to it is
/// redirected. `EGRESS_DEVS` holds loopback in its slot, so the redirect itself succeeds.
const OTHER_IFINDEX: u32 = 0x7fff_0001;

fn path(ifindex: u32, dev: u32, src: [u8; 6], dst: [u8; 6]) -> EgressPath {
    EgressPath {
        link: IfaceConfig {
            src_mac: src,
            dst_mac: dst,
            mtu: 0,
            _pad: 0,
        },
        ifindex,
        dev,
    }
}

fn routed(paths: &[EgressPath]) -> Egress {
    let mut e = Egress {
        state: lb_common::EGRESS_ROUTED,
        paths_len: paths.len() as u32,
        ..Egress::UNRESOLVED
    };
    e.paths[..paths.len()].copy_from_slice(paths);
    e
}

fn lo() -> u32 {
    lb_userspace::neighbour::ifindex("lo").unwrap()
}

/// One VIP over backend 1 alone, so every flow goes to it.
fn lb_one_backend() -> Lb {
    let mut lb = Lb::new(RING);
    lb.add_vip(
        VIP.parse::<IpAddr>().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1)],
    );
    lb
}

/// The frame `lb_xdp` sends for `frame` to backend 1, with these MACs.
fn want(frame: &[u8], flow: &Flow, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let hash = lb_common::flow_hash(&flow.key(PROTO_TCP), SEED);
    let mut w = expected_encap(frame, backend_addr(1), hash, false);
    w[..6].copy_from_slice(&dst);
    w[6..12].copy_from_slice(&src);
    w
}

#[test]
fn a_route_out_of_the_ingress_nic_is_sent_back_with_its_macs() {
    let mut lb = lb_one_backend();
    let b1 = v6_words(backend_addr(1));
    lb.dp.set_egress_dev(5, lo()).unwrap();
    lb.dp
        .set_egress(b1, Some(routed(&[path(lo(), 5, NIC_A, ROUTER_A)])))
        .unwrap();
    let flow = Flow::new("198.51.100.7", 40000, VIP, 80);
    let frame = flow.tcp(Tcp::Syn, &[]);
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(run.out, want(&frame, &flow, NIC_A, ROUTER_A));
    assert_eq!(lb.counter(Counter::Tx), 1);
    assert_eq!(lb.counter(Counter::TxRedirect), 0);
    let (tx, redirect) = lb.dp.egress_counters(5).unwrap();
    assert_eq!((tx.packets, redirect.packets), (1, 0));
    assert_eq!(tx.bytes, frame.len() as u64);
}

#[test]
fn a_route_out_of_another_nic_is_redirected_with_its_macs() {
    let mut lb = lb_one_backend();
    let b1 = v6_words(backend_addr(1));
    lb.dp.set_egress_dev(7, lo()).unwrap();
    lb.dp
        .set_egress(b1, Some(routed(&[path(OTHER_IFINDEX, 7, NIC_B, ROUTER_B)])))
        .unwrap();
    let flow = Flow::new("198.51.100.7", 40001, VIP, 80);
    for flags in [Tcp::Syn, Tcp::Ack] {
        let frame = flow.tcp(flags, b"x");
        let run = lb.run(&frame);
        assert_eq!(run.verdict, XDP_REDIRECT);
        assert_eq!(run.out, want(&frame, &flow, NIC_B, ROUTER_B));
    }
    assert_eq!(lb.counter(Counter::TxRedirect), 2);
    assert_eq!(lb.counter(Counter::Tx), 2);
    assert_eq!(
        lb.counter(Counter::LruHit),
        1,
        "the second packet used the entry"
    );
    let (tx, redirect) = lb.dp.egress_counters(7).unwrap();
    assert_eq!((tx.packets, redirect.packets), (0, 2));

    // A NIC slot the agent has not filled: the redirect fails, the packet is dropped.
    lb.dp
        .set_egress(b1, Some(routed(&[path(OTHER_IFINDEX, 9, NIC_B, ROUTER_B)])))
        .unwrap();
    let run = lb.run(&flow.tcp(Tcp::Ack, b"y"));
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropRedirect), 1);
}

#[test]
fn ecmp_paths_are_chosen_per_flow_by_its_hash() {
    let mut lb = lb_one_backend();
    let b1 = v6_words(backend_addr(1));
    lb.dp.set_egress_dev(0, lo()).unwrap();
    lb.dp.set_egress_dev(1, lo()).unwrap();
    let paths = [
        path(lo(), 0, NIC_A, ROUTER_A),
        path(OTHER_IFINDEX, 1, NIC_B, ROUTER_B),
    ];
    lb.dp.set_egress(b1, Some(routed(&paths))).unwrap();
    let mut used = [0u32; 2];
    for port in 0..64u16 {
        let flow = Flow::new("198.51.100.9", 20000 + port, VIP, 80);
        let hash = lb_common::flow_hash(&flow.key(PROTO_TCP), SEED);
        let i = egress_path_index(hash, 2) as usize;
        for flags in [Tcp::Syn, Tcp::Ack] {
            let frame = flow.tcp(flags, &[]);
            let run = lb.run(&frame);
            let p = &paths[i];
            assert_eq!(
                run.verdict,
                if i == 0 { XDP_TX } else { XDP_REDIRECT },
                "flow {port}"
            );
            assert_eq!(run.out, want(&frame, &flow, p.link.src_mac, p.link.dst_mac));
        }
        used[i] += 1;
    }
    assert!(
        used.iter().all(|&n| n >= 16),
        "both paths carry flows: {used:?}"
    );
}

#[test]
fn an_unresolved_next_hop_drops_and_counts_never_a_zero_mac() {
    let mut lb = lb_one_backend();
    let b1 = v6_words(backend_addr(1));
    let flow = Flow::new("198.51.100.7", 40002, VIP, 80);
    let frame = flow.tcp(Tcp::Syn, &[]);
    // Next hops from the kernel, none known yet: every backend defaults to unresolved.
    lb.dp.set_egress_default(Egress::UNRESOLVED).unwrap();
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoNextHop), 1);
    assert_eq!(lb.counter(Counter::Tx), 0);
    assert_eq!(lb.dp.backend_counter(1).unwrap().packets, 0);
    // A routed entry with no path is unresolved too.
    lb.dp.set_egress(b1, Some(routed(&[]))).unwrap();
    assert_eq!(lb.run(&frame).verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoNextHop), 2);
    // Resolved: sent with the route's MACs.
    lb.dp.set_egress_dev(0, lo()).unwrap();
    lb.dp
        .set_egress(b1, Some(routed(&[path(lo(), 0, NIC_A, ROUTER_A)])))
        .unwrap();
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(run.out, want(&frame, &flow, NIC_A, ROUTER_A));
    // Unresolved again (the neighbour failed): dropped again, never the old MAC.
    lb.dp.set_egress(b1, Some(Egress::UNRESOLVED)).unwrap();
    let run = lb.run(&flow.tcp(Tcp::Ack, &[]));
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoNextHop), 3);
    assert_eq!(lb.counter(Counter::Tx), 1);
}

#[test]
fn a_backend_installed_later_gets_its_address_way_out_before_any_slot() {
    // The agent resolves an address before the backend exists; installing it writes EGRESS.
    let mut lb = Lb::new(RING);
    lb.dp.set_egress_default(Egress::UNRESOLVED).unwrap();
    lb.dp.set_egress_dev(0, lo()).unwrap();
    lb.dp
        .set_egress(
            v6_words(backend_addr(1)),
            Some(routed(&[path(lo(), 0, NIC_A, ROUTER_A)])),
        )
        .unwrap();
    lb.add_vip(
        VIP.parse::<IpAddr>().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1)],
    );
    let flow = Flow::new("198.51.100.7", 40003, VIP, 80);
    let frame = flow.tcp(Tcp::Syn, &[]);
    let run = lb.run(&frame);
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(run.out, want(&frame, &flow, NIC_A, ROUTER_A));
    assert_eq!(lb.dp.egress(1).unwrap().paths[0].link.dst_mac, ROUTER_A);
}
