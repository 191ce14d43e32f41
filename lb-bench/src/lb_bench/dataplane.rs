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

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};
use lb_common::{Counter, PROTO_TCP, PROTO_UDP};
use tests::*;

use super::report::{Figure, Row};

const REPEAT: u32 = 1_000_000;

/// Repetitions per timed run: `REPEAT`, or `LB_BENCH_REPEAT` for the suite's smoke test
/// (tests/tests/bench.rs), which checks every path proof quickly and times nothing.
fn repeat() -> u32 {
    std::env::var("LB_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REPEAT)
}
const RUNS: usize = 5;
/// Distinct flows of the cache-cold established scenario.
const FLOWS: u32 = 1_000_000;
const FRAME_MAX: usize = 256;
/// Size of `BenchFrame::bytes` (bench_harness.rs).
const FRAME_BUF: usize = 272;
const PAYLOAD: &[u8] = b"bench!"; // IPv4 + TCP frames of 60 bytes: no link padding

/// Mirror of `BenchFrame` in lb-ebpf/src/bench_harness.rs.
#[repr(C)]
#[derive(Clone, Copy)]
struct BenchFrame {
    len: u32,
    flows: u32,
    bytes: [u8; FRAME_BUF],
}

// SAFETY: repr(C), plain integers and bytes, no padding (4 + 4 + 272).
unsafe impl aya::Pod for BenchFrame {}

/// The harness object: bench_harness, bench_floor, bench_empty and their maps.
pub(super) struct Harness {
    ebpf: Ebpf,
    progs: ProgramArray<MapData>,
    frame: Array<MapData, BenchFrame>,
    seq: PerCpuArray<MapData, u32>,
}

impl Harness {
    pub(super) fn load(object: &[u8]) -> Result<Self> {
        let mut ebpf = Ebpf::load(object).context("loading the harness object")?;
        for name in ["bench_harness", "bench_floor", "bench_empty"] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("{name} missing from the harness object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the verifier rejected {name}"))?;
        }
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("map {name} missing from the harness object"))
        };
        let progs = ProgramArray::try_from(take("BENCH_PROGS")?)?;
        let frame = Array::try_from(take("BENCH_FRAME")?)?;
        let seq = PerCpuArray::try_from(take("BENCH_SEQ")?)?;
        Ok(Self {
            ebpf,
            progs,
            frame,
            seq,
        })
    }

    pub(super) fn prog(&self, name: &str) -> &Xdp {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    pub(super) fn own_fd(&self, name: &str) -> Result<ProgramFd> {
        Ok(self.prog(name).fd()?.try_clone()?)
    }

    /// The program the harness tail-calls, the frame it restores, and the flow count to vary
    /// over (0: none); the per-CPU flow index starts again at 0.
    pub(super) fn prepare(&mut self, target: &ProgramFd, frame: &[u8], flows: u32) -> Result<()> {
        ensure!(frame.len() <= FRAME_MAX, "frame too long for the harness");
        self.progs.set(0, target, 0)?;
        let mut f = BenchFrame {
            len: frame.len() as u32,
            flows,
            bytes: [0; FRAME_BUF],
        };
        f.bytes[..frame.len()].copy_from_slice(frame);
        self.frame.set(0, f, 0)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        self.seq
            .set(0, PerCpuValues::try_from(vec![0u32; cpus])?, 0)?;
        Ok(())
    }
}

/// One BPF_PROG_TEST_RUN: (verdict, kernel-measured ns per repetition, output frame).
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, u64, Vec<u8>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat,
        ..Default::default()
    })?;
    out.truncate(r.data_size_out as usize);
    Ok((r.return_value, r.duration.as_nanos() as u64, out))
}

/// The program a scenario measures.
#[derive(Clone, Copy, PartialEq)]
enum Prog {
    Lb,
    Floor,
    Empty,
}

#[derive(Clone)]
struct Scenario {
    name: &'static str,
    prog: Prog,
    /// Through the input-restoring harness (needed by every program that changes the frame);
    /// false: the program alone, for paths that leave the frame as it is.
    harness: bool,
    frame: Vec<u8>,
    flows: u32,
    verdict: u32,
    /// Each must rise by exactly the repeat count (the verdict counters, summed, too).
    counters: Vec<Counter>,
    /// The exact output of one run.
    expected: Vec<u8>,
}

