//! Second chance on the backend: `lb_decap` and a tunnel packet with an IPv6 Segment Routing
//! Header (RFC 8754; list[0] the previous backend, list[1] this one, segments left 1).
//!
//! Packet-exact tests through BPF_PROG_TEST_RUN: taken packets come out decapsulated exactly as
//! without the header; the others come out as the same frame moved to the next segment (every
//! byte compared); malformed headers are dropped; each packet moves exactly one counter.
//!
//! Socket lookups (`bpf_skc_lookup_tcp`) in a test run search the network namespace of the
//! device the run is attributed to. A test run without a context uses the loopback device of
//! the calling thread's namespace, so each test runs its test runs on a thread inside a
//! namespace it creates (`Netns::run`), holding real sockets there: the host's own sockets
//! can never match, and the "no socket" cases are truly without one.
//!
//! Then the whole path in namespaces: a router between two backends running `lb decap`; a
//! packet for a connection backend A holds, sent to backend B, reaches A's application.
//! Needs root.

use std::io::Read;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use lb_common::decap::{DecapCounter, DecapCounter as C};
use lb_decap::Decap;
use serde_json::Value;
use tests::netns::*;
use tests::*;

/// This backend: the outer destination, segment list[1].
const TUNNEL: &str = "2001:db8:be::1";
/// The previous backend: segment list[0].
const PREVIOUS: &str = "2001:db8:be::2";
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";
const CLIENT4: &str = "203.0.113.7";
const CLIENT6: &str = "2001:db8:c11e::7";
const BE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x01];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0xfe];

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn decap() -> Decap {
    require_root();
    let mut d = Decap::load().expect("loading lb-decap");
    d.configure(&[v6(TUNNEL)], GUE_PORT).unwrap();
    d
}

/// A namespace with nothing in it but loopback, for the test runs (see the top of the file).
fn empty_ns(tag: &str) -> Netns {
    require_root();
    Netns::new(&format!("lbt-srh-{tag}-{}", std::process::id())).unwrap()
}

/// One test run of `d` from a thread inside `ns`.
fn run_in(ns: &Netns, d: &Decap, frame: &[u8]) -> (u32, Vec<u8>) {
    let fd: RawFd = d.program().fd().unwrap().as_fd().as_raw_fd();
    let frame = frame.to_vec();
    ns.run(move || {
        // SAFETY: `d` (the program's owner) outlives this call: `run` joins the thread.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        test_run_fd(fd, &frame).unwrap()
    })
    .unwrap()
}

/// Asserts the counters are exactly `want` (packets), all others zero.
fn assert_counters(d: &mut Decap, want: &[(DecapCounter, u64)], what: &str) {
    for (c, v) in d.counters().unwrap() {
        let expect = want.iter().find(|(w, _)| *w == c).map_or(0, |&(_, n)| n);
        assert_eq!(v.packets, expect, "{what}: counter {}", c.name());
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// IPv6 + SRH (next header 4 or 41) + the client's packet.
    Plain,
    /// IPv6 + SRH (next header 17) + UDP to the GUE port + the client's packet.
    Gue,
}

/// Every field of the outer headers that a test sets or the program may change.
#[derive(Clone, Debug)]
struct Outer {
    kind: Kind,
    vlan: Option<u16>,
    /// (destination, source)
    macs: ([u8; 6], [u8; 6]),
    dst: Ipv6Addr,
    hop_limit: u8,
    segments_left: u8,
    udp_checksum: u16,
}

impl Outer {
    /// What the load balancer sends: to this backend, segments left 1.
    fn new(kind: Kind, vlan: Option<u16>) -> Self {
        Self {
            kind,
            vlan,
            macs: (BE_MAC, ROUTER_MAC),
            dst: v6(TUNNEL),
            hop_limit: 64,
            segments_left: 1,
            udp_checksum: 0,
        }
    }

    /// The same packet moved to the next segment, as the program must send it back out.
    fn handed_on(&self) -> Self {
        Self {
            macs: (self.macs.1, self.macs.0),
            dst: v6(PREVIOUS),
            hop_limit: self.hop_limit - 1,
            segments_left: 0,
            ..self.clone()
        }
    }

    fn frame(&self, inner: &[u8]) -> Vec<u8> {
        let gue = self.kind == Kind::Gue;
        let mut f = Vec::new();
        f.extend_from_slice(&self.macs.0);
        f.extend_from_slice(&self.macs.1);
        if let Some(v) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&((5u16 << 13) | v).to_be_bytes());
        }
        f.extend_from_slice(&[0x86, 0xdd]);
        let udp_len = inner.len() + 8;
        let payload_len = 40 + inner.len() + if gue { 8 } else { 0 };
        f.extend_from_slice(&((6u32 << 28) | 0x12345).to_be_bytes());
        f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        f.push(43);
        f.push(self.hop_limit);
        f.extend_from_slice(&lb_tunnel_addr().octets());
        f.extend_from_slice(&self.dst.octets());
        let next_header = match (gue, inner.first().map(|b| b >> 4)) {
            (true, _) => 17,
            (false, Some(6)) => 41,
            _ => 4,
        };
        let mut srh = lb_common::srh::build(next_header, v6(PREVIOUS), v6(TUNNEL));
        srh[lb_common::srh::SRH_OFF_SEGMENTS_LEFT] = self.segments_left;
        f.extend_from_slice(&srh);
        if gue {
            f.extend_from_slice(&0xC123u16.to_be_bytes());
            f.extend_from_slice(&GUE_PORT.to_be_bytes());
            f.extend_from_slice(&(udp_len as u16).to_be_bytes());
            f.extend_from_slice(&self.udp_checksum.to_be_bytes());
        }
        f.extend_from_slice(inner);
        f
    }
}

