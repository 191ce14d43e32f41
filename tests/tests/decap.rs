//! The backend's decapsulation program (`lb_decap`, `lb decap`).
//!
//! Packet-exact tests through BPF_PROG_TEST_RUN: every tunnel format in, the client's packet out
//! behind the same Ethernet header; everything else passes untouched; malformed tunnel packets
//! for our address are dropped; each packet moves exactly one counter. Then the `lb decap` CLI
//! on a veth in a namespace, and a real SYN through a tunnel that gets its SYN-ACK straight back
//! from the VIP (direct server return). Needs root.

use std::net::{IpAddr, Ipv6Addr, TcpListener};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lb_common::{
    PROTO_TCP,
    decap::{DecapCounter, DecapCounter as C},
};
use lb_decap::Decap;
use serde_json::Value;
use tests::netns::*;
use tests::*;

const TUNNEL: &str = "2001:db8:be::1";
const OTHER: &str = "2001:db8:be::99";
const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:f00d::10";
/// The backend NIC's MAC (destination) and the router's (source) in the test frames.
const BE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x01];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0xfe];
const ETH_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_IPV6: [u8; 2] = [0x86, 0xdd];

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A decapsulation program for `TUNNEL` and the default GUE port (loaded, not attached).
fn decap() -> Decap {
    decap_with(&[TUNNEL], GUE_PORT)
}

fn decap_with(addresses: &[&str], gue_port: u16) -> Decap {
    require_root();
    let mut d = Decap::load().expect("loading lb-decap");
    let addrs: Vec<Ipv6Addr> = addresses.iter().map(|a| v6(a)).collect();
    d.configure(&addrs, gue_port).unwrap();
    d
}

fn run(d: &Decap, frame: &[u8]) -> (u32, Vec<u8>) {
    test_run_fd(d.program().fd().unwrap().as_fd(), frame).unwrap()
}

/// Asserts the counters are exactly `want` (packets), all others zero.
fn assert_counters(d: &mut Decap, want: &[(DecapCounter, u64)]) {
    for (c, v) in d.counters().unwrap() {
        let expect = want.iter().find(|(w, _)| *w == c).map_or(0, |&(_, n)| n);
        assert_eq!(v.packets, expect, "counter {}", c.name());
    }
}

/// The client packets the load balancer tunnels (IP packets, no link layer).
fn client_v4() -> Vec<u8> {
    let f = Flow::new("203.0.113.7", 40000, VIP4, 80).tcp(Tcp::Ack, b"GET / HTTP/1.1\r\n\r\n");
    ip_packet(&f).to_vec()
}

fn client_v6() -> Vec<u8> {
    let f = Flow::new("2001:db8:c11e::7", 40001, VIP6, 443).udp(b"quic-ish payload");
    ip_packet(&f).to_vec()
}

/// How the outer header announces what it carries.
#[derive(Clone, Copy)]
enum Outer {
    /// IPv6 with this next header.
    Ip6(u8),
    /// IPv6 + UDP to this port (GUE variant 1 when it is the GUE port).
    Udp(u16),
}

/// A tunnelled frame as the load balancer would send it: Ethernet (+ VLAN), IPv6 to `dst`,
/// optionally UDP, then `inner` as is.
fn tunnelled(inner: &[u8], dst: &str, outer: Outer, vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&BE_MAC);
    f.extend_from_slice(&ROUTER_MAC);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        // Priority 5 in the TCI as well: the whole tag must survive.
        f.extend_from_slice(&((5u16 << 13) | v).to_be_bytes());
    }
    f.extend_from_slice(&ETH_IPV6);
    let udp = matches!(outer, Outer::Udp(_));
    let payload_len = (inner.len() + if udp { 8 } else { 0 }) as u16;
    f.extend_from_slice(&((6u32 << 28) | 0x12345).to_be_bytes());
    f.extend_from_slice(&payload_len.to_be_bytes());
    f.push(match outer {
        Outer::Ip6(nh) => nh,
        Outer::Udp(_) => 17,
    });
    f.push(64);
    f.extend_from_slice(&lb_tunnel_addr().octets());
    f.extend_from_slice(&v6(dst).octets());
    if let Outer::Udp(port) = outer {
        f.extend_from_slice(&0xC123u16.to_be_bytes());
        f.extend_from_slice(&port.to_be_bytes());
        f.extend_from_slice(&payload_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]); // zero checksum, as the load balancer sends
    }
    f.extend_from_slice(inner);
    f
}

