//! `lb_health_encap`, the TC egress program that tunnels health checks, through BPF_PROG_TEST_RUN
//! with the socket mark set in the `__sk_buff` context: exact output frames and verdicts.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use aya::maps::{HashMap, PerCpuArray};
use aya::programs::SchedClassifier;
use etherparse::PacketBuilder;
use lb_common::health::{HEALTH_F_GUE, HEALTH_MARK_BASE, HealthCounter, HealthTarget, names};
use lb_common::v6_words;
use tests::test_run_ctx;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0x1b, 1];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0x1b, 0xfe];
const LB4: [u8; 4] = [203, 0, 113, 6];
const VIP4: [u8; 4] = [192, 0, 2, 10];

fn tunnel_src() -> Ipv6Addr {
    "2001:db8:f:1::2".parse().unwrap()
}
fn backend(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xb, i, 0, 0, 0, 2)
}
fn vip6() -> Ipv6Addr {
    "2001:db8:100::10".parse().unwrap()
}

struct Hc {
    ebpf: aya::Ebpf,
}

impl Hc {
    fn load() -> Hc {
        tests::require_root();
        let mut ebpf = aya::Ebpf::load(lb_objects::HEALTH_ENCAP_OBJECT).unwrap();
        let prog: &mut SchedClassifier = ebpf
            .program_mut("lb_health_encap")
            .unwrap()
            .try_into()
            .unwrap();
        prog.load().unwrap();
        Hc { ebpf }
    }

    fn target(&mut self, index: u32, backend: Ipv6Addr, gue: bool) {
        let mut m: HashMap<_, u32, HealthTarget> =
            HashMap::try_from(self.ebpf.map_mut(names::HEALTH_TARGETS).unwrap()).unwrap();
        let t = HealthTarget {
            src_ip6: v6_words(tunnel_src()),
            dst_ip6: v6_words(backend),
            gue_port: 6080u16.to_be(),
            flags: if gue { HEALTH_F_GUE } else { 0 },
            egress_ifindex: 0,
        };
        m.insert(HEALTH_MARK_BASE | index, t, 0).unwrap();
    }

    fn vip(&mut self, words: [u32; 4]) {
        let mut m: HashMap<_, [u32; 4], u8> =
            HashMap::try_from(self.ebpf.map_mut(names::HEALTH_VIPS).unwrap()).unwrap();
        m.insert(words, 1, 0).unwrap();
    }

    /// Runs one frame with `mark`; returns (verdict, output).
    fn run(&self, frame: &[u8], mark: u32) -> (u32, Vec<u8>) {
        let prog: &SchedClassifier = self
            .ebpf
            .program("lb_health_encap")
            .unwrap()
            .try_into()
            .unwrap();
        // struct __sk_buff up to `cb`: only `mark` (offset 8) is set.
        let mut ctx = [0u8; 48];
        ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
        test_run_ctx(prog.fd().unwrap().as_fd(), frame, &ctx).unwrap()
    }

    fn counter(&self, c: HealthCounter) -> u64 {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::HEALTH_STATS).unwrap()).unwrap();
        m.get(&(c as u32), 0).unwrap().iter().sum()
    }
}

fn syn4(flags_rst: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(LB4, VIP4, 64)
        .tcp(40000, 80, 1000, 64240);
    let b = if flags_rst { b.rst() } else { b.syn() };
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn get6() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(tunnel_src().octets(), vip6().octets(), 64)
        .tcp(40001, 80, 1000, 64240)
        .ack(1)
        .write(&mut out, b"GET / HTTP/1.0\r\n\r\n")
        .unwrap();
    out
}

/// The frame `lb_xdp` would send for `inner` (an Ethernet frame): same MACs, outer IPv6 from
/// the tunnel source to `backend`, next header 4/41 or UDP 6080 for GUE, inner packet as is.
fn expected(inner: &[u8], backend: Ipv6Addr, gue: bool) -> Vec<u8> {
    let ip = &inner[14..];
    let mut out = inner[..12].to_vec();
    out.extend_from_slice(&0x86DDu16.to_be_bytes());
    let v4 = ip[0] >> 4 == 4;
    let payload = ip.len() + if gue { 8 } else { 0 };
    out.extend_from_slice(&(6u32 << 28).to_be_bytes());
    out.extend_from_slice(&(payload as u16).to_be_bytes());
    out.push(if gue {
        17
    } else if v4 {
        4
    } else {
        41
    });
    out.push(64);
    out.extend_from_slice(&tunnel_src().octets());
    out.extend_from_slice(&backend.octets());
    if gue {
        let sport = 0xC000u16 | 7;
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&6080u16.to_be_bytes());
        out.extend_from_slice(&(payload as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(ip);
    out
}

#[test]
fn marked_check_packets_are_tunnelled_to_their_backend() {
    let mut hc = Hc::load();
    hc.target(3, backend(1), false);
    hc.target(7, backend(2), true);
    let syn = syn4(false);
    assert_eq!(
        hc.run(&syn, HEALTH_MARK_BASE | 3),
        (TC_ACT_OK, expected(&syn, backend(1), false))
    );
    let get = get6();
    assert_eq!(
        hc.run(&get, HEALTH_MARK_BASE | 7),
        (TC_ACT_OK, expected(&get, backend(2), true))
    );
    // IPv4 inside GUE and IPv6 inside plain IPv6 too.
    hc.target(7, backend(2), true);
    assert_eq!(
        hc.run(&syn, HEALTH_MARK_BASE | 7),
        (TC_ACT_OK, expected(&syn, backend(2), true))
    );
    hc.target(3, backend(1), false);
    assert_eq!(
        hc.run(&get, HEALTH_MARK_BASE | 3),
        (TC_ACT_OK, expected(&get, backend(1), false))
    );
    assert_eq!(hc.counter(HealthCounter::Encapsulated), 4);
}

#[test]
fn a_check_packet_without_target_never_leaves() {
    let hc = Hc::load();
    let syn = syn4(false);
    assert_eq!(hc.run(&syn, HEALTH_MARK_BASE | 9).0, TC_ACT_SHOT);
    assert_eq!(hc.counter(HealthCounter::DropNoTarget), 1);
    assert_eq!(hc.counter(HealthCounter::Encapsulated), 0);
}

#[test]
fn other_traffic_passes_untouched_but_stray_resets_to_checked_vips_are_dropped() {
    let mut hc = Hc::load();
    let syn = syn4(false);
    let rst = syn4(true);
    // Other marks, and unmarked packets, pass as they are.
    for (frame, mark) in [(&syn, 0), (&syn, 0x1234_0001), (&rst, 0)] {
        assert_eq!(
            hc.run(frame, mark),
            (TC_ACT_OK, frame.clone()),
            "mark {mark:#x}"
        );
    }
    // Once 192.0.2.10 is a checked VIP, an unmarked reset to it is dropped; a SYN is not.
    hc.vip([u32::from_ne_bytes(VIP4), 0, 0, 0]);
    assert_eq!(hc.run(&rst, 0).0, TC_ACT_SHOT);
    assert_eq!(hc.run(&syn, 0), (TC_ACT_OK, syn.clone()));
    assert_eq!(hc.counter(HealthCounter::DropStrayReset), 1);
    let other = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .ipv4(LB4, Ipv4Addr::new(192, 0, 2, 11).octets(), 64)
            .tcp(40000, 80, 1000, 0)
            .rst()
            .write(&mut out, &[])
            .unwrap();
        out
    };
    assert_eq!(
        hc.run(&other, 0),
        (TC_ACT_OK, other.clone()),
        "reset to another address"
    );
}
