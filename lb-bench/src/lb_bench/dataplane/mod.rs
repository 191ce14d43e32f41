//! The dataplane cost per packet through BPF_PROG_TEST_RUN, measured so that every repetition
//! takes the intended path (BENCHMARKS.md).
//!
//! `repeat` runs the program N times on the same buffer without restoring it, so the harness
//! program (lb-ebpf/src/bench_harness.rs) rewrites the original frame before every repetition
//! and tail-calls the program under test. Per scenario: one single run whose output frame must
//! equal the expected packet, then 5 runs of 1,000,000 repetitions on one pinned CPU, each of
//! which must raise the scenario's counters by exactly the repeat count (and the verdict
//! counters, together, by exactly that much). A failed check prints FAILED, not a number.

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use lb_common::{Counter, PROTO_TCP, PROTO_UDP};
use lb_testkit::*;

use crate::report::{Figure, Row};

mod backend;
mod harness;
mod latency;
pub(crate) mod scale;
pub(crate) mod targets;

use harness::*;
pub(crate) use harness::{
    Harness, Prep, Prog, Scenario, check_counters, counters, encap_of, measure_all, no_prep, ratios,
};

// Row names the targets refer to.
const EMPTY: &str = "empty program (XDP_TX), alone";
const EMPTY_H: &str = "empty program, through the harness";
const HARNESS: &str = "harness cost (the two rows above)";
const FLOOR: &str = "floor: parse + IPv6 encap + XDP_TX";
const SYN: &str = "TCP SYN, IPv4 VIP: Maglev, no entry";
const SYN_1M: &str = "TCP SYN, IPv4 VIP, 1M distinct flows cycled";
const SYN_PINNED: &str = "TCP SYN in a changed slot, 250k new flows per run: Maglev + table insert";
const FIRST: &str = "TCP first packet after the SYN, 250k new flows per run: table insert";
/// The first-packet row's flows: with the established rows' 1M, well inside the table's 2M (a
/// table near its size evicts: the kernel's LRU keeps free entries per CPU).
const FIRST_FLOWS: u32 = FLOWS / 4;
const EST: &str = "TCP established, IPv4 VIP, 1 flow";
const EST_1M: &str = "TCP established, IPv4 VIP, 1M flows cycled";
const GUE: &str = "TCP established, IPv4 VIP, GUE";
const SECOND_CHANCE: &str = "TCP established, IPv4 VIP, second chance (SRH)";
const NOT_VIP: &str = "not a VIP: XDP_PASS, alone";
const NOT_VIP_H: &str = "not a VIP: XDP_PASS, through the harness";
const LATENCY: &str =
    "machine: one dependent load at a random place in 96 MiB (a cold 1M-flow table)";
const LATENCY_LEAST: &str =
    "machine: one dependent load at a random place in 16 MiB (the least 1M flows can take)";

const SECTION: &str = "dataplane";

/// The dataplane as the agent runs it by default (builds from before a flag ignore it): rings
/// keep previous backends and SYNs in unchanged slots write no entry (second chance), and
/// established IPv4 packets may be answered by the per-CPU flow cache.
pub(crate) const AGENT_FLAGS: u16 = lb_common::LB_F_SECOND_CHANCE | lb_common::LB_F_FLOW_CACHE;

