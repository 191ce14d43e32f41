//! `lb-lab`, run by `cargo xtask lab`: the anycast lab (the lb-lab library builds it) for people.
//! `up` builds it and shows a live view; `view` shows it again; `shift` withdraws or restores
//! one load balancer's routes; `down` removes everything it started.
//!
//! usage: lb-lab up [--view SECS] [--lbs N] | view [--secs SECS] | shift lbN [--restore] | down

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_lab::{self as lab, HealthTiming, Lab, LabOptions};

const PREFIX: &str = "lblab";
const RUN_DIR: &str = "/run/lb-lab";
const PIN_ROOT: &str = "/sys/fs/bpf/lb-lab";
/// The lab page on the host; load balancer i's status page on WEB_PORT + i.
const WEB_PORT: u16 = 9460;

/// The lab's options; `lbs` load balancers (`up --lbs N`; the others find the running lab's).
fn options(root: &Path, lbs: usize) -> LabOptions {
    LabOptions {
        prefix: PREFIX.into(),
        run_dir: RUN_DIR.into(),
        pin_root: PIN_ROOT.into(),
        lb_bin: root.join("target/debug/lb"),
        echo_bin: root.join("target/debug/lb-echo"),
        lbs,
        backends: 3,
        configured_backends: 3,
        health: HealthTiming::default(),
        flow_sync: true,
        flow_mode: None,
        second_chance_secs: None,
        fabric_mtu: lab::FABRIC_MTU,
        client_route_mtu: None,
        sync_refresh_secs: None,
        capabilities: None,
        web: Some(WEB_PORT),
        max_flows: 200_000,
        new_flow_rate: 0,
    }
}

/// The running lab, not torn down when this process exits.
fn running(root: &Path) -> Result<Lab> {
    let opts = options(root, Lab::running_lbs(PREFIX));
    if !Lab::exists(&opts) {
        bail!("the lab is not up (`cargo xtask lab` starts it)");
    }
    Ok(Lab { opts, owned: false })
}

fn up(root: &Path, view_secs: u64, lbs: usize) -> Result<()> {
    let started = Instant::now();
    let mut lab = Lab::up(options(root, lbs), &mut |step| println!("[lab] {step}"))?;
    lab.owned = false;
    println!("[lab] up in {:.1} s\n", started.elapsed().as_secs_f64());
    describe(&lab);
    view(&lab, view_secs)
}

fn view_running(root: &Path, secs: u64) -> Result<()> {
    view(&running(root)?, secs)
}

fn down(root: &Path) -> Result<()> {
    // Every load balancer a lab of any size made (2 when none is left, for the other nodes).
    let lbs = Lab::running_lbs(PREFIX).max(DEFAULT_LBS);
    let lab = Lab {
        opts: options(root, lbs),
        owned: false,
    };
    let c = lab.down();
    println!(
        "[lab] stopped {} processes, removed {} namespaces, the pins under {PIN_ROOT} and {RUN_DIR}",
        c.processes, c.namespaces
    );
    if !c.leftovers.is_empty() {
        bail!("could not remove: {}", c.leftovers.join("; "));
    }
    Ok(())
}

/// Withdraws (`lb node drain`) or restores one load balancer's routes, then shows the router.
fn shift(root: &Path, lb_name: &str, restore: bool) -> Result<()> {
    let lab = running(root)?;
    let i: usize = lb_name
        .strip_prefix("lb")
        .and_then(|n| n.parse().ok())
        .filter(|n| (1..=lab.opts.lbs).contains(n))
        .with_context(|| {
            format!(
                "no load balancer `{lb_name}`: the lab has lb1 to lb{}",
                lab.opts.lbs
            )
        })?;
    let took = lab.shift(i, restore, Duration::from_secs(15))?;
    println!(
        "[lab] lb{i}: {}",
        if restore {
            "routes restored"
        } else {
            "routes withdrawn"
        }
    );
    println!("[lab] router after {:.1} s:", took.as_secs_f64());
    for vip in [IpAddr::V4(lab::VIP4), IpAddr::V6(lab::VIP6)] {
        let hops: Vec<String> = lab
            .router_paths(vip)?
            .into_iter()
            .map(|h| format!("lb{} ({h})", lab.lb_of_hop(h).unwrap_or(0)))
            .collect();
        let hops = if hops.is_empty() {
            "nothing".to_string()
        } else {
            hops.join(", ")
        };
        println!("    {vip} via {hops}");
    }
    Ok(())
}