struct Measured {
    /// ns per packet of each run, sorted.
    ns: Vec<u64>,
}

pub(super) fn counters(lb: &mut Lb) -> Result<Vec<(Counter, u64)>> {
    Ok(lb
        .dp
        .counters()?
        .into_iter()
        .map(|(c, v)| (c, v.packets))
        .collect())
}

/// Checks that `want` each rose by exactly `n` and the verdict counters together by `n`.
pub(super) fn check_counters(
    before: &[(Counter, u64)],
    after: &[(Counter, u64)],
    want: &[Counter],
    n: u64,
) -> Result<()> {
    let delta = |c: Counter| -> u64 {
        let get = |v: &[(Counter, u64)]| v.iter().find(|(x, _)| *x == c).map_or(0, |p| p.1);
        get(after) - get(before)
    };
    for &c in want {
        ensure!(delta(c) == n, "{} rose by {}, want {n}", c.name(), delta(c));
    }
    let verdicts: u64 = Counter::ALL
        .iter()
        .filter(|&&c| is_verdict_counter(c))
        .map(|&c| delta(c))
        .sum();
    ensure!(
        verdicts == n,
        "verdict counters rose by {verdicts} in all, want {n}"
    );
    Ok(())
}

/// What BPF_PROG_TEST_RUN runs for `s`.
fn entry<'a>(h: &'a Harness, lb: &'a Lb, s: &Scenario) -> &'a Xdp {
    match (s.harness, s.prog) {
        (true, _) => h.prog("bench_harness"),
        (false, Prog::Lb) => lb.dp.program(),
        (false, Prog::Floor) => h.prog("bench_floor"),
        (false, Prog::Empty) => h.prog("bench_empty"),
    }
}

/// Points the harness at `s`'s program and frame (the flow index starts again at 0).
fn arm(h: &mut Harness, lb: &Lb, s: &Scenario) -> Result<()> {
    let target = match s.prog {
        Prog::Lb => lb.dp.program().fd()?.try_clone()?,
        Prog::Floor => h.own_fd("bench_floor")?,
        Prog::Empty => h.own_fd("bench_empty")?,
    };
    h.prepare(&target, &s.frame, s.flows)
}

/// One run: the verdict, the exact output frame and (lb_xdp) the counters.
fn verify(h: &mut Harness, lb: &mut Lb, s: &Scenario) -> Result<()> {
    arm(h, lb, s)?;
    let before = counters(lb)?;
    let (verdict, _, out) = test_run(entry(h, lb, s), &s.frame, 1)?;
    ensure!(
        verdict == s.verdict,
        "single run: verdict {verdict}, want {}",
        s.verdict
    );
    // Profiling experiments only (a build that writes other MACs, say): LB_BENCH_NOVERIFY=1
    // skips the output comparison and marks the rows.
    if out != s.expected && std::env::var_os("LB_BENCH_NOVERIFY").is_none() {
        // Say what differs when it decodes.
        let why = match decode(&out) {
            Ok(e) => format!("to {}", e.backend()),
            Err(e) => format!("{e:#}"),
        };
        bail!("single run: output frame differs from the expected packet ({why})");
    }
    if s.prog == Prog::Lb {
        check_counters(&before, &counters(lb)?, &s.counters, 1)?;
    }
    Ok(())
}

/// One timed run of REPEAT repetitions, checked: ns per packet.
fn timed(h: &mut Harness, lb: &mut Lb, s: &Scenario) -> Result<u64> {
    arm(h, lb, s)?;
    let before = counters(lb)?;
    let n = repeat();
    let (verdict, t, _) = test_run(entry(h, lb, s), &s.frame, n)?;
    ensure!(
        verdict == s.verdict,
        "verdict {verdict}, want {}",
        s.verdict
    );
    if s.prog == Prog::Lb {
        check_counters(&before, &counters(lb)?, &s.counters, n as u64)?;
    }
    Ok(t)
}

/// The expected encapsulation of `frame` by the Maglev choice of `installed`.
fn encap_of(frame: &[u8], key: &lb_common::FlowKey, installed: &Installed, gue: bool) -> Vec<u8> {
    let backend = backend_addr(installed.backend_for(key));
    expected_encap(frame, backend, lb_common::flow_hash(key, SEED), gue)
}

