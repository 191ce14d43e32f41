//! `lb-sync-bench --modes`: what each `[sync] flows` mode (all, changes, off) costs, in three
//! scenarios per mode, each on a lab of its own (prefix `lbsb`, release agents):
//!
//! - **steady**: new flows into lb1 at `--rates`' first rate (default 10,000/s) for `--secs`,
//!   the tables unchanged;
//! - **drain**: the same, while lb1 drains and undrains backend 3 of the SYNs' VIP every
//!   `DRAIN_EVERY` seconds (each a change of both agents' tables, replicated to lb2);
//! - **flood**: spoofed SYNs at `--flood-rate` (default 50,000/s), the tables unchanged: what
//!   reaches lb2's table and queues.
//!
//! Per scenario: the bytes lb2 received from lb1 on the sync link, both agents' CPU (idle
//! subtracted), flows lb1 sent and lb2 imported, drops, and lb2's peer copies (a walk of its
//! connection table). Refreshes are kept out by a 600 s refresh period (a link's first refresh
//! comes at least one period after it came up).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lb_common::CONN_F_PEER;
use lb_lab::{HTTP_PORT, Lab, VIP4, backend_link6};
use lb_userspace::dataplane::FlowTable;
use serde_json::{Value, json};

use crate::measure::*;
use crate::params::*;
use crate::port::*;
use crate::readings::*;
use crate::row::delta;
use crate::steps::*;

/// Seconds between the drain scenario's changes (drain, undrain, drain, ...).
pub(crate) const DRAIN_EVERY: f64 = 3.0;
/// The refresh period of the modes course: longer than any run.
const REFRESH: u64 = 600;

pub(crate) fn run_modes(args: &Args) -> Result<()> {
    let mut results = Vec::new();
    for mode in ["all", "changes", "off"] {
        check_stop()?;
        let mut opts = options()?;
        opts.sync_refresh_secs = Some(REFRESH);
        opts.flow_mode = Some(mode.to_string());
        // Room for the flood: every SYN is an entry on lb1 (and, with `all`, on lb2).
        opts.max_flows = 1_000_000;
        ensure!(
            !Lab::exists(&opts),
            "a lab with prefix {PREFIX} exists (`lb-sync-bench --down`)"
        );
        progress(&format!("flows = \"{mode}\": bringing up the lab"));
        let lab = Lab::up(opts, &mut |s| progress(&format!("[lab] {s}")))?;
        let r = measure_mode(&lab, args, mode);
        progress("tearing the lab down");
        drop(lab);
        results.push(r?);
    }
    let report = json!({ "machine": host_info(), "secs": args.secs, "modes": results });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_modes(&report));
    }
    Ok(())
}

fn measure_mode(lab: &Lab, args: &Args, mode: &str) -> Result<Value> {
    let procs = lab.processes();
    let pid = |node: &str| -> Result<u32> {
        procs
            .iter()
            .find(|(k, n, _)| k == "agent" && n == node)
            .map(|p| p.2)
            .with_context(|| format!("no agent recorded for {node}"))
    };
    blackhole_sources(lab)?;
    let mut b = Bench {
        lab,
        agents: [
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
        ],
        ports: [Port::open(lab, 1)?, Port::open(lab, 2)?],
        next_flow: 0,
        tck: clk_tck(),
        idle: Idle::default(),
        period: REFRESH as f64,
        phase: [None, None],
        last_syn: [None, None],
        started: Instant::now(),
        refreshes: Vec::new(),
    };
    b.wait_links()?;
    b.measure_idle()?;
    let rate = args.rates[0];
    let steady = b.scenario(mode, "steady", rate, args.secs, false)?;
    let drain = b.scenario(mode, "drain", rate, args.secs, true)?;
    let flood = b.scenario(mode, "flood", args.flood_rate, args.secs, false)?;
    Ok(json!({
        "mode": mode,
        "idle": {
            "lb1_agent_cpu_pct": b.idle.cpu_s_per_s[0] * 100.0,
            "lb2_agent_cpu_pct": b.idle.cpu_s_per_s[1] * 100.0,
            "sync_app_bytes_per_sec": b.idle.app_bytes_per_s,
        },
        "scenarios": [steady, drain, flood],
    }))
}

