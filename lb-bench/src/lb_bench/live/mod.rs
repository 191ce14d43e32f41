//! Live throughput: frames pushed through the real XDP_TX path (and, for a backend whose route
//! leaves by a second NIC, XDP_REDIRECT into a second veth pair) with BPF_PROG_RUN's XDP live
//! frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`), on one pinned CPU.
//!
//! Topology: one namespace `lbbl-<pid>` holding a veth pair. `lbl0` is the load balancer's NIC
//! (MAC `NIC_MAC`; the load balancer's interface config for its ifindex says so, with the next
//! hop `NEXT_HOP_MAC`), `lbl1` is the next hop (MAC `NEXT_HOP_MAC`). The program runs as if the
//! frame had arrived on `lbl0` (`ingress_ifindex` in the context); XDP_TX sends it out of
//! `lbl0`, so it arrives on `lbl1`, which needs an XDP program of its own to receive it.
//!
//! Kernel rules this relies on (Documentation/bpf/bpf_prog_run.rst, net/bpf/test_run.c):
//! - `data_out` and `ctx_out` must be unset; the context (`struct xdp_md`) gives the ingress
//!   ifindex (`data` 0, `data_end` the frame length), looked up in the caller's network
//!   namespace: the thread that runs the test must be in the veth's namespace.
//! - XDP_TX becomes a redirect to the ingress device (`ndo_xdp_xmit`), transmitted at the end
//!   of each batch (default 64 frames, at most 256). The softirqs that follow (the peer's veth
//!   NAPI poll) run on the same CPU when the batch ends, so the receiver's cost is part of the
//!   wall time: the receiver here is a two-instruction XDP_DROP program, the cheapest there is.
//! - Each frame is a page from a page pool, initialised from `data_in` when the pool first
//!   hands it out. A recycled page is NOT rewritten: only the data pointers are reset. An
//!   encapsulating program overwrites the original Ethernet header (the new headers end 14
//!   bytes into the old frame), so from the first recycled page on it would see a frame with a
//!   garbage Ethernet header and take another path. Programs that change the frame therefore
//!   run through the bench harness (lb-ebpf/src/bench_harness.rs), which rewrites the original
//!   frame before tail-calling them; the empty program runs alone (and through the harness, to
//!   show the harness's cost here).
//!
//! Checks: one live frame of each scenario is captured on `lbl1` (AF_PACKET, with `xdp_pass`
//! attached there for that step) and must equal the expected frame byte for byte; in every
//! measured run the load balancer's counters (tx, LRU hit, the verdict counters together) rise
//! by exactly the frame count, and `lbl1` must count as received what was sent (a shortfall is
//! reported in the row, and the figure is then the received rate).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
use lb_common::{Counter, IfaceConfig, PROTO_TCP};
use lb_testkit::af_packet::Wire;
use lb_testkit::*;

use crate::dataplane::{Harness, check_counters, counters, lb_with_one_vip};
use crate::report::{Figure, Row};

mod env;

use env::*;

const SECTION: &str = "live";
const RUNS: usize = 5;
/// Frames per measured run (fewer when the warm-up run shows a slow path, see `frames_for`).
const FRAMES: u32 = 5_000_000;
const WARMUP_FRAMES: u32 = 1_000_000;
/// Frames per batch: the kernel's default (the NAPI budget).
const BATCH: u32 = 64;
/// Target wall time of one measured run when the path is slow.
const RUN_TARGET: Duration = Duration::from_secs(2);
/// The whole section stops measuring (FAILED rows) past this.
const SECTION_BUDGET: Duration = Duration::from_secs(90);
const PAYLOAD: &[u8] = b"bench!"; // IPv4 + TCP frames of 60 bytes

/// One live-frames run of `repeat` frames: (wall time of the call, the kernel's ns per frame).
fn live_run(prog: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> Result<(Duration, u64)> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let start = Instant::now();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..Default::default()
        })
        .context("BPF_PROG_RUN in live frames mode")?;
    Ok((start.elapsed(), r.duration.as_nanos() as u64))
}

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Empty,
    Floor,
    Lb,
}

struct Scenario {
    name: &'static str,
    which: Which,
    harness: bool,
    /// The frame sent, and the veth that receives what the program sends.
    frame: Vec<u8>,
    rx: &'static str,
    /// The frame the receiver must get from one live run.
    expected: Vec<u8>,
}

struct Measured {
    mpps: Vec<f64>,
    sent: u64,
    received: u64,
}

/// Everything the scenarios share.
struct Bench<'a> {
    env: &'a Env,
    lb: Lb,
    h: Harness,
}

