//! Readings of the agents: CPU time, link bytes, flow counters, snapshots of both.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use lb_lab::Lab;
use lb_lab::netns::sh;
use lb_userspace::api::{Stats, SyncStatus};
use serde_json::Value;

pub(crate) fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads, live and exited), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the agent exit?)"))?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "/proc/{pid}/stat: too few fields");
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Bytes sent and received on an interface of a namespace (Ethernet frames).
pub(crate) fn link_bytes(ns: &str, iface: &str) -> Result<(u64, u64)> {
    let out = sh("ip", &["-n", ns, "-j", "-s", "link", "show", iface])?;
    let v: Value = serde_json::from_str(&out)?;
    let s = &v[0]["stats64"];
    Ok((
        s["tx"]["bytes"].as_u64().context("tx bytes")?,
        s["rx"]["bytes"].as_u64().context("rx bytes")?,
    ))
}

/// One load balancer's agent: its PID and name.
pub(crate) struct Agent {
    pub(crate) i: usize,
    pub(crate) name: String,
    pub(crate) peer: String,
    pub(crate) pid: u32,
}

/// Flow counters of one agent (from `lb peer list`), cheap enough to poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flows {
    pub(crate) exported: u64,
    pub(crate) imported: u64,
    pub(crate) dropped_queue: u64,
    pub(crate) dropped_import: u64,
    pub(crate) untranslated: u64,
    /// To its peer: flows sent (new and refreshed), dropped, and the link's bytes.
    pub(crate) sent: u64,
    pub(crate) dropped: u64,
    pub(crate) received: u64,
    /// The agent's count of the link's bytes to the peer. It advances only when a flow batch
    /// is sent (heartbeats and state since the last batch join the next one).
    pub(crate) bytes_sent: u64,
    /// Bytes the peer's link to us delivered, counted per message as it arrives.
    pub(crate) bytes_received: u64,
    pub(crate) link_up: bool,
}

impl Flows {
    pub(crate) fn of(s: &SyncStatus, peer: &str) -> Flows {
        let p = s.peers.iter().find(|p| p.name == peer);
        Flows {
            exported: s.flows_exported,
            imported: s.flows_imported,
            dropped_queue: s.flows_dropped_queue,
            dropped_import: s.flows_dropped_import,
            untranslated: s.flows_untranslated,
            sent: p.map_or(0, |p| p.flows_sent),
            dropped: p.map_or(0, |p| p.flows_dropped),
            received: p.map_or(0, |p| p.flows_received),
            bytes_sent: p.map_or(0, |p| p.bytes_sent),
            bytes_received: p.map_or(0, |p| p.bytes_received),
            link_up: p.is_some_and(|p| p.outbound && p.inbound),
        }
    }

    /// Flows sent to the peer that were not new-flow exports: refreshes (and a link's initial
    /// pass). Rises by the flows refreshed at each refresh; steady between them.
    pub(crate) fn refreshed(&self) -> i64 {
        (self.sent + self.dropped) as i64 - self.exported as i64
    }

    /// The counters that move while flows are in flight (not the heartbeats' bytes).
    pub(crate) fn moving(&self) -> [u64; 6] {
        [
            self.exported,
            self.imported,
            self.sent,
            self.received,
            self.dropped_import,
            self.untranslated,
        ]
    }
}

pub(crate) fn peer_flows(lab: &Lab, a: &Agent) -> Result<Flows> {
    let v = lab.lb_json(a.i, &["peer", "list"])?;
    let s: SyncStatus = serde_json::from_value(v).context("lb peer list --json")?;
    Ok(Flows::of(&s, &a.peer))
}

/// Everything read of one agent at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Reading {
    pub(crate) at: Instant,
    pub(crate) cpu_ticks: u64,
    pub(crate) syn: u64,
    pub(crate) events: u64,
    pub(crate) events_lost: u64,
    pub(crate) flows: Flows,
    /// sync0: (tx, rx) bytes on the wire.
    pub(crate) wire: (u64, u64),
}

pub(crate) fn read_agent(lab: &Lab, a: &Agent) -> Result<Reading> {
    let v = lab.lb_json(a.i, &["stats", "--interval", "0.1"])?;
    let stats: Stats = serde_json::from_value(v["now"].clone()).context("lb stats --json")?;
    let counter = |name: &str| -> Result<u64> {
        Ok(stats
            .counters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no counter {name} in lb stats"))?
            .packets)
    };
    let sync = stats.sync.as_ref().context("lb stats: no sync status")?;
    Ok(Reading {
        cpu_ticks: cpu_ticks(a.pid)?,
        at: Instant::now(),
        syn: counter("lru_miss_syn")?,
        events: counter("flow_events")?,
        events_lost: counter("flow_events_lost")?,
        flows: Flows::of(sync, &a.peer),
        wire: link_bytes(&lab.ns(&a.name), "sync0")?,
    })
}

/// Both agents at one moment (lb1, lb2).
#[derive(Clone, Debug)]
pub(crate) struct Snapshot(pub(crate) [Reading; 2]);
