//! The live status page on the metrics listener: `GET /` is a self-contained HTML page
//! (`status_page.html`: no external asset, works offline) that polls `GET /status.json` every
//! second. The agent samples its counters once a second and keeps the last minute, so the
//! page's charts are full from its first load and its rates do not depend on the browser's
//! clock. Read-only, like `/metrics` (docs/security.md).

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use tokio::sync::mpsc;

use super::actor::Command;
use super::api_server::ask;
use crate::api::{BackendInfo, Stats, Status};
use crate::dataplane::{FlowCounts, flow_counts_pinned};

pub(super) const PAGE: &str = include_str!("status_page.html");

/// Samples kept: one a second, so the charts show the last minute.
const HISTORY: usize = 61;
/// Live flow counts walk the connection table (in batches, from its own descriptor): every
/// this many samples, whatever the viewers and scrapers.
const FLOWS_EVERY: u64 = 5;

/// What `/status.json` answers.
#[derive(Serialize)]
pub struct StatusPage {
    /// The sync node name, or the host name.
    pub node: String,
    pub status: Status,
    /// The latest counters.
    pub stats: Stats,
    /// With live flow counts (at most `FLOWS_EVERY` seconds old).
    pub backends: Vec<BackendInfo>,
    pub rates: Rates,
}

/// Per-second rates over the kept samples, oldest first.
#[derive(Default, Serialize)]
pub struct Rates {
    /// Keyed by VIP (`192.0.2.10:80/tcp`).
    pub vips: BTreeMap<String, Series>,
    /// Keyed by `<VIP> <backend>`.
    pub backends: BTreeMap<String, Series>,
    /// The latest drop rate per reason (packets per second).
    pub drops: BTreeMap<String, f64>,
}

#[derive(Clone, Default, Serialize)]
pub struct Series {
    /// Packets per second.
    pub pps: Vec<f64>,
    /// Bits per second.
    pub bps: Vec<f64>,
}

#[derive(Default)]
pub struct History {
    samples: VecDeque<Stats>,
    /// The last walk's live flows per (backend id, generation), and when it was made.
    flows: Option<(Instant, FlowCounts)>,
}

pub(super) type SharedHistory = Arc<Mutex<History>>;

impl History {
    /// Live connection-table entries at the last walk (`lb_conntrack_entries`).
    pub fn live_flows(&self) -> Option<u64> {
        self.flows.as_ref().map(|(_, c)| c.live.values().sum())
    }

    fn push(&mut self, stats: Stats) {
        if self.samples.len() == HISTORY {
            self.samples.pop_front();
        }
        self.samples.push_back(stats);
    }

    fn rates(&self) -> Rates {
        let mut r = Rates::default();
        let pairs = self.samples.iter().zip(self.samples.iter().skip(1));
        for (a, b) in pairs {
            let dt = b.time_ns.saturating_sub(a.time_ns) as f64 / 1e9;
            if dt <= 0.0 {
                continue;
            }
            let rate = |p0: u64, p1: u64| p1.saturating_sub(p0) as f64 / dt;
            let before: BTreeMap<String, (u64, u64)> = a
                .vips
                .iter()
                .map(|(v, c)| (v.to_string(), (c.packets, c.bytes)))
                .collect();
            for (v, c) in &b.vips {
                let key = v.to_string();
                let (p0, b0) = before.get(&key).copied().unwrap_or((c.packets, c.bytes));
                let s = r.vips.entry(key).or_default();
                s.pps.push(rate(p0, c.packets));
                s.bps.push(rate(b0, c.bytes) * 8.0);
            }
            let before: BTreeMap<String, (u64, u64)> = a
                .backends
                .iter()
                .map(|(v, be, c)| (format!("{v} {be}"), (c.packets, c.bytes)))
                .collect();
            for (v, be, c) in &b.backends {
                let key = format!("{v} {be}");
                let (p0, b0) = before.get(&key).copied().unwrap_or((c.packets, c.bytes));
                let s = r.backends.entry(key).or_default();
                s.pps.push(rate(p0, c.packets));
                s.bps.push(rate(b0, c.bytes) * 8.0);
            }
            r.drops.clear();
            for (c0, c1) in a.counters.iter().zip(&b.counters) {
                if let Some(reason) = c1.name.strip_prefix("drop_")
                    && c0.name == c1.name
                {
                    r.drops
                        .insert(reason.to_string(), rate(c0.packets, c1.packets));
                }
            }
        }
        r
    }
}

