//! ICMP and ICMPv6 to VIP addresses through BPF_PROG_TEST_RUN: echo requests answered exactly,
//! errors about a flow (fragmentation needed, packet too big, unreachable) sent untouched to
//! that flow's backend (read-only choice), malformed quotes refused, other types to the kernel.
//! Needs root.

use std::net::IpAddr;

use lb_common::{
    CONN_F_CLOSING, ConnEntry, Counter, FlowKey, PROTO_TCP, PROTO_UDP, VIP_F_NO_ECHO, flow_hash,
};
use lb_userspace::dataplane::monotonic_ns;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tests::*;

const RING: u32 = 4099;
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";
const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c11e::7";
const ROUTER4: &str = "203.0.113.1";
const ROUTER6: &str = "2001:db8:e::1";
/// The backends of the VIP with id `id`: 3id+1..=3id+3. Each VIP has its own, as the agent
/// installs them (an established flow finds its VIP through its backend).
fn backends(id: u32) -> [(u32, u32); 3] {
    [(3 * id + 1, 1), (3 * id + 2, 1), (3 * id + 3, 1)]
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A service of the test load balancer.
#[derive(Clone, Copy, Debug)]
struct Svc {
    vip: &'static str,
    port: u16,
    proto: u8,
    gue: bool,
    /// VIP id and ring.
    id: u32,
}

const TCP4: Svc = Svc {
    vip: VIP4,
    port: 80,
    proto: PROTO_TCP,
    gue: false,
    id: 0,
};
const TCP6_GUE: Svc = Svc {
    vip: VIP6,
    port: 443,
    proto: PROTO_TCP,
    gue: true,
    id: 1,
};
const UDP4_GUE: Svc = Svc {
    vip: VIP4,
    port: 53,
    proto: PROTO_UDP,
    gue: true,
    id: 2,
};
const UDP6: Svc = Svc {
    vip: VIP6,
    port: 53,
    proto: PROTO_UDP,
    gue: false,
    id: 3,
};
const SERVICES: [Svc; 4] = [TCP4, TCP6_GUE, UDP4_GUE, UDP6];

/// A load balancer with the four services, each on its own ring over its own 3 backends.
fn lb() -> (Lb, Vec<Installed>) {
    let mut lb = Lb::new(RING);
    let tables = SERVICES
        .iter()
        .map(|s| lb.add_vip(ip(s.vip), s.port, s.proto, s.id, s.gue, &backends(s.id)))
        .collect();
    (lb, tables)
}

/// A client's flow to a service, and its packets.
fn flow(svc: Svc, client: &str, port: u16, vlan: Option<u16>) -> Flow {
    let mut f = Flow::new(client, port, svc.vip, svc.port);
    f.vlan = vlan;
    f
}

fn client_of(svc: Svc) -> &'static str {
    if ip(svc.vip).is_ipv4() {
        CLIENT4
    } else {
        CLIENT6
    }
}

/// A data packet of the flow (client -> VIP).
fn data_packet(svc: Svc, f: &Flow) -> Vec<u8> {
    if svc.proto == PROTO_TCP {
        f.tcp(Tcp::Ack, b"client data")
    } else {
        f.udp(b"client data")
    }
}

/// The backend's reply of the flow (VIP -> client, direct server return), as an IP packet.
fn reply_packet(svc: Svc, f: &Flow) -> Vec<u8> {
    let back = Flow::new(&f.dst.to_string(), f.dport, &f.src.to_string(), f.sport);
    let payload = vec![0x42; 200];
    let frame = if svc.proto == PROTO_TCP {
        back.tcp(Tcp::Ack, &payload)
    } else {
        back.udp(&payload)
    };
    ip_packet(&frame).to_vec()
}

/// An ICMP error from a router on the path to the client, about a packet sent from `vip`.
fn error_frame(vip: IpAddr, ty: u8, code: u8, rest: [u8; 4]) -> IcmpFrame {
    let router = if vip.is_ipv4() { ROUTER4 } else { ROUTER6 };
    let mut e = IcmpFrame::new(router, &vip.to_string(), ty, code);
    e.src_mac = ROUTER_MAC;
    e.ttl = 250;
    e.rest = rest;
    e
}

/// "Fragmentation needed" (IPv4) or "packet too big" (ICMPv6) with MTU 1400.
fn too_big(vip: IpAddr) -> (u8, u8, [u8; 4]) {
    if vip.is_ipv4() {
        (3, 4, [0, 0, 0x05, 0x78])
    } else {
        (2, 0, 1400u32.to_be_bytes())
    }
}

