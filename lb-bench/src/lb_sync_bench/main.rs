//! `lb-sync-bench`, run by `cargo xtask bench --sync` (root): what peer flow sync costs, per
//! 10,000 new flows per second.
//!
//! It brings up the anycast lab (prefix `lbsb`, release agents), then for each rate sends raw
//! TCP SYNs, each a new flow, from the router's `lb1` veth straight to lb1's eth0 (no ECMP),
//! at a paced rate for a fixed time. lb1's XDP program creates an entry for each and exports it
//! on its ring buffer; lb1's agent sends the flows to lb2, whose agent installs them. Per rate it
//! measures, from quiet to quiet: the frames sent, the SYNs lb1 counted, flow events (and lost
//! ones), flows exported by lb1 and imported by lb2 (and drops), the bytes on lb1's link to lb2
//! (as lb2 counts each message, framing included; lb1's lb_sync_bytes_sent_total as a
//! cross-check; and the sync interfaces' bytes on the wire), and both agents' CPU time
//! (utime + stime), with the idle agents' CPU and link bytes subtracted.
//!
//! The agents also re-send their recent flows every `refresh_secs` (set to 30 s here), scanning their whole
//! connection table. So the new-flow path is measured alone, each rate's window is placed
//! between two refreshes (their phase is found first with a few marker flows), and the
//! refreshes themselves are measured between windows and reported apart.
//!
//! Sources are 203.0.113.192/26 (documentation, unused by the lab) with varying ports; the
//! backends' SYN-ACKs towards them die in a blackhole route the bench adds in the router, so no
//! packet leaves the lab's namespaces. The lab is torn down at the end, on error and on Ctrl-C.
//!
//! usage: lb-sync-bench [--rates 2000,5000,10000,20000] [--secs 10] [--json] | --down

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lb_lab::{Lab, LabOptions};

mod measure;
mod port;
mod readings;
mod report;
mod row;
mod window;

use measure::*;
use port::*;
use readings::*;
use report::*;
use row::*;

const PREFIX: &str = "lbsb";
const RUN_DIR: &str = "/tmp/lbsb-run";
const PIN_ROOT: &str = "/sys/fs/bpf/lbsb";
/// Where the SYNs come from: 64 addresses the lab does not use, blackholed in the router.
const SRC_NET: &str = "203.0.113.192/26";
const SRC_BASE: u8 = 192;
const SRC_HOSTS: u64 = 64;
const PORT_BASE: u16 = 1024;
const PORTS: u64 = 64_000;
const DEFAULT_RATES: [u32; 4] = [2_000, 5_000, 10_000, 20_000];
const DEFAULT_SECS: f64 = 10.0;
/// Marker flows sent to each load balancer to find the phase of its refreshes.
const MARKERS: u64 = 16;
/// Quiet time measured before the first rate (idle CPU and link bytes).
const IDLE_SECS: f64 = 6.0;
/// Time a window needs besides sending: snapshots and settling (typically ~1 s).
const WINDOW_OVERHEAD: f64 = 4.0;
/// Distance kept between a window and a refresh.
const TICK_MARGIN: f64 = 1.5;
/// Below this share of the SYNs sent, exported or imported flows make a row LOSSY.
const LOSSY_BELOW: f64 = 0.9;
/// Frames sent back to back at most, before the pacing loop looks at the clock again.
const MAX_BURST: usize = 256;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn check_stop() -> Result<()> {
    ensure!(
        !STOP.load(Ordering::Relaxed),
        "interrupted (the lab is being torn down)"
    );
    Ok(())
}

/// Sleeps up to `d`, in short steps so Ctrl-C is heard.
fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn sleep_until(t: Instant) -> Result<()> {
    nap(t.saturating_duration_since(Instant::now()))
}

struct Args {
    rates: Vec<u32>,
    secs: f64,
    json: bool,
    down: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: lb-sync-bench [--rates R1,R2,..] [--secs S] [--json] | --down\n\
         \x20 --rates  new flows per second, one window each (default 2000,5000,10000,20000)\n\
         \x20 --secs   seconds of sending per rate (default 10)\n\
         \x20 --json   print the results as JSON instead of tables (progress stays on stderr)\n\
         \x20 --down   remove the lab an interrupted run left behind"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rates: DEFAULT_RATES.to_vec(),
        secs: DEFAULT_SECS,
        json: false,
        down: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rates" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.rates = v
                    .split(',')
                    .map(|r| r.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--rates {v}"))?;
            }
            "--secs" | "--duration" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.secs = v.parse().with_context(|| format!("--secs {v}"))?;
            }
            "--json" => a.json = true,
            "--down" => a.down = true,
            "-h" | "--help" => usage(),
            other => bail!("unknown argument {other} (--help lists them)"),
        }
    }
    ensure!(
        !a.rates.is_empty() && a.rates.iter().all(|&r| (1..=1_000_000).contains(&r)),
        "--rates: 1 to 1000000 flows per second each"
    );
    ensure!(
        (1.0..=600.0).contains(&a.secs),
        "--secs {}: use 1 to 600",
        a.secs
    );
    let flows: f64 = a.rates.iter().map(|&r| r as f64 * a.secs).sum();
    ensure!(
        flows + 4.0 * MARKERS as f64 <= (SRC_HOSTS * PORTS) as f64,
        "{flows} flows in all: more than the {} distinct sources of {SRC_NET}",
        SRC_HOSTS * PORTS
    );
    Ok(a)
}

fn options() -> Result<LabOptions> {
    // The agents the xtask step built in release, next to this binary.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench's directory")?.to_path_buf();
    ensure!(
        dir.file_name().is_some_and(|n| n == "release"),
        "{} is not a release build: run `cargo xtask bench --sync` (it builds the agents in release)",
        exe.display()
    );
    let (lb, echo) = (dir.join("lb"), dir.join("lb-echo"));
    for b in [&lb, &echo] {
        ensure!(
            b.exists(),
            "{} is missing: `cargo build --release -p lb-userspace -p lb-lab --bins`",
            b.display()
        );
    }
    let mut o = LabOptions::new(
        PREFIX.into(),
        PathBuf::from(RUN_DIR),
        PathBuf::from(PIN_ROOT),
        lb,
        echo,
    );
    // Refreshes every 30 s (the default is 300 s), so a run measures them in minutes.
    o.sync_refresh_secs = Some(30);
    Ok(o)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lb-sync-bench: {e:#}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lb-sync-bench: run as root (it creates namespaces and loads XDP programs)");
        std::process::exit(1);
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let result = if args.down { down() } else { run(&args) };
    if let Err(e) = result {
        eprintln!("lb-sync-bench: {e:#}");
        std::process::exit(1);
    }
}

fn down() -> Result<()> {
    let lab = Lab {
        opts: options()?,
        owned: false,
    };
    let c = lab.down();
    eprintln!(
        "removed: {} processes, {} namespaces{}",
        c.processes,
        c.namespaces,
        if c.leftovers.is_empty() {
            String::new()
        } else {
            format!("; left: {:?}", c.leftovers)
        }
    );
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("[sync-bench] {msg}");
}