/// Runs `frame` through lb_xdp once (outside the harness), e.g. to create a flow's entry.
fn prime(lb: &Lb, frame: &[u8]) -> Result<()> {
    let r = lb.run(frame);
    ensure!(r.verdict == XDP_TX, "priming run: verdict {}", r.verdict);
    Ok(())
}

/// The base frame of the 1M-flow scenario: 198.51.100.0:1024 -> VIP; the harness adds
/// i / 4096 to the address's low octet and i % 4096 to the port and takes the same amounts
/// off the IPv4 identification and the TCP window, which must not wrap.
fn varied_base(vip: &str, flags: Tcp) -> (Flow, Vec<u8>) {
    let flow = Flow::new("198.51.100.0", 1024, vip, 80);
    let mut f = flow.tcp(flags, PAYLOAD);
    f[18..20].copy_from_slice(&0x1000u16.to_be_bytes());
    fix_ipv4_checksum(&mut f[14..34]);
    (flow, f)
}

// Row names the targets refer to.
const EMPTY: &str = "empty program (XDP_TX), alone";
const EMPTY_H: &str = "empty program, through the harness";
const HARNESS: &str = "harness cost (the two rows above)";
const FLOOR: &str = "floor: parse + IPv6 encap + XDP_TX";
const SYN: &str = "TCP SYN, IPv4 VIP: Maglev + table insert";
const SYN_1M: &str = "TCP SYN, IPv4 VIP, 1M distinct flows cycled";
const EST: &str = "TCP established, IPv4 VIP, 1 flow";
const EST_1M: &str = "TCP established, IPv4 VIP, 1M flows cycled";
const GUE: &str = "TCP established, IPv4 VIP, GUE";
const NOT_VIP: &str = "not a VIP: XDP_PASS, alone";
const NOT_VIP_H: &str = "not a VIP: XDP_PASS, through the harness";

const SECTION: &str = "dataplane";

/// A scenario and what must happen before it is measured (e.g. its flow's entry created).
type Prep<'a> = Box<dyn Fn(&mut Lb, &mut Harness) -> Result<()> + 'a>;

fn no_prep<'a>() -> Prep<'a> {
    Box::new(|_, _| Ok(()))
}

/// Measures each scenario into a row (FAILED when its checks fail).
fn measure_all(
    section: &'static str,
    lb: &mut Lb,
    h: &mut Harness,
    scenarios: &[(Scenario, Prep)],
) -> Vec<(Row, Option<Measured>)> {
    // Every scenario is prepared and checked first, then timed in rounds that take each
    // scenario once, so a noisy moment of the machine hits all of them alike and the ratios
    // of one run stay meaningful.
    let mut runs: Vec<Result<Vec<u64>>> = scenarios
        .iter()
        .map(|(s, prep)| {
            eprintln!("==> {section}: checking {}", s.name);
            prep(lb, h)
                .and_then(|()| verify(h, lb, s))
                .map(|()| Vec::new())
        })
        .collect();
    for round in 1..=RUNS {
        eprintln!(
            "==> {section}: round {round} of {RUNS} ({} repetitions per scenario)",
            repeat()
        );
        for (i, (s, _)) in scenarios.iter().enumerate() {
            if let Ok(ns) = &mut runs[i] {
                match timed(h, lb, s) {
                    Ok(t) => ns.push(t),
                    Err(e) => runs[i] = Err(e),
                }
            }
        }
    }
    scenarios
        .iter()
        .zip(runs)
        .map(|((s, _), r)| {
            let measured = r.as_ref().ok().map(|ns| Measured { ns: ns.clone() });
            let figure = r.map(|ns| {
                Figure::of(
                    &ns.iter().map(|&n| n as f64).collect::<Vec<_>>(),
                    "ns/packet",
                )
            });
            (Row::from_result(section, s.name, figure), measured)
        })
        .collect()
}

/// Sets each row's ratio to `base` (by name), as "N.NN× <label>" (paired by round).
fn ratios(rows: &mut [Row], base: &str, label: &str) {
    let Some(b) = rows
        .iter()
        .find(|r| r.name == base)
        .and_then(|r| r.result.as_ref().ok())
        .map(|f| Figure::of(&f.runs, f.unit))
    else {
        return;
    };
    for r in rows.iter_mut() {
        if let Ok(f) = &mut r.result {
            f.ratio = format!("{:.2}× {label}", f.ratio_to(&b));
        }
    }
}