/// "Destination unreachable" (host unreachable for IPv4, port unreachable for ICMPv6).
fn unreachable(vip: IpAddr) -> (u8, u8, [u8; 4]) {
    if vip.is_ipv4() {
        (3, 1, [0; 4])
    } else {
        (1, 4, [0; 4])
    }
}

/// Runs a frame and returns the verdict counters that rose (`IcmpErrorForwarded` qualifies the
/// `tx`/`tx_gue` verdict of a forwarded error, like the LRU counters qualify a flow's).
fn run_counted(lb: &mut Lb, frame: &[u8]) -> (Run, Vec<Counter>) {
    let before = lb.counters();
    let run = lb.run(frame);
    let after = lb.counters();
    let risen = before
        .iter()
        .zip(&after)
        .filter(|((c, b), (_, a))| {
            is_verdict_counter(*c) && *c != Counter::IcmpErrorForwarded && a.packets != b.packets
        })
        .map(|((c, b), (_, a))| {
            assert_eq!(
                a.packets,
                b.packets + 1,
                "{} rose by more than one",
                c.name()
            );
            *c
        })
        .collect();
    (run, risen)
}

// ---- Echo ----

fn echo_request(client: &str, vip: &str, vlan: Option<u16>, ttl: u8, id_seq: [u8; 4]) -> IcmpFrame {
    let ty = if ip(vip).is_ipv4() { 8 } else { 128 };
    let mut f = IcmpFrame::new(client, vip, ty, 0);
    f.vlan = vlan;
    f.ttl = ttl;
    f.rest = id_seq;
    f
}

/// The reply the load balancer must send for `req`: MACs and addresses swapped, TTL/hop limit
/// 64, type 0 / 129, everything else (identifier, sequence, data, VLAN) unchanged.
fn echo_reply(req: &IcmpFrame) -> IcmpFrame {
    IcmpFrame {
        src_mac: req.dst_mac,
        dst_mac: req.src_mac,
        src: req.dst,
        dst: req.src,
        ttl: 64,
        ty: if req.src.is_ipv4() { 0 } else { 129 },
        ..req.clone()
    }
}

#[test]
fn echo_requests_to_a_vip_address_are_answered_exactly() {
    let (mut lb, _) = lb();
    let mut rng = StdRng::seed_from_u64(0x1c);
    let mut answered = 0;
    for (client, vip) in [(CLIENT4, VIP4), (CLIENT6, VIP6)] {
        for vlan in [None, Some(0x123)] {
            // Varied TTLs, identifiers, sequences and data (odd lengths too) exercise the
            // incremental checksum updates across many checksum values.
            for i in 0..64usize {
                let ttl = [1u8, 57, 64, 255][i % 4];
                let id_seq: [u8; 4] = rng.random();
                let data: Vec<u8> = (0..rng.random_range(0..100))
                    .map(|_| rng.random())
                    .collect();
                let req = echo_request(client, vip, vlan, ttl, id_seq);
                let mut frame = req.build(&data);
                let mut want = echo_reply(&req).build(&data);
                if i % 2 == 1 && req.src.is_ipv4() {
                    // Other IPv4 header fields (TOS, identification, DF) are kept as they are.
                    let l3 = l3_offset(&frame);
                    let (tos, ident): (u8, [u8; 2]) = (rng.random(), rng.random());
                    for f in [&mut frame, &mut want] {
                        f[l3 + 1] = tos;
                        f[l3 + 4..l3 + 6].copy_from_slice(&ident);
                        f[l3 + 6] |= 0x40;
                        fix_ipv4_checksum(&mut f[l3..]);
                    }
                }
                let run = lb.run(&frame);
                assert_eq!(run.verdict, XDP_TX, "{vip} vlan {vlan:?} case {i}");
                assert_eq!(run.out, want, "{vip} vlan {vlan:?} case {i}");
                check_icmp_checksums(&run.out).unwrap();
                answered += 1;
            }
        }
    }
    assert_eq!(lb.counter(Counter::IcmpEchoReply), answered);
    assert_eq!(lb.counter(Counter::Tx) + lb.counter(Counter::TxGue), 0);
}

