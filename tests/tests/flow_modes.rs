//! `[sync] flows = "changes"` and `"off"` end to end (issue 14, flow sync), in the lab with two
//! peered load balancers and real client connections spread over both by the router's ECMP.
//!
//! - changes: while the tables do not change, new flows cross no link (no flow event, nothing
//!   exported, sent or imported, no peer's copy in either table). After b1 is drained (on lb1,
//!   replicated to lb2), each load balancer's peer copies are exactly the other's live local
//!   entries in the slots the drain changed, with the same backends. The changed slots are
//!   computed here from Maglev itself (lb_common), not from the agent.
//! - off: the same drain, and no flow crosses a link.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

use lb_common::maglev::{MaglevMember, MaglevTable};
use lb_common::{CONN_F_PEER, DEFAULT_RING_SIZE, FlowKey, PROTO_TCP, ring_slot};
use lb_userspace::dataplane::{FlowTable, is_live, monotonic_ns};
use serde_json::Value;
use tests::e2e::*;
use tests::lab::{self, ECHO_PORT, Lab, SEED, VIP4, VIP6, backend_link6};

fn echo_vips() -> [String; 2] {
    [
        format!("{VIP4}:{ECHO_PORT}/tcp"),
        format!("[{VIP6}]:{ECHO_PORT}/tcp"),
    ]
}

fn peers(lab: &Lab, i: usize) -> Value {
    lab.lb_json(i, &["peer", "list"]).unwrap()
}

fn agree(lab: &Lab) -> bool {
    let (a, b) = (peers(lab, 1), peers(lab, 2));
    a["state_digest"] == b["state_digest"]
        && a["table_digest"] == b["table_digest"]
        && [&a, &b].iter().all(|p| {
            p["peers"][0]["outbound"] == true
                && p["peers"][0]["inbound"] == true
                && p["peers"][0]["table_match"] == true
        })
}

/// Flows exported, imported, and sent to the peer, of load balancer `i`.
fn moved_counters(lab: &Lab, i: usize) -> [u64; 4] {
    let p = peers(lab, i);
    [
        p["flows_exported"].as_u64().unwrap(),
        p["flows_imported"].as_u64().unwrap(),
        p["peers"][0]["flows_sent"].as_u64().unwrap(),
        p["peers"][0]["flows_received"].as_u64().unwrap(),
    ]
}

fn flow_events(lab: &Lab, i: usize) -> u64 {
    let v = lab.lb_json(i, &["stats", "--interval", "0.1"]).unwrap();
    v["now"]["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "flow_events")
        .and_then(|c| c["packets"].as_u64())
        .unwrap()
}

/// A VIP's backends on load balancer `i`: id -> (address, weight, active).
fn backends(lab: &Lab, i: usize, vip: &str) -> BTreeMap<u32, (Ipv6Addr, u32, bool)> {
    let list = lab.lb_json(i, &["backend", "list", vip]).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_u64().unwrap() as u32,
                (
                    b["backend"].as_str().unwrap().parse().unwrap(),
                    b["weight"].as_u64().unwrap() as u32,
                    b["state"] == "active",
                ),
            )
        })
        .collect()
}

/// The Maglev table the agents build for these backends (the fleet's seed, default ring).
fn table(b: &BTreeMap<u32, (Ipv6Addr, u32, bool)>) -> MaglevTable {
    let members: Vec<MaglevMember> = b
        .values()
        .filter(|(_, _, active)| *active)
        .map(|(addr, weight, _)| MaglevMember {
            addr: *addr,
            weight: *weight,
        })
        .collect();
    MaglevTable::build(DEFAULT_RING_SIZE, SEED, &members).unwrap()
}

/// Entries of load balancer `i`'s table for the echo VIPs: (key, backend address), either its
/// own live ones or its peer copies.
fn entries(lab: &Lab, i: usize, peer_copies: bool) -> Vec<(FlowKey, Ipv6Addr, u32)> {
    let pins = lab.opts.pin_root.join(lab::lb_name(i));
    let t = FlowTable::open_pinned(&pins).unwrap();
    let cfg = t.config().unwrap();
    let ids: BTreeMap<u32, Ipv6Addr> = echo_vips()
        .iter()
        .flat_map(|v| backends(lab, i, v))
        .map(|(id, (a, _, _))| (id, a))
        .collect();
    let now = monotonic_ns();
    let mut out = Vec::new();
    t.walk(|k, e| {
        if k.proto != PROTO_TCP
            || u16::from_be(k.dst_port) != ECHO_PORT
            || (e.flags & CONN_F_PEER != 0) != peer_copies
            || !is_live(&cfg, k, e, now)
        {
            return;
        }
        out.push((*k, ids[&e.backend], e.hash));
    })
    .unwrap();
    out
}

fn lab_in(tag: &str, mode: &str) -> Lab {
    let lab = lab_with(tag, |o| {
        o.flow_mode = Some(mode.to_string());
    });
    wait_until("the peers to agree", Duration::from_secs(20), || {
        agree(&lab)
    });
    lab
}