/// Section "dataplane": every scenario of BENCHMARKS.md, ratios to the floor.
pub fn run(lb_object: &[u8]) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let cpu = cpus - 1;
    crate::cpu::pin_to_cpu(cpu)?;
    let mut lb = Lb::with_object(lb_object, 65537, 2 * FLOWS)?;
    lb.set_config(|c| c.flags |= AGENT_FLAGS);
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;

    let v4: IpAddr = "192.0.2.10".parse().unwrap();
    let v6: IpAddr = "2001:db8:10::10".parse().unwrap();
    let udp: IpAddr = "192.0.2.11".parse().unwrap();
    let gue: IpAddr = "192.0.2.12".parse().unwrap();
    let i4 = lb.add_vip(v4, 80, PROTO_TCP, 0, false, &[(1, 1), (2, 1), (3, 1)]);
    let i6 = lb.add_vip(v6, 80, PROTO_TCP, 1, false, &[(4, 1), (5, 1), (6, 1)]);
    let iu = lb.add_vip(udp, 53, PROTO_UDP, 2, false, &[(7, 1), (8, 1), (9, 1)]);
    let ig = lb.add_vip(gue, 80, PROTO_TCP, 3, true, &[(10, 1), (11, 1), (12, 1)]);
    // Second chance: every slot of this VIP remembers backend 16.
    let sc: IpAddr = "192.0.2.13".parse().unwrap();
    let isc = lb.add_vip(sc, 80, PROTO_TCP, 4, false, &[(13, 1), (14, 1), (15, 1)]);
    lb.install_backend_of(16, 1, 4);
    let until = (lb_userspace::dataplane::monotonic_ns() >> lb_common::RING_TICK_SHIFT) as u32;
    lb.set_ring_prev(4, &isc.slots, 16, until + 100_000);
    let fsc = Flow::new("198.51.100.7", 40000, "192.0.2.13", 80);
    let acksc = fsc.tcp(Tcp::Ack, PAYLOAD);
    // New flows' SYNs in slots that all remember a previous backend: each writes its entry.
    let pinned: IpAddr = "192.0.2.15".parse().unwrap();
    let ipin = lb.add_vip(
        pinned,
        80,
        PROTO_TCP,
        6,
        false,
        &[(20, 1), (21, 1), (22, 1)],
    );
    lb.install_backend_of(23, 1, 6);
    lb.set_ring_prev(6, &ipin.slots, 23, until + 100_000);
    let (pflow, psyn) = varied_base("192.0.2.15", Tcp::Syn);
    let ksc = fsc.key(PROTO_TCP);
    let encap_sc = expected_encap_srh(
        &acksc,
        backend_addr(isc.backend_for(&ksc)),
        Some(backend_addr(16)),
        lb_common::flow_hash(&ksc, SEED),
        false,
    );

    let f4 = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    let (syn4, ack4) = (f4.tcp(Tcp::Syn, PAYLOAD), f4.tcp(Tcp::Ack, PAYLOAD));
    let k4 = f4.key(PROTO_TCP);
    let f6 = Flow::new("2001:db8:c::7", 40000, "2001:db8:10::10", 80);
    let ack6 = f6.tcp(Tcp::Ack, PAYLOAD);
    let fu = Flow::new("198.51.100.7", 40000, "192.0.2.11", 53);
    let udp_frame = fu.udp(b"bench-udp-64");
    let fg = Flow::new("198.51.100.7", 40000, "192.0.2.12", 80);
    let ackg = fg.tcp(Tcp::Ack, PAYLOAD);
    let not_vip = Flow::new("198.51.100.7", 40000, "203.0.113.99", 80).tcp(Tcp::Ack, PAYLOAD);
    let (vflow, vsyn) = varied_base("192.0.2.10", Tcp::Syn);
    let (_, vack) = varied_base("192.0.2.10", Tcp::Ack);
    // First packets get their own VIP: its entries are deleted before every run, and the
    // established rows' entries stay.
    let first: IpAddr = "192.0.2.14".parse().unwrap();
    let ifirst = lb.add_vip(first, 80, PROTO_TCP, 5, false, &[(17, 1), (18, 1), (19, 1)]);
    let (fflow, fack) = varied_base("192.0.2.14", Tcp::Ack);

    use Counter::*;
    let lb_scenario = |name, frame: &Vec<u8>, counters: Vec<Counter>, expected| Scenario {
        name,
        prog: Prog::Lb,
        harness: true,
        frame: frame.clone(),
        flows: 0,
        verdict: XDP_TX,
        counters,
        expected,
        fresh_table: None,
    };
    let empty = Scenario {
        name: EMPTY,
        prog: Prog::Empty,
        harness: false,
        frame: ack4.clone(),
        flows: 0,
        verdict: XDP_TX,
        counters: vec![],
        expected: ack4.clone(),
        fresh_table: None,
    };
    let floor = Scenario {
        name: FLOOR,
        prog: Prog::Floor,
        harness: true,
        expected: floor_output(&ack4),
        ..empty.clone()
    };
    let pass = Scenario {
        verdict: XDP_PASS,
        harness: false,
        ..lb_scenario(NOT_VIP, &not_vip, vec![PassNotVip], not_vip.clone())
    };
    let scenarios: Vec<(Scenario, Prep)> = vec![
        (empty.clone(), no_prep()),
        (
            Scenario {
                name: EMPTY_H,
                harness: true,
                ..empty
            },
            no_prep(),
        ),
        (floor, no_prep()),
        (
            lb_scenario(
                SYN,
                &syn4,
                vec![LruMissSyn, Tx],
                encap_of(&syn4, &k4, &i4, false),
            ),
            no_prep(),
        ),
        (
            // A slot a table change left a previous backend: the SYN pins its flow, so the new
            // connection is not paired with the previous backend for its life.
            // New flows (250k per run, their entries deleted before and after every run): a
            // 5-tuple repeated would measure a reused one's re-pin instead.
            Scenario {
                flows: FIRST_FLOWS,
                fresh_table: Some(pinned),
                ..lb_scenario(
                    SYN_PINNED,
                    &psyn,
                    vec![LruMissSyn, SynPinned, Tx],
                    encap_of(&psyn, &pflow.key(PROTO_TCP), &ipin, false),
                )
            },
            no_prep(),
        ),
        (
            lb_scenario(
                EST,
                &ack4,
                vec![FlowCacheHit, Tx],
                encap_of(&ack4, &k4, &i4, false),
            ),
            Box::new(|lb, _| prime(lb, &ack4)),
        ),
        (
            // 1M distinct SYNs: none writes an entry.
            Scenario {
                flows: FLOWS,
                ..lb_scenario(
                    SYN_1M,
                    &vsyn,
                    vec![LruMissSyn, Tx],
                    encap_of(&vsyn, &vflow.key(PROTO_TCP), &i4, false),
                )
            },
            no_prep(),
        ),
        (
            // The table insert a SYN no longer makes: each repetition is a new flow's first
            // packet after its SYN (their entries are deleted before and after every run).
            Scenario {
                flows: FIRST_FLOWS,
                fresh_table: Some(first),
                ..lb_scenario(
                    FIRST,
                    &fack,
                    vec![LruMissNonSyn, Tx],
                    encap_of(&fack, &fflow.key(PROTO_TCP), &ifirst, false),
                )
            },
            no_prep(),
        ),
        (
            Scenario {
                flows: FLOWS,
                ..lb_scenario(
                    EST_1M,
                    &vack,
                    vec![LruHit, Tx],
                    encap_of(&vack, &vflow.key(PROTO_TCP), &i4, false),
                )
            },
            // Pre-insert the 1M flows through the program's own first-packet path.
            Box::new(|lb, h| {
                let fd = lb.dp.program().fd()?.try_clone()?;
                h.prepare(&fd, &vack, FLOWS)?;
                let before = counters(lb)?;
                let (v, _, _) = test_run(h.prog("bench_harness"), &vack, FLOWS)?;
                ensure!(v == XDP_TX, "pre-insert: verdict {v}");
                check_counters(&before, &counters(lb)?, &[LruMissNonSyn, Tx], FLOWS as u64)
                    .context("pre-inserting 1M flows")
            }),
        ),
        (
            lb_scenario(
                "TCP established, IPv6 VIP",
                &ack6,
                vec![FlowCacheHit, Tx],
                encap_of(&ack6, &f6.key(PROTO_TCP), &i6, false),
            ),
            Box::new(|lb, _| prime(lb, &ack6)),
        ),
        (
            lb_scenario(
                "UDP, IPv4 VIP, established",
                &udp_frame,
                vec![FlowCacheHit, Tx],
                encap_of(&udp_frame, &fu.key(PROTO_UDP), &iu, false),
            ),
            Box::new(|lb, _| prime(lb, &udp_frame)),
        ),
        (
            lb_scenario(
                GUE,
                &ackg,
                vec![FlowCacheHit, TxGue],
                encap_of(&ackg, &fg.key(PROTO_TCP), &ig, true),
            ),
            Box::new(|lb, _| prime(lb, &ackg)),
        ),
        (
            // A flow a table change moved: its entry (made by its first mid-flow packet)
            // remembers the previous backend, and every packet carries the routing header.
            lb_scenario(
                SECOND_CHANCE,
                &acksc,
                vec![FlowCacheHit, TxSecondChance, Tx],
                encap_sc,
            ),
            Box::new(|lb, _| prime(lb, &acksc)),
        ),
        (pass.clone(), no_prep()),
        (
            Scenario {
                name: NOT_VIP_H,
                harness: true,
                ..pass
            },
            no_prep(),
        ),
    ];
    // The backend's side of second chance, against the same floor.
    let mut scenarios = scenarios;
    scenarios.extend(
        backend::scenarios(backend_addr(1), backend_addr(2))
            .into_iter()
            .map(|s| (s, no_prep())),
    );

    // Profiling experiments: LB_BENCH_ONLY=floor,established keeps the rows whose names
    // contain one of the words.
    let scenarios: Vec<(Scenario, Prep)> = match std::env::var("LB_BENCH_ONLY") {
        Ok(only) => scenarios
            .into_iter()
            .filter(|(s, _)| only.split(',').any(|w| s.name.contains(w)))
            .collect(),
        Err(_) => scenarios,
    };
    eprintln!(
        "==> {} scenarios, {RUNS} runs x {} repetitions each, pinned to CPU {cpu}",
        scenarios.len(),
        repeat()
    );
    let measured = measure_all(SECTION, &mut lb, &mut h, &scenarios);
    // The harness's own cost: each run with it minus the same-numbered run without, sorted.
    let harness_row = {
        let get = |name| {
            measured
                .iter()
                .find(|(r, _)| r.name == name)
                .and_then(|(_, m)| m.as_ref())
        };
        let figure = match (get(EMPTY_H), get(EMPTY)) {
            (Some(with), Some(alone)) => Ok(Figure::of(
                &with
                    .ns
                    .iter()
                    .zip(&alone.ns)
                    .map(|(&w, &a)| w as f64 - a as f64)
                    .collect::<Vec<_>>(),
                "ns/packet",
            )),
            _ => Err(anyhow::anyhow!("the empty-program rows failed")),
        };
        Row::from_result(SECTION, HARNESS, figure)
    };
    let mut rows: Vec<Row> = measured.into_iter().map(|(r, _)| r).collect();
    rows.insert(2, harness_row);
    // What any cache-cold lookup costs here, whatever the program: the 1M-flow rows' bound.
    if std::env::var("LB_BENCH_ONLY").is_err() {
        eprintln!("==> dataplane: memory latency over 96 and 16 MiB");
        rows.push(Row::ok(
            SECTION,
            LATENCY,
            latency::random_load(latency::CONNS4_1M, RUNS),
        ));
        rows.push(Row::ok(
            SECTION,
            LATENCY_LEAST,
            latency::random_load(latency::LEAST_1M, RUNS),
        ));
    }
    ratios(&mut rows, FLOOR, "floor");
    Ok(rows)
}

