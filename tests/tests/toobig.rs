//! Too big to encapsulate, through BPF_PROG_TEST_RUN: a client packet that would exceed the NIC's
//! MTU once the tunnel header is added gets ICMP "fragmentation needed" (IPv4 with DF) or ICMPv6
//! "packet too big" back, exactly; IPv4 without DF is dropped; packets that fit are tunnelled
//! as before. Needs root.

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, IpNumber, Ipv4Header, Ipv6FlowLabel,
    Ipv6Header, icmpv4::DestUnreachableHeader,
};
use lb_common::{Counter, PROTO_TCP, PROTO_UDP};
use tests::*;

const RING: u32 = 4099;
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";
const CLIENT4: &str = "198.51.100.7";
const CLIENT6: &str = "2001:db8:c11e::7";
const MTU: u16 = 1500;
const HTTP: u16 = 80;
const HTTPS_GUE: u16 = 443;
const DNS: u16 = 53;

/// TCP VIPs on port 80 (plain IPv6 tunnel) and 443 (GUE), v4 and v6, a UDP VIP on port 53,
/// all over backends 1, 2, 3; the NIC's MTU is 1500.
fn lb() -> Lb {
    let mut lb = Lb::new(RING);
    // Each VIP has its own backends (ids 3k+1..3k+3), as the agent installs them: an
    // established flow finds its VIP through its backend.
    let b = |k: u32| [(3 * k + 1, 1), (3 * k + 2, 1), (3 * k + 3, 1)];
    lb.add_vip(VIP4.parse().unwrap(), HTTP, PROTO_TCP, 0, false, &b(0));
    lb.add_vip(VIP6.parse().unwrap(), HTTP, PROTO_TCP, 1, false, &b(1));
    lb.add_vip(VIP4.parse().unwrap(), HTTPS_GUE, PROTO_TCP, 2, true, &b(2));
    lb.add_vip(VIP6.parse().unwrap(), HTTPS_GUE, PROTO_TCP, 3, true, &b(3));
    lb.add_vip(VIP4.parse().unwrap(), DNS, PROTO_UDP, 4, false, &b(4));
    lb.set_mtu(MTU);
    lb
}

fn flow4(port: u16) -> Flow {
    Flow::new(CLIENT4, 40000, VIP4, port)
}

fn flow6(port: u16) -> Flow {
    Flow::new(CLIENT6, 40000, VIP6, port)
}

/// A payload whose bytes differ from their neighbours, so a shifted quote cannot match.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

/// A TCP frame of `flow` whose IP packet is exactly `ip_len` bytes.
fn tcp_frame(flow: &Flow, flags: Tcp, ip_len: usize) -> Vec<u8> {
    let headers = if flow.src.is_ipv4() { 20 } else { 40 } + 20;
    let frame = flow.tcp(flags, &payload(ip_len - headers));
    assert_eq!(ip_packet(&frame).len(), ip_len);
    frame
}

fn clear_df(frame: &mut [u8]) {
    let l3 = l3_offset(frame);
    assert_eq!(frame[l3 + 6] & 0x40, 0x40, "etherparse sets DF");
    frame[l3 + 6] &= !0x40;
    fix_ipv4_checksum(&mut frame[l3..]);
}

