//! Bad input never leaves as XDP_TX garbage: truncations, bad headers, options, fragments,
//! extension headers, unknown ethertypes and random corruption. Every packet moves exactly one
//! verdict counter. Needs root.

use std::net::IpAddr;

use lb_common::{Counter, PROTO_TCP, PROTO_UDP};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tests::*;

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";

fn lb() -> Lb {
    let mut lb = Lb::new(4099);
    // Each VIP has its own backends (ids 2k+1, 2k+2), as the agent installs them.
    let b = |k: u32| [(2 * k + 1, 1), (2 * k + 2, 1)];
    lb.add_vip(VIP4.parse().unwrap(), 80, PROTO_TCP, 0, false, &b(0));
    lb.add_vip(VIP6.parse().unwrap(), 80, PROTO_TCP, 1, true, &b(1));
    lb.add_vip(VIP4.parse().unwrap(), 53, PROTO_UDP, 2, false, &b(2));
    lb.add_vip(VIP6.parse().unwrap(), 53, PROTO_UDP, 3, false, &b(3));
    lb
}

/// Runs `frame` and returns the verdict and the one verdict counter that rose.
fn run_counted(lb: &mut Lb, frame: &[u8]) -> (Run, Counter) {
    let before = lb.counters();
    let run = lb.run(frame);
    let after = lb.counters();
    let risen: Vec<Counter> = before
        .iter()
        .zip(&after)
        .filter(|((c, b), (_, a))| is_verdict_counter(*c) && a.packets != b.packets)
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
    assert_eq!(
        risen.len(),
        1,
        "exactly one verdict counter must rise, got {risen:?}"
    );
    (run, risen[0])
}

fn valid_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut vlan4 = Flow::new("198.51.100.1", 1000, VIP4, 80);
    vlan4.vlan = Some(42);
    let mut vlan6 = Flow::new("2001:db8:c11e::1", 1000, VIP6, 80);
    vlan6.vlan = Some(42);
    vec![
        (
            "tcp4",
            Flow::new("198.51.100.1", 1000, VIP4, 80).tcp(Tcp::Syn, b"hello"),
        ),
        (
            "tcp6-gue",
            Flow::new("2001:db8:c11e::1", 1000, VIP6, 80).tcp(Tcp::Ack, b"hello"),
        ),
        (
            "udp4",
            Flow::new("198.51.100.1", 1000, VIP4, 53).udp(b"hello"),
        ),
        (
            "udp6",
            Flow::new("2001:db8:c11e::1", 1000, VIP6, 53).udp(b"hello"),
        ),
        ("vlan-tcp4", vlan4.tcp(Tcp::Syn, b"hello")),
        ("vlan-tcp6", vlan6.tcp(Tcp::Syn, b"hello")),
    ]
}

#[test]
fn every_truncation_is_refused() {
    let mut lb = lb();
    for (name, frame) in valid_frames() {
        let (full, c) = run_counted(&mut lb, &frame);
        assert_eq!(full.verdict, XDP_TX, "{name} in full");
        assert!(matches!(c, Counter::Tx | Counter::TxGue));
        // The kernel's test run itself refuses frames shorter than an Ethernet header.
        for len in 14..frame.len() {
            let cut = &frame[..len];
            let (run, c) = run_counted(&mut lb, cut);
            assert_ne!(
                run.verdict, XDP_TX,
                "{name} cut to {len} bytes was transmitted"
            );
            if run.verdict == XDP_PASS {
                assert_eq!(
                    run.out, cut,
                    "{name}/{len}: a passed frame must be untouched"
                );
                assert_eq!(
                    c,
                    Counter::PassNonIp,
                    "{name}/{len}: only a cut VLAN/ethertype passes"
                );
            } else {
                assert_eq!(run.verdict, XDP_DROP);
                assert_eq!(c, Counter::DropTruncated, "{name}/{len}");
            }
        }
    }
}

fn tcp4(payload: &[u8]) -> Vec<u8> {
    Flow::new("198.51.100.2", 2000, VIP4, 80).tcp(Tcp::Ack, payload)
}

#[test]
fn bad_ipv4_headers_options_and_fragments() {
    let mut lb = lb();
    let mut cases: Vec<(&str, Vec<u8>, u32, Counter)> = Vec::new();
    for ihl in [0u8, 1, 4] {
        let mut f = tcp4(b"abc");
        f[14] = 0x40 | ihl;
        cases.push(("ihl < 5", f, XDP_DROP, Counter::DropBadIpHeader));
    }
    let mut f = tcp4(b"abc");
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    cases.push(("bad version", f, XDP_DROP, Counter::DropBadIpHeader));
    // IHL 6 with a real 4-byte option (NOP NOP NOP EOL): a well-formed packet with options.
    let mut f = tcp4(b"abc");
    f[14] = 0x46;
    f.splice(34..34, [1u8, 1, 1, 0]);
    let tot = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ipv4_checksum(&mut f[14..]);
    cases.push(("options", f, XDP_DROP, Counter::DropIpv4Options));
    let mut f = tcp4(b"abcdefgh");
    f[20] |= 0x20; // more fragments
    cases.push(("first fragment", f, XDP_DROP, Counter::DropIpv4Fragment));
    let mut f = tcp4(b"abcdefgh");
    f[21] = 0x10; // fragment offset
    cases.push(("later fragment", f, XDP_DROP, Counter::DropIpv4Fragment));
    let mut f = tcp4(b"abc");
    f[16..18].copy_from_slice(&30u16.to_be_bytes()); // total length shorter than IP + TCP
    cases.push(("short total length", f, XDP_DROP, Counter::DropBadIpHeader));
    let mut f = tcp4(b"abc");
    f[16..18].copy_from_slice(&1500u16.to_be_bytes()); // claims more than the frame holds
    cases.push(("long total length", f, XDP_DROP, Counter::DropTruncated));
    // A fragment or options to a non-VIP address is not ours: it passes.
    let mut f = Flow::new("198.51.100.2", 2000, "192.0.2.200", 80).tcp(Tcp::Ack, b"abcdefgh");
    f[20] |= 0x20;
    cases.push(("fragment to a non-VIP", f, XDP_PASS, Counter::PassNotVip));
    for (name, frame, verdict, counter) in cases {
        let (run, c) = run_counted(&mut lb, &frame);
        assert_eq!((run.verdict, c), (verdict, counter), "{name}");
        if verdict == XDP_PASS {
            assert_eq!(run.out, frame);
        }
    }
}

