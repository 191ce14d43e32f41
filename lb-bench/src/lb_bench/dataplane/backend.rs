//! The backend's program (`lb_decap`) in the same harness: a plain decapsulation, and the two
//! second-chance paths (docs/second-chance.md): handed on to the previous backend (the socket
//! lookup misses: this process's namespace has no such connection), and taken at the last
//! segment. Each is proven by its exact output frame. The program is loaded with the harness
//! (`harness::load_decap`).

use std::net::Ipv6Addr;

use lb_common::{PROTO_TCP, flow_hash};
use lb_testkit::*;

use super::harness::{PAYLOAD, Prog, Scenario};

/// `frame` (Ethernet + outer headers of `outer` bytes + an inner IPv4 packet) decapsulated as
/// `lb_decap` does it: the Ethernet header kept, the ethertype IPv4, then the inner packet.
fn decapsulated(frame: &[u8], outer: usize) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(&frame[14 + outer..]);
    v
}

/// The three backend scenarios: the load balancer's own output for an IPv4 flow, to backend
/// `current` (previous backend `prev`).
pub(crate) fn scenarios(current: Ipv6Addr, prev: Ipv6Addr) -> Vec<Scenario> {
    let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    let ack = flow.tcp(Tcp::Ack, PAYLOAD);
    let hash = flow_hash(&flow.key(PROTO_TCP), SEED);
    let plain = expected_encap(&ack, current, hash, false);
    let with_srh = expected_encap_srh(&ack, current, Some(prev), hash, false);
    // Handed on: MACs swapped, hop limit 63, destination the previous backend, segments left 0.
    let mut handed = with_srh.clone();
    handed[..6].copy_from_slice(&with_srh[6..12]);
    handed[6..12].copy_from_slice(&with_srh[..6]);
    handed[14 + 7] = 63;
    handed[14 + 24..14 + 40].copy_from_slice(&prev.octets());
    handed[14 + 40 + 3] = 0;
    let base = Scenario {
        name: "",
        prog: Prog::Decap,
        harness: true,
        frame: plain.clone(),
        flows: 0,
        verdict: XDP_PASS,
        counters: vec![],
        expected: decapsulated(&plain, 40),
        fresh_table: None,
    };
    vec![
        Scenario {
            name: "backend (lb decap): decapsulate, IPv4 in IPv6",
            ..base.clone()
        },
        Scenario {
            name: "backend (lb decap): second chance, handed on",
            frame: with_srh,
            verdict: XDP_TX,
            expected: handed.clone(),
            ..base.clone()
        },
        Scenario {
            name: "backend (lb decap): second chance, at the last segment",
            expected: decapsulated(&handed, 80),
            frame: handed,
            ..base
        },
    ]
}