/// lb2's connection table: (entries, peer copies).
fn table_of(lab: &Lab, i: usize) -> Result<(u64, u64)> {
    let pins = lab.opts.pin_root.join(lb_lab::lb_name(i));
    let t = FlowTable::open_pinned(&pins)?;
    let (mut all, mut peer) = (0, 0);
    t.walk(|_, e| {
        all += 1;
        if e.flags & CONN_F_PEER != 0 {
            peer += 1;
        }
    })?;
    Ok((all, peer))
}

impl Bench<'_> {
    fn scenario(
        &mut self,
        mode: &str,
        name: &str,
        rate: u32,
        secs: f64,
        drains: bool,
    ) -> Result<Value> {
        check_stop()?;
        let label = format!("{mode}/{name} {rate}/s");
        let count = (rate as f64 * secs).round() as u64;
        let first = self.next_flow;
        // Real new flows are a SYN and a first ACK (the ACK makes the entry); the flood is
        // spoofed SYNs alone.
        let flood = name == "flood";
        let per_flow = if flood { 1 } else { 2 };
        let frames = if flood {
            (first..first + count)
                .map(|n| self.ports[0].syn(n))
                .collect::<Result<Vec<_>>>()?
        } else {
            (first..first + count)
                .map(|n| self.ports[0].new_flow(n))
                .collect::<Result<Vec<_>>>()?
                .concat()
        };
        self.next_flow += count;
        let table_before = table_of(self.lab, 2)?;
        let a = self.snapshot()?;
        let vip = format!("{VIP4}:{HTTP_PORT}/tcp");
        let b3 = backend_link6(3).1.to_string();
        progress(&format!(
            "{label}: {count} SYNs over {secs} s{}",
            if drains {
                ", b3 drained/undrained every 3 s on lb1"
            } else {
                ""
            }
        ));
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (sent, changes) = std::thread::scope(|s| -> Result<(Sent, u32)> {
            let toggler = drains.then(|| {
                let (lab, vip, b3, stop) = (self.lab, &vip, &b3, &stop);
                s.spawn(move || {
                    let mut n = 0u32;
                    let mut next = Instant::now() + Duration::from_secs_f64(DRAIN_EVERY);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if Instant::now() >= next {
                            let verb = if n.is_multiple_of(2) {
                                "drain"
                            } else {
                                "undrain"
                            };
                            let out = lab.lb(1, &["backend", verb, vip, b3]);
                            if out.status.success() {
                                n += 1;
                            }
                            next += Duration::from_secs_f64(DRAIN_EVERY);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    n
                })
            });
            let sent = send_paced(&self.ports[0], &frames, per_flow, rate, &label);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let n = toggler.map_or(0, |t| t.join().unwrap_or(0));
            Ok((sent?, n))
        })?;
        drop(frames);
        // Leave the backend active for the next scenario.
        if !changes.is_multiple_of(2) {
            let _ = self.lab.lb(1, &["backend", "undrain", &vip, &b3]);
        }
        let settle_s = self.settle(Duration::from_secs(30))?;
        let z = self.snapshot()?;
        let table_after = table_of(self.lab, 2)?;
        let (x, y) = (&a.0, &z.0);
        let cpu = |k: usize| {
            delta(x[k].cpu_ticks, y[k].cpu_ticks) as f64 / self.tck
                - self.idle.cpu_s_per_s[k] * (y[k].at - x[k].at).as_secs_f64()
        };
        let window_s = (y[1].at - x[1].at).as_secs_f64();
        let bytes = delta(x[1].flows.bytes_received, y[1].flows.bytes_received) as f64
            - self.idle.app_bytes_per_s * window_s;
        let syn = delta(x[0].syn, y[0].syn);
        let per10k = |v: f64| v / syn.max(1) as f64 * 10_000.0;
        let r = |v: f64| (v * 100.0).round() / 100.0;
        let v = json!({
            "scenario": name,
            "target_rate": rate,
            "frames_sent": sent.frames,
            "achieved_rate": r(sent.frames as f64 / sent.secs.max(1e-9)),
            "changes": changes,
            "lb1_syn": syn,
            "lb1_flow_events": delta(x[0].events, y[0].events),
            "lb1_flow_events_lost": delta(x[0].events_lost, y[0].events_lost),
            "lb1_sent_flows": delta(x[0].flows.sent, y[0].flows.sent),
            "lb1_dropped_send_queue": delta(x[0].flows.dropped_queue, y[0].flows.dropped_queue),
            "lb2_imported": delta(x[1].flows.imported, y[1].flows.imported),
            "lb2_dropped_import_queue": delta(x[1].flows.dropped_import, y[1].flows.dropped_import),
            "lb1_to_lb2_bytes": bytes.round(),
            "bytes_per_new_flow": r(bytes / syn.max(1) as f64),
            "lb1_agent_cpu_secs": r(cpu(0)),
            "lb2_agent_cpu_secs": r(cpu(1)),
            "per_10k_new_flows_per_sec": {
                "link_bytes_per_sec": per10k(bytes).round(),
                "lb1_agent_cpu_pct": r(per10k(cpu(0)) * 100.0),
                "lb2_agent_cpu_pct": r(per10k(cpu(1)) * 100.0),
            },
            "lb2_table_before": { "entries": table_before.0, "peer_copies": table_before.1 },
            "lb2_table_after": { "entries": table_after.0, "peer_copies": table_after.1 },
            "settle_secs": r(settle_s),
        });
        progress(&format!(
            "{label}: lb1 sent {} flows, lb2 imported {}, {:.1} B per new flow, lb1 {:.2} / lb2 {:.2} % CPU per 10k/s, lb2 peer copies {} -> {}",
            v["lb1_sent_flows"],
            v["lb2_imported"],
            bytes / syn.max(1) as f64,
            per10k(cpu(0)) * 100.0,
            per10k(cpu(1)) * 100.0,
            table_before.1,
            table_after.1
        ));
        Ok(v)
    }
}