/// SYN, established and (with `pass`) non-VIP scenarios against VIP 192.0.2.10:80 installed
/// with `installed` (scale and compare).
fn basic_scenarios(installed: &Installed, pass: bool) -> Vec<(Scenario, Prep<'static>)> {
    let f = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    let (syn, ack) = (f.tcp(Tcp::Syn, PAYLOAD), f.tcp(Tcp::Ack, PAYLOAD));
    let key = f.key(PROTO_TCP);
    let lb_scenario = |name, frame: &Vec<u8>, counters, expected| Scenario {
        name,
        prog: Prog::Lb,
        harness: true,
        frame: frame.clone(),
        flows: 0,
        verdict: XDP_TX,
        counters,
        expected,
        fresh_table: None,
    };
    let mut v: Vec<(Scenario, Prep)> = vec![
        (
            lb_scenario(
                "SYN",
                &syn,
                vec![Counter::LruMissSyn, Counter::Tx],
                encap_of(&syn, &key, installed, false),
            ),
            no_prep(),
        ),
        (
            lb_scenario(
                "established",
                &ack,
                vec![Counter::LruHit, Counter::Tx],
                encap_of(&ack, &key, installed, false),
            ),
            Box::new(move |lb, _| prime(lb, &ack)),
        ),
    ];
    if pass {
        let not_vip = Flow::new("198.51.100.7", 40000, "203.0.113.99", 80).tcp(Tcp::Ack, PAYLOAD);
        v.push((
            Scenario {
                name: "not a VIP, alone",
                harness: false,
                verdict: XDP_PASS,
                ..lb_scenario("", &not_vip, vec![Counter::PassNotVip], not_vip.clone())
            },
            no_prep(),
        ));
    }
    v
}

/// A load balancer from `object` with one TCP VIP, 192.0.2.10:80, over backends 1..=3 (the
/// flows of `basic_scenarios`).
pub(super) fn lb_with_one_vip(object: &[u8]) -> Result<(Lb, Installed)> {
    let mut lb = Lb::with_object(object, 65537, 1 << 16)?;
    lb.set_config(|c| c.flags |= AGENT_FLAGS);
    let installed = lb.add_vip(
        "192.0.2.10".parse().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1), (2, 1), (3, 1)],
    );
    Ok((lb, installed))
}