#[test]
fn echo_off_for_an_address_drops_its_echo_requests() {
    let (mut lb, _) = lb();
    let v4 = echo_request(CLIENT4, VIP4, None, 57, [0, 1, 0, 1]).build(b"ping");
    let v6 = echo_request(CLIENT6, VIP6, None, 57, [0, 1, 0, 1]).build(b"ping");
    assert!(lb.dp.set_address_flags(ip(VIP4), VIP_F_NO_ECHO).unwrap());
    let (run, c) = run_counted(&mut lb, &v4);
    assert_eq!((run.verdict, c), (XDP_DROP, vec![Counter::DropIcmpEchoOff]));
    // Another address is not affected.
    assert_eq!(lb.run(&v6).verdict, XDP_TX);
    // Another service on the address keeps the address's flags.
    lb.add_vip(ip(VIP4), 8080, PROTO_TCP, 4, false, &backends(4));
    assert_eq!(lb.run(&v4).verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropIcmpEchoOff), 2);
    // Errors about flows are still forwarded: the flag is only about echo.
    let f = flow(TCP4, CLIENT4, 40100, None);
    let (ty, code, rest) = too_big(ip(VIP4));
    let err = error_frame(ip(VIP4), ty, code, rest).build(&reply_packet(TCP4, &f)[..28]);
    assert_eq!(lb.run(&err).verdict, XDP_TX);
    assert_eq!(lb.counter(Counter::IcmpErrorForwarded), 1);
    assert!(lb.dp.set_address_flags(ip(VIP4), 0).unwrap());
    assert_eq!(lb.run(&v4).verdict, XDP_TX);
    assert_eq!(lb.counter(Counter::IcmpEchoReply), 2);
}

#[test]
fn echo_requests_elsewhere_and_odd_echoes_go_to_the_kernel() {
    let (mut lb, _) = lb();
    // Not a VIP address: untouched, as before.
    for (client, dst) in [(CLIENT4, "192.0.2.99"), (CLIENT6, "2001:db8:f00d::99")] {
        let f = echo_request(client, dst, None, 57, [1, 2, 3, 4]).build(b"ping");
        let (run, c) = run_counted(&mut lb, &f);
        assert_eq!((run.verdict, c), (XDP_PASS, vec![Counter::PassNotVip]));
        assert_eq!(run.out, f);
    }
    // An echo request with a non-zero code is not one the load balancer answers.
    for (client, vip) in [(CLIENT4, VIP4), (CLIENT6, VIP6)] {
        let mut req = echo_request(client, vip, None, 57, [1, 2, 3, 4]);
        req.code = 1;
        let f = req.build(b"ping");
        let (run, c) = run_counted(&mut lb, &f);
        assert_eq!((run.verdict, c), (XDP_PASS, vec![Counter::PassIcmpOther]));
        assert_eq!(run.out, f);
    }
}

#[test]
fn echo_requests_from_sources_that_are_not_one_host_are_dropped_unanswered() {
    let (mut lb, _) = lb();
    // Broadcast, multicast, class E, loopback, "this network" and unspecified sources: a reply
    // would go to many hosts or none (or reflect a spoofed flood), as for "too big".
    for (src, vip) in [
        ("255.255.255.255", VIP4),
        ("224.0.0.1", VIP4),
        ("239.255.255.250", VIP4),
        ("240.0.0.1", VIP4),
        ("127.0.0.1", VIP4),
        ("0.0.0.0", VIP4),
        ("0.1.2.3", VIP4),
        ("::", VIP6),
        ("::1", VIP6),
        ("ff02::1", VIP6),
        ("ff0e::1234", VIP6),
    ] {
        for vlan in [None, Some(0x123)] {
            let f = echo_request(src, vip, vlan, 57, [0, 7, 0, 1]).build(b"ping");
            let (run, c) = run_counted(&mut lb, &f);
            assert_eq!(
                (run.verdict, c),
                (XDP_DROP, vec![Counter::DropIcmpEchoBadSource]),
                "echo from {src} vlan {vlan:?}"
            );
        }
    }
    assert_eq!(lb.counter(Counter::IcmpEchoReply), 0);
    assert_eq!(lb.counter(Counter::DropIcmpEchoBadSource), 22);
    // One host's address is answered as before, at the edges of the ranges too.
    for (src, vip) in [
        (CLIENT4, VIP4),
        ("1.0.0.1", VIP4),
        ("223.255.255.255", VIP4),
        (CLIENT6, VIP6),
        ("::2", VIP6),
    ] {
        let req = echo_request(src, vip, None, 57, [0, 7, 0, 2]);
        let run = lb.run(&req.build(b"ping"));
        assert_eq!(run.verdict, XDP_TX, "echo from {src}");
        assert_eq!(run.out, echo_reply(&req).build(b"ping"));
    }
    assert_eq!(lb.counter(Counter::IcmpEchoReply), 5);
}