/// Section "dataplane": every scenario of BENCHMARKS.md, ratios to the floor.
pub fn run(lb_object: &[u8]) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let cpu = cpus - 1;
    super::pin_to_cpu(cpu)?;
    let mut lb = Lb::with_object(lb_object, 65537, 2 * FLOWS)?;
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;

    let v4: IpAddr = "192.0.2.10".parse().unwrap();
    let v6: IpAddr = "2001:db8:10::10".parse().unwrap();
    let udp: IpAddr = "192.0.2.11".parse().unwrap();
    let gue: IpAddr = "192.0.2.12".parse().unwrap();
    let i4 = lb.add_vip(v4, 80, PROTO_TCP, 0, false, &[(1, 1), (2, 1), (3, 1)]);
    let i6 = lb.add_vip(v6, 80, PROTO_TCP, 1, false, &[(4, 1), (5, 1), (6, 1)]);
    let iu = lb.add_vip(udp, 53, PROTO_UDP, 2, false, &[(7, 1), (8, 1), (9, 1)]);
    let ig = lb.add_vip(gue, 80, PROTO_TCP, 3, true, &[(10, 1), (11, 1), (12, 1)]);

    let f4 = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    let (syn4, ack4) = (f4.tcp(Tcp::Syn, PAYLOAD), f4.tcp(Tcp::Ack, PAYLOAD));
    let k4 = f4.key(PROTO_TCP);
    let f6 = Flow::new("2001:db8:c::7", 40000, "2001:db8:10::10", 80);
    let (syn6, ack6) = (f6.tcp(Tcp::Syn, PAYLOAD), f6.tcp(Tcp::Ack, PAYLOAD));
    let fu = Flow::new("198.51.100.7", 40000, "192.0.2.11", 53);
    let udp_frame = fu.udp(b"bench-udp-64");
    let fg = Flow::new("198.51.100.7", 40000, "192.0.2.12", 80);
    let (syng, ackg) = (fg.tcp(Tcp::Syn, PAYLOAD), fg.tcp(Tcp::Ack, PAYLOAD));
    let not_vip = Flow::new("198.51.100.7", 40000, "203.0.113.99", 80).tcp(Tcp::Ack, PAYLOAD);
    let (vflow, vsyn) = varied_base("192.0.2.10", Tcp::Syn);
    let (_, vack) = varied_base("192.0.2.10", Tcp::Ack);

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
            lb_scenario(
                EST,
                &ack4,
                vec![LruHit, Tx],
                encap_of(&ack4, &k4, &i4, false),
            ),
            Box::new(|lb, _| prime(lb, &syn4)),
        ),
        (
            // New entries for real: 1M distinct flows, in a table sized for 2M.
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
            Scenario {
                flows: FLOWS,
                ..lb_scenario(
                    EST_1M,
                    &vack,
                    vec![LruHit, Tx],
                    encap_of(&vack, &vflow.key(PROTO_TCP), &i4, false),
                )
            },
            // Pre-insert the 1M flows through the program's own SYN path.
            Box::new(|lb, h| {
                let fd = lb.dp.program().fd()?.try_clone()?;
                h.prepare(&fd, &vsyn, FLOWS)?;
                let before = counters(lb)?;
                let (v, _, _) = test_run(h.prog("bench_harness"), &vsyn, FLOWS)?;
                ensure!(v == XDP_TX, "pre-insert: verdict {v}");
                check_counters(&before, &counters(lb)?, &[LruMissSyn, Tx], FLOWS as u64)
                    .context("pre-inserting 1M flows")
            }),
        ),
        (
            lb_scenario(
                "TCP established, IPv6 VIP",
                &ack6,
                vec![LruHit, Tx],
                encap_of(&ack6, &f6.key(PROTO_TCP), &i6, false),
            ),
            Box::new(|lb, _| prime(lb, &syn6)),
        ),
        (
            lb_scenario(
                "UDP, IPv4 VIP, established",
                &udp_frame,
                vec![LruHit, Tx],
                encap_of(&udp_frame, &fu.key(PROTO_UDP), &iu, false),
            ),
            Box::new(|lb, _| prime(lb, &udp_frame)),
        ),
        (
            lb_scenario(
                GUE,
                &ackg,
                vec![LruHit, TxGue],
                encap_of(&ackg, &fg.key(PROTO_TCP), &ig, true),
            ),
            Box::new(|lb, _| prime(lb, &syng)),
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
            Box::new(move |lb, _| prime(lb, &syn)),
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

/// `lb-bench compare label=object...`: builds of lb_xdp side by side (before/after figures,
/// profiling experiments). Rounds interleave the builds, so machine noise hits them alike.
pub fn compare(objects: &[(String, Vec<u8>)]) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    super::pin_to_cpu(cpus - 1)?;
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;
    struct Build {
        label: String,
        lb: Lb,
        scenarios: Vec<(Scenario, Prep<'static>)>,
        ns: Vec<Vec<u64>>,
        failed: Vec<Option<anyhow::Error>>,
    }
    let mut builds = Vec::new();
    for (label, object) in objects {
        let (lb, installed) = lb_with_one_vip(object)?;
        let scenarios = basic_scenarios(&installed, true);
        let n = scenarios.len();
        builds.push(Build {
            label: label.clone(),
            lb,
            scenarios,
            ns: vec![Vec::new(); n],
            failed: (0..n).map(|_| None).collect(),
        });
    }
    let ack = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80).tcp(Tcp::Ack, PAYLOAD);
    let floor = Scenario {
        name: FLOOR,
        prog: Prog::Floor,
        harness: true,
        frame: ack.clone(),
        flows: 0,
        verdict: XDP_TX,
        counters: vec![],
        expected: floor_output(&ack),
    };
    let mut floor_ns = Vec::new();
    let first = &mut builds[0].lb;
    verify(&mut h, first, &floor)?;
    for b in &mut builds {
        for (i, (s, prep)) in b.scenarios.iter().enumerate() {
            if let Err(e) = prep(&mut b.lb, &mut h).and_then(|()| verify(&mut h, &mut b.lb, s)) {
                b.failed[i] = Some(e);
            }
        }
    }
    for round in 0..RUNS {
        eprintln!("==> compare: round {} of {RUNS}", round + 1);
        floor_ns.push(timed(&mut h, &mut builds[0].lb, &floor)?);
        for b in &mut builds {
            for (i, (s, _)) in b.scenarios.iter().enumerate() {
                if b.failed[i].is_some() {
                    continue;
                }
                match timed(&mut h, &mut b.lb, s) {
                    Ok(t) => b.ns[i].push(t),
                    Err(e) => b.failed[i] = Some(e),
                }
            }
        }
    }
    let as_f64 = |v: &[u64]| v.iter().map(|&n| n as f64).collect::<Vec<_>>();
    let mut rows = vec![Row::ok(
        "compare",
        FLOOR,
        Figure::of(&as_f64(&floor_ns), "ns/packet"),
    )];
    for b in builds {
        for (i, (s, _)) in b.scenarios.iter().enumerate() {
            let name = format!("{}: {}", b.label, s.name);
            rows.push(match &b.failed[i] {
                Some(e) => Row::failed("compare", name, e),
                None => Row::ok("compare", name, Figure::of(&as_f64(&b.ns[i]), "ns/packet")),
            });
        }
    }
    ratios(&mut rows, FLOOR, "floor");
    Ok(rows)
}