/// What the program must hand the kernel: the input's Ethernet header (and VLAN tag) with the
/// inner packet's ethertype, then the inner packet byte for byte.
fn decapsulated(input: &[u8], inner: &[u8]) -> Vec<u8> {
    let l2 = l3_offset(input);
    let mut want = input[..l2 - 2].to_vec();
    want.extend_from_slice(if inner[0] >> 4 == 4 {
        &ETH_IPV4
    } else {
        &ETH_IPV6
    });
    want.extend_from_slice(inner);
    want
}

#[test]
fn every_tunnel_format_is_decapsulated_exactly() {
    let cases = [
        ("IPv4 in IPv6", client_v4(), Outer::Ip6(4), C::DecapIpip),
        ("IPv6 in IPv6", client_v6(), Outer::Ip6(41), C::DecapIp6ip6),
        (
            "GUE, IPv4",
            client_v4(),
            Outer::Udp(GUE_PORT),
            C::DecapGueV4,
        ),
        (
            "GUE, IPv6",
            client_v6(),
            Outer::Udp(GUE_PORT),
            C::DecapGueV6,
        ),
    ];
    for vlan in [None, Some(100)] {
        for (what, inner, outer, counter) in &cases {
            let mut d = decap();
            let frame = tunnelled(inner, TUNNEL, *outer, vlan);
            let (verdict, out) = run(&d, &frame);
            assert_eq!(verdict, XDP_PASS, "{what}, VLAN {vlan:?}");
            assert_eq!(out, decapsulated(&frame, inner), "{what}, VLAN {vlan:?}");
            let l2 = if vlan.is_some() { 18 } else { 14 };
            let outer_len = if matches!(outer, Outer::Udp(_)) {
                48
            } else {
                40
            };
            assert_eq!(out.len(), frame.len() - outer_len);
            assert_eq!(out[..12], frame[..12], "MACs kept");
            if vlan.is_some() {
                assert_eq!(out[12..16], frame[12..16], "VLAN tag kept");
            }
            assert_eq!(out[l2..], inner[..], "{what}: inner packet untouched");
            check_inner_checksums(&out[l2..]).unwrap();
            assert_counters(&mut d, &[(*counter, 1)]);
            assert_eq!(
                d.counter(*counter).unwrap().bytes,
                frame.len() as u64,
                "bytes count the frame as received"
            );
        }
    }
}

#[test]
fn the_load_balancers_own_output_round_trips() {
    // Whatever lb_xdp sends, lb_decap turns back into exactly the client's packet.
    let mut lb = Lb::new(4099);
    let mut backends: Vec<String> = Vec::new();
    for (i, (vip, gue)) in [(VIP4, false), (VIP6, false)].into_iter().enumerate() {
        lb.add_vip(
            vip.parse().unwrap(),
            80,
            PROTO_TCP,
            i as u32,
            gue,
            &[(2 * i as u32 + 1, 1), (2 * i as u32 + 2, 1)],
        );
    }
    for (i, (vip, gue)) in [(VIP4, true), (VIP6, true)].into_iter().enumerate() {
        let id = i as u32 + 2;
        lb.add_vip(
            vip.parse().unwrap(),
            443,
            PROTO_TCP,
            id,
            gue,
            &[(id + 3, 1)],
        );
    }
    // Each VIP has its own backends, as the agent installs them: 1..=4 on port 80, 5 and 6
    // on 443.
    for id in 1..=6 {
        backends.push(backend_addr(id).to_string());
    }
    let refs: Vec<&str> = backends.iter().map(String::as_str).collect();
    let mut d = decap_with(&refs, GUE_PORT);
    let mut sent = 0;
    for port in [80, 443] {
        for vlan in [None, Some(7)] {
            for (src, dst) in [("198.51.100.7", VIP4), ("2001:db8:c11e::7", VIP6)] {
                let mut flow = Flow::new(src, 50000, dst, port);
                flow.vlan = vlan;
                flow.tclass = 0x28;
                let client = flow.tcp(Tcp::Syn, &[]);
                let lb_run = lb.run(&client);
                assert_eq!(lb_run.verdict, XDP_TX);
                let encapsulated = lb_run.out;
                let (verdict, out) = run(&d, &encapsulated);
                assert_eq!(verdict, XDP_PASS);
                let l2 = l3_offset(&client);
                assert_eq!(out[..12], encapsulated[..12]);
                assert_eq!(out[12..l2], client[12..l2], "VLAN tag and ethertype");
                assert_eq!(out[l2..], *ip_packet(&client), "{src} -> {dst}:{port}");
                sent += 1;
            }
        }
    }
    let decapsulated: u64 = d
        .counters()
        .unwrap()
        .iter()
        .filter(|(c, _)| c.name().starts_with("decap_"))
        .map(|(_, v)| v.packets)
        .sum();
    assert_eq!(decapsulated, sent);
    assert_eq!(d.counter(C::DecapGueV4).unwrap().packets, 2);
    assert_eq!(d.counter(C::DecapIp6ip6).unwrap().packets, 2);
}