#[test]
fn echo_replies_stop_at_the_token_buckets_burst_and_rate_zero_is_unlimited() {
    // The bucket is per CPU: every run of this test must use the same one.
    stay_on_this_cpu();
    let (mut lb, _) = lb();
    // One token a second: no refill while the test runs (a run takes microseconds).
    const BURST: u16 = 5;
    lb.set_icmp_limit(1, BURST);
    let reqs = [
        echo_request(CLIENT4, VIP4, None, 57, [0, 9, 0, 1]),
        echo_request(CLIENT6, VIP6, Some(0x123), 57, [0, 9, 0, 2]),
    ];
    for i in 0..BURST as usize {
        let req = &reqs[i % 2];
        let run = lb.run(&req.build(b"ping"));
        assert_eq!(run.verdict, XDP_TX, "echo {i} within the burst");
        assert_eq!(run.out, echo_reply(req).build(b"ping"));
    }
    // The next ones, either family, are dropped and counted.
    for req in &reqs {
        let (run, c) = run_counted(&mut lb, &req.build(b"ping"));
        assert_eq!(
            (run.verdict, c),
            (XDP_DROP, vec![Counter::DropIcmpRateLimited])
        );
    }
    assert_eq!(lb.counter(Counter::IcmpEchoReply), BURST as u64);
    // Forwarding does not take from the bucket and is not limited by it.
    let f = flow(TCP4, CLIENT4, 40200, None);
    let (run, c) = run_counted(&mut lb, &data_packet(TCP4, &f));
    assert_eq!((run.verdict, c), (XDP_TX, vec![Counter::Tx]));
    // Rate 0: no limit, as before the bucket existed.
    lb.set_icmp_limit(0, 0);
    for i in 0..200 {
        let req = &reqs[i % 2];
        let run = lb.run(&req.build(b"ping"));
        assert_eq!(run.verdict, XDP_TX, "echo {i} without a limit");
        assert_eq!(run.out, echo_reply(req).build(b"ping"));
    }
    assert_eq!(lb.counter(Counter::IcmpEchoReply), BURST as u64 + 200);
    assert_eq!(lb.counter(Counter::DropIcmpRateLimited), 2);
}

// ---- Errors about a flow ----

/// Checks that `frame` (an ICMP error about `f`) leaves as the exact encapsulation of its IP
/// packet to `backend`, with the flow's hash (flow label, GUE source port).
fn assert_forwarded(lb: &Lb, svc: Svc, f: &Flow, frame: &[u8], backend: u32) -> Run {
    let run = lb.run(frame);
    assert_eq!(run.verdict, XDP_TX);
    let key = f.key(svc.proto);
    let want = expected_encap(frame, backend_addr(backend), flow_hash(&key, SEED), svc.gue);
    assert_eq!(run.out, want, "{svc:?}: not the exact encapsulation");
    run
}

/// The backend, flow label and GUE source port of an encapsulated output.
fn tunnel_of(out: &[u8]) -> (std::net::Ipv6Addr, u32, Option<u16>) {
    let e = decode(out).unwrap();
    (
        e.backend(),
        e.ip6.flow_label.value(),
        e.udp.map(|u| u.source_port),
    )
}

#[test]
fn errors_without_an_entry_follow_maglev_like_the_flows_own_packets() {
    let (mut lb, tables) = lb();
    let mut forwarded = 0;
    let mut port = 41000;
    for (i, svc) in SERVICES.iter().copied().enumerate() {
        let vip = ip(svc.vip);
        for vlan in [None, Some(7)] {
            for (kind, (ty, code, rest)) in
                [("too big", too_big(vip)), ("unreachable", unreachable(vip))]
            {
                port += 1;
                let f = flow(svc, client_of(svc), port, vlan);
                let key = f.key(svc.proto);
                let reply = reply_packet(svc, &f);
                // IPv4 routers quote at least the IP header and 8 bytes; ICMPv6 as much as fits.
                let quote = if vip.is_ipv4() && kind == "too big" {
                    &reply[..28]
                } else {
                    &reply[..]
                };
                let mut e = error_frame(vip, ty, code, rest);
                e.vlan = vlan;
                let frame = e.build(quote);
                let backend = tables[i].backend_for(&key);
                let vip_before = lb.dp.vip_counter(svc.id).unwrap();
                let run = assert_forwarded(&lb, svc, &f, &frame, backend);
                forwarded += 1;
                assert_eq!(
                    lb.dp.vip_counter(svc.id).unwrap().packets,
                    vip_before.packets + 1
                );
                assert_eq!(
                    lb.dp.conn(&key).unwrap(),
                    None,
                    "{svc:?} {kind}: an error pins nothing"
                );
                // The flow's own data packet: same backend, flow label and GUE source port.
                let data = lb.run(&data_packet(svc, &f));
                assert_eq!(data.verdict, XDP_TX);
                assert_eq!(tunnel_of(&run.out), tunnel_of(&data.out), "{svc:?} {kind}");
            }
        }
    }
    assert_eq!(lb.counter(Counter::IcmpErrorForwarded), forwarded);
}