/// Where the outer IPv6 header starts.
fn l2(o: &Outer) -> usize {
    if o.vlan.is_some() { 18 } else { 14 }
}

/// The input's Ethernet header (and VLAN tag) with the inner packet's ethertype, then the
/// inner packet byte for byte: what the kernel must receive.
fn decapsulated(o: &Outer, input: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut want = input[..l2(o) - 2].to_vec();
    want.extend_from_slice(if inner[0] >> 4 == 4 {
        &[0x08, 0x00]
    } else {
        &[0x86, 0xdd]
    });
    want.extend_from_slice(inner);
    want
}

/// A client's TCP packet to the VIP (an IP packet, no link layer).
fn tcp(client: &str, sport: u16, vip: &str, flags: Tcp) -> Vec<u8> {
    ip_packet(&Flow::new(client, sport, vip, 80).tcp(flags, b"more of the request")).to_vec()
}

/// A client's ACK with chosen sequence numbers.
fn ack(client: &str, sport: u16, vip: &str, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
    let b = match (
        client.parse::<IpAddr>().unwrap(),
        vip.parse::<IpAddr>().unwrap(),
    ) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 57),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 57),
        _ => panic!("mixed families"),
    };
    let mut v = Vec::new();
    b.tcp(sport, 80, seq, 64240)
        .ack(ack)
        .psh()
        .write(&mut v, payload)
        .unwrap();
    v
}

/// Every encapsulation: plain and GUE, with and without a VLAN tag.
fn outers() -> Vec<Outer> {
    let mut v = Vec::new();
    for kind in [Kind::Plain, Kind::Gue] {
        for vlan in [None, Some(100)] {
            v.push(Outer::new(kind, vlan));
        }
    }
    v
}

// --- Without sockets -------------------------------------------------------------------------

#[test]
fn without_a_socket_the_packet_moves_to_the_previous_backend() {
    let ns = empty_ns("fwd");
    for o in outers() {
        for (family, inner) in [
            ("IPv4 ACK", tcp(CLIENT4, 40000, VIP4, Tcp::Ack)),
            ("IPv6 ACK", tcp(CLIENT6, 40000, VIP6, Tcp::Ack)),
            ("IPv4 RST", tcp(CLIENT4, 40000, VIP4, Tcp::Rst)),
            ("IPv6 FIN", tcp(CLIENT6, 40000, VIP6, Tcp::Fin)),
        ] {
            let what = format!("{family}, {o:?}");
            let mut d = decap();
            let frame = o.frame(&inner);
            let (verdict, out) = run_in(&ns, &d, &frame);
            assert_eq!(verdict, XDP_TX, "{what}");
            // Every byte: only the MACs, the hop limit, the destination and segments left
            // differ from the input.
            assert_eq!(out, o.handed_on().frame(&inner), "{what}");
            let ip = l2(&o);
            assert_eq!(out[..6], ROUTER_MAC, "{what}: back to the router");
            assert_eq!(out[6..12], BE_MAC);
            assert_eq!(out[ip + 7], 63, "{what}: hop limit");
            assert_eq!(out[ip + 24..ip + 40], v6(PREVIOUS).octets(), "{what}");
            assert_eq!(out[ip + 40 + 3], 0, "{what}: segments left");
            let differ = frame.iter().zip(&out).filter(|(a, b)| a != b).count();
            assert!(differ <= 12 + 1 + 16 + 1, "{what}: {differ} bytes changed");
            assert_counters(&mut d, &[(C::SrhForwarded, 1)], &what);
            assert_eq!(
                d.counter(C::SrhForwarded).unwrap().bytes,
                frame.len() as u64
            );
        }
    }
}