fn describe(lab: &Lab) {
    let o = &lab.opts;
    println!(
        "  client    {}-client   {} / {}",
        o.prefix,
        lab::CLIENT4,
        lab::CLIENT6
    );
    println!(
        "  router    {}-router   BIRD, ECMP over the load balancers (L4 hash)",
        o.prefix
    );
    for i in 1..=o.lbs {
        println!(
            "  lb{i}       {}-lb{i}      {} / {}  agent socket {}",
            o.prefix,
            lab::lb_link4(i).1,
            lab::lb_link6(i).1,
            lab.socket(i).display()
        );
    }
    println!(
        "  sw        {}-sw       the sync network: a bridge to every load balancer's sync0 (peer sync, port {})",
        o.prefix,
        lab::SYNC_PORT
    );
    for j in 1..=o.backends {
        println!(
            "  b{j}        {}-b{j}       tunnel address {}",
            o.prefix,
            lab::backend_link6(j).1
        );
    }
    println!(
        "  VIPs      {}:{{80,7777}}  [{}]:{{80,7777}}   (80: nginx, 7777: echo)",
        lab::VIP4,
        lab::VIP6
    );
    println!(
        "\n  try:  LB_SOCKET={} target/debug/lb backend list",
        lab.socket(1).display()
    );
    println!(
        "        ip netns exec {}-client curl -s http://{}/",
        o.prefix,
        lab::VIP4
    );
    println!("        cargo xtask lab shift lb1    (and --restore), cargo xtask lab down\n");
}

