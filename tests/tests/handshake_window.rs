//! The window SYNs without state leave open (issue 18): a table change between a connection's
//! SYN and its first ACK, in the anycast lab. The client side is a hand-driven TCP endpoint on
//! an AF_PACKET socket in the client namespace, so the test decides when each ACK leaves: all
//! SYNs first (the load balancers write no entry for them), then a backend joins the VIP
//! through lb1's CLI (both load balancers rewrite their tables), then the ACKs. The backends
//! are real: `lb-echo` behind `lb decap`, whose kernel holds each half-open connection as a
//! request socket. A handshake in a slot that moved reaches the new backend with the SYN's
//! backend as its second chance and is handed on to it; every handshake must complete there,
//! greet, and echo. Needs root.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use tests::af_packet::Wire;
use tests::e2e::*;
use tests::lab;

/// Handshakes held open across the change: about a quarter of the slots move to the new
/// backend, so some 16 of them land in a moved slot (none: (3/4)^64, about 1e-8).
const HANDSHAKES: u16 = 64;
/// The client endpoint's address: routed to the client namespace but not assigned there, so
/// that namespace's kernel neither answers nor resets what arrives for it.
const RAW_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const FIRST_PORT: u16 = 30_000;
const ISN: u32 = 0x1000_0000;
/// The echo service's 32-byte message, as `Sessions` sends it.
const PING: &[u8; 32] = b"0000000000000000000000000000042\n";

fn vip() -> String {
    format!("{}:{}/tcp", lab::VIP4, lab::ECHO_PORT)
}

fn decap_counter(lab: &lab::Lab, j: usize, name: &str) -> u64 {
    let s = lab.decap_stats(j).unwrap();
    s["counters"][name]["packets"].as_u64().unwrap_or(0)
}

/// One TCP segment from the raw client to the echo VIP.
struct Segment {
    macs: ([u8; 6], [u8; 6]),
}

impl Segment {
    fn frame(&self, port: u16, seq: u32, ack: Option<u32>, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(self.macs.0, self.macs.1)
            .ipv4(RAW_CLIENT.octets(), lab::VIP4.octets(), 64)
            .tcp(port, lab::ECHO_PORT, seq, 64240);
        let b = match ack {
            None => b.syn(),
            Some(a) => b.ack(a).psh(),
        };
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }
}

/// A segment from the VIP's echo port to the raw client: (client port, SYN, seq, payload).
fn reply(frame: &[u8]) -> Option<(u16, bool, u32, Vec<u8>)> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        return None;
    };
    if ip.header().source_addr() != lab::VIP4 || ip.header().destination_addr() != RAW_CLIENT {
        return None;
    }
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        return None;
    };
    if tcp.source_port() != lab::ECHO_PORT || tcp.rst() {
        return None;
    }
    Some((
        tcp.destination_port(),
        tcp.syn(),
        tcp.sequence_number(),
        tcp.payload().to_vec(),
    ))
}

/// What the client saw of one handshake.
#[derive(Debug, Default, Clone)]
struct Handshake {
    /// The server's initial sequence number, from its SYN-ACK.
    server_isn: Option<u32>,
    /// The backend named in the echo server's greeting.
    backend: Option<String>,
    echoed: bool,
}

/// Receives for up to `wait` (bounded), feeding each reply to `f`, until `done` holds.
fn receive(
    wire: &Wire,
    wait: Duration,
    mut f: impl FnMut((u16, bool, u32, Vec<u8>)),
    done: impl Fn() -> bool,
) {
    let until = Instant::now() + wait;
    while Instant::now() < until && !done() {
        for frame in wire.recv_until_quiet(Duration::from_millis(200), 4096) {
            if let Some(r) = reply(&frame) {
                f(r);
            }
        }
    }
}