#[test]
fn everything_else_passes_untouched() {
    let v4 = client_v4();
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&ROUTER_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&ROUTER_MAC);
    arp.extend_from_slice(&[198, 51, 100, 1, 0, 0, 0, 0, 0, 0, 198, 51, 100, 2]);
    let plain_v4 = Flow::new("203.0.113.7", 40000, VIP4, 80).tcp(Tcp::Syn, &[]);
    let plain_v6_to_us = Flow::new("2001:db8:c11e::7", 40000, TUNNEL, 22).tcp(Tcp::Syn, &[]);
    let full = tunnelled(&v4, TUNNEL, Outer::Ip6(4), None);
    let cases: Vec<(&str, Vec<u8>, DecapCounter)> = vec![
        (
            "IPv4 in IPv6 to another address",
            tunnelled(&v4, OTHER, Outer::Ip6(4), None),
            C::PassOtherAddress,
        ),
        (
            "GUE to another address",
            tunnelled(&v4, OTHER, Outer::Udp(GUE_PORT), Some(3)),
            C::PassOtherAddress,
        ),
        (
            "UDP to another port",
            tunnelled(&v4, TUNNEL, Outer::Udp(6081), None),
            C::PassNotTunnel,
        ),
        (
            "IPv6 with a destination options header",
            tunnelled(&v4, TUNNEL, Outer::Ip6(60), None),
            C::PassNotTunnel,
        ),
        ("plain IPv4", plain_v4.clone(), C::PassNotTunnel),
        (
            "plain IPv6 TCP to our address",
            plain_v6_to_us,
            C::PassNotTunnel,
        ),
        ("ARP", arp, C::PassNotTunnel),
        (
            "VLAN-tagged IPv4",
            {
                let mut f = Flow::new("203.0.113.7", 40000, VIP4, 80);
                f.vlan = Some(9);
                f.tcp(Tcp::Syn, &[])
            },
            C::PassNotTunnel,
        ),
        (
            "outer IPv6 header cut short",
            full[..14 + 30].to_vec(),
            C::PassNotTunnel,
        ),
        (
            "UDP header cut short",
            tunnelled(&v4, TUNNEL, Outer::Udp(GUE_PORT), None)[..14 + 40 + 4].to_vec(),
            C::PassNotTunnel,
        ),
        (
            "a bare Ethernet header",
            full[..14].to_vec(),
            C::PassNotTunnel,
        ),
    ];
    for (what, frame, counter) in cases {
        let mut d = decap();
        let (verdict, out) = run(&d, &frame);
        assert_eq!(verdict, XDP_PASS, "{what}");
        assert_eq!(out, frame, "{what}: must pass untouched");
        assert_counters(&mut d, &[(counter, 1)]);
    }
}