/// A VIP on backends 1..=3, one flow pinned by its SYN, then a ring without that backend.
fn pinned_then_moved(svc: Svc, port: u16) -> (Lb, Flow, u32, u32) {
    let mut lb = Lb::new(RING);
    let t = lb.add_vip(ip(svc.vip), svc.port, svc.proto, 0, svc.gue, &backends(0));
    let f = flow(svc, client_of(svc), port, None);
    let key = f.key(svc.proto);
    let pinned = t.backend_for(&key);
    let first = if svc.proto == PROTO_TCP {
        f.tcp(Tcp::Syn, &[])
    } else {
        f.udp(b"first")
    };
    assert_eq!(tunnel_of(&lb.run(&first).out).0, backend_addr(pinned));
    let others: Vec<(u32, u32)> = [1, 2, 3, 4]
        .iter()
        .filter(|&&b| b != pinned)
        .map(|&b| (b, 1))
        .collect();
    let moved = lb.fill_ring(0, &others).backend_for(&key);
    assert_ne!(moved, pinned);
    (lb, f, pinned, moved)
}

/// Makes the flow's entry `age_ns` old, and returns it.
fn age_entry(lb: &mut Lb, key: &FlowKey, age_ns: u64) -> ConnEntry {
    let mut e = lb.dp.conn(key).unwrap().expect("an entry");
    e.atime_ns = monotonic_ns() - age_ns;
    lb.dp.flow_table().unwrap().insert(key, &e).unwrap();
    e
}

#[test]
fn errors_about_a_pinned_flow_go_to_its_pinned_backend_read_only() {
    for (svc, port) in [
        (TCP4, 42001),
        (TCP6_GUE, 42002),
        (UDP4_GUE, 42003),
        (UDP6, 42004),
    ] {
        let vip = ip(svc.vip);
        let (mut lb, f, pinned, moved) = pinned_then_moved(svc, port);
        let key = f.key(svc.proto);
        // 5 s idle: live, and old enough that any packet of the flow would refresh it.
        let entry = age_entry(&mut lb, &key, 5_000_000_000);
        let reply = reply_packet(svc, &f);
        for (ty, code, rest) in [too_big(vip), unreachable(vip)] {
            let frame = error_frame(vip, ty, code, rest).build(&reply);
            assert_forwarded(&lb, svc, &f, &frame, pinned);
            assert_eq!(
                lb.dp.conn(&key).unwrap(),
                Some(entry),
                "{svc:?}: the error must not refresh the entry"
            );
        }
        assert_eq!(lb.counter(Counter::IcmpErrorForwarded), 2);
        assert_eq!(lb.counter(Counter::LruHit), 0, "read-only: no LRU counters");
        // The flow's own packet goes to the same place, and it does refresh the entry.
        let data = lb.run(&data_packet(svc, &f));
        assert_eq!(tunnel_of(&data.out).0, backend_addr(pinned));
        assert!(lb.dp.conn(&key).unwrap().unwrap().atime_ns > entry.atime_ns);
        // An entry past its idle timeout no longer counts: the error follows Maglev, and the
        // expired entry is left as it is (not re-pinned).
        let expired = age_entry(&mut lb, &key, 5_000_000_000);
        lb.set_config(|c| {
            c.udp_timeout_ns = 1_000_000_000;
            c.tcp_idle_timeout_ns = 1_000_000_000;
        });
        let (ty, code, rest) = too_big(vip);
        let frame = error_frame(vip, ty, code, rest).build(&reply);
        assert_forwarded(&lb, svc, &f, &frame, moved);
        assert_eq!(lb.dp.conn(&key).unwrap(), Some(expired));
        assert_eq!(lb.counter(Counter::LruExpired), 0);
    }
}

#[test]
fn errors_follow_the_closing_timeout_and_backend_generations_of_entries() {
    let svc = TCP4;
    let vip = ip(svc.vip);
    let (mut lb, f, pinned, moved) = pinned_then_moved(svc, 42010);
    let key = f.key(PROTO_TCP);
    let reply = reply_packet(svc, &f);
    let (ty, code, rest) = too_big(vip);
    let frame = error_frame(vip, ty, code, rest).build(&reply[..28]);
    // A closing entry 5 s idle under a 1 s closing timeout has expired.
    let mut e = age_entry(&mut lb, &key, 5_000_000_000);
    e.flags |= CONN_F_CLOSING;
    lb.dp.flow_table().unwrap().insert(&key, &e).unwrap();
    lb.set_config(|c| c.tcp_closing_timeout_ns = 1_000_000_000);
    assert_forwarded(&lb, svc, &f, &frame, moved);
    // Live again (no longer closing), but its backend id now belongs to another backend.
    e.flags = 0;
    lb.dp.flow_table().unwrap().insert(&key, &e).unwrap();
    assert_forwarded(&lb, svc, &f, &frame, pinned);
    lb.install_backend_generation(pinned, 2);
    assert_forwarded(&lb, svc, &f, &frame, moved);
    assert_eq!(lb.dp.conn(&key).unwrap(), Some(e));
}

