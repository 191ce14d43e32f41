//! The measuring machinery: the bench harness program, scenarios, their path checks (output
//! frame, counters) and timed rounds.

use std::net::Ipv6Addr;

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
};
use lb_common::decap::{DecapConfig, PROGRAM_NAME, names};
use lb_common::{Counter, v6_words};
use lb_testkit::*;

use crate::report::{Figure, Row};

pub(crate) const REPEAT: u32 = 1_000_000;

/// Repetitions per timed run: `REPEAT`, or `LB_BENCH_REPEAT` for the suite's smoke test
/// (tests/tests/bench.rs), which checks every path proof quickly and times nothing.
pub(crate) fn repeat() -> u32 {
    std::env::var("LB_BENCH_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REPEAT)
}
pub(crate) const RUNS: usize = 5;
/// Distinct flows of the cache-cold established scenario.
pub(crate) const FLOWS: u32 = 1_000_000;
pub(crate) const FRAME_MAX: usize = 256;
/// Size of `BenchFrame::bytes` (bench_harness.rs).
pub(crate) const FRAME_BUF: usize = 272;
pub(crate) const PAYLOAD: &[u8] = b"bench!"; // IPv4 + TCP frames of 60 bytes: no link padding

/// Mirror of `BenchFrame` in lb-ebpf/src/bin/bench_harness.rs.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct BenchFrame {
    pub(crate) len: u32,
    pub(crate) flows: u32,
    pub(crate) bytes: [u8; FRAME_BUF],
}

// SAFETY: repr(C), plain integers and bytes, no padding (4 + 4 + 272).
unsafe impl aya::Pod for BenchFrame {}

/// The harness object: bench_harness, bench_floor, bench_empty and their maps; and the
/// backend's program.
pub(crate) struct Harness {
    pub(crate) ebpf: Ebpf,
    pub(crate) decap: Ebpf,
    pub(crate) progs: ProgramArray<MapData>,
    pub(crate) frame: Array<MapData, BenchFrame>,
    pub(crate) seq: PerCpuArray<MapData, u32>,
}

impl Harness {
    pub(crate) fn load(object: &[u8]) -> Result<Self> {
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
        let decap = load_decap(&[backend_addr(1), backend_addr(2)])?;
        Ok(Self {
            ebpf,
            decap,
            progs,
            frame,
            seq,
        })
    }