#[test]
fn malformed_tunnel_packets_for_us_are_dropped() {
    let v4 = client_v4();
    let v6 = client_v6();
    let mut ihl4 = v4.clone();
    ihl4[0] = 0x44;
    // GUE variant 0: a GUE header (first two bits 00) before the inner packet; not what the
    // load balancer sends.
    let mut gue0 = vec![0x00, 0x04, 0x00, 0x00];
    gue0.extend_from_slice(&v4);
    let mut long_payload = tunnelled(&v4, TUNNEL, Outer::Ip6(4), None);
    let claimed = (v4.len() as u16 + 10).to_be_bytes();
    long_payload[18..20].copy_from_slice(&claimed);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "next header 4, IPv6 inside",
            tunnelled(&v6, TUNNEL, Outer::Ip6(4), None),
        ),
        (
            "next header 41, IPv4 inside",
            tunnelled(&v4, TUNNEL, Outer::Ip6(41), None),
        ),
        (
            "inner IPv4 header cut short",
            tunnelled(&v4[..12], TUNNEL, Outer::Ip6(4), None),
        ),
        (
            "inner IPv6 header cut short",
            tunnelled(&v6[..30], TUNNEL, Outer::Ip6(41), Some(5)),
        ),
        (
            "GUE, inner IPv6 header cut short",
            tunnelled(&v6[..39], TUNNEL, Outer::Udp(GUE_PORT), None),
        ),
        (
            "nothing inside",
            tunnelled(&[], TUNNEL, Outer::Ip6(4), None),
        ),
        (
            "inner IPv4 with IHL 4",
            tunnelled(&ihl4, TUNNEL, Outer::Ip6(4), None),
        ),
        (
            "GUE variant 0 header",
            tunnelled(&gue0, TUNNEL, Outer::Udp(GUE_PORT), None),
        ),
        ("outer payload length past the frame", long_payload),
    ];
    for (what, frame) in cases {
        let mut d = decap();
        let (verdict, _) = run(&d, &frame);
        assert_eq!(verdict, XDP_DROP, "{what}");
        assert_counters(&mut d, &[(C::DropMalformed, 1)]);
    }
}

#[test]
fn link_padding_stays_behind_the_inner_packet() {
    // The kernel trims it by the inner header's own length, as for any received packet.
    let mut d = decap();
    let inner = client_v4();
    let mut frame = tunnelled(&inner, TUNNEL, Outer::Ip6(4), None);
    frame.extend_from_slice(&[0; 6]);
    let (verdict, out) = run(&d, &frame);
    assert_eq!(verdict, XDP_PASS);
    let mut want = decapsulated(&frame[..frame.len() - 6], &inner);
    want.extend_from_slice(&[0; 6]);
    assert_eq!(out, want);
    assert_counters(&mut d, &[(C::DecapIpip, 1)]);
}

#[test]
fn addresses_and_gue_port_follow_the_configuration() {
    let mut d = decap_with(&["2001:db8:be::1", "2001:db8:be::2"], 7000);
    let v4 = client_v4();
    for (dst, outer, verdict) in [
        ("2001:db8:be::2", Outer::Ip6(4), XDP_PASS),
        ("2001:db8:be::1", Outer::Udp(7000), XDP_PASS),
        ("2001:db8:be::2", Outer::Udp(GUE_PORT), XDP_PASS),
    ] {
        let frame = tunnelled(&v4, dst, outer, None);
        assert_eq!(run(&d, &frame).0, verdict);
    }
    assert_counters(
        &mut d,
        &[
            (C::DecapIpip, 1),
            (C::DecapGueV4, 1),
            (C::PassNotTunnel, 1), // 6080 is not the configured port
        ],
    );
}

// --- `lb decap` in a namespace -------------------------------------------------------------

/// Runs `lb ARGS...` with only its network namespace switched to `ns` (so pins stay visible).
fn lb_in(ns: &Netns, args: &[&str]) -> Output {
    lb_in_named(&ns.name, args).expect("running lb")
}

fn lb_in_named(ns: &str, args: &[&str]) -> std::io::Result<Output> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
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
    cmd.output()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(out: Output, what: &str) -> Value {
    serde_json::from_str(&ok(out, what)).expect("--json prints JSON")
}

/// A pin directory for this test; on drop, `lb decap --detach` and removal, whatever happened.
struct Pins {
    ns: String,
    iface: String,
    dir: PathBuf,
}