// ---- Refused and passed ----

/// Replaces the quoted packet's IPv4 header length with 6 (a 4-byte option) and fixes it up.
fn with_ipv4_option(reply: &[u8]) -> Vec<u8> {
    let mut q = reply.to_vec();
    q[0] = 0x46;
    q.splice(20..20, [1u8, 1, 1, 0]);
    let tot = u16::from_be_bytes([q[2], q[3]]) + 4;
    q[2..4].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut q);
    q
}

#[test]
fn malformed_quotes_are_dropped_and_flows_without_service_too() {
    let (mut lb, _) = lb();
    lb.add_vip(ip("192.0.2.20"), 80, PROTO_TCP, 4, false, &[(13, 0)]); // an empty ring (its own backend, weight 0)
    let mut cases: Vec<(String, Vec<u8>, Counter)> = Vec::new();
    for svc in [TCP4, TCP6_GUE, UDP4_GUE, UDP6] {
        let vip = ip(svc.vip);
        let v4 = vip.is_ipv4();
        let (ty, code, rest) = too_big(vip);
        let err = |quote: &[u8]| error_frame(vip, ty, code, rest).build(quote);
        let f = flow(svc, client_of(svc), 43000, None);
        let reply = reply_packet(svc, &f);
        let hlen = if v4 { 20 } else { 40 };
        let name = |what: &str| format!("{svc:?}: {what}");
        // Only 4 bytes of the transport header: no complete ports.
        cases.push((
            name("truncated quote"),
            err(&reply[..hlen + 4]),
            Counter::DropIcmpBadEmbedded,
        ));
        // Only half the IP header.
        cases.push((
            name("quote cut in the IP header"),
            err(&reply[..hlen / 2]),
            Counter::DropIcmpBadEmbedded,
        ));
        // The ports only in link-layer padding after the IP packet: not part of the error.
        let mut padded = err(&reply[..hlen + 4]);
        padded.extend_from_slice(&reply[hlen + 4..hlen + 8]);
        padded.resize(padded.len().max(60), 0);
        cases.push((
            name("ports in the padding"),
            padded,
            Counter::DropIcmpBadEmbedded,
        ));
        // A reply from another address than the one the error came to.
        let other = if v4 {
            "192.0.2.11"
        } else {
            "2001:db8:f00d::11"
        };
        let stranger = Flow::new(other, svc.port, &f.src.to_string(), f.sport);
        let q = ip_packet(&stranger.tcp(Tcp::Ack, b"x")).to_vec();
        cases.push((
            name("quoted source not the VIP"),
            err(&q),
            Counter::DropIcmpBadEmbedded,
        ));
        // A quoted ICMP packet (an echo reply from the VIP).
        let ping = echo_reply(&echo_request(&f.src.to_string(), svc.vip, None, 64, [0; 4]));
        let q = ip_packet(&ping.build(b"ping")).to_vec();
        cases.push((
            name("quoted protocol ICMP"),
            err(&q),
            Counter::DropIcmpBadEmbedded,
        ));
        // The wrong IP version inside.
        let mut q = reply.clone();
        q[0] = if v4 { 0x65 } else { 0x45 };
        cases.push((
            name("quoted version"),
            err(&q),
            Counter::DropIcmpBadEmbedded,
        ));
        if v4 {
            cases.push((
                name("quoted IPv4 header with options (IHL 6)"),
                err(&with_ipv4_option(&reply)),
                Counter::DropIcmpBadEmbedded,
            ));
            let mut q = reply.clone();
            q[6..8].copy_from_slice(&0x00B9u16.to_be_bytes()); // offset 185 x 8: a later fragment
            fix_ipv4_checksum(&mut q);
            cases.push((
                name("quoted later fragment"),
                err(&q),
                Counter::DropIcmpBadEmbedded,
            ));
        }
        // A well-formed quote of a flow to a port that is no service.
        let nosvc = Svc { port: 81, ..svc };
        let q = reply_packet(nosvc, &flow(nosvc, client_of(svc), 43001, None));
        cases.push((name("flow to no service"), err(&q), Counter::DropIcmpNoFlow));
    }
    // A service whose ring is empty.
    let empty = Svc {
        vip: "192.0.2.20",
        ..TCP4
    };
    let q = reply_packet(empty, &flow(empty, CLIENT4, 43002, None));
    let (ty, code, rest) = too_big(ip(empty.vip));
    cases.push((
        "a service without backends".into(),
        error_frame(ip(empty.vip), ty, code, rest).build(&q),
        Counter::DropIcmpNoFlow,
    ));
    for (name, frame, counter) in cases {
        let (run, c) = run_counted(&mut lb, &frame);
        assert_eq!((run.verdict, c), (XDP_DROP, vec![counter]), "{name}");
    }
    assert_eq!(lb.counter(Counter::IcmpErrorForwarded), 0);
}