/// The floor program's output for `frame`: its fixed outer header 2001:db8:1b::1 ->
/// 2001:db8:be::1 with flow label 1, MACs swapped.
fn floor_output(frame: &[u8]) -> Vec<u8> {
    let mut e = expected_encap(frame, backend_addr(1), 1, false);
    e[0..6].copy_from_slice(&CLIENT_MAC);
    e[6..12].copy_from_slice(&NIC_MAC);
    e[14] = 0x60;
    e[15] = 0;
    e
}

/// Section "scale": the established and SYN paths with 1, 100 and 10,000 VIPs and with 10 and
/// 1,000 backends; each configuration is a fresh program with its own maps.
pub fn scale(lb_object: &[u8]) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    super::pin_to_cpu(cpus - 1)?;
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;
    let mut rows = Vec::new();
    // (label, VIPs, backends of the measured VIP)
    let configs: [(&str, u32, u32); 5] = [
        ("1 VIP, 10 backends", 1, 10),
        ("100 VIPs, 10 backends", 100, 10),
        ("10,000 VIPs, 10 backends", 10_000, 10),
        ("1 VIP, 100 backends", 1, 100),
        ("1 VIP, 1,000 backends", 1, 1_000),
    ];
    for (label, vips, backends) in configs {
        let limits = lb_userspace::dataplane::DataplaneLimits {
            ring_size: 65537,
            max_vips: vips + 1,
            max_rings: 1,
            max_backends: backends + 1,
            max_conns: 1 << 16,
        };
        let mut lb = match Lb::with_limits(lb_object, limits) {
            Ok(lb) => lb,
            Err(e) => {
                rows.push(Row::failed("scale", label, &e));
                continue;
            }
        };
        eprintln!("==> scale: {label}");
        let ids: Vec<(u32, u32)> = (1..=backends).map(|id| (id, 1)).collect();
        // VIP 0 is measured; the others (198.51.100.0/24 and 203.0.113.0/24 addresses, ports
        // 1.., so 10,000 fit) share its Maglev ring: ring memory is not what is measured.
        let installed = lb.add_vip("192.0.2.10".parse().unwrap(), 80, PROTO_TCP, 0, false, &ids);
        let filled = (1..vips).try_for_each(|i| {
            let addr: IpAddr = format!(
                "{}.{}",
                if i % 2 == 0 {
                    "198.51.100"
                } else {
                    "203.0.113"
                },
                i % 250 + 1
            )
            .parse()
            .unwrap();
            let meta = lb_common::VipMeta {
                id: i,
                ring: 0,
                flags: 0,
                _pad: 0,
            };
            lb.dp.set_vip(
                lb_common::VipKey::new(addr, 1 + (i / 250) as u16, PROTO_TCP),
                meta,
            )
        });
        if let Err(e) = filled {
            rows.push(Row::failed("scale", label, &e.context("adding the VIPs")));
            continue;
        }
        let scenarios = basic_scenarios(&installed, false);
        for (mut row, _) in measure_all("scale", &mut lb, &mut h, &scenarios) {
            row.name = format!("{}, {label}", row.name);
            rows.push(row);
        }
    }
    // Growth: each configuration against the first one of the same path.
    for path in ["SYN", "established"] {
        let base = format!("{path}, {}", configs[0].0);
        let (mine, _): (Vec<&mut Row>, Vec<&mut Row>) = rows
            .iter_mut()
            .partition(|r| r.name.starts_with(&format!("{path}, ")));
        let b = mine
            .iter()
            .find(|r| r.name == base)
            .and_then(|r| r.median());
        if let Some(b) = b {
            for r in mine {
                if let Ok(f) = &mut r.result {
                    f.ratio = format!("{:.2}× 1 VIP, 10 backends", f.median / b);
                }
            }
        }
    }
    Ok(rows)
}

