//! Benchmark runner for `cargo xtask bench` (root).
//!
//! `lb-bench [--object <lb-xdp>] [section...]`: the bench of BENCHMARKS.md, as one markdown
//! table: dataplane cost per packet (BPF_PROG_TEST_RUN), scale, live throughput (XDP live
//! frames into a veth), control plane times and kernel map memory.
//!
//! `lb-bench conntrack <flows> <label=object>...`: the connection-table layouts. For each XDP
//! object given, two threads (pinned to CPU 0 and CPU 1) run the program through
//! BPF_PROG_TEST_RUN concurrently: first a SYN for each of N new flows (a table insert), then a
//! data packet of each flow (a table hit). The kernel's own per-run duration is recorded and the
//! median, p90 and p99 reported. Every run's verdict and the counters are checked: a scenario
//! that did not take its intended path prints FAILED instead of numbers.

use std::sync::Barrier;

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::{Counter, PROTO_TCP};
use lb_testkit::*;

mod control;
mod cpu;
mod dataplane;
mod egress;
mod live;
mod memory;
mod report;

use cpu::pin_to_cpu;

const VIP: &str = "192.0.2.10";

struct Phase {
    name: &'static str,
    ns: Vec<u64>,
}

fn frames(thread: u8, flows: u32, flags: Tcp) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|i| {
            let src = format!(
                "198.51.{}.{}",
                100 + thread as u32 * 2 + (i >> 16),
                (i >> 8) & 0xFF
            );
            Flow::new(
                &src,
                1024 + (i & 0xFF) as u16 * 200 + thread as u16,
                VIP,
                80,
            )
            .tcp(flags, b"x")
        })
        .collect()
}