/// The reply the program must send for `frame`, built independently with etherparse: the
/// received MACs swapped and its VLAN tag kept; IPv4 (TOS 0, `id`, DF clear, TTL 64) or IPv6
/// (traffic class 0, flow label 0, hop limit 64) from the VIP to the client; ICMP 3/4 with the
/// next-hop MTU or ICMPv6 2/0 with the MTU; the first `quote` bytes of the client's IP packet.
fn want_reply(frame: &[u8], mtu_field: u32, quote: usize, id: u16) -> Vec<u8> {
    let l3 = l3_offset(frame);
    let ip = ip_packet(frame);
    let quoted = &ip[..quote];
    let mut w = Vec::new();
    w.extend_from_slice(&frame[6..12]);
    w.extend_from_slice(&frame[0..6]);
    w.extend_from_slice(&frame[12..l3]);
    if ip[0] >> 4 == 4 {
        let next_hop_mtu = u16::try_from(mtu_field).unwrap();
        let icmp = Icmpv4Header::with_checksum(
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu,
            }),
            quoted,
        );
        let mut h = Ipv4Header::new(
            (8 + quote) as u16,
            64,
            IpNumber::ICMP,
            ip[16..20].try_into().unwrap(),
            ip[12..16].try_into().unwrap(),
        )
        .unwrap();
        h.dont_fragment = false;
        h.identification = id;
        h.header_checksum = h.calc_header_checksum();
        h.write(&mut w).unwrap();
        icmp.write(&mut w).unwrap();
    } else {
        let vip: [u8; 16] = ip[24..40].try_into().unwrap();
        let client: [u8; 16] = ip[8..24].try_into().unwrap();
        let icmp = Icmpv6Header::with_checksum(
            Icmpv6Type::PacketTooBig { mtu: mtu_field },
            vip,
            client,
            quoted,
        )
        .unwrap();
        let h = Ipv6Header {
            traffic_class: 0,
            flow_label: Ipv6FlowLabel::ZERO,
            payload_length: (8 + quote) as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: 64,
            source: vip,
            destination: client,
        };
        h.write(&mut w).unwrap();
        icmp.write(&mut w).unwrap();
    }
    w.extend_from_slice(quoted);
    w
}

/// Checks the reply's checksums with our own one's-complement sum (independent of etherparse):
/// the IPv4 header and ICMP, or ICMPv6 over the pseudo-header.
fn check_checksums(out: &[u8]) {
    let ip = &out[l3_offset(out)..];
    if ip[0] >> 4 == 4 {
        assert_eq!(ones_sum(0, &ip[..20]), 0xFFFF, "IPv4 header checksum");
        assert_eq!(ones_sum(0, &ip[20..]), 0xFFFF, "ICMP checksum");
    } else {
        let len = (ip.len() - 40) as u32;
        let mut pseudo = ones_sum(0, &ip[8..40]);
        pseudo = ones_sum(pseudo, &len.to_be_bytes());
        pseudo = ones_sum(pseudo, &[0, 0, 0, 58]);
        assert_eq!(ones_sum(pseudo, &ip[40..]), 0xFFFF, "ICMPv6 checksum");
    }
}

/// Runs a frame that must be answered with ICMP; checks the verdict, the exact reply, its
/// checksums and that it fits the NIC's MTU. Returns the reply.
fn expect_reply(lb: &mut Lb, frame: &[u8], mtu: u16, mtu_field: u32, quote: usize) -> Vec<u8> {
    let sent = lb.counter(Counter::IcmpTooBigSent);
    let run = lb.run(frame);
    assert_eq!(run.verdict, XDP_TX, "a too-big packet is answered");
    let l3 = l3_offset(frame);
    // IPv4: DF is clear, so the program picks a fresh id; take it from the reply.
    let id = u16::from_be_bytes([run.out[l3 + 4], run.out[l3 + 5]]);
    assert_eq!(run.out, want_reply(frame, mtu_field, quote, id));
    check_checksums(&run.out);
    assert!(
        run.out.len() - l3 <= mtu as usize,
        "the reply ({} bytes of IP) must fit the NIC's MTU {mtu}",
        run.out.len() - l3
    );
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), sent + 1);
    run.out
}

/// Runs a frame that must be tunnelled; returns the output's length.
fn expect_encap(lb: &mut Lb, frame: &[u8], flow: &Flow, proto: u8, gue: bool) -> usize {
    let run = lb.run(frame);
    assert_eq!(run.verdict, XDP_TX);
    let e = decode(&run.out).unwrap();
    check_encap(frame, &run.out, e.backend(), &flow.key(proto), gue).unwrap();
    run.out.len()
}