#[test]
fn the_last_segment_a_syn_and_anything_but_tcp_are_decapsulated() {
    let ns = empty_ns("pass");
    let mut fragment = tcp(CLIENT4, 40000, VIP4, Tcp::Ack);
    fragment[6] = 0x20; // more fragments
    fix_ipv4_checksum(&mut fragment);
    let udp4 = ip_packet(&Flow::new(CLIENT4, 40000, VIP4, 443).udp(b"quic-ish")).to_vec();
    let udp6 = ip_packet(&Flow::new(CLIENT6, 40000, VIP6, 443).udp(b"quic-ish")).to_vec();
    for o in outers() {
        let last = Outer {
            segments_left: 0,
            ..o.clone()
        };
        let cases: Vec<(&str, &Outer, Vec<u8>, DecapCounter)> = vec![
            (
                "segments left 0, IPv4",
                &last,
                tcp(CLIENT4, 40000, VIP4, Tcp::Ack),
                C::SrhPassLast,
            ),
            (
                "segments left 0, IPv6",
                &last,
                tcp(CLIENT6, 40000, VIP6, Tcp::Ack),
                C::SrhPassLast,
            ),
            (
                "IPv4 SYN",
                &o,
                tcp(CLIENT4, 40000, VIP4, Tcp::Syn),
                C::SrhPassSyn,
            ),
            (
                "IPv6 SYN",
                &o,
                tcp(CLIENT6, 40000, VIP6, Tcp::Syn),
                C::SrhPassSyn,
            ),
            ("IPv4 UDP", &o, udp4.clone(), C::SrhPassNotTcp),
            ("IPv6 UDP", &o, udp6.clone(), C::SrhPassNotTcp),
            ("IPv4 fragment", &o, fragment.clone(), C::SrhPassNotTcp),
        ];
        for (what, o, inner, counter) in cases {
            let what = format!("{what}, {o:?}");
            let mut d = decap();
            let frame = o.frame(&inner);
            let (verdict, out) = run_in(&ns, &d, &frame);
            assert_eq!(verdict, XDP_PASS, "{what}");
            assert_eq!(out, decapsulated(o, &frame, &inner), "{what}");
            assert_counters(&mut d, &[(counter, 1)], &what);
        }
    }
}

#[test]
fn a_hop_limit_that_would_reach_0_is_dropped() {
    let ns = empty_ns("hop");
    let inner = tcp(CLIENT4, 40000, VIP4, Tcp::Ack);
    for hop_limit in [0, 1] {
        let mut d = decap();
        let o = Outer {
            hop_limit,
            ..Outer::new(Kind::Plain, None)
        };
        assert_eq!(run_in(&ns, &d, &o.frame(&inner)).0, XDP_DROP);
        assert_counters(&mut d, &[(C::DropSrhHopLimit, 1)], "hop limit");
    }
    let mut d = decap();
    let o = Outer {
        hop_limit: 2,
        ..Outer::new(Kind::Gue, Some(7))
    };
    let (verdict, out) = run_in(&ns, &d, &o.frame(&inner));
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, o.handed_on().frame(&inner));
    assert_counters(&mut d, &[(C::SrhForwarded, 1)], "hop limit 2");
}

#[test]
fn a_udp_checksum_stays_valid_when_handed_on() {
    // With a routing header the UDP pseudo-header holds the final destination, list[0]
    // (RFC 8200, 8.1), which moving to the next segment does not change: the checksum is
    // forwarded as it came, and is right for the packet that leaves.
    let ns = empty_ns("csum");
    let inner = tcp(CLIENT6, 40000, VIP6, Tcp::Ack);
    let udp_sum = |frame: &[u8], ip: usize| {
        let udp = &frame[ip + 80..];
        let mut p = ones_sum(0, &frame[ip + 8..ip + 24]);
        p = ones_sum(p, &v6(PREVIOUS).octets());
        p = ones_sum(p, &(udp.len() as u32).to_be_bytes());
        p = ones_sum(p, &[0, 0, 0, 17]);
        ones_sum(p, udp)
    };
    let mut o = Outer::new(Kind::Gue, None);
    let unsummed = o.frame(&inner);
    o.udp_checksum = !(udp_sum(&unsummed, 14) as u16);
    let frame = o.frame(&inner);
    assert_eq!(udp_sum(&frame, 14), 0xFFFF, "the test's own checksum");
    let mut d = decap();
    let (verdict, out) = run_in(&ns, &d, &frame);
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out, o.handed_on().frame(&inner));
    assert_eq!(udp_sum(&out, 14), 0xFFFF, "valid on the way out");
    assert_counters(&mut d, &[(C::SrhForwarded, 1)], "checksum");
}

