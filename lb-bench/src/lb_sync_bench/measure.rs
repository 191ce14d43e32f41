//! The bench's course: the lab up, the idle agents measured, the refresh phase found, then
//! each rate's window and the refresh after it.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use lb_lab::netns::sh;
use lb_lab::{HTTP_PORT, Lab, VIP4};
use serde_json::{Value, json};

use crate::params::*;
use crate::port::*;
use crate::readings::*;
use crate::report::*;
use crate::row::*;
use crate::steps::*;

/// Idle agents: what to subtract from every window.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Idle {
    pub(crate) cpu_s_per_s: [f64; 2],
    /// lb1's link to lb2, the agent's count (heartbeats).
    pub(crate) app_bytes_per_s: f64,
    /// Both sync interfaces' transmitted bytes.
    pub(crate) wire_bytes_per_s: f64,
}

pub(crate) struct Bench<'a> {
    pub(crate) lab: &'a Lab,
    pub(crate) agents: [Agent; 2],
    pub(crate) ports: [Port; 2],
    /// The next flow number (a distinct source per flow).
    pub(crate) next_flow: u64,
    pub(crate) tck: f64,
    pub(crate) idle: Idle,
    pub(crate) period: f64,
    /// A refresh instant of each agent (its refreshes follow every `period`).
    pub(crate) phase: [Option<Instant>; 2],
    /// When each agent last got a SYN from the bench.
    pub(crate) last_syn: [Option<Instant>; 2],
    pub(crate) started: Instant,
    pub(crate) refreshes: Vec<Value>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let opts = options()?;
    ensure!(
        !Lab::exists(&opts),
        "a lab with prefix {PREFIX} exists (another run, or an interrupted one: `lb-sync-bench --down`)"
    );
    ensure!(
        !Path::new(PIN_ROOT).exists(),
        "{PIN_ROOT} exists (an interrupted run: `lb-sync-bench --down`)"
    );
    let started = Instant::now();
    progress("bringing up the lab (2 load balancers with flow sync, 3 backends, release agents)");
    let lab = Lab::up(opts, &mut |s| progress(&format!("[lab] {s}")))?;
    progress(&format!(
        "lab up in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    // From here on, any error drops `lab`, which tears everything down.
    let result = measure(&lab, args);
    progress("tearing the lab down");
    let report = result?;
    drop(lab);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

pub(crate) fn measure(lab: &Lab, args: &Args) -> Result<Value> {
    check_stop()?;
    let procs = lab.processes();
    let pid = |node: &str| -> Result<u32> {
        procs
            .iter()
            .find(|(k, n, _)| k == "agent" && n == node)
            .map(|p| p.2)
            .with_context(|| format!("no agent recorded for {node}"))
    };
    let agents = [
        Agent {
            i: 1,
            name: "lb1".into(),
            peer: "lb2".into(),
            pid: pid("lb1")?,
        },
        Agent {
            i: 2,
            name: "lb2".into(),
            peer: "lb1".into(),
            pid: pid("lb2")?,
        },
    ];
    let config = lb_userspace::config::Config::parse(&lab.agent_config(1))?;
    let sync = config
        .sync
        .as_ref()
        .context("the lab's agents have no [sync]")?;
    ensure!(
        sync.flows == lb_userspace::config::FlowSync::All,
        "the lab's agents do not share every new flow (flows = \"all\")"
    );
    let period = sync.refresh_secs as f64;

    // The backends answer the SYNs towards their sources: those replies end in the router.
    blackhole_sources(lab)?;
    progress(&format!(
        "router: blackhole route for the SYNs' sources {SRC_NET} (the backends' SYN-ACKs end there)"
    ));

    let ports = [Port::open(lab, 1)?, Port::open(lab, 2)?];
    let mut b = Bench {
        lab,
        agents,
        ports,
        next_flow: 0,
        tck: clk_tck(),
        idle: Idle::default(),
        period,
        phase: [None, None],
        last_syn: [None, None],
        started: Instant::now(),
        refreshes: Vec::new(),
    };
    b.wait_links()?;
    b.measure_idle()?;
    b.find_refresh_phase()?;

    let mut rows = Vec::new();
    for &rate in &args.rates {
        check_stop()?;
        b.place_window(args.secs)?;
        let row = b.run_rate(rate, args.secs)?;
        progress(&format!(
            "{rate}/s: lb1 {:.2} % CPU, lb2 {:.2} % CPU, {:.1} B/flow on the link{}",
            row.cpu_pct(0),
            row.cpu_pct(1),
            row.app_bytes_per_flow(),
            if row.flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", row.flags.join(", "))
            }
        ));
        rows.push(row);
    }
    // The last rate's flows are refreshed once more: measure that too.
    b.measure_next_refresh()?;
    let refresh_cost = refresh_per_10k(&b.refreshes);
    let tables = b.table_entries();
    let metrics_bytes = b.metrics_bytes_sent();

    let host = host_info();
    Ok(json!({
        "machine": host,
        "setup": {
            "lab_prefix": PREFIX,
            "path": "SYN frames from the router's lb1 veth to lb1 eth0 (AF_PACKET), XDP on lb1, flows synced lb1 -> lb2 over TCP on the sw bridge",
            "sources": SRC_NET,
            "destination": format!("{VIP4}:{HTTP_PORT}"),
            "secs_per_rate": args.secs,
            "refresh_secs": period,
            "max_flows": config.dataplane.max_flows,
            "clock_ticks_per_sec": b.tck,
        },
        "idle": {
            "lb1_agent_cpu_pct": b.idle.cpu_s_per_s[0] * 100.0,
            "lb2_agent_cpu_pct": b.idle.cpu_s_per_s[1] * 100.0,
            "sync_app_bytes_per_sec": b.idle.app_bytes_per_s,
            "sync_wire_bytes_per_sec": b.idle.wire_bytes_per_s,
        },
        "rates": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "refreshes": b.refreshes.clone(),
        "refresh_per_10k_flows_per_sec": refresh_cost,
        "tables_at_end": tables,
        "metrics_lb_sync_bytes_sent_total_lb1_to_lb2": metrics_bytes,
        "total_secs": b.started.elapsed().as_secs_f64(),
    }))
}

/// What refreshing costs per 10,000 new flows/s, from the refresh that re-sent the most flows:
/// in a steady state every new flow is re-sent once, by the first refresh after it started.
/// The backends answer the SYNs towards their sources: a blackhole route for `SRC_NET` in the
/// router ends those replies there.
pub(crate) fn blackhole_sources(lab: &Lab) -> Result<()> {
    sh(
        "ip",
        &[
            "-n",
            &lab.ns("router"),
            "route",
            "add",
            "blackhole",
            SRC_NET,
        ],
    )?;
    Ok(())
}

pub(crate) fn refresh_per_10k(events: &[Value]) -> Value {
    let Some(e) = events
        .iter()
        .filter(|e| e["lb1_flows_refreshed"].as_i64().unwrap_or(0) >= 1000)
        .max_by_key(|e| e["lb1_flows_refreshed"].as_i64().unwrap_or(0))
    else {
        return Value::Null;
    };
    let n = e["lb1_flows_refreshed"].as_i64().unwrap_or(1) as f64;
    let per = |k: &str| e[k].as_f64().unwrap_or(f64::NAN) / n;
    json!({
        "from_refresh_at_secs": e["at_secs"],
        "flows": n,
        "app_bytes_per_flow": per("lb1_to_lb2_app_bytes"),
        "lb1_agent_cpu_pct": per("lb1_agent_cpu_secs") * 10_000.0 * 100.0,
        "lb2_agent_cpu_pct": per("lb2_agent_cpu_secs") * 10_000.0 * 100.0,
        "app_bytes_per_sec": per("lb1_to_lb2_app_bytes") * 10_000.0,
    })
}

pub(crate) fn host_info() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    json!({ "cpus": cpus, "cpu_model": model, "kernel": kernel, "loadavg_at_end": load })
}