#[test]
fn ipv4_with_df_one_byte_over_gets_fragmentation_needed_exactly() {
    let mut lb = lb();
    let flow = flow4(HTTP);
    // 1461 + 40 = MTU + 1.
    let frame = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40 + 1);
    let out = expect_reply(&mut lb, &frame, MTU, MTU as u32 - 40, 548);
    // A 576-byte datagram (RFC 1812), DF clear; the quote is the client's packet, untouched.
    assert_eq!(out.len(), 14 + 576);
    assert_eq!(out[14 + 6] & 0x40, 0, "DF clear");
    assert_eq!(&out[14 + 28..], &ip_packet(&frame)[..548]);
    assert_eq!(
        (out[14 + 20], out[14 + 21]),
        (3, 4),
        "destination unreachable / fragmentation needed"
    );
    assert_eq!(u16::from_be_bytes([out[14 + 26], out[14 + 27]]), 1460);
    // Nothing was forwarded: no tunnel counters, no VIP or backend traffic.
    assert_eq!(lb.counter(Counter::Tx), 0);
    assert_eq!(lb.dp.vip_counter(0).unwrap().packets, 0);
    for id in 1..=3 {
        assert_eq!(lb.dp.backend_counter(id).unwrap().packets, 0);
    }
}

#[test]
fn ipv4_at_and_under_the_limit_is_encapsulated() {
    let mut lb = lb();
    let flow = flow4(HTTP);
    for ip_len in [MTU as usize - 40, MTU as usize - 41] {
        let frame = tcp_frame(&flow, Tcp::Ack, ip_len);
        let len = expect_encap(&mut lb, &frame, &flow, PROTO_TCP, false);
        assert_eq!(len, 14 + ip_len + 40);
    }
    // At the limit the tunnel frame is exactly the MTU plus the Ethernet header.
    let at = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40);
    assert_eq!(lb.run(&at).out.len(), MTU as usize + 14);
    assert_eq!(lb.counter(Counter::Tx), 3);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 0);
}

#[test]
fn ipv6_one_byte_over_gets_packet_too_big_exactly() {
    let mut lb = lb();
    let flow = flow6(HTTP);
    let frame = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40 + 1);
    let out = expect_reply(&mut lb, &frame, MTU, MTU as u32 - 40, 1232);
    // As much of the packet as fits in 1280 bytes (RFC 4443 2.4 (c)).
    assert_eq!(out.len(), 14 + 1280);
    assert_eq!((out[14 + 40], out[14 + 41]), (2, 0), "packet too big");
    assert_eq!(
        u32::from_be_bytes(out[14 + 44..14 + 48].try_into().unwrap()),
        1460
    );
    assert_eq!(&out[14 + 48..], &ip_packet(&frame)[..1232]);
    // At the limit: tunnelled, exactly MTU + Ethernet.
    let at = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40);
    assert_eq!(
        expect_encap(&mut lb, &at, &flow, PROTO_TCP, false),
        MTU as usize + 14
    );
    assert_eq!(lb.counter(Counter::Tx), 1);
}

#[test]
fn gue_vips_have_the_limit_and_advertise_mtu_minus_48() {
    let mut lb = lb();
    for flow in [flow4(HTTPS_GUE), flow6(HTTPS_GUE)] {
        let fits = tcp_frame(&flow, Tcp::Ack, MTU as usize - 48);
        assert_eq!(
            expect_encap(&mut lb, &fits, &flow, PROTO_TCP, true),
            MTU as usize + 14
        );
        // One byte more would fit a plain tunnel, but not GUE.
        let over = tcp_frame(&flow, Tcp::Ack, MTU as usize - 47);
        let quote = if flow.src.is_ipv4() { 548 } else { 1232 };
        expect_reply(&mut lb, &over, MTU, MTU as u32 - 48, quote);
    }
    assert_eq!(lb.counter(Counter::TxGue), 2);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 2);
}

#[test]
fn ipv4_without_df_over_the_limit_is_dropped_and_counted() {
    let mut lb = lb();
    let flow = flow4(HTTP);
    let mut frame = tcp_frame(&flow, Tcp::Ack, MTU as usize - 39);
    clear_df(&mut frame);
    assert_eq!(lb.run(&frame).verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropTooBigNoDf), 1);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 0);
    // Without DF but fitting: tunnelled as always (DF plays no part on the fast path).
    let mut fits = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40);
    clear_df(&mut fits);
    expect_encap(&mut lb, &fits, &flow, PROTO_TCP, false);
    assert_eq!(lb.counter(Counter::DropTooBigNoDf), 1);
}

#[test]
fn udp_over_the_limit_is_answered_too() {
    let mut lb = lb();
    let flow = flow4(DNS);
    let frame = flow.udp(&payload(MTU as usize - 40 + 1 - 28));
    assert_eq!(ip_packet(&frame).len(), MTU as usize - 39);
    expect_reply(&mut lb, &frame, MTU, MTU as u32 - 40, 548);
}