#[test]
fn malformed_routing_headers_are_dropped_and_never_sent() {
    let ns = empty_ns("bad");
    let inner = tcp(CLIENT4, 40000, VIP4, Tcp::Ack);
    let inner6 = tcp(CLIENT6, 40000, VIP6, Tcp::Ack);
    let base = Outer::new(Kind::Plain, None);
    let good = base.frame(&inner);
    let srh = 14 + 40;
    let patched = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = good.clone();
        f(&mut frame);
        frame
    };
    let payload_len =
        |n: usize| move |f: &mut Vec<u8>| f[18..20].copy_from_slice(&(n as u16).to_be_bytes());
    let bad_srh: Vec<(&str, Vec<u8>)> = vec![
        ("routing type 0", patched(&|f| f[srh + 2] = 0)),
        ("routing type 3", patched(&|f| f[srh + 2] = 3)),
        ("hdr ext len 2 (one segment)", patched(&|f| f[srh + 1] = 2)),
        (
            "hdr ext len 6 (three segments)",
            patched(&|f| f[srh + 1] = 6),
        ),
        ("last entry 0", patched(&|f| f[srh + 4] = 0)),
        ("last entry 2", patched(&|f| f[srh + 4] = 2)),
        ("segments left 2", patched(&|f| f[srh + 3] = 2)),
        ("segments left 255", patched(&|f| f[srh + 3] = 255)),
        ("frame ends inside the header", good[..srh + 30].to_vec()),
        (
            "frame ends right after the fixed part",
            good[..srh + 8].to_vec(),
        ),
        (
            "payload length shorter than the header",
            patched(&payload_len(39)),
        ),
        ("payload length 0", patched(&payload_len(0))),
        (
            "payload length past the frame",
            patched(&payload_len(40 + inner.len() + 1)),
        ),
        (
            "next segment multicast",
            patched(&|f| f[srh + 8..srh + 24].copy_from_slice(&v6("ff02::1").octets())),
        ),
        (
            "next segment unspecified",
            patched(&|f| f[srh + 8..srh + 24].fill(0)),
        ),
    ];
    for (what, frame) in bad_srh {
        let mut d = decap();
        let (verdict, _) = run_in(&ns, &d, &frame);
        assert_eq!(verdict, XDP_DROP, "{what}");
        assert_counters(&mut d, &[(C::DropBadSrh, 1)], what);
    }
    // A well-formed header in front of a broken tunnel payload: the tunnel's own verdicts.
    let mut gue_other_port = Outer::new(Kind::Gue, None).frame(&inner);
    gue_other_port[srh + 40 + 2..srh + 40 + 4].copy_from_slice(&6081u16.to_be_bytes());
    let mut tcp_after_srh = good.clone();
    tcp_after_srh[srh] = 6;
    let mut to_other = good.clone();
    to_other[14 + 24..14 + 40].copy_from_slice(&v6("2001:db8:be::99").octets());
    let others: Vec<(&str, Vec<u8>, u32, DecapCounter)> = vec![
        (
            "inner TCP header cut short",
            {
                let cut = &inner[..30];
                let o = Outer::new(Kind::Plain, None);
                o.frame(cut)
            },
            XDP_DROP,
            C::DropMalformed,
        ),
        (
            "IPv6 inside next header 4",
            {
                let mut f = base.frame(&inner6);
                f[srh] = 4;
                f
            },
            XDP_DROP,
            C::DropMalformed,
        ),
        (
            "nothing after the header",
            base.frame(&[])[..srh + 40].to_vec(),
            XDP_DROP,
            C::DropMalformed,
        ),
        (
            "GUE to another port",
            gue_other_port,
            XDP_PASS,
            C::PassNotTunnel,
        ),
        (
            "TCP right after the header",
            tcp_after_srh,
            XDP_PASS,
            C::PassNotTunnel,
        ),
        (
            "to another address",
            to_other,
            XDP_PASS,
            C::PassOtherAddress,
        ),
    ];
    for (what, frame, want, counter) in others {
        let mut d = decap();
        let (verdict, out) = run_in(&ns, &d, &frame);
        assert_eq!(verdict, want, "{what}");
        if want == XDP_PASS {
            assert_eq!(out, frame, "{what}: untouched");
        }
        assert_counters(&mut d, &[(counter, 1)], what);
    }
}

// --- With real sockets -----------------------------------------------------------------------