fn run_all(prog: &Xdp, frames: &[Vec<u8>]) -> Result<Vec<u64>> {
    let mut out = vec![0u8; 2048];
    let mut ns = Vec::with_capacity(frames.len());
    for f in frames {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(f),
            data_out: Some(&mut out),
            ..Default::default()
        })?;
        ensure!(
            r.return_value == XDP_TX,
            "verdict {} instead of XDP_TX",
            r.return_value
        );
        ns.push(r.duration.as_nanos() as u64);
    }
    Ok(ns)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn bench_object(path: &str, flows: u32) -> Result<Vec<Phase>> {
    let object = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let mut lb = Lb::with_object(&object, 4099, flows * 4)?;
    lb.add_vip(
        VIP.parse().unwrap(),
        80,
        PROTO_TCP,
        0,
        false,
        &[(1, 1), (2, 1), (3, 1)],
    );
    let prog = lb.dp.program();
    let barrier = Barrier::new(2);
    let per_thread: Vec<Result<(Vec<u64>, Vec<u64>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2u8)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(Vec<u64>, Vec<u64>)> {
                    pin_to_cpu(t as usize)?;
                    let syns = frames(t, flows, Tcp::Syn);
                    let acks = frames(t, flows, Tcp::Ack);
                    barrier.wait();
                    let insert = run_all(prog, &syns)?;
                    barrier.wait();
                    let hit = run_all(prog, &acks)?;
                    Ok((insert, hit))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut insert = Vec::new();
    let mut hit = Vec::new();
    for r in per_thread {
        let (i, h) = r?;
        insert.extend(i);
        hit.extend(h);
    }
    let total = 2 * flows as u64;
    let (syn, hits) = (lb.counter(Counter::LruMissSyn), lb.counter(Counter::LruHit));
    if syn != total || hits != total {
        bail!("counters: {syn} SYN misses and {hits} hits, want {total} each");
    }
    Ok(vec![
        Phase {
            name: "SYN, new entry",
            ns: insert,
        },
        Phase {
            name: "established, hit",
            ns: hit,
        },
    ])
}

/// Sections of the default bench, in table order.
const SECTIONS: &[&str] = &["dataplane", "egress", "scale", "live", "control", "memory"];

fn main() -> Result<()> {
    require_root();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut object: Option<Vec<u8>> = None;
    let mut fib_object: Option<&'static [u8]> = None;
    let mut sections: Vec<String> = Vec::new();
    let mut rest = args.iter();
    match args.first().map(String::as_str) {
        Some("conntrack") => return conntrack_main(&args[1..]),
        Some("compare") => {
            let objects = args[1..]
                .iter()
                .map(|spec| {
                    let (label, path) = spec.split_once('=').context("compare label=object...")?;
                    let object = std::fs::read(path).with_context(|| format!("reading {path}"))?;
                    Ok((label.to_string(), object))
                })
                .collect::<Result<Vec<_>>>()?;
            ensure!(!objects.is_empty(), "compare needs label=object arguments");
            println!("{}", report::table(&dataplane::scale::compare(&objects)?));
            return Ok(());
        }
        Some("-h" | "--help") => {
            println!(
                "usage: lb-bench [--object <lb-xdp object>] [--fib-object <egress-fib build>] [section...]\n       \
                 lb-bench conntrack <flows per CPU> <label=object>...\n       \
                 lb-bench compare <label=lb-xdp object>...   (LB_BENCH_ROUNDS: rounds, default 5)\n\
                 sections: {} (default: all)",
                SECTIONS.join(", ")
            );
            return Ok(());
        }
        _ => {}
    }
    while let Some(a) = rest.next() {
        if a == "--object" {
            // Another build of lb-xdp: profiling experiments, before/after figures.
            let path = rest.next().context("--object needs a path")?;
            object = Some(std::fs::read(path).with_context(|| format!("reading {path}"))?);
        } else if a == "--fib-object" {
            // lb-xdp built with the egress-fib feature (section egress; xtask builds it).
            let path = rest.next().context("--fib-object needs a path")?;
            let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            fib_object = Some(Vec::leak(bytes));
        } else if SECTIONS.contains(&a.as_str()) {
            sections.push(a.clone());
        } else {
            bail!("unknown section {a:?} (sections: {})", SECTIONS.join(", "));
        }
    }
    if sections.is_empty() {
        sections = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    let lb_object = object.as_deref().unwrap_or(lb_objects::EBPF_OBJECT);
    let mut rows = Vec::new();
    for section in &sections {
        eprintln!("==> section: {section}");
        rows.extend(match section.as_str() {
            "dataplane" => dataplane::run(lb_object)?,
            "egress" => egress::run(lb_objects::EBPF_OBJECT, fib_object)?,
            "scale" => dataplane::scale::scale(lb_object)?,
            "live" => live::run(lb_object)?,
            "control" => control::run()?,
            "memory" => memory::run(lb_object)?,
            _ => unreachable!(),
        });
    }
    println!("{}", report::table(&rows));
    for line in dataplane::targets::targets(&rows) {
        println!("{line}");
    }
    Ok(())
}

fn conntrack_main(args: &[String]) -> Result<()> {
    if args.len() < 2 {
        bail!("usage: lb-bench conntrack <flows per CPU> <label=object>...");
    }
    let flows: u32 = args[0].parse().context("flows per CPU")?;
    println!("| connection table | path | median ns | p90 ns | p99 ns |");
    println!("| --- | --- | ---: | ---: | ---: |");
    for spec in &args[1..] {
        let (label, path) = spec.split_once('=').context("label=object")?;
        eprintln!("==> {label}: {flows} flows on each of 2 CPUs");
        match bench_object(path, flows) {
            Ok(phases) => {
                for mut p in phases {
                    p.ns.sort_unstable();
                    println!(
                        "| {label} | {} | {} | {} | {} |",
                        p.name,
                        percentile(&p.ns, 0.5),
                        percentile(&p.ns, 0.9),
                        percentile(&p.ns, 0.99)
                    );
                }
            }
            Err(e) => println!("| {label} | all | FAILED: {e:#} | | |"),
        }
    }
    Ok(())
}