/// Samples the counters once a second, and counts live flows every `FLOWS_EVERY` seconds, for
/// as long as the agent runs.
pub(super) async fn sample(tx: mpsc::Sender<Command>, history: SharedHistory, pin_dir: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        if let Ok(stats) = ask(&tx, Command::Stats).await {
            history.lock().expect("history lock").push(stats);
        }
        if n % FLOWS_EVERY == 0 {
            let dir = pin_dir.clone();
            if let Ok(Ok(counts)) =
                tokio::task::spawn_blocking(move || flow_counts_pinned(&dir)).await
            {
                history.lock().expect("history lock").flows = Some((Instant::now(), counts));
            }
        }
    }
}

/// The page's JSON: status, the latest counters, backends with flows, the last minute's rates.
pub(super) async fn json(
    tx: &mpsc::Sender<Command>,
    history: &SharedHistory,
) -> Result<StatusPage> {
    let status = ask(tx, Command::Status).await?;
    let stats = ask(tx, Command::Stats).await?;
    let rows = ask(tx, |r| Command::Backends(None, r)).await?;
    let (backends, rates) = {
        let h = history.lock().expect("history lock");
        let backends = rows
            .into_iter()
            .map(|(mut b, generation)| {
                if let Some((_, counts)) = &h.flows {
                    b.flows = counts.live.get(&(b.id, generation)).copied().unwrap_or(0);
                }
                b
            })
            .collect();
        (backends, h.rates())
    };
    let node = status
        .sync
        .as_ref()
        .map(|s| s.node.clone())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default();
    Ok(StatusPage {
        node,
        status,
        stats,
        backends,
        rates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CounterInfo;

    fn stats(t_s: u64, vip_packets: u64, drops: u64) -> Stats {
        let vip = "192.0.2.10:80/tcp".parse().unwrap();
        let c = |name: &str, packets: u64| CounterInfo {
            name: name.into(),
            packets,
            bytes: packets * 100,
        };
        Stats {
            time_ns: t_s * 1_000_000_000,
            table_version: 1,
            counters: vec![c("drop_no_backend", drops), c("tx", vip_packets)],
            vips: vec![(vip, c("vip", vip_packets))],
            backends: vec![(vip, "2001:db8::1".into(), c("b", vip_packets))],
            sync: None,
            health_encap: Vec::new(),
            egress: Vec::new(),
        }
    }

    #[test]
    fn rates_come_from_consecutive_samples_and_keep_a_minute() {
        let mut h = History::default();
        for t in 0..100u64 {
            // 10 packets/s for 50 s, then 30/s; 2 drops/s throughout.
            let p = if t <= 50 { 10 * t } else { 500 + 30 * (t - 50) };
            h.push(stats(t, p, 2 * t));
        }
        let r = h.rates();
        let v = &r.vips["192.0.2.10:80/tcp"];
        assert_eq!(v.pps.len(), HISTORY - 1);
        assert_eq!(*v.pps.last().unwrap(), 30.0);
        assert_eq!(*v.bps.last().unwrap(), 30.0 * 100.0 * 8.0);
        assert_eq!(
            v.pps[0], 10.0,
            "the oldest kept second was before the change"
        );
        assert_eq!(r.backends["192.0.2.10:80/tcp 2001:db8::1"].pps, v.pps);
        assert_eq!(r.drops["no_backend"], 2.0);
        assert!(!r.drops.contains_key("tx"), "only drop_ counters");
    }
}