/// The targets, evaluated on this run's rows (lines to print after the table).
pub fn targets(rows: &[Row]) -> Vec<String> {
    let get = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.result.as_ref().ok())
    };
    let line = |label: &str, value: Option<&Figure>, base: Option<&Figure>, max: f64| match (
        value, base,
    ) {
        (Some(v), Some(b)) => {
            let r = v.ratio_to(b);
            let verdict = if r <= max { "met" } else { "MISSED" };
            format!("- {label}: {r:.2}× (limit {max}×): {verdict}")
        }
        _ => format!("- {label}: not measured"),
    };
    if get(FLOOR).is_none() {
        return vec![];
    }
    vec![
        "Targets (median of the run-by-run ratios; runs of one round are moments apart):".into(),
        line("established ≤ 2.0× floor", get(EST), get(FLOOR), 2.0),
        line(
            "SYN with a table insert ≤ 4.0× floor",
            get(SYN),
            get(FLOOR),
            4.0,
        ),
        line(
            "non-VIP pass ≤ 2× the empty program (both alone)",
            get(NOT_VIP),
            get(EMPTY),
            2.0,
        ),
        line(
            "non-VIP pass ≤ 2× the empty program (both through the harness)",
            get(NOT_VIP_H),
            get(EMPTY_H),
            2.0,
        ),
        line(
            "GUE ≤ 1.1× plain IPv6 encapsulation (established)",
            get(GUE),
            get(EST),
            1.1,
        ),
        format!(
            "- 1M flows cycled vs 1 flow (cache-cold table): {}",
            match (get(EST_1M), get(EST)) {
                (Some(a), Some(b)) => format!("{:.2}×", a.ratio_to(b)),
                _ => "not measured".into(),
            }
        ),
    ]
}