/// A TCP connection from `local` to `remote`, made in the calling thread's namespace.
fn connect_from(local: SocketAddr, remote: SocketAddr) -> std::io::Result<TcpStream> {
    fn raw(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: an all-zero sockaddr_storage is valid; the family's struct is written into it.
        let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { std::ptr::write(&mut s as *mut _ as *mut libc::sockaddr_in, sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { std::ptr::write(&mut s as *mut _ as *mut libc::sockaddr_in6, sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (s, len as libc::socklen_t)
    }
    let family = if local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the fd is owned by the TcpStream right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let (l, llen) = raw(&local);
    let (r, rlen) = raw(&remote);
    // SAFETY: valid sockaddrs of the stated lengths on an open socket.
    if unsafe { libc::bind(fd, &l as *const _ as *const libc::sockaddr, llen) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::connect(fd, &r as *const _ as *const libc::sockaddr, rlen) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Polls `/proc/net/tcp{,6}` in `ns` (at most 3 s) until a socket with local port 80 and
/// remote port `rport` is in TCP state `state` (hex, as the file writes it) in both files.
fn wait_for_state(ns: &Netns, rport: u16, state: &str) {
    let want = format!(":{rport:04X}");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let st = state.to_string();
        let want = want.clone();
        let found = ns
            .run(move || {
                // thread-self: /proc/net is the main thread's namespace.
                ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                    .iter()
                    .all(|f| {
                        std::fs::read_to_string(f).unwrap().lines().any(|l| {
                            let c: Vec<&str> = l.split_whitespace().collect();
                            c.len() > 3
                                && c[1].ends_with(":0050")
                                && c[2].ends_with(&want)
                                && c[3] == st
                        })
                    })
            })
            .unwrap();
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no socket in state {state} for port {rport}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn established_and_time_wait_sockets_keep_the_packet_a_listener_alone_does_not() {
    let ns = empty_ns("sock");
    for a in [format!("{VIP4}/32"), format!("{CLIENT4}/32")] {
        ns.ip(&["addr", "add", &a, "dev", "lo"]).unwrap();
    }
    for a in [format!("{VIP6}/128"), format!("{CLIENT6}/128")] {
        ns.ip(&["-6", "addr", "add", &a, "dev", "lo"]).unwrap();
    }
    // Listeners on the VIPs and one established connection each, client port 40100; a second
    // connection each, client port 40101, closed server side first: TIME_WAIT on the VIP side.
    let held = ns
        .run(|| -> std::io::Result<(Vec<TcpListener>, Vec<TcpStream>)> {
            let mut held = Vec::new();
            let l4 = TcpListener::bind(format!("{VIP4}:80"))?;
            let l6 = TcpListener::bind(format!("[{VIP6}]:80"))?;
            for (l, client, vip) in [(&l4, CLIENT4, VIP4), (&l6, CLIENT6, VIP6)] {
                for port in [40100, 40101] {
                    let c = connect_from(
                        SocketAddr::new(client.parse().unwrap(), port),
                        SocketAddr::new(vip.parse().unwrap(), 80),
                    )?;
                    let (s, _) = l.accept()?;
                    if port == 40101 {
                        drop(s);
                        drop(c);
                    } else {
                        held.extend([c, s]);
                    }
                }
            }
            Ok((vec![l4, l6], held))
        })
        .unwrap()
        .unwrap();
    // 06: TIME_WAIT.
    wait_for_state(&ns, 40101, "06");
    for o in outers() {
        for (client, vip) in [(CLIENT4, VIP4), (CLIENT6, VIP6)] {
            for (what, port, want) in [
                ("established", 40100, Some(C::SrhPassSocket)),
                ("TIME_WAIT", 40101, Some(C::SrhPassSocket)),
                // Only the listener matches: not this backend's connection.
                ("listener only", 40102, None),
            ] {
                let what = format!("{what}, {client}, {o:?}");
                let inner = tcp(client, port, vip, Tcp::Ack);
                let frame = o.frame(&inner);
                let mut d = decap();
                let (verdict, out) = run_in(&ns, &d, &frame);
                match want {
                    Some(counter) => {
                        assert_eq!(verdict, XDP_PASS, "{what}");
                        assert_eq!(out, decapsulated(&o, &frame, &inner), "{what}");
                        assert_counters(&mut d, &[(counter, 1)], &what);
                    }
                    None => {
                        assert_eq!(verdict, XDP_TX, "{what}");
                        assert_eq!(out, o.handed_on().frame(&inner), "{what}");
                        assert_counters(&mut d, &[(C::SrhForwarded, 1)], &what);
                    }
                }
            }
        }
    }
    drop(held);
}

/// The first SYN-ACK among `frames` from the VIP to `client`:`sport`: (seq, ack).
fn syn_ack(frames: &[Vec<u8>], client: IpAddr, sport: u16) -> Option<(u32, u32)> {
    use etherparse::{SlicedPacket, TransportSlice};
    frames.iter().find_map(|f| {
        let p = SlicedPacket::from_ethernet(f).ok()?;
        let (_, d) = ip_endpoints(&p)?;
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            return None;
        };
        (d == client && t.destination_port() == sport && t.syn() && t.ack())
            .then(|| (t.sequence_number(), t.acknowledgment_number()))
    })
}

/// A backend namespace `be` reached over a veth from a "wire" namespace, where the test sends
/// and captures frames; the VIPs on the backend's lo with listeners on port 80.
struct WireBackend {
    _wire_ns: Netns,
    be: Netns,
    wire: Wire,
    w_mac: [u8; 6],
    be_mac: [u8; 6],
    _listeners: Vec<TcpListener>,
}

impl WireBackend {
    fn new(tag: &str) -> Self {
        require_root();
        let pid = std::process::id();
        let (wire_ns, be) = wire_and_backend(&format!("lbt-srh-{tag}-{pid}"), VIP4, VIP6).unwrap();
        be.sysctl(&[("net.ipv4.tcp_timestamps", "0")]).unwrap();
        let listeners = be
            .run(|| {
                [format!("{VIP4}:80"), format!("[{VIP6}]:80")]
                    .iter()
                    .map(TcpListener::bind)
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .unwrap()
            .unwrap();
        let be_mac = be.mac("b0").unwrap();
        let w_mac = wire_ns.mac("w0").unwrap();
        let wire = wire_ns
            .run(|| Wire::open("w0").map_err(|e| e.to_string()))
            .unwrap()
            .unwrap();
        Self {
            _wire_ns: wire_ns,
            be,
            wire,
            w_mac,
            be_mac,
            _listeners: listeners,
        }
    }

    /// Sends the client's plain SYN (sequence 1000) to the VIP and returns the SYN-ACK's
    /// sequence number (at most 3 s, 200 frames).
    fn handshake_start(&self, client: &str, sport: u16, vip: &str) -> u32 {
        let syn = Flow::new(client, sport, vip, 80)
            .macs(self.w_mac, self.be_mac)
            .tcp(Tcp::Syn, &[]);
        self.wire.send(&syn).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = Vec::new();
        while Instant::now() < deadline && seen.len() < 200 {
            seen.extend(self.wire.recv_until_quiet(Duration::from_millis(200), 50));
            if let Some((seq, _)) = syn_ack(&seen, client.parse().unwrap(), sport) {
                return seq;
            }
        }
        panic!("no SYN-ACK for {client}:{sport}");
    }
}

#[test]
fn a_request_socket_and_a_valid_syn_cookie_keep_the_packet() {
    let t = WireBackend::new("cookie");
    let mut cases = Vec::new();
    for (client, vip) in [(CLIENT4, VIP4), (CLIENT6, VIP6)] {
        // Default syncookies (1), no SYN flood: the SYN makes a request socket.
        t.be.sysctl(&[("net.ipv4.tcp_syncookies", "1")]).unwrap();
        let isn = t.handshake_start(client, 40200, vip);
        // Any ACK of that flow finds the request socket.
        cases.push((
            format!("request socket, {client}"),
            ack(client, 40200, vip, 1001, isn.wrapping_add(1), b""),
            Some(C::SrhPassSocket),
        ));
        // Cookies always (2): no request socket; the SYN-ACK's sequence number is the cookie.
        t.be.sysctl(&[("net.ipv4.tcp_syncookies", "2")]).unwrap();
        let cookie = t.handshake_start(client, 40201, vip);
        cases.push((
            format!("valid SYN cookie, {client}"),
            ack(client, 40201, vip, 1001, cookie.wrapping_add(1), b""),
            Some(C::SrhPassSyncookie),
        ));
        cases.push((
            format!("wrong SYN cookie, {client}"),
            // Off by one is not enough: the low bits carry the MSS index, and a neighbouring
            // index is as valid. The top bits carry the time.
            ack(
                client,
                40201,
                vip,
                1001,
                cookie.wrapping_add(1) ^ 0x8000_0000,
                b"",
            ),
            None,
        ));
    }
    for o in outers() {
        for (what, inner, want) in &cases {
            let what = format!("{what}, {o:?}");
            let frame = o.frame(inner);
            let mut d = decap();
            let (verdict, out) = run_in(&t.be, &d, &frame);
            match want {
                Some(counter) => {
                    assert_eq!(verdict, XDP_PASS, "{what}");
                    assert_eq!(out, decapsulated(&o, &frame, inner), "{what}");
                    assert_counters(&mut d, &[(*counter, 1)], &what);
                }
                None => {
                    assert_eq!(verdict, XDP_TX, "{what}");
                    assert_eq!(out, o.handed_on().frame(inner), "{what}");
                    assert_counters(&mut d, &[(C::SrhForwarded, 1)], &what);
                }
            }
        }
    }
}

// --- The whole path: router, two backends, `lb decap` ------------------------------------------

/// Runs `lb ARGS...` with only its network namespace switched to `ns` (so pins stay visible).
fn lb_in(ns: &Netns, args: &[&str]) -> Output {
    let file = ns.file().unwrap();
    let raw = file.as_raw_fd();
    let mut cmd = Command::new(lb_bin());
    cmd.args(args).env("NO_COLOR", "1").env("RUST_LOG", "warn");
    // SAFETY: setns is async-signal-safe; only the child's network namespace changes.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("running lb");
    drop(file);
    out
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `lb decap` on `iface` in `ns`, pinned in its own directory; detached and removed on drop.
struct Attached<'a> {
    ns: &'a Netns,
    iface: &'static str,
    dir: PathBuf,
}

impl<'a> Attached<'a> {
    fn new(ns: &'a Netns, iface: &'static str, address: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/lbt-srh-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Self { ns, iface, dir };
        ok(
            lb_in(
                ns,
                &[
                    "decap",
                    "--iface",
                    iface,
                    "--address",
                    address,
                    "--pin-dir",
                    a.dir(),
                ],
            ),
            "lb decap",
        );
        a
    }

    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    fn stats(&self) -> Value {
        let out = lb_in(
            self.ns,
            &[
                "--json",
                "decap",
                "--iface",
                self.iface,
                "--stats",
                "--pin-dir",
                self.dir(),
            ],
        );
        serde_json::from_str(&ok(out, "stats")).unwrap()
    }

    fn table(&self) -> String {
        let out = lb_in(
            self.ns,
            &[
                "decap",
                "--iface",
                self.iface,
                "--stats",
                "--pin-dir",
                self.dir(),
            ],
        );
        ok(out, "stats table")
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let dir = self.dir().to_string();
        let _ = lb_in(
            self.ns,
            &[
                "decap",
                "--detach",
                "--iface",
                self.iface,
                "--pin-dir",
                &dir,
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_packet_sent_to_the_wrong_backend_reaches_the_one_with_the_connection() {
    require_root();
    let pid = std::process::id();
    // r: a router (and the client: 203.0.113.7 on its lo); a and b: backends, each with the
    // VIP on lo, a listener, `lb decap` on its NIC and a default route back through r.
    let r = Netns::new(&format!("lbt-srh-e2e-{pid}-r")).unwrap();
    let a = Netns::new(&format!("lbt-srh-e2e-{pid}-a")).unwrap();
    let b = Netns::new(&format!("lbt-srh-e2e-{pid}-b")).unwrap();
    let mut pass = Vec::new();
    let a_tunnel = "2001:db8:a::1";
    let b_tunnel = "2001:db8:b::1";
    for (ns, r_if, be_if, v4, v6net) in [
        (&a, "ra", "a0", "198.51.100", "2001:db8:a::"),
        (&b, "rb", "b0", "198.51.101", "2001:db8:b::"),
    ] {
        sh(
            "ip",
            &[
                "link", "add", r_if, "netns", &r.name, "type", "veth", "peer", "name", be_if,
                "netns", &ns.name,
            ],
        )
        .unwrap();
        r.ip(&["addr", "add", &format!("{v4}.1/24"), "dev", r_if])
            .unwrap();
        r.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6net}fe/64"),
            "dev",
            r_if,
            "nodad",
        ])
        .unwrap();
        r.ip(&["link", "set", r_if, "up"]).unwrap();
        ns.ip(&["addr", "add", &format!("{v4}.2/24"), "dev", be_if])
            .unwrap();
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{v6net}1/64"),
            "dev",
            be_if,
            "nodad",
        ])
        .unwrap();
        ns.ip(&["link", "set", be_if, "up"]).unwrap();
        ns.ip(&["addr", "add", &format!("{VIP4}/32"), "dev", "lo"])
            .unwrap();
        ns.ip(&["route", "add", "default", "via", &format!("{v4}.1")])
            .unwrap();
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &format!("{v6net}fe"),
        ])
        .unwrap();
        ns.sysctl(&[
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.tcp_timestamps", "0"),
        ])
        .unwrap();
        // veth hands XDP_TX frames only to a peer running XDP (`ethtool -K gro on` does not
        // enable its NAPI here: GRO is already on): xdp_pass on the router's end.
        let iface = r_if.to_string();
        pass.push(
            r.run(move || lb_objects::testing::attach_pass(&iface).map_err(|e| e.to_string()))
                .unwrap()
                .unwrap(),
        );
    }
    r.ip(&["addr", "add", &format!("{CLIENT4}/32"), "dev", "lo"])
        .unwrap();
    // The client reaches the VIP on a directly (plain, not tunnelled: lb decap passes it).
    r.ip(&["route", "add", &format!("{VIP4}/32"), "via", "198.51.100.2"])
        .unwrap();
    r.sysctl(&[
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv4.tcp_timestamps", "0"),
    ])
    .unwrap();
    let listener_a = a
        .run(|| TcpListener::bind(format!("{VIP4}:80")))
        .unwrap()
        .unwrap();
    let listener_b = b
        .run(|| TcpListener::bind(format!("{VIP4}:80")))
        .unwrap()
        .unwrap();
    let dec_a = Attached::new(&a, "a0", a_tunnel);
    let dec_b = Attached::new(&b, "b0", b_tunnel);
    let capture_a = r
        .run(|| Wire::open("ra").map_err(|e| e.to_string()))
        .unwrap()
        .unwrap();
    let wire_b = r
        .run(|| Wire::open("rb").map_err(|e| e.to_string()))
        .unwrap()
        .unwrap();

    // The connection: client in r, server socket in a.
    let client = r
        .run(|| {
            connect_from(
                SocketAddr::new(CLIENT4.parse().unwrap(), 40300),
                SocketAddr::new(VIP4.parse().unwrap(), 80),
            )
        })
        .unwrap()
        .unwrap();
    let (mut server, _) = listener_a.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    // a's SYN-ACK gives the sequence numbers of the client's next segment.
    let seen = capture_a.recv_until_quiet(Duration::from_millis(300), 100);
    let (server_isn, client_next) =
        syn_ack(&seen, CLIENT4.parse().unwrap(), 40300).expect("a's SYN-ACK");
    let data = b"second chance";
    let inner = ack(
        CLIENT4,
        40300,
        VIP4,
        client_next,
        server_isn.wrapping_add(1),
        data,
    );

    // The load balancer's packet, sent to b (the slot's current backend), naming a as the
    // previous one.
    let b_mac = b.mac("b0").unwrap();
    let rb_mac = r.mac("rb").unwrap();
    let mut f = Vec::new();
    f.extend_from_slice(&b_mac);
    f.extend_from_slice(&rb_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&(6u32 << 28).to_be_bytes());
    f.extend_from_slice(&((40 + inner.len()) as u16).to_be_bytes());
    f.push(43);
    f.push(64);
    f.extend_from_slice(&lb_tunnel_addr().octets());
    f.extend_from_slice(&v6(b_tunnel).octets());
    f.extend_from_slice(&lb_common::srh::build(4, v6(a_tunnel), v6(b_tunnel)));
    f.extend_from_slice(&inner);
    wire_b.send(&f).unwrap();

    // b hands it back to the router, moved to the next segment.
    let back = wire_b.recv_until_quiet(Duration::from_millis(500), 200);
    let mut want = f.clone();
    want[..6].copy_from_slice(&rb_mac);
    want[6..12].copy_from_slice(&b_mac);
    want[14 + 7] = 63;
    want[14 + 24..14 + 40].copy_from_slice(&v6(a_tunnel).octets());
    want[14 + 40 + 3] = 0;
    assert!(
        back.contains(&want),
        "b did not hand the packet on: {}; seen: {back:?}",
        dec_b.stats()
    );

    // a's application receives the bytes.
    let mut buf = [0u8; 64];
    let n = server.read(&mut buf).expect("the data reached a's socket");
    assert_eq!(&buf[..n], data);

    let sa = dec_a.stats();
    let sb = dec_b.stats();
    assert_eq!(sb["counters"]["srh_forwarded"]["packets"], 1, "{sb}");
    assert_eq!(sa["counters"]["srh_pass_last"]["packets"], 1, "{sa}");
    for s in [&sa, &sb] {
        assert_eq!(s["counters"]["drop_bad_srh"]["packets"], 0);
        assert_eq!(s["counters"]["drop_srh_hop_limit"]["packets"], 0);
    }
    let table = dec_b.table();
    for c in DecapCounter::ALL {
        assert!(
            table.contains(c.name()),
            "{} missing from the table: {table}",
            c.name()
        );
    }
    drop((client, server, listener_a, listener_b, capture_a, wire_b));
    drop((dec_a, dec_b, pass));
}