#[test]
fn vlan_tagged_replies_keep_the_tag() {
    let mut lb = lb();
    for (mut flow, quote) in [(flow4(HTTP), 548), (flow6(HTTP), 1232)] {
        flow.vlan = Some(0x123);
        let frame = tcp_frame(&flow, Tcp::Ack, MTU as usize - 39);
        assert_eq!(l3_offset(&frame), 18);
        let out = expect_reply(&mut lb, &frame, MTU, MTU as u32 - 40, quote);
        assert_eq!(&out[12..18], &frame[12..18], "same tag, same ethertype");
        // At the limit: tunnelled with the tag, MTU + Ethernet + tag.
        let at = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40);
        assert_eq!(
            expect_encap(&mut lb, &at, &flow, PROTO_TCP, false),
            MTU as usize + 18
        );
    }
}

#[test]
fn mtu_0_is_never_checked() {
    let mut lb = lb();
    lb.set_mtu(0);
    for flow in [flow4(HTTP), flow6(HTTP), flow4(HTTPS_GUE)] {
        let frame = tcp_frame(&flow, Tcp::Ack, 3000);
        let gue = flow.dport == HTTPS_GUE;
        let len = expect_encap(&mut lb, &frame, &flow, PROTO_TCP, gue);
        assert_eq!(len, 14 + 3000 + if gue { 48 } else { 40 });
    }
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 0);
}

#[test]
fn a_too_big_syn_pins_its_flow_and_too_big_data_leaves_the_entry_alone() {
    let mut lb = lb();
    // A SYN carrying data (TCP Fast Open) over the limit: answered, and its entry exists, made
    // by the backend choice that runs before the size check (see docs/dataplane.md).
    let syn_flow = Flow::new(CLIENT4, 40100, VIP4, HTTP);
    let key = syn_flow.key(PROTO_TCP);
    let syn = tcp_frame(&syn_flow, Tcp::Syn, MTU as usize - 39);
    expect_reply(&mut lb, &syn, MTU, MTU as u32 - 40, 548);
    let table = lb.fill_ring(0, &[(1, 1), (2, 1), (3, 1)]);
    let entry = lb.dp.conn(&key).unwrap().expect("the SYN's entry");
    assert_eq!(entry.backend, table.backend_for(&key));

    // An established flow: pinned by its SYN, then the ring changes under it.
    let flow = Flow::new(CLIENT4, 40101, VIP4, HTTP);
    let key = flow.key(PROTO_TCP);
    let pinned = table.backend_for(&key);
    expect_encap(&mut lb, &flow.tcp(Tcp::Syn, &[]), &flow, PROTO_TCP, false);
    let others: Vec<(u32, u32)> = [1, 2, 3, 16]
        .into_iter()
        .filter(|&b| b != pinned)
        .map(|b| (b, 1))
        .collect();
    assert_ne!(lb.fill_ring(0, &others).backend_for(&key), pinned);
    let before = lb.dp.conn(&key).unwrap().unwrap();
    // A too-big data packet: answered; the entry keeps its backend, generation, hash and flags
    // (only its last-seen time may move, at most once a second, as for any packet of the flow).
    let big = tcp_frame(&flow, Tcp::Ack, MTU as usize - 39);
    expect_reply(&mut lb, &big, MTU, MTU as u32 - 40, 548);
    let after = lb.dp.conn(&key).unwrap().unwrap();
    assert_eq!(
        (after.backend, after.generation, after.hash, after.flags),
        (before.backend, before.generation, before.hash, before.flags)
    );
    // The client's smaller retry still reaches the pinned backend.
    let small = tcp_frame(&flow, Tcp::Ack, MTU as usize - 40);
    let run = lb.run(&small);
    assert_eq!(run.verdict, XDP_TX);
    assert_eq!(decode(&run.out).unwrap().backend(), backend_addr(pinned));
}