    pub(crate) fn prog(&self, name: &str) -> &Xdp {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    pub(crate) fn own_fd(&self, name: &str) -> Result<ProgramFd> {
        Ok(self.prog(name).fd()?.try_clone()?)
    }

    /// The program the harness tail-calls, the frame it restores, and the flow count to vary
    /// over (0: none); the per-CPU flow index starts again at 0.
    pub(crate) fn prepare(&mut self, target: &ProgramFd, frame: &[u8], flows: u32) -> Result<()> {
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

/// The backend's `lb_decap` (`backend`), loaded for tunnel addresses `addrs`, GUE on `GUE_PORT`.
pub(crate) fn load_decap(addrs: &[Ipv6Addr]) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(lb_objects::DECAP_OBJECT).context("loading lb_decap")?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .context("lb_decap missing from its object")?
        .try_into()?;
    prog.load().context("the verifier rejected lb_decap")?;
    let mut map: HashMap<_, [u32; 4], u32> =
        HashMap::try_from(ebpf.map_mut(names::ADDRS).context("DECAP_ADDRS")?)?;
    for (i, a) in addrs.iter().enumerate() {
        map.insert(v6_words(*a), i as u32, 0)?;
    }
    let mut cfg: Array<_, DecapConfig> =
        Array::try_from(ebpf.map_mut(names::CONFIG).context("DECAP_CONFIG")?)?;
    cfg.set(
        0,
        DecapConfig {
            gue_port: GUE_PORT.to_be(),
            _pad: [0; 6],
        },
        0,
    )?;
    Ok(ebpf)
}

pub(crate) fn decap_program(ebpf: &Ebpf) -> &Xdp {
    ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap()
}

/// One BPF_PROG_TEST_RUN: (verdict, kernel-measured ns per repetition, output frame).
pub(crate) fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, u64, Vec<u8>)> {
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
pub(crate) enum Prog {
    Lb,
    Floor,
    Empty,
    /// The backend's `lb_decap` (`backend`).
    Decap,
}

#[derive(Clone)]
pub(crate) struct Scenario {
    pub(crate) name: &'static str,
    pub(crate) prog: Prog,
    /// Through the input-restoring harness (needed by every program that changes the frame);
    /// false: the program alone, for paths that leave the frame as it is.
    pub(crate) harness: bool,
    pub(crate) frame: Vec<u8>,
    pub(crate) flows: u32,
    pub(crate) verdict: u32,
    /// Each must rise by exactly the repeat count (the verdict counters, summed, too).
    pub(crate) counters: Vec<Counter>,
    /// The exact output of one run.
    pub(crate) expected: Vec<u8>,
    /// Entries to this address are deleted before and after every run, and a run is at most
    /// `flows` repetitions: each makes a new entry, and none is left for the other rows.
    pub(crate) fresh_table: Option<std::net::IpAddr>,
}

pub(crate) struct Measured {
    /// ns per packet of each run, sorted.
    pub(crate) ns: Vec<u64>,
}

pub(crate) fn counters(lb: &mut Lb) -> Result<Vec<(Counter, u64)>> {
    Ok(lb
        .dp
        .counters()?
        .into_iter()
        .map(|(c, v)| (c, v.packets))
        .collect())
}

/// Checks that `want` each rose by exactly `n` and the verdict counters together by `n`.
///
/// An established packet is answered by the connection table (`LruHit`) or, when its entry was
/// read recently on this CPU, by the flow cache (`FlowCacheHit`); which one varies (the cache
/// reads the table again every few hundred ms). So `LruHit` in `want` means the two together
/// rose by `n`, and `FlowCacheHit` means that too, with at least 90% of `n` from the cache when
/// `n` is a timed run's (a single checked run may be the one that fills the cache).
pub(crate) fn check_counters(
    before: &[(Counter, u64)],
    after: &[(Counter, u64)],
    want: &[Counter],
    n: u64,
) -> Result<()> {
    let delta = |c: Counter| -> u64 {
        let get = |v: &[(Counter, u64)]| v.iter().find(|(x, _)| *x == c).map_or(0, |p| p.1);
        get(after) - get(before)
    };
    let (table, cache) = (delta(Counter::LruHit), delta(Counter::FlowCacheHit));
    for &c in want {
        match c {
            Counter::LruHit | Counter::FlowCacheHit => ensure!(
                table + cache == n,
                "lru_hit and flow_cache_hit rose by {table} + {cache}, want {n} together"
            ),
            _ => ensure!(delta(c) == n, "{} rose by {}, want {n}", c.name(), delta(c)),
        }
        if c == Counter::FlowCacheHit && n > 1 {
            ensure!(
                cache * 10 >= n * 9,
                "flow_cache_hit rose by {cache} of {n}: the flow cache did not answer"
            );
        }
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
pub(crate) fn entry<'a>(h: &'a Harness, lb: &'a Lb, s: &Scenario) -> &'a Xdp {
    match (s.harness, s.prog) {
        (true, _) => h.prog("bench_harness"),
        (false, Prog::Lb) => lb.dp.program(),
        (false, Prog::Floor) => h.prog("bench_floor"),
        (false, Prog::Empty) => h.prog("bench_empty"),
        (false, Prog::Decap) => decap_program(&h.decap),
    }
}

/// Points the harness at `s`'s program and frame (the flow index starts again at 0).
pub(crate) fn arm(h: &mut Harness, lb: &Lb, s: &Scenario) -> Result<()> {
    let target = match s.prog {
        Prog::Lb => lb.dp.program().fd()?.try_clone()?,
        Prog::Floor => h.own_fd("bench_floor")?,
        Prog::Empty => h.own_fd("bench_empty")?,
        Prog::Decap => decap_program(&h.decap).fd()?.try_clone()?,
    };
    h.prepare(&target, &s.frame, s.flows)
}

/// One run: the verdict, the exact output frame and (lb_xdp) the counters.
pub(crate) fn verify(h: &mut Harness, lb: &mut Lb, s: &Scenario) -> Result<()> {
    if let Some(dst) = s.fresh_table {
        lb.dp.flow_table()?.remove_to(dst)?;
    }
    arm(h, lb, s)?;
    let before = counters(lb)?;
    let (verdict, _, out) = test_run(entry(h, lb, s), &s.frame, 1)?;
    ensure!(
        verdict == s.verdict,
        "single run: verdict {verdict}, want {}",
        s.verdict
    );
    if out != s.expected && !unverified() {
        // Say what differs when it decodes.
        let why = match decode(&out) {
            Ok(e) => format!("to {}", e.backend()),
            Err(e) => format!("{e:#}"),
        };
        bail!("single run: output frame differs from the expected packet ({why})");
    }
    if s.prog == Prog::Lb && !unverified() {
        check_counters(&before, &counters(lb)?, &s.counters, 1)?;
    }
    Ok(())
}

/// Profiling experiments only (a build without a counter or that writes other MACs, say):
/// LB_BENCH_NOVERIFY=1 skips the output and counter checks.
fn unverified() -> bool {
    std::env::var_os("LB_BENCH_NOVERIFY").is_some()
}

/// One timed run of REPEAT repetitions, checked: ns per packet.
pub(crate) fn timed(h: &mut Harness, lb: &mut Lb, s: &Scenario) -> Result<u64> {
    if let Some(dst) = s.fresh_table {
        lb.dp.flow_table()?.remove_to(dst)?;
    }
    arm(h, lb, s)?;
    let before = counters(lb)?;
    let n = match s.fresh_table {
        Some(_) => s.flows.min(repeat()),
        None => repeat(),
    };
    let (verdict, t, _) = test_run(entry(h, lb, s), &s.frame, n)?;
    if let Some(dst) = s.fresh_table {
        lb.dp.flow_table()?.remove_to(dst)?;
    }
    ensure!(
        verdict == s.verdict,
        "verdict {verdict}, want {}",
        s.verdict
    );
    if s.prog == Prog::Lb && !unverified() {
        check_counters(&before, &counters(lb)?, &s.counters, n as u64)?;
    }
    Ok(t)
}

/// The expected encapsulation of `frame` by the Maglev choice of `installed`.
pub(crate) fn encap_of(
    frame: &[u8],
    key: &lb_common::FlowKey,
    installed: &Installed,
    gue: bool,
) -> Vec<u8> {
    let backend = backend_addr(installed.backend_for(key));
    expected_encap(frame, backend, lb_common::flow_hash(key, SEED), gue)
}

/// Runs `frame` through lb_xdp once (outside the harness), e.g. to create a flow's entry.
pub(crate) fn prime(lb: &Lb, frame: &[u8]) -> Result<()> {
    let r = lb.run(frame);
    ensure!(r.verdict == XDP_TX, "priming run: verdict {}", r.verdict);
    Ok(())
}

/// The base frame of the 1M-flow scenario: 198.51.100.0:1024 -> VIP; the harness adds
/// i / 4096 to the address's low octet and i % 4096 to the port and takes the same amounts
/// off the IPv4 identification and the TCP window, which must not wrap.
pub(crate) fn varied_base(vip: &str, flags: Tcp) -> (Flow, Vec<u8>) {
    let flow = Flow::new("198.51.100.0", 1024, vip, 80);
    let mut f = flow.tcp(flags, PAYLOAD);
    f[18..20].copy_from_slice(&0x1000u16.to_be_bytes());
    fix_ipv4_checksum(&mut f[14..34]);
    (flow, f)
}

/// A scenario and what must happen before it is measured (e.g. its flow's entry created).
pub(crate) type Prep<'a> = Box<dyn Fn(&mut Lb, &mut Harness) -> Result<()> + 'a>;

pub(crate) fn no_prep<'a>() -> Prep<'a> {
    Box::new(|_, _| Ok(()))
}

/// Measures each scenario into a row (FAILED when its checks fail).
pub(crate) fn measure_all(
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
pub(crate) fn ratios(rows: &mut [Row], base: &str, label: &str) {
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

/// The floor program's output for `frame`: its fixed outer header 2001:db8:1b::1 ->
/// 2001:db8:be::1 with flow label 1, MACs swapped.
pub(crate) fn floor_output(frame: &[u8]) -> Vec<u8> {
    let mut e = expected_encap(frame, backend_addr(1), 1, false);
    e[0..6].copy_from_slice(&CLIENT_MAC);
    e[6..12].copy_from_slice(&NIC_MAC);
    e[14] = 0x60;
    e[15] = 0;
    e
}