/// Inserts an IPv6 extension header (8 bytes) of type `kind` after the fixed header.
fn with_ext(kind: u8) -> Vec<u8> {
    let mut f = Flow::new("2001:db8:c11e::2", 2000, VIP6, 80).tcp(Tcp::Ack, b"abcdefgh");
    let inner_nh = f[14 + 6];
    f[14 + 6] = kind;
    let ext = if kind == 44 {
        [inner_nh, 0, 0, 1, 0, 0, 0, 7]
    } else {
        [inner_nh, 0, 1, 4, 0, 0, 0, 0]
    };
    f.splice(54..54, ext);
    let plen = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f
}

#[test]
fn ipv6_fragments_and_extension_headers() {
    let mut lb = lb();
    let (run, c) = run_counted(&mut lb, &with_ext(44));
    assert_eq!((run.verdict, c), (XDP_DROP, Counter::DropIpv6Fragment));
    for kind in [0u8, 43, 60] {
        let (run, c) = run_counted(&mut lb, &with_ext(kind));
        assert_eq!(
            (run.verdict, c),
            (XDP_DROP, Counter::DropIpv6ExtHeader),
            "next header {kind}"
        );
    }
    let mut f = Flow::new("2001:db8:c11e::2", 2000, VIP6, 80).tcp(Tcp::Ack, b"a");
    f[14] = 0x45; // version 4 in an IPv6 ethertype
    let (run, c) = run_counted(&mut lb, &f);
    assert_eq!((run.verdict, c), (XDP_DROP, Counter::DropBadIpHeader));
}

#[test]
fn unknown_ethertypes_pass_untouched() {
    let mut lb = lb();
    let base = tcp4(b"abc");
    for et in [
        [0x88u8, 0xCC],
        [0x88, 0xA8],
        [0x08, 0x06],
        [0x00, 0x2E],
        [0xFF, 0xFF],
    ] {
        let mut f = base.clone();
        f[12..14].copy_from_slice(&et);
        let (run, c) = run_counted(&mut lb, &f);
        assert_eq!(
            (run.verdict, c),
            (XDP_PASS, Counter::PassNonIp),
            "ethertype {et:02x?}"
        );
        assert_eq!(run.out, f);
    }
}

/// Random corruption of valid frames: whatever the program does, a transmitted frame must be
/// a correct encapsulation of exactly the IP packet the input's headers describe.
#[test]
fn random_corruption_never_transmits_garbage() {
    let mut lb = lb();
    let mut rng = StdRng::seed_from_u64(0xbad);
    let frames = valid_frames();
    let mut transmitted = 0;
    for i in 0..6000 {
        let (_, base) = &frames[i % frames.len()];
        let mut f = base.clone();
        // Corrupt 1-3 bytes in the headers (the first 80 bytes), sometimes cut the tail.
        for _ in 0..rng.random_range(1..=3) {
            let at = rng.random_range(12..f.len().min(80));
            f[at] = rng.random();
        }
        if rng.random_bool(0.2) {
            f.truncate(rng.random_range(14..f.len()));
        }
        let (run, _) = run_counted(&mut lb, &f);
        match run.verdict {
            XDP_TX => {
                transmitted += 1;
                let e = decode(&run.out)
                    .unwrap_or_else(|e| panic!("case {i}: transmitted garbage: {e}"));
                assert_eq!(e.inner, ip_packet(&f), "case {i}: inner packet differs");
                let vip: IpAddr = if e.inner[0] >> 4 == 4 {
                    VIP4.parse().unwrap()
                } else {
                    VIP6.parse().unwrap()
                };
                let dst: IpAddr = if e.inner[0] >> 4 == 4 {
                    IpAddr::from(<[u8; 4]>::try_from(&e.inner[16..20]).unwrap())
                } else {
                    IpAddr::from(<[u8; 16]>::try_from(&e.inner[24..40]).unwrap())
                };
                assert_eq!(dst, vip, "case {i}: only VIP traffic is transmitted");
            }
            XDP_PASS => assert_eq!(run.out, f, "case {i}: passed frames stay untouched"),
            XDP_DROP => {}
            v => panic!("case {i}: unexpected verdict {v}"),
        }
    }
    println!("{transmitted} of 6000 corrupted frames were still valid VIP traffic and transmitted");
}
