//! The bench's parameters: its fixed constants, the command line, and the lab's options.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use lb_lab::LabOptions;

pub(crate) const PREFIX: &str = "lbsb";
pub(crate) const RUN_DIR: &str = "/tmp/lbsb-run";
pub(crate) const PIN_ROOT: &str = "/sys/fs/bpf/lbsb";
/// Where the SYNs come from: 64 addresses the lab does not use, blackholed in the router.
pub(crate) const SRC_NET: &str = "203.0.113.192/26";
pub(crate) const SRC_BASE: u8 = 192;
pub(crate) const SRC_HOSTS: u64 = 64;
pub(crate) const PORT_BASE: u16 = 1024;
pub(crate) const PORTS: u64 = 64_000;
pub(crate) const DEFAULT_RATES: [u32; 4] = [2_000, 5_000, 10_000, 20_000];
pub(crate) const DEFAULT_SECS: f64 = 10.0;
/// Marker flows sent to each load balancer to find the phase of its refreshes.
pub(crate) const MARKERS: u64 = 16;
/// Quiet time measured before the first rate (idle CPU and link bytes).
pub(crate) const IDLE_SECS: f64 = 6.0;
/// Time a window needs besides sending: snapshots and settling (typically ~1 s).
pub(crate) const WINDOW_OVERHEAD: f64 = 4.0;
/// Distance kept between a window and a refresh.
pub(crate) const TICK_MARGIN: f64 = 1.5;
/// Below this share of the SYNs sent, exported or imported flows make a row LOSSY.
pub(crate) const LOSSY_BELOW: f64 = 0.9;
/// Frames sent back to back at most, before the pacing loop looks at the clock again.
pub(crate) const MAX_BURST: usize = 256;

pub(crate) struct Args {
    pub(crate) rates: Vec<u32>,
    pub(crate) secs: f64,
    pub(crate) json: bool,
    pub(crate) down: bool,
    /// The modes course (`modes`): all, changes and off, steady / drain / flood.
    pub(crate) modes: bool,
    pub(crate) flood_rate: u32,
}

pub(crate) fn usage() -> ! {
    eprintln!(
        "usage: lb-sync-bench [--rates R1,R2,..] [--secs S] [--json] [--modes [--flood-rate R]] | --down\n\
         \x20 --rates  new flows per second, one window each (default 2000,5000,10000,20000)\n\
         \x20 --secs   seconds of sending per rate (default 10)\n\
         \x20 --modes  each [sync] flows mode (all, changes, off): steady at the first rate (default\n\
         \x20          10000), with a drain every 3 s, and a spoofed SYN flood at --flood-rate (50000)\n\
         \x20 --json   print the results as JSON instead of tables (progress stays on stderr)\n\
         \x20 --down   remove the lab an interrupted run left behind"
    );
    std::process::exit(2)
}

pub(crate) fn parse_args() -> Result<Args> {
    let mut a = Args {
        rates: DEFAULT_RATES.to_vec(),
        secs: DEFAULT_SECS,
        json: false,
        down: false,
        modes: false,
        flood_rate: 50_000,
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
            "--modes" => a.modes = true,
            "--flood-rate" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.flood_rate = v.parse().with_context(|| format!("--flood-rate {v}"))?;
            }
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
    ensure!(
        (1..=1_000_000).contains(&a.flood_rate),
        "--flood-rate: 1 to 1000000 flows per second"
    );
    if a.modes && a.rates == DEFAULT_RATES {
        a.rates = vec![10_000];
    }
    let flows: f64 = if a.modes {
        (2.0 * a.rates[0] as f64 + a.flood_rate as f64) * a.secs
    } else {
        a.rates.iter().map(|&r| r as f64 * a.secs).sum()
    };
    ensure!(
        flows + 4.0 * MARKERS as f64 <= (SRC_HOSTS * PORTS) as f64,
        "{flows} flows in all: more than the {} distinct sources of {SRC_NET}",
        SRC_HOSTS * PORTS
    );
    Ok(a)
}

pub(crate) fn options() -> Result<LabOptions> {
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