#[test]
fn tiny_mtus_quote_the_minimum_or_drop_and_never_underflow() {
    let mut lb = lb();
    // An MTU the agent would refuse (it requires 1328): the full 576/1280-byte message does
    // not fit, so the reply quotes the IP header + 8 bytes (RFC 792 / RFC 4443 minimum).
    lb.set_mtu(100);
    let f4 = tcp_frame(&flow4(HTTP), Tcp::Ack, 61);
    expect_reply(&mut lb, &f4, 100, 60, 28);
    lb.set_mtu(120);
    let f6 = tcp_frame(&flow6(HTTP), Tcp::Ack, 81);
    expect_reply(&mut lb, &f6, 120, 80, 48);
    // Smaller than the minimum message itself (56 / 88 bytes), or than the tunnel overhead:
    // nothing may leave, the advertised MTU would be 0 (saturated, not wrapped).
    for mtu in [55, 40, 1] {
        lb.set_mtu(mtu);
        let before = lb.counter(Counter::DropEncap);
        let frame = tcp_frame(&flow4(HTTP), Tcp::Ack, 40);
        assert_eq!(lb.run(&frame).verdict, XDP_DROP, "mtu {mtu}");
        assert_eq!(lb.counter(Counter::DropEncap), before + 1);
    }
    lb.set_mtu(87);
    let frame = tcp_frame(&flow6(HTTPS_GUE), Tcp::Ack, 60);
    assert_eq!(lb.run(&frame).verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 2);
}

#[test]
fn no_icmp_to_sources_that_are_not_one_host() {
    let mut lb = lb();
    for src in [
        "224.0.0.5",
        "0.0.0.1",
        "127.0.0.1",
        "255.255.255.255",
        "ff02::1",
        "::",
    ] {
        let (dst, dport) = if src.contains(':') {
            (VIP6, HTTP)
        } else {
            (VIP4, HTTP)
        };
        let flow = Flow::new(src, 40000, dst, dport);
        let frame = tcp_frame(&flow, Tcp::Ack, MTU as usize - 39);
        assert_eq!(lb.run(&frame).verdict, XDP_DROP, "{src}");
    }
    assert_eq!(lb.counter(Counter::DropBadIpHeader), 6);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 0);
}

#[test]
fn too_big_messages_and_echo_replies_share_one_token_bucket() {
    // The bucket is per CPU: every run of this test must use the same one.
    stay_on_this_cpu();
    let mut lb = lb();
    // One token a second, bursts of 3: no refill while the test runs.
    lb.set_icmp_limit(1, 3);
    let (f4, f6) = (flow4(HTTP), flow6(HTTP));
    let big4 = tcp_frame(&f4, Tcp::Ack, MTU as usize - 39);
    let big6 = tcp_frame(&f6, Tcp::Ack, MTU as usize - 39);
    expect_reply(&mut lb, &big4, MTU, MTU as u32 - 40, 548);
    expect_reply(&mut lb, &big6, MTU, MTU as u32 - 40, 1232);
    // An echo reply takes the third token.
    let ping = IcmpFrame::new(CLIENT4, VIP4, 8, 0).build(b"ping");
    assert_eq!(lb.run(&ping).verdict, XDP_TX);
    assert_eq!(lb.counter(Counter::IcmpEchoReply), 1);
    // Spent: the next too-big packets are dropped and counted, not answered, not forwarded.
    for frame in [&big4, &big6] {
        assert_eq!(lb.run(frame).verdict, XDP_DROP);
    }
    assert_eq!(lb.counter(Counter::DropIcmpRateLimited), 2);
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 2);
    assert_eq!(lb.counter(Counter::Tx), 0);
    // Packets that fit are tunnelled whatever the bucket holds.
    let fits = tcp_frame(&f4, Tcp::Ack, MTU as usize - 40);
    expect_encap(&mut lb, &fits, &f4, PROTO_TCP, false);
    assert_eq!(lb.counter(Counter::Tx), 1);
    // Rate 0: no limit, as before the bucket existed.
    lb.set_icmp_limit(0, 0);
    for _ in 0..50 {
        expect_reply(&mut lb, &big4, MTU, MTU as u32 - 40, 548);
        expect_reply(&mut lb, &big6, MTU, MTU as u32 - 40, 1232);
    }
    assert_eq!(lb.counter(Counter::IcmpTooBigSent), 102);
    assert_eq!(lb.counter(Counter::DropIcmpRateLimited), 2);
}