/// Sends HTTP requests from the client for `secs` seconds and prints, every 2 s, requests per
/// backend, packets per load balancer, the router's paths and health.
fn view(lab: &Lab, secs: u64) -> Result<()> {
    if secs == 0 {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Result<String, String>>();
    let ns = lab.ns("client");
    let until = Instant::now() + Duration::from_secs(secs);
    let load = std::thread::spawn(move || {
        lab::in_ns(&ns, move || {
            let vips = [
                SocketAddr::new(IpAddr::V4(lab::VIP4), lab::HTTP_PORT),
                SocketAddr::new(IpAddr::V6(lab::VIP6), lab::HTTP_PORT),
            ];
            let mut n = 0usize;
            while Instant::now() < until {
                let r = lab::http_get(vips[n % 2], Duration::from_secs(1))
                    .map_err(|e| format!("{e:#}"));
                if tx.send(r).is_err() {
                    return;
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    });
    let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0u64;
    let mut last_error = String::new();
    let started = Instant::now();
    while Instant::now() < until {
        std::thread::sleep(
            Duration::from_secs(2).min(until.saturating_duration_since(Instant::now())),
        );
        for r in rx.try_iter() {
            match r {
                Ok(b) => *per_backend.entry(b).or_default() += 1,
                Err(e) => {
                    failed += 1;
                    last_error = e;
                }
            }
        }
        print_view(lab, started.elapsed(), &per_backend, failed, &last_error);
    }
    let _ = load.join();
    println!(
        "[lab] still running: `cargo xtask lab view` watches again, `cargo xtask lab down` removes it"
    );
    Ok(())
}

fn print_view(
    lab: &Lab,
    t: Duration,
    per_backend: &BTreeMap<String, u64>,
    failed: u64,
    last_error: &str,
) {
    let total: u64 = per_backend.values().sum();
    println!(
        "--- t = {:>3} s: {total} requests answered, {failed} failed ---",
        t.as_secs()
    );
    let mut line = String::from("  requests per backend:");
    for (b, n) in per_backend {
        line.push_str(&format!(
            "  {b} {n} ({:.0}%)",
            *n as f64 * 100.0 / total.max(1) as f64
        ));
    }
    println!("{line}");
    let paths = lab.router_paths(IpAddr::V4(lab::VIP4)).unwrap_or_default();
    for i in 1..=lab.opts.lbs {
        let routed = paths.iter().any(|h| lab.lb_of_hop(*h) == Some(i));
        let pkts: u64 = lab
            .lb_json(i, &["stats"])
            .ok()
            .and_then(|s| {
                s["now"]["vips"].as_array().map(|v| {
                    v.iter()
                        .map(|e| e[1]["packets"].as_u64().unwrap_or(0))
                        .sum()
                })
            })
            .unwrap_or(0);
        let health: Vec<String> = lab
            .lb_json(
                i,
                &[
                    "backend",
                    "list",
                    &format!("{}:{}/tcp", lab::VIP4, lab::HTTP_PORT),
                ],
            )
            .ok()
            .and_then(|v| {
                v.as_array().map(|a| {
                    a.iter()
                        .map(|b| {
                            let j = (1..=lab.opts.backends)
                                .find(|&j| b["backend"] == lab::backend_link6(j).1.to_string())
                                .unwrap_or(0);
                            format!("b{j} {}", b["health"].as_str().unwrap_or("?"))
                        })
                        .collect()
                })
            })
            .unwrap_or_default();
        let sync = lab
            .lb_json(i, &["peer", "list"])
            .ok()
            .map(|p| {
                let agree = p["peers"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .all(|x| x["state_match"] == true && x["table_match"] == true)
                    })
                    .unwrap_or(false);
                format!(
                    "sync v{} {}, flows out {} in {}",
                    p["version"],
                    if agree { "agrees" } else { "DIFFERS" },
                    p["flows_exported"],
                    p["flows_imported"]
                )
            })
            .unwrap_or_default();
        println!(
            "  lb{i}: {:<9} VIP packets in {pkts:>8}   health {}   {sync}",
            if routed { "routed" } else { "withdrawn" },
            health.join(", ")
        );
    }
    if failed > 0 && !last_error.is_empty() {
        println!("  last failure: {last_error}");
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("lb-lab lives in the workspace")
        .to_path_buf()
}

const USAGE: &str =
    "usage: lb-lab up [--view SECS] [--lbs N] | view [--secs SECS] | shift lbN [--restore] | down";
const DEFAULT_LBS: usize = 2;

fn secs(args: &[String], flag: &str) -> Result<u64> {
    match args {
        [] => Ok(20),
        [f, n] if f == flag => n.parse().with_context(|| format!("{flag} takes seconds")),
        _ => bail!("{USAGE}"),
    }
}

/// `up`'s flags: (view seconds, load balancers).
fn up_flags(args: &[String]) -> Result<(u64, usize)> {
    let (mut view, mut lbs) = (20, DEFAULT_LBS);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} takes a value\n{USAGE}"))?;
        match flag.as_str() {
            "--view" => view = value.parse().context("--view takes seconds")?,
            "--lbs" => lbs = value.parse().context("--lbs takes a number")?,
            _ => bail!("{USAGE}"),
        }
    }
    Ok((view, lbs))
}

fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates namespaces and loads XDP programs: run as root");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    match args.first().map(String::as_str).unwrap_or("up") {
        "up" => {
            let (view, lbs) = up_flags(args.get(1..).unwrap_or_default())?;
            up(&root, view, lbs)
        }
        "view" => view_running(&root, secs(&args[1..], "--secs")?),
        "shift" => match &args[1..] {
            [lb] => shift(&root, lb, false),
            [lb, r] if r == "--restore" => shift(&root, lb, true),
            _ => bail!("{USAGE}"),
        },
        "down" if args.len() == 1 => down(&root),
        // Started by `up` (lb_lab::web): the pages, until `down` stops it.
        "web" => match &args[1..] {
            [prefix, run_dir, lbs, base] => {
                lb_lab::web::serve(prefix, Path::new(run_dir), lbs.parse()?, base.parse()?)
            }
            _ => bail!("{USAGE}"),
        },
        _ => bail!("{USAGE}"),
    }
}
