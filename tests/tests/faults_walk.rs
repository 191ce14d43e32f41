//! Fault model, work that grows with the table (issue 15 §7): a million live flows in one load
//! balancer's connection table, refreshed to its peer every few seconds, and the peer link
//! never flaps: heartbeats keep coming while the table is walked (in batches, on the walker's
//! own thread, once for every peer) and its million flows are sent.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use lb_common::{Backend, ConnEntry, FlowKey, PROTO_TCP, names};
use lb_userspace::dataplane::{FlowTable, monotonic_ns};
use serde_json::Value;
use tests::e2e::*;
use tests::lab::{self, HTTP_PORT, Lab, VIP4, backend_link6};

const FLOWS: u32 = 1_000_000;
const REFRESH_SECS: u64 = 5;

fn metric_text(lab: &Lab, i: usize) -> String {
    tests::netns::metrics_in(&lab.ns(&lab::lb_name(i))).unwrap()
}

fn metric(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn peer(lab: &Lab, i: usize) -> Value {
    lab.lb_json(i, &["peer", "list"]).unwrap()["peers"][0].clone()
}

/// lb1's pins, and the id and generation of its backend 1 for VIP4:80.
fn backend_1(lab: &Lab) -> (PathBuf, u32, u32) {
    let pins = lab.opts.pin_root.join(lab::lb_name(1));
    let vip = format!("{VIP4}:{HTTP_PORT}/tcp");
    let list = lab.lb_json(1, &["backend", "list", &vip]).unwrap();
    let want = backend_link6(1).1.to_string();
    let id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == want.as_str())
        .and_then(|b| b["id"].as_u64())
        .expect("backend 1's id") as u32;
    let backends = MapData::from_pin(pins.join(names::BACKENDS)).unwrap();
    let backends: Array<MapData, Backend> = Array::try_from(Map::Array(backends)).unwrap();
    let generation = backends.get(&id, 0).unwrap().generation;
    (pins, id, generation)
}

/// `n` flows to VIP4:80 from distinct clients, all on backend `id`, active now: written (or
/// refreshed, as traffic would) through the pinned table in batches.
fn fill(pins: &Path, id: u32, generation: u32, n: u32) -> Duration {
    let mut table = FlowTable::open_pinned(pins).unwrap();
    let started = Instant::now();
    let mut batch = Vec::with_capacity(65536);
    for i in 0..n {
        // 10.0.0.0/8 clients, 16 ports each.
        let src = Ipv4Addr::from(0x0a00_0000 | (i >> 4));
        let key = FlowKey::new(
            IpAddr::V4(src),
            40_000 + (i & 15) as u16,
            IpAddr::V4(VIP4),
            HTTP_PORT,
            PROTO_TCP,
        );
        let entry = ConnEntry {
            backend: id,
            hash: i.wrapping_mul(2_654_435_761),
            atime_ns: monotonic_ns(),
            generation,
            flags: 0,
            prev: 0,
        };
        batch.push((key, entry));
        if batch.len() == batch.capacity() || i + 1 == n {
            assert_eq!(table.insert_batch(&batch).unwrap(), batch.len());
            batch.clear();
        }
    }
    started.elapsed()
}

#[test]
fn a_million_flows_refreshed_to_a_peer_never_flap_its_link() {
    let lab = lab_with("fw", |o| {
        o.flow_sync = true;
        o.sync_refresh_secs = Some(REFRESH_SECS);
        o.max_flows = 1_200_000;
    });
    wait_until("both links up", Duration::from_secs(20), || {
        (1..=2).all(|i| {
            let p = peer(&lab, i);
            p["outbound"] == true && p["inbound"] == true
        })
    });
    let (pins, id, generation) = backend_1(&lab);
    let took = fill(&pins, id, generation, FLOWS);
    eprintln!(
        "filled lb1's table with {FLOWS} flows in {:.2} s (batched updates through the pins)",
        took.as_secs_f64()
    );
    // The million flows stay active (as with traffic), so every refresh carries them all.
    let stop = Arc::new(AtomicBool::new(false));
    let toucher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let took = fill(&pins, id, generation, FLOWS);
                std::thread::sleep(Duration::from_secs(REFRESH_SECS - 1).saturating_sub(took));
            }
        })
    };
    let ups = |i: usize| {
        let log = lab.agent_log(i);
        (
            log.matches("sync link to peer up").count(),
            log.matches("sync link from peer up").count(),
        )
    };
    let before = (ups(1), ups(2));

    // Three refresh periods, polled every 200 ms: both links up, and each side heard from the
    // other within 2.5 s (a summary every second; 5 s of silence ends a link).
    let watch = Duration::from_secs(3 * REFRESH_SECS + 2);
    let started = Instant::now();
    let (mut worst_heard, mut down, mut polls) = (0, Vec::new(), 0);
    while started.elapsed() < watch {
        for i in 1..=2 {
            let p = peer(&lab, i);
            if p["outbound"] != true || p["inbound"] != true {
                down.push((i, started.elapsed().as_secs_f64()));
            }
            worst_heard = worst_heard.max(p["last_heard_ms"].as_u64().unwrap_or(u64::MAX));
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    toucher.join().unwrap();
    let after = (ups(1), ups(2));
    eprintln!(
        "over {polls} polls: longest silence seen {worst_heard} ms; links seen down {down:?}; links up (lb1 out/in, lb2 out/in) {before:?} -> {after:?}"
    );
    assert!(down.is_empty(), "links went down: (lb, seconds) {down:?}");
    assert!(
        worst_heard < 2500,
        "a peer heard nothing from the other for {worst_heard} ms"
    );
    assert_eq!(after, before, "no link went down and came back");

    // The walks happened, found the million flows, and lb2 received them.
    let m1 = metric_text(&lab, 1);
    let walks = metric(&m1, "lb_sync_flow_walks_total ").unwrap();
    let last = metric(&m1, "lb_sync_flow_walk_seconds ").unwrap();
    let max = metric(&m1, "lb_sync_flow_walk_max_seconds ").unwrap();
    let found = metric(&m1, "lb_sync_flow_walk_flows ").unwrap();
    for i in 1..=2 {
        let text = metric_text(&lab, i);
        let peer = lab::lb_name(3 - i);
        for dir in ["out", "in"] {
            assert_eq!(
                metric(
                    &text,
                    &format!("lb_sync_peer_connects_total{{peer=\"{peer}\",dir=\"{dir}\"}}")
                ),
                Some(1.0),
                "lb{i}: one {dir}bound link since start"
            );
        }
    }
    let received = peer(&lab, 2)["flows_received"].as_u64().unwrap();
    eprintln!(
        "walks {walks}, last {last:.3} s, longest {max:.3} s, last found {found} flows; lb2 received {received} flows"
    );
    assert!(walks >= 2.0, "{walks} walks in {watch:?}");
    assert!(found >= FLOWS as f64, "the walk found the flows: {found}");
    assert!(
        received >= 2 * FLOWS as u64,
        "lb2 received at least two refreshes: {received}"
    );
    assert!(max < REFRESH_SECS as f64, "a walk of {max} s");
    finish(lab);
}