#[test]
fn handshakes_survive_a_table_change_between_syn_and_ack() {
    let lab = lab_with("hsw", |o| {
        o.backends = 4;
        o.configured_backends = 3;
    });
    // The router reaches the raw client on the client link, at the client's MAC.
    let client_mac = lab::netns::mac(&lab.ns("client"), "eth0").unwrap();
    let router_mac = lab::netns::mac(&lab.ns("router"), "c0").unwrap();
    let raw = RAW_CLIENT.to_string();
    let mac = client_mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    for args in [
        vec![
            "neigh",
            "replace",
            &raw,
            "lladdr",
            &mac,
            "dev",
            "c0",
            "nud",
            "permanent",
        ],
        vec!["route", "replace", &raw, "dev", "c0"],
    ] {
        tests::netns::sh("ip", &[&["-n", &lab.ns("router")][..], &args[..]].concat()).unwrap();
    }

    let (to_client, client_rx) = mpsc::channel::<()>();
    let (to_test, test_rx) = mpsc::channel::<Vec<Handshake>>();
    let client = {
        let ns = lab.ns("client");
        std::thread::spawn(move || {
            lab::in_ns(&ns, move || {
                let wire = Wire::open("eth0").unwrap();
                let seg = Segment {
                    macs: (client_mac, router_mac),
                };
                let mut hs = vec![Handshake::default(); HANDSHAKES as usize];
                let index = |port: u16| (port.wrapping_sub(FIRST_PORT)) as usize;
                // Phase 1: every SYN, then every SYN-ACK (no ACK yet).
                for i in 0..HANDSHAKES {
                    wire.send(&seg.frame(FIRST_PORT + i, ISN, None, b""))
                        .unwrap();
                }
                let got = std::cell::RefCell::new(hs);
                receive(
                    &wire,
                    Duration::from_secs(10),
                    |(port, syn, seq, _)| {
                        if let Some(h) = got.borrow_mut().get_mut(index(port))
                            && syn
                        {
                            h.server_isn.get_or_insert(seq);
                        }
                    },
                    || got.borrow().iter().all(|h| h.server_isn.is_some()),
                );
                hs = got.into_inner();
                to_test.send(hs.clone()).unwrap();
                // Phase 2, once the tables changed: the ACK with the request, then the greeting
                // and the echo.
                client_rx.recv_timeout(Duration::from_secs(120)).unwrap();
                for (i, h) in hs.iter().enumerate() {
                    let Some(isn) = h.server_isn else { continue };
                    let port = FIRST_PORT + i as u16;
                    wire.send(&seg.frame(port, ISN + 1, Some(isn.wrapping_add(1)), b""))
                        .unwrap();
                }
                let got = std::cell::RefCell::new(hs);
                receive(
                    &wire,
                    Duration::from_secs(20),
                    |(port, syn, seq, payload)| {
                        let mut all = got.borrow_mut();
                        let Some(h) = all.get_mut(index(port)) else {
                            return;
                        };
                        let (Some(isn), false) = (h.server_isn, syn) else {
                            return;
                        };
                        let text = String::from_utf8_lossy(&payload).to_string();
                        if seq == isn.wrapping_add(1) && text.starts_with("hello from ") {
                            if h.backend.is_none() {
                                h.backend =
                                    Some(text.trim().trim_start_matches("hello from ").to_string());
                                // Acknowledge the greeting, and send the echo request with it.
                                let ack = isn.wrapping_add(1 + payload.len() as u32);
                                wire.send(&seg.frame(port, ISN + 1, Some(ack), PING))
                                    .unwrap();
                            }
                        } else if payload == PING {
                            h.echoed = true;
                        }
                    },
                    || got.borrow().iter().all(|h| h.echoed),
                );
                got.into_inner()
            })
            .unwrap()
        })
    };

    let half_open = test_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let answered = half_open.iter().filter(|h| h.server_isn.is_some()).count();
    assert_eq!(answered, HANDSHAKES as usize, "SYN-ACKs: {half_open:?}");
    // With second chance on, the SYNs wrote no entries.
    let pinned = lb_counter(&lab, 1, "syn_pinned") + lb_counter(&lab, 2, "syn_pinned");
    assert_eq!(pinned, 0, "SYNs pinned their flows");

    // The change: b4 joins; both load balancers rewrite their tables.
    lb_succeeds(
        &lab,
        1,
        &[
            "backend",
            "add",
            &vip(),
            &lab::backend_link6(4).1.to_string(),
        ],
    );
    wait_until("both tables give b4 slots", Duration::from_secs(30), || {
        (1..=2).all(|i| backend_slots(&lab, i, &vip(), 4) > Some(0))
    });
    to_client.send(()).unwrap();
    let done = client.join().unwrap();

    let paired =
        lb_counter(&lab, 1, "second_chance_paired") + lb_counter(&lab, 2, "second_chance_paired");
    // The same count in /metrics.
    let exported: u64 = (1..=2)
        .map(|i| {
            let m = tests::netns::metrics_in(&lab.ns(&lab::lb_name(i))).unwrap();
            m.lines()
                .find_map(|l| l.strip_prefix("lb_second_chance_total{event=\"paired\"} "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    let handed_on = decap_counter(&lab, 4, "srh_forwarded");
    let greeted: Vec<_> = done.iter().filter_map(|h| h.backend.clone()).collect();
    let echoed = done.iter().filter(|h| h.echoed).count();
    eprintln!(
        "[hsw] {HANDSHAKES} handshakes across the change: {} greeted, {echoed} echoed; \
         {paired} first ACKs landed in a moved slot and went with a second chance; \
         b4 handed on {handed_on} packets",
        greeted.len()
    );
    finish(lab);
    assert_eq!(echoed, HANDSHAKES as usize, "handshakes: {done:?}");
    // Every connection lives on the backend its SYN reached: one of b1..b3, never b4.
    assert!(greeted.iter().all(|b| b != "b4"), "{greeted:?}");
    // Some handshakes were in moved slots, and they completed through the hand-on.
    assert!(paired > 0, "no first ACK landed in a moved slot");
    assert_eq!(
        exported, paired,
        "lb_second_chance_total{{event=\"paired\"}}"
    );
    assert!(handed_on >= paired, "b4 handed on {handed_on} of {paired}");
}