impl Pins {
    fn new(tag: &str, ns: &Netns, iface: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/lbt-decap-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            ns: ns.name.clone(),
            iface: iface.into(),
            dir,
        }
    }

    fn dir(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let dir = self.dir().to_string();
        let args = [
            "decap",
            "--detach",
            "--iface",
            &self.iface,
            "--pin-dir",
            &dir,
        ];
        let _ = lb_in_named(&self.ns, &args);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn xdp_prog_name(ns: &Netns, iface: &str) -> Option<String> {
    let out = ns.ip(&["-j", "link", "show", iface]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["xdp"]["prog"]["name"].as_str().map(String::from)
}

#[test]
fn lb_decap_attaches_replaces_reports_and_detaches() {
    require_root();
    let ns = Netns::new(&format!("lbt-decap-cli-{}", std::process::id())).unwrap();
    // The counters must stay at zero until the test sends something: no IPv6 on these links,
    // so the kernel sends no router solicitation or MLD report through them.
    ns.sysctl(&[("net.ipv6.conf.default.disable_ipv6", "1")])
        .unwrap();
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .unwrap();
    ns.ip(&["link", "set", "d0", "up"]).unwrap();
    ns.ip(&["link", "set", "d1", "up"]).unwrap();
    let pins = Pins::new("cli", &ns, "d0");
    let pin = pins.dir();
    let decap = |extra: &[&str]| {
        let mut a = vec!["decap", "--iface", "d0", "--pin-dir", pin];
        a.extend_from_slice(extra);
        lb_in(&ns, &a)
    };
    let nothing_attached = |why: &str| {
        assert_eq!(ns.xdp_prog_id("d0").unwrap(), None, "{why}: XDP attached");
        assert!(!pins.dir.exists(), "{why}: pins left at {pin}");
    };

    // Bad input: refused with the reason, nothing attached, nothing pinned.
    for (args, reason) in [
        (vec!["--address", "192.0.2.1"], "IPv4 address"),
        (vec!["--address", "backend-1"], "not an IPv6 address"),
        (
            vec!["--address", "2001:db8:be::1/64"],
            "without a prefix length",
        ),
        (vec!["--address", "::"], "cannot be a tunnel destination"),
        (vec![], "--address"),
        (vec!["--address", TUNNEL, "--gue-port", "0"], "--gue-port 0"),
        (vec!["--address", TUNNEL, "--gue-port", "70000"], "70000"),
    ] {
        let out = decap(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains(reason),
            "{args:?}: stderr lacks `{reason}`: {err}"
        );
        nothing_attached(&format!("{args:?}"));
    }
    let out = lb_in(
        &ns,
        &[
            "decap",
            "--iface",
            "nosuch0",
            "--address",
            TUNNEL,
            "--pin-dir",
            pin,
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no interface `nosuch0`"));
    nothing_attached("missing interface");
    let out = decap(&["--stats"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not attached"));

    // Attach: the program runs on d0 in driver mode, pinned.
    let a = json(
        lb_in(
            &ns,
            &[
                "--json",
                "decap",
                "--iface",
                "d0",
                "--address",
                TUNNEL,
                "--pin-dir",
                pin,
            ],
        ),
        "attach",
    );
    assert_eq!(a["action"], "attached");
    assert_eq!(a["mode"], "driver");
    assert_eq!(a["addresses"][0], TUNNEL);
    let first = ns.xdp_prog_id("d0").unwrap().expect("XDP attached to d0");
    assert_eq!(a["program_id"], first);
    assert_eq!(xdp_prog_name(&ns, "d0").as_deref(), Some("lb_decap"));
    for f in ["link", "DECAP_ADDRS", "DECAP_CONFIG", "DECAP_STATS"] {
        assert!(pins.dir.join(f).exists(), "{f} not pinned");
    }

    let stats = |ns: &Netns| {
        json(
            lb_in(
                ns,
                &[
                    "--json",
                    "decap",
                    "--iface",
                    "d0",
                    "--stats",
                    "--pin-dir",
                    pin,
                ],
            ),
            "stats",
        )
    };
    let s = stats(&ns);
    assert_eq!(s["attached"], true);
    assert_eq!(s["mode"], "driver");
    assert_eq!(s["program_id"], first);
    assert_eq!(s["addresses"], serde_json::json!([TUNNEL]));
    assert_eq!(s["gue_port"], GUE_PORT);
    for c in DecapCounter::ALL {
        assert_eq!(s["counters"][c.name()]["packets"], 0, "{}", c.name());
    }
    let table = ok(decap(&["--stats"]), "stats table");
    assert!(
        table.contains("decap_ipip") && table.contains("PACKETS"),
        "{table}"
    );

    // Re-run: the same link switches to a new program with the new settings.
    let r = json(
        lb_in(
            &ns,
            &[
                "--json",
                "decap",
                "--iface",
                "d0",
                "--address",
                "2001:db8:be::2",
                "--address",
                TUNNEL,
                "--gue-port",
                "7000",
                "--pin-dir",
                pin,
            ],
        ),
        "re-run",
    );
    assert_eq!(r["action"], "replaced");
    let second = ns.xdp_prog_id("d0").unwrap().expect("still attached");
    assert_ne!(second, first, "a new program");
    assert_eq!(r["program_id"], second);
    let s = stats(&ns);
    assert_eq!(
        s["addresses"],
        serde_json::json!(["2001:db8:be::2", TUNNEL])
    );
    assert_eq!(s["gue_port"], 7000);
    assert_eq!(s["program_id"], second);

    // Bad input while attached changes nothing.
    let out = decap(&["--address", "198.51.100.9"]);
    assert!(!out.status.success());
    assert_eq!(ns.xdp_prog_id("d0").unwrap(), Some(second));
    assert_eq!(stats(&ns)["gue_port"], 7000);

    // Another XDP program on an interface is not ours to replace.
    let pass = ns
        .run(|| lb_objects::testing::attach_pass("d1").map_err(|e| e.to_string()))
        .unwrap()
        .unwrap();
    let pins_d1 = Pins::new("cli1", &ns, "d1");
    let out = lb_in(
        &ns,
        &[
            "decap",
            "--iface",
            "d1",
            "--address",
            TUNNEL,
            "--pin-dir",
            pins_d1.dir(),
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already runs XDP program"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins_d1.dir.exists());
    drop(pass);

    // The same pin directory from another namespace's `d0`: not that interface's link.
    let other = Netns::new(&format!("lbt-decap-cli2-{}", std::process::id())).unwrap();
    other
        .ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .unwrap();
    other.ip(&["link", "set", "d0", "up"]).unwrap();
    for extra in [&["--address", TUNNEL][..], &["--detach"][..]] {
        let mut args = vec!["decap", "--iface", "d0", "--pin-dir", pin];
        args.extend_from_slice(extra);
        let out = lb_in(&other, &args);
        assert!(!out.status.success(), "{extra:?} from another namespace");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("another interface"), "{err}");
    }
    assert_eq!(other.xdp_prog_id("d0").unwrap(), None);
    assert_eq!(ns.xdp_prog_id("d0").unwrap(), Some(second));
    drop(other);

    // The interface disappears (the pins are left over), comes back, and gets a new attachment,
    // this time in generic mode.
    ns.ip(&["link", "del", "d0"]).unwrap();
    assert_eq!(stats(&ns)["attached"], false);
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])
        .unwrap();
    ns.ip(&["link", "set", "d0", "up"]).unwrap();
    let a = json(
        lb_in(
            &ns,
            &[
                "--json",
                "decap",
                "--iface",
                "d0",
                "--address",
                TUNNEL,
                "--mode",
                "generic",
                "--pin-dir",
                pin,
            ],
        ),
        "attach after the interface came back",
    );
    assert_eq!(a["action"], "attached");
    assert_eq!(a["mode"], "generic");
    let s = stats(&ns);
    assert_eq!(s["attached"], true);
    assert_eq!(s["mode"], "generic");
    assert_eq!(s["gue_port"], GUE_PORT);
    assert_eq!(ns.xdp_prog_id("d0").unwrap(), s["program_id"].as_u64());

    // Detach: off the NIC, pins gone; a second detach has nothing to do.
    let d = json(
        lb_in(
            &ns,
            &[
                "--json",
                "decap",
                "--iface",
                "d0",
                "--detach",
                "--pin-dir",
                pin,
            ],
        ),
        "detach",
    );
    assert_eq!(d["detached"], true);
    nothing_attached("after --detach");
    let d = json(
        lb_in(
            &ns,
            &[
                "--json",
                "decap",
                "--iface",
                "d0",
                "--detach",
                "--pin-dir",
                pin,
            ],
        ),
        "second detach",
    );
    assert_eq!(d["detached"], false);
}

/// The acknowledgment number of the first plain (not tunnelled) TCP SYN-ACK among `frames`
/// from `src`:`sport` to `dst`:`dport`.
fn syn_ack(frames: &[Vec<u8>], src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Option<u32> {
    use etherparse::{SlicedPacket, TransportSlice};
    frames.iter().find_map(|f| {
        let p = SlicedPacket::from_ethernet(f).ok()?;
        let (s, d) = tests::ip_endpoints(&p)?;
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            return None;
        };
        (s == src
            && d == dst
            && t.source_port() == sport
            && t.destination_port() == dport
            && t.syn()
            && t.ack())
        .then(|| t.acknowledgment_number())
    })
}

/// Sends `frame` and watches the wire (at most 3 s, 200 frames) for the SYN-ACK.
fn exchange(wire: &Wire, frame: &[u8], src: IpAddr, dst: IpAddr, sport: u16) -> Option<u32> {
    wire.send(frame).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while Instant::now() < deadline && seen.len() < 200 {
        let got = wire.recv_until_quiet(Duration::from_millis(300), 50);
        if got.is_empty() {
            continue;
        }
        seen.extend(got);
        if let Some(ack) = syn_ack(&seen, src, 80, dst, sport) {
            return Some(ack);
        }
    }
    None
}

#[test]
fn a_tunnelled_syn_is_answered_directly_from_the_vip() {
    require_root();
    let pid = std::process::id();
    // "wire": the router/load-balancer side, where the test injects and captures frames.
    let (wire_ns, be) = wire_and_backend(&format!("lbt-decap-{pid}"), VIP4, VIP6).unwrap();
    let listeners: Vec<TcpListener> = be
        .run(|| {
            [format!("{VIP4}:80"), format!("[{VIP6}]:80")]
                .iter()
                .map(|a| TcpListener::bind(a).map_err(|e| format!("{a}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .unwrap();
    let be_mac = be.mac("b0").unwrap();
    let w_mac = wire_ns.mac("w0").unwrap();
    let wire = wire_ns
        .run(|| Wire::open("w0").map_err(|e| e.to_string()))
        .unwrap()
        .unwrap();

    let frame = |src: &str, sport: u16, vip: &str, outer: Outer| {
        let client = Flow::new(src, sport, vip, 80)
            .macs(w_mac, be_mac)
            .tcp(Tcp::Syn, &[]);
        let mut f = tunnelled(ip_packet(&client), TUNNEL, outer, None);
        f[..6].copy_from_slice(&be_mac);
        f[6..12].copy_from_slice(&w_mac);
        f
    };
    let c4: IpAddr = "203.0.113.7".parse().unwrap();
    let c6: IpAddr = "2001:db8:c11e::7".parse().unwrap();
    let vip4: IpAddr = VIP4.parse().unwrap();
    let vip6: IpAddr = VIP6.parse().unwrap();

    // Control: without lb-decap this kernel (no ip6tnl, no fou) cannot use the packet.
    let f = frame("203.0.113.7", 40000, VIP4, Outer::Ip6(4));
    assert_eq!(exchange(&wire, &f, vip4, c4, 40000), None);

    let pins = Pins::new("e2e", &be, "b0");
    ok(
        lb_in(
            &be,
            &[
                "decap",
                "--iface",
                "b0",
                "--address",
                TUNNEL,
                "--pin-dir",
                pins.dir(),
            ],
        ),
        "lb decap",
    );
    // The client's SYN (seq 1000) in IPv4-in-IPv6, then IPv6 in GUE: the SYN-ACK comes from
    // the VIP, to the client, not tunnelled, acknowledging 1001.
    let f = frame("203.0.113.7", 40001, VIP4, Outer::Ip6(4));
    assert_eq!(exchange(&wire, &f, vip4, c4, 40001), Some(1001));
    let f = frame("2001:db8:c11e::7", 40002, VIP6, Outer::Udp(GUE_PORT));
    assert_eq!(exchange(&wire, &f, vip6, c6, 40002), Some(1001));

    let s = json(
        lb_in(
            &be,
            &[
                "--json",
                "decap",
                "--iface",
                "b0",
                "--stats",
                "--pin-dir",
                pins.dir(),
            ],
        ),
        "stats",
    );
    assert_eq!(s["counters"]["decap_ipip"]["packets"], 1);
    assert_eq!(s["counters"]["decap_gue_v6"]["packets"], 1);
    assert_eq!(s["counters"]["drop_malformed"]["packets"], 0);
    drop(listeners);
}