/// Opens 80 long-lived connections through the router (ECMP over both load balancers) and
/// checks that no flow crossed a link. Returns the sessions.
fn new_flows_cross_nothing(lab: &Lab) -> Sessions {
    let sessions = Sessions::open(lab, echo_targets(), 80, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(2));
    let own = [entries(lab, 1, false).len(), entries(lab, 2, false).len()];
    eprintln!(
        "own entries after 80 new connections: lb1 {}, lb2 {}",
        own[0], own[1]
    );
    assert!(
        own.iter().all(|&n| n > 0),
        "ECMP spreads the flows: {own:?}"
    );
    for i in 1..=2 {
        assert_eq!(
            moved_counters(lab, i),
            [0; 4],
            "lb{i}: no flow crosses a link"
        );
        assert_eq!(
            flow_events(lab, i),
            0,
            "lb{i}: the XDP program exports nothing"
        );
        assert!(entries(lab, i, true).is_empty(), "lb{i}: no peer copy");
    }
    sessions
}

/// Drains b1 for the echo VIPs on lb1 and waits for lb2 to apply it. Returns, per VIP, the
/// slots the drain changed (from Maglev, before and after).
fn drain_b1(lab: &Lab) -> BTreeSet<(u16, u32)> {
    let mut changed = BTreeSet::new();
    let befores: Vec<MaglevTable> = echo_vips()
        .iter()
        .map(|v| table(&backends(lab, 1, v)))
        .collect();
    let b1 = backend_link6(1).1.to_string();
    for vip in echo_vips() {
        lb_succeeds(lab, 1, &["backend", "drain", &vip, &b1]);
    }
    wait_until("the peers to agree", Duration::from_secs(10), || agree(lab));
    for (k, (vip, before)) in echo_vips().iter().zip(befores).enumerate() {
        let after = table(&backends(lab, 1, vip));
        for s in 0..DEFAULT_RING_SIZE {
            if before.member_at(s).map(|m| m.addr) != after.member_at(s).map(|m| m.addr) {
                changed.insert((k as u16, s));
            }
        }
    }
    changed
}

/// A flow key as an ordered tuple: (src, dst, source port, destination port, family).
type Key = ([u32; 4], [u32; 4], u16, u16, u8);

fn key(k: &FlowKey) -> Key {
    (k.src, k.dst, k.src_port, k.dst_port, k.family)
}

fn family_index(k: &FlowKey) -> u16 {
    if k.family == lb_common::FAMILY_V4 {
        0
    } else {
        1
    }
}

#[test]
fn changes_mode_sends_only_the_flows_a_drain_moves() {
    let lab = lab_in("fmc", "changes");
    let sessions = new_flows_cross_nothing(&lab);
    let changed = drain_b1(&lab);
    eprintln!(
        "the drain changed {} slots over both echo VIPs",
        changed.len()
    );
    // What each side must have sent: its live own entries in changed slots.
    let moved = |i: usize| -> BTreeSet<(Key, Ipv6Addr)> {
        entries(&lab, i, false)
            .into_iter()
            .filter(|(k, _, h)| {
                changed.contains(&(family_index(k), ring_slot(*h, DEFAULT_RING_SIZE)))
            })
            .map(|(k, b, _)| (key(&k), b))
            .collect()
    };
    let copies = |i: usize| -> BTreeSet<(Key, Ipv6Addr)> {
        entries(&lab, i, true)
            .into_iter()
            .map(|(k, b, _)| (key(&k), b))
            .collect()
    };
    let b1: Ipv6Addr = backend_link6(1).1;
    let (want2, want1) = (moved(1), moved(2));
    assert!(
        want2.iter().chain(&want1).any(|(_, b)| *b == b1),
        "some connections were on the drained b1"
    );
    wait_until(
        "each peer to hold the other's moved flows",
        Duration::from_secs(10),
        || copies(2) == want2 && copies(1) == want1,
    );
    let (got2, got1) = (copies(2), copies(1));
    eprintln!(
        "moved flows: lb1 -> lb2 {} (peer copies at lb2 {}), lb2 -> lb1 {} (at lb1 {}); {} of them on b1",
        want2.len(),
        got2.len(),
        want1.len(),
        got1.len(),
        want2.iter().chain(&want1).filter(|(_, b)| *b == b1).count()
    );
    assert_eq!(
        got2, want2,
        "lb2 holds exactly lb1's moved flows, with their backends"
    );
    assert_eq!(
        got1, want1,
        "lb1 holds exactly lb2's moved flows, with their backends"
    );
    let (c1, c2) = (moved_counters(&lab, 1), moved_counters(&lab, 2));
    assert_eq!((c1[0], c2[0]), (0, 0), "nothing exported per SYN");
    assert_eq!(
        c1[2] as usize,
        want2.len(),
        "lb1 sent exactly its moved flows"
    );
    assert_eq!(
        c2[2] as usize,
        want1.len(),
        "lb2 sent exactly its moved flows"
    );
    assert_eq!(
        peers(&lab, 1)["flows_moved"].as_u64().unwrap() as usize,
        want2.len()
    );
    let results = sessions.finish();
    assert!(
        results.iter().all(|s| s.error.is_none()),
        "no connection broke"
    );
    finish(lab);
}

#[test]
fn off_mode_sends_no_flow_even_after_a_drain() {
    let lab = lab_in("fmo", "off");
    let sessions = new_flows_cross_nothing(&lab);
    let changed = drain_b1(&lab);
    assert!(!changed.is_empty());
    std::thread::sleep(Duration::from_secs(3));
    for i in 1..=2 {
        assert_eq!(
            moved_counters(&lab, i),
            [0; 4],
            "lb{i}: no flow crosses a link"
        );
        assert!(entries(&lab, i, true).is_empty(), "lb{i}: no peer copy");
        assert_eq!(peers(&lab, i)["flow_mode"], "off");
    }
    let results = sessions.finish();
    assert!(
        results.iter().all(|s| s.error.is_none()),
        "no connection broke"
    );
    finish(lab);
}