#[test]
fn other_icmp_to_a_vip_address_goes_to_the_kernel() {
    let (mut lb, _) = lb();
    let f4 = flow(TCP4, CLIENT4, 44000, None);
    let f6 = flow(TCP6_GUE, CLIENT6, 44000, None);
    let reply4 = reply_packet(TCP4, &f4);
    let reply6 = reply_packet(TCP6_GUE, &f6);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // Neighbour solicitation (unicast, to the VIP address itself: neighbour unreachability
    // detection) and advertisement.
    let vip6: std::net::Ipv6Addr = VIP6.parse().unwrap();
    let mut ns = IcmpFrame::new(CLIENT6, VIP6, 135, 0);
    ns.ttl = 255;
    cases.push(("neighbour solicitation", ns.build(&vip6.octets())));
    let mut na = IcmpFrame::new(CLIENT6, VIP6, 136, 0);
    na.ttl = 255;
    na.rest = [0x60, 0, 0, 0];
    cases.push(("neighbour advertisement", na.build(&vip6.octets())));
    // Time exceeded, about a packet of a flow: not ours to route.
    let err4 = error_frame(ip(VIP4), 11, 0, [0; 4]).build(&reply4[..28]);
    cases.push(("time exceeded", err4));
    let err6 = error_frame(ip(VIP6), 3, 0, [0; 4]).build(&reply6);
    cases.push(("ICMPv6 time exceeded", err6));
    let err6 = error_frame(ip(VIP6), 4, 0, [0, 0, 0, 6]).build(&reply6);
    cases.push(("ICMPv6 parameter problem", err6));
    // Echo replies to the VIP.
    let mut pong = IcmpFrame::new(CLIENT4, VIP4, 0, 0);
    pong.rest = [0, 1, 0, 1];
    cases.push(("echo reply", pong.build(b"pong")));
    let mut pong6 = IcmpFrame::new(CLIENT6, VIP6, 129, 0);
    pong6.rest = [0, 1, 0, 1];
    cases.push(("ICMPv6 echo reply", pong6.build(b"pong")));
    for (name, frame) in cases {
        let (run, c) = run_counted(&mut lb, &frame);
        assert_eq!(
            (run.verdict, c),
            (XDP_PASS, vec![Counter::PassIcmpOther]),
            "{name}"
        );
        assert_eq!(run.out, frame, "{name}: passed frames stay untouched");
    }
}

#[test]
fn outer_header_rules_still_apply_to_icmp() {
    let (mut lb, _) = lb();
    let req = echo_request(CLIENT4, VIP4, None, 57, [0, 1, 0, 1]).build(b"ping");
    // IPv4 options on the ICMP packet itself.
    let mut opt = req.clone();
    opt[14] = 0x46;
    opt.splice(34..34, [1u8, 1, 1, 0]);
    let tot = u16::from_be_bytes([opt[16], opt[17]]) + 4;
    opt[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut opt[14..]);
    // A fragment.
    let mut frag = req.clone();
    frag[20] |= 0x20;
    fix_ipv4_checksum(&mut frag[14..]);
    // The ICMP header cut short, and an IP length longer than the frame.
    let cut = req[..14 + 20 + 4].to_vec();
    let mut long = req.clone();
    long[16..18].copy_from_slice(&1000u16.to_be_bytes());
    let mut short = req.clone();
    short[16..18].copy_from_slice(&24u16.to_be_bytes());
    // ICMPv6 behind a hop-by-hop header.
    let mut hbh = echo_request(CLIENT6, VIP6, None, 57, [0, 1, 0, 1]).build(b"ping");
    hbh[14 + 6] = 0;
    hbh.splice(54..54, [58u8, 0, 1, 4, 0, 0, 0, 0]);
    let plen = u16::from_be_bytes([hbh[18], hbh[19]]) + 8;
    hbh[18..20].copy_from_slice(&plen.to_be_bytes());
    for (name, frame, counter) in [
        ("options", opt, Counter::DropIpv4Options),
        ("fragment", frag, Counter::DropIpv4Fragment),
        ("cut ICMP header", cut, Counter::DropTruncated),
        ("IP length past the frame", long, Counter::DropTruncated),
        (
            "IP length without an ICMP header",
            short,
            Counter::DropBadIpHeader,
        ),
        ("hop-by-hop", hbh, Counter::DropIpv6ExtHeader),
    ] {
        let (run, c) = run_counted(&mut lb, &frame);
        assert_eq!((run.verdict, c), (XDP_DROP, vec![counter]), "{name}");
    }
}