impl Bench<'_> {
    /// Points the harness at the scenario's program (when it runs through the harness).
    fn setup(&mut self, s: &Scenario) -> Result<()> {
        if s.harness {
            let target = match s.which {
                Which::Lb => self.lb.dp.program().fd()?.try_clone()?,
                Which::Floor => self.h.prog("bench_floor").fd()?.try_clone()?,
                Which::Empty => self.h.prog("bench_empty").fd()?.try_clone()?,
            };
            self.h.prepare(&target, &s.frame, 0)?;
        }
        Ok(())
    }

    fn prog(&self, s: &Scenario) -> &Xdp {
        match (s.harness, s.which) {
            (true, _) => self.h.prog("bench_harness"),
            (false, Which::Lb) => self.lb.dp.program(),
            (false, Which::Floor) => self.h.prog("bench_floor"),
            (false, Which::Empty) => self.h.prog("bench_empty"),
        }
    }

    /// One checked live run: (wall time, kernel ns per frame, frames the receiver counted).
    fn run(&mut self, s: &Scenario, n: u32) -> Result<(Duration, u64, u64)> {
        let is_lb = s.which == Which::Lb;
        let before = if is_lb {
            counters(&mut self.lb)?
        } else {
            vec![]
        };
        let rx_before = self.env.rx_packets(s.rx)?;
        let (prog, frame, ifindex) = (self.prog(s), &s.frame, self.env.lb_ifindex);
        let (wall, kns) = self.env.run(|| live_run(prog, frame, ifindex, n))?;
        let received = self.env.rx_packets(s.rx)? - rx_before;
        if is_lb {
            check_counters(
                &before,
                &counters(&mut self.lb)?,
                &[Counter::Tx, Counter::LruHit],
                n as u64,
            )?;
        }
        Ok((wall, kns, received))
    }

    /// One live frame, captured on the receiver (which runs xdp_pass for this), must be the
    /// expected frame.
    fn capture_check(&mut self, s: &Scenario, wire: &Wire) -> Result<()> {
        self.setup(s)?;
        // Anything left over from an earlier step.
        let _ = wire.recv_until_quiet(Duration::from_millis(50), 64);
        let (_, _, received) = self.run(s, 1)?;
        ensure!(
            received == 1,
            "one live frame: the receiver counted {received}"
        );
        let frames = wire.recv_until_quiet(Duration::from_millis(300), 64);
        let same: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|f| f.len() >= 14 && f[12..14] == s.expected[12..14])
            .collect();
        ensure!(
            same.len() == 1,
            "one live frame: {} frames of its ethertype captured on the receiver",
            same.len()
        );
        if *same[0] != s.expected {
            let why = match (decode(same[0]), decode(&s.expected)) {
                (Ok(g), Ok(e)) => format!(
                    "outer destination {}, expected {}",
                    g.backend(),
                    e.backend()
                ),
                (Err(e), _) => format!("{e:#}"),
                (_, Err(_)) => "not encapsulated".into(),
            };
            let at = same[0]
                .iter()
                .zip(&s.expected)
                .position(|(a, b)| a != b)
                .unwrap_or(same[0].len().min(s.expected.len()));
            eprintln!(
                "    got      {:02x?}\n    expected {:02x?}",
                same[0], s.expected
            );
            bail!(
                "the frame the receiver got ({} bytes) differs from the expected packet ({} \
                 bytes) from byte {at} on ({why})",
                same[0].len(),
                s.expected.len()
            );
        }
        Ok(())
    }

    fn measure(&mut self, s: &Scenario, deadline: Instant) -> Result<Measured> {
        self.setup(s)?;
        // Warm-up (checked, not reported); it also sizes the measured runs.
        let (wall, _, _) = self.run(s, WARMUP_FRAMES)?;
        let n = frames_for(wall);
        let mut m = Measured {
            mpps: Vec::with_capacity(RUNS),
            sent: 0,
            received: 0,
        };
        let mut kernel_ns = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            ensure!(
                Instant::now() < deadline,
                "the section's time budget ({} s) ran out",
                SECTION_BUDGET.as_secs()
            );
            let (wall, kns, received) = self.run(s, n)?;
            ensure!(
                received <= n as u64,
                "the receiver counted {received} frames, more than the {n} sent"
            );
            m.sent += n as u64;
            m.received += received;
            m.mpps.push(received as f64 / wall.as_secs_f64() / 1e6);
            kernel_ns.push(kns);
        }
        eprintln!(
            "    {n} frames x {RUNS}: {} Mpps received (wall); kernel's own ns/frame: {kernel_ns:?}",
            m.mpps
                .iter()
                .map(|v| format!("{v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(m)
    }
}

/// Frames per measured run: `FRAMES`, or fewer so a run of a slow path takes about
/// `RUN_TARGET` (never under the warm-up's count).
fn frames_for(warmup_wall: Duration) -> u32 {
    let per_frame = warmup_wall.as_secs_f64() / WARMUP_FRAMES as f64;
    let fit = (RUN_TARGET.as_secs_f64() / per_frame.max(1e-12)) as u64;
    fit.clamp(WARMUP_FRAMES as u64, FRAMES as u64) as u32
}

const EMPTY: &str = "empty program (XDP_TX), alone: veth round trip";
const EMPTY_H: &str = "empty program, through the harness";
const FLOOR: &str = "floor: parse + IPv6 encap + XDP_TX (harness)";
const EST: &str = "TCP established, IPv4 VIP, 1 flow (harness)";
const REDIRECT: &str = "TCP established, IPv4 VIP, 1 flow, XDP_REDIRECT to a second veth (harness)";

/// Section "live": Mpps on one core through XDP_TX into a veth, ratios to the floor.
pub fn run(lb_object: &[u8]) -> Result<Vec<Row>> {
    let started = Instant::now();
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let cpu = cpus - 1;
    let names = [EMPTY, EMPTY_H, FLOOR, EST, REDIRECT];
    let all_failed = |e: &anyhow::Error| -> Vec<Row> {
        eprintln!("    FAILED: live setup: {e:#}");
        names.iter().map(|n| Row::failed(SECTION, *n, e)).collect()
    };
    let mut env = match Env::new(cpu) {
        Ok(e) => e,
        Err(e) => {
            return Ok(all_failed(
                &e.context("creating the namespace and veth pair"),
            ));
        }
    };
    eprintln!(
        "==> live: namespace {} ({IF_LB} -> {IF_RX}), pinned to CPU {cpu}, batches of {BATCH}",
        env.ns.name
    );
    let rows = match run_in(&mut env, lb_object, started) {
        Ok(rows) => rows,
        Err(e) => all_failed(&e),
    };
    // The receiver's program first, then the namespace (Env's drop order does the same).
    env.drop_prog = None;
    env.drop_prog2 = None;
    drop(env);
    Ok(rows)
}

fn run_in(env: &mut Env, lb_object: &[u8], started: Instant) -> Result<Vec<Row>> {
    let (mut lb, installed) = lb_with_one_vip(lb_object)?;
    // The NIC the live frames arrive on: its MAC, and the next hop's.
    lb.dp.set_iface(
        env.lb_ifindex,
        IfaceConfig {
            src_mac: NIC_MAC,
            dst_mac: NEXT_HOP_MAC,
            mtu: 0,
            _pad: 0,
        },
    )?;
    let flow = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80);
    let ack = flow.tcp(Tcp::Ack, PAYLOAD);
    let key = flow.key(PROTO_TCP);
    // The flow's connection-table entry, made by an ordinary (not live) run of its first
    // packet after the SYN (SYNs write none).
    let r = lb.run(&ack);
    ensure!(r.verdict == XDP_TX, "priming ACK: verdict {}", r.verdict);
    let est_expected = expected_encap(
        &ack,
        backend_addr(installed.backend_for(&key)),
        lb_common::flow_hash(&key, SEED),
        false,
    );
    let floor_expected = {
        // bench_floor's fixed outer header: 2001:db8:1b::1 -> 2001:db8:be::1, label 1, MACs
        // swapped.
        let mut e = expected_encap(&ack, backend_addr(1), 1, false);
        e[0..6].copy_from_slice(&CLIENT_MAC);
        e[6..12].copy_from_slice(&NIC_MAC);
        e[14] = 0x60;
        e[15] = 0;
        e
    };
    // The same packet to a second VIP whose backends' route leaves by the second NIC: the
    // egress cache sends it there with XDP_REDIRECT (issue 16), measured against XDP_TX above.
    let redirected = lb.add_vip(
        "192.0.2.20".parse().unwrap(),
        80,
        PROTO_TCP,
        1,
        false,
        &[(4, 1), (5, 1), (6, 1)],
    );
    // The device map resolves the ifindex in the caller's namespace: the bench's.
    let lb2 = env.lb2_ifindex;
    env.run(|| lb.dp.set_egress_dev(0, lb2))?;
    for i in 4..=6 {
        lb.dp.set_egress(
            lb_common::v6_words(backend_addr(i)),
            Some(second_nic(env.lb2_ifindex)),
        )?;
    }
    let flow2 = Flow::new("198.51.100.7", 40000, "192.0.2.20", 80);
    let ack2 = flow2.tcp(Tcp::Ack, PAYLOAD);
    let key2 = flow2.key(PROTO_TCP);
    // Its entry, made by its first ACK (SYNs make none).
    let r = lb.run(&ack2);
    ensure!(
        r.verdict == 4,
        "priming ACK (redirect): verdict {}",
        r.verdict
    );
    let mut redirect_expected = expected_encap(
        &ack2,
        backend_addr(redirected.backend_for(&key2)),
        lb_common::flow_hash(&key2, SEED),
        false,
    );
    redirect_expected[6..12].copy_from_slice(&NIC2_MAC);
    let base = |name, which, harness, expected| Scenario {
        name,
        which,
        harness,
        frame: ack.clone(),
        rx: IF_RX,
        expected,
    };
    let scenarios = [
        base(EMPTY, Which::Empty, false, ack.clone()),
        base(EMPTY_H, Which::Empty, true, ack.clone()),
        base(FLOOR, Which::Floor, true, floor_expected),
        base(EST, Which::Lb, true, est_expected),
        Scenario {
            frame: ack2,
            rx: IF_RX2,
            ..base(REDIRECT, Which::Lb, true, redirect_expected)
        },
    ];
    let mut bench = Bench {
        env,
        lb,
        h: Harness::load(lb_objects::testing::BENCH_OBJECT)?,
    };

    // Step 1: the receiver passes frames to the stack, where a packet socket sees them.
    eprintln!("==> live: one frame of each scenario, captured on {IF_RX}");
    let (rx, rx2) = (bench.env.rx_ifindex, bench.env.rx2_ifindex);
    let (pass, wire, wire2) = bench.env.run(|| {
        let pass = [
            lb_objects::testing::attach_pass(IF_RX)?,
            lb_objects::testing::attach_pass(IF_RX2)?,
        ];
        let wire = Wire::open(IF_RX)?;
        let wire2 = Wire::open(IF_RX2)?;
        ensure!(
            lb_userspace::neighbour::ifindex(IF_RX)? == rx,
            "{IF_RX} changed its ifindex"
        );
        Ok((pass, wire, wire2))
    })?;
    let checked: Vec<Result<()>> = scenarios
        .iter()
        .map(|s| {
            let w = if s.rx == IF_RX2 { &wire2 } else { &wire };
            bench
                .capture_check(s, w)
                .with_context(|| format!("{}: capture check", s.name))
        })
        .collect();
    drop((wire, wire2));
    drop(pass);

    // Step 2: the receivers drop in XDP (their cheapest path), and the runs are timed.
    let drop_prog = bench.env.run(|| DropProg::attach(rx))?;
    let drop_prog2 = bench.env.run(|| DropProg::attach(rx2))?;
    let deadline = started + SECTION_BUDGET;
    let mut results: Vec<Result<Measured>> = Vec::new();
    for (s, check) in scenarios.iter().zip(checked) {
        eprintln!("==> live: {}", s.name);
        results.push(check.and_then(|()| bench.measure(s, deadline)));
    }
    drop(bench);
    env.drop_prog = Some(drop_prog);
    env.drop_prog2 = Some(drop_prog2);

    let floor = results[2].as_ref().ok().map(|m| median(&m.mpps));
    let tx = results[3].as_ref().ok().map(|m| median(&m.mpps));
    let rows = scenarios
        .iter()
        .zip(results)
        .map(|(s, r)| {
            let figure = r.map(|m| {
                let mut f = Figure::of(&m.mpps, "Mpps");
                let mut notes = Vec::new();
                if let Some(b) = floor {
                    notes.push(format!("{:.2}× floor", f.median / b));
                }
                if let (REDIRECT, Some(t)) = (s.name, tx) {
                    notes.push(format!("{:.2}× XDP_TX", f.median / t));
                }
                if m.received < m.sent {
                    notes.push(format!(
                        "receiver got {:.1}% (rate received)",
                        100.0 * m.received as f64 / m.sent as f64
                    ));
                }
                f.ratio = notes.join("; ");
                f
            });
            Row::from_result(SECTION, s.name, figure)
        })
        .collect();
    Ok(rows)
}

/// The egress entry of a backend whose route leaves by the second NIC (`EGRESS_DEVS[0]`).
fn second_nic(ifindex: u32) -> lb_common::Egress {
    let mut e = lb_common::Egress {
        state: lb_common::EGRESS_ROUTED,
        paths_len: 1,
        ..lb_common::Egress::UNRESOLVED
    };
    e.paths[0] = lb_common::EgressPath {
        link: IfaceConfig {
            src_mac: NIC2_MAC,
            dst_mac: NEXT_HOP_MAC,
            mtu: 0,
            _pad: 0,
        },
        ifindex,
        dev: 0,
    };
    e
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