fn render_modes(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        o,
        "\nFlow sync modes: new TCP flows on lb1, peer lb2 ({} s per scenario; {} CPUs, {}, Linux {})\n",
        r["secs"],
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        o,
        "| Mode | Scenario | New flows/s | Changes | Sent by lb1 | Imported by lb2 | Dropped (queue, import, ring) | B per new flow | Per 10k/s: link kB/s | lb1 CPU% | lb2 CPU% | lb2 peer copies before → after |"
    );
    let _ = writeln!(
        o,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for mode in r["modes"].as_array().into_iter().flatten() {
        for s in mode["scenarios"].as_array().into_iter().flatten() {
            let p = &s["per_10k_new_flows_per_sec"];
            let _ = writeln!(
                o,
                "| {} | {} | {:.0} | {} | {} | {} | {}, {}, {} | {:.1} | {:.0} | {:.2} | {:.2} | {} → {} |",
                mode["mode"].as_str().unwrap_or("?"),
                s["scenario"].as_str().unwrap_or("?"),
                s["achieved_rate"].as_f64().unwrap_or(0.0),
                s["changes"],
                s["lb1_sent_flows"],
                s["lb2_imported"],
                s["lb1_dropped_send_queue"],
                s["lb2_dropped_import_queue"],
                s["lb1_flow_events_lost"],
                s["bytes_per_new_flow"].as_f64().unwrap_or(0.0),
                p["link_bytes_per_sec"].as_f64().unwrap_or(0.0) / 1000.0,
                p["lb1_agent_cpu_pct"].as_f64().unwrap_or(0.0),
                p["lb2_agent_cpu_pct"].as_f64().unwrap_or(0.0),
                s["lb2_table_before"]["peer_copies"],
                s["lb2_table_after"]["peer_copies"],
            );
        }
    }
    o
}