/// Random corruption of valid ICMP frames: a transmitted frame is either the echo reply of the
/// input (only the reply's fields changed) or an exact encapsulation of the input's IP packet
/// to a backend; passed frames are untouched; one verdict counter per frame.
#[test]
fn random_corruption_of_icmp_never_transmits_garbage() {
    let (mut lb, _) = lb();
    let mut bases = Vec::new();
    for (client, vip) in [(CLIENT4, VIP4), (CLIENT6, VIP6)] {
        for vlan in [None, Some(9)] {
            bases.push(echo_request(client, vip, vlan, 57, [0, 7, 0, 9]).build(b"ping data"));
        }
    }
    for svc in SERVICES {
        let f = flow(svc, client_of(svc), 45000, None);
        let reply = reply_packet(svc, &f);
        let vip = ip(svc.vip);
        for (ty, code, rest) in [too_big(vip), unreachable(vip)] {
            bases.push(error_frame(vip, ty, code, rest).build(&reply[..80]));
        }
    }
    let mut rng = StdRng::seed_from_u64(0x1c3b);
    let (mut echoes, mut errors) = (0, 0);
    for i in 0..6000 {
        let base = &bases[i % bases.len()];
        let mut f = base.clone();
        let l3 = l3_offset(base);
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(12..f.len().min(l3 + 40 + 8 + 48));
            f[at] = rng.random();
        }
        if rng.random_bool(0.2) {
            f.truncate(rng.random_range(14..f.len()));
        }
        let (run, risen) = run_counted(&mut lb, &f);
        assert_eq!(risen.len(), 1, "case {i}: {risen:?}");
        match run.verdict {
            XDP_TX if risen[0] == Counter::IcmpEchoReply => {
                echoes += 1;
                check_echo_rewrite(&f, &run.out).unwrap_or_else(|e| panic!("case {i}: {e}"));
            }
            XDP_TX => {
                errors += 1;
                let e = decode(&run.out).unwrap_or_else(|e| panic!("case {i}: {e}"));
                assert_eq!(e.inner, ip_packet(&f), "case {i}: inner packet differs");
            }
            XDP_PASS => assert_eq!(run.out, f, "case {i}: passed frames stay untouched"),
            XDP_DROP => {}
            v => panic!("case {i}: unexpected verdict {v}"),
        }
    }
    println!("{echoes} echo replies and {errors} forwarded errors among 6000 corrupted frames");
}

/// An echo reply made from `input`: only MACs, addresses, TTL/hop limit, type and checksums
/// changed, and checksums valid whenever the input's were.
fn check_echo_rewrite(input: &[u8], out: &[u8]) -> anyhow::Result<()> {
    anyhow::ensure!(out.len() == input.len(), "length changed");
    let l3 = l3_offset(input);
    let mut want = input.to_vec();
    want[..6].copy_from_slice(&input[6..12]);
    want[6..12].copy_from_slice(&input[..6]);
    let (ttl, sum_at, icmp) = if input[l3] >> 4 == 4 {
        want[l3 + 12..l3 + 16].copy_from_slice(&input[l3 + 16..l3 + 20]);
        want[l3 + 16..l3 + 20].copy_from_slice(&input[l3 + 12..l3 + 16]);
        want[l3 + 20] = 0;
        (l3 + 8, Some(l3 + 10), l3 + 20)
    } else {
        want[l3 + 8..l3 + 24].copy_from_slice(&input[l3 + 24..l3 + 40]);
        want[l3 + 24..l3 + 40].copy_from_slice(&input[l3 + 8..l3 + 24]);
        want[l3 + 40] = 129;
        (l3 + 7, None, l3 + 40)
    };
    want[ttl] = 64;
    // Checksums are compared for validity below, not byte for byte.
    for at in sum_at.into_iter().chain([icmp + 2]) {
        want[at..at + 2].copy_from_slice(&out[at..at + 2]);
    }
    anyhow::ensure!(
        out == want.as_slice(),
        "fields other than the reply's changed"
    );
    if check_icmp_checksums(input).is_ok() {
        check_icmp_checksums(out)?;
    }
    Ok(())
}

#[test]
fn verifier_instruction_count() {
    let lb = Lb::new(RING);
    let info = lb.dp.program().info().unwrap();
    println!(
        "lb_xdp: {} instructions processed by the verifier, {} bytes translated",
        info.verified_instruction_count().unwrap_or(0),
        info.size_translated().unwrap_or(0)
    );
}
