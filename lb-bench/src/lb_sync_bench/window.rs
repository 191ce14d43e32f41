//! Windows between refreshes: snapshots, settling, the agents' refresh phase, one rate's run.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lb_lab::in_ns;
use serde_json::{Value, json};

use crate::measure::*;
use crate::params::*;
use crate::port::*;
use crate::readings::*;
use crate::row::*;
use crate::steps::*;

impl Bench<'_> {
    pub(crate) fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot([
            read_agent(self.lab, &self.agents[0])?,
            read_agent(self.lab, &self.agents[1])?,
        ]))
    }

    /// Polls the flow counters and CPU of both agents.
    pub(crate) fn poll(&self) -> Result<([Flows; 2], [u64; 2], Instant)> {
        let f = [
            peer_flows(self.lab, &self.agents[0])?,
            peer_flows(self.lab, &self.agents[1])?,
        ];
        let c = [
            cpu_ticks(self.agents[0].pid)?,
            cpu_ticks(self.agents[1].pid)?,
        ];
        Ok((f, c, Instant::now()))
    }

    pub(crate) fn wait_links(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (f, _, _) = self.poll()?;
            if f.iter().all(|f| f.link_up) {
                progress("sync links up both ways");
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the sync links did not come up in 30 s"
            );
            nap(Duration::from_millis(250))?;
        }
    }

    /// Waits until no flow moves and neither agent is busy; returns how long it took.
    pub(crate) fn settle(&self, max: Duration) -> Result<f64> {
        let start = Instant::now();
        let (mut prev, mut prev_cpu, mut prev_at) = self.poll()?;
        let mut quiet = 0;
        loop {
            nap(Duration::from_millis(300))?;
            let (cur, cpu, at) = self.poll()?;
            let dt = (at - prev_at).as_secs_f64();
            let busy = (0..2).any(|k| {
                let used = (cpu[k] - prev_cpu[k]) as f64 / self.tck;
                used / dt - self.idle.cpu_s_per_s[k] > 0.08
            });
            let moved = (0..2).any(|k| cur[k].moving() != prev[k].moving());
            quiet = if busy || moved { 0 } else { quiet + 1 };
            if quiet >= 2 {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() > max {
                progress(&format!(
                    "not quiet after {:.1} s (going on): lb1 {:?}, lb2 {:?}",
                    max.as_secs_f64(),
                    cur[0],
                    cur[1]
                ));
                return Ok(start.elapsed().as_secs_f64());
            }
            (prev, prev_cpu, prev_at) = (cur, cpu, at);
        }
    }

    pub(crate) fn measure_idle(&mut self) -> Result<()> {
        progress(&format!("idle baseline: {IDLE_SECS} s without traffic"));
        self.settle(Duration::from_secs(10))?;
        let a = self.snapshot()?;
        nap(Duration::from_secs_f64(IDLE_SECS))?;
        let z = self.snapshot()?;
        let mut idle = Idle::default();
        for k in 0..2 {
            let dt = (z.0[k].at - a.0[k].at).as_secs_f64();
            idle.cpu_s_per_s[k] = delta(a.0[k].cpu_ticks, z.0[k].cpu_ticks) as f64 / self.tck / dt;
        }
        let dt = (z.0[0].at - a.0[0].at).as_secs_f64();
        // lb2's count of what arrived from lb1 (lb1's own count lags: see `Flows`).
        idle.app_bytes_per_s =
            delta(a.0[1].flows.bytes_received, z.0[1].flows.bytes_received) as f64 / dt;
        idle.wire_bytes_per_s = (0..2)
            .map(|k| delta(a.0[k].wire.0, z.0[k].wire.0) as f64)
            .sum::<f64>()
            / dt;
        self.idle = idle;
        progress(&format!(
            "idle: lb1 agent {:.2} % CPU, lb2 agent {:.2} % CPU; lb1->lb2 link {:.0} B/s (agent's count), sync wire {:.0} B/s",
            idle.cpu_s_per_s[0] * 100.0,
            idle.cpu_s_per_s[1] * 100.0,
            idle.app_bytes_per_s,
            idle.wire_bytes_per_s
        ));
        Ok(())
    }

    /// Sends `n` new flows (SYN, then first ACK) to load balancer `k` (0: lb1, 1: lb2) without
    /// pacing.
    pub(crate) fn send_markers(&mut self, k: usize, n: u64) -> Result<()> {
        for _ in 0..n {
            for f in self.ports[k].new_flow(self.next_flow)? {
                self.ports[k]
                    .send(&f)
                    .context("sending a marker flow from the router")?;
            }
            self.next_flow += 1;
        }
        self.last_syn[k] = Some(Instant::now());
        Ok(())
    }

    /// Each agent re-sends its recent flows every `period`; a few marker flows show when.
    pub(crate) fn find_refresh_phase(&mut self) -> Result<()> {
        progress(&format!(
            "finding when the agents refresh their peers (every {} s): {MARKERS} marker flows to each load balancer",
            self.period
        ));
        self.send_markers(0, MARKERS)?;
        self.send_markers(1, MARKERS)?;
        // Until both have exported them.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (f, _, _) = self.poll()?;
            if f[0].exported >= MARKERS && f[1].exported >= MARKERS {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the marker flows were not exported (lb1 {:?}, lb2 {:?}): is flow export on?",
                f[0],
                f[1]
            );
            nap(Duration::from_millis(100))?;
        }
        self.settle(Duration::from_secs(5))?;
        let (base, _, mut before) = self.poll()?;
        // A link's first refresh comes one period plus a random phase (up to a period) after
        // it came up.
        let wait = 2.0 * self.period + 5.0;
        let deadline = Instant::now() + Duration::from_secs_f64(wait);
        while self.phase.iter().any(Option::is_none) {
            ensure!(
                Instant::now() < deadline,
                "no refresh seen within {wait} s (lb1 {:?}, lb2 {:?})",
                base[0],
                base[1]
            );
            // A refresh re-sends only the flows active within its period: keep fresh markers
            // until each agent's (randomly phased) first refresh has been seen.
            for k in 0..2 {
                let stale = self.last_syn[k].is_none_or(|t| t.elapsed() > Duration::from_secs(10));
                if self.phase[k].is_none() && stale {
                    self.send_markers(k, MARKERS)?;
                }
            }
            nap(Duration::from_millis(200))?;
            let (f, _, at) = self.poll()?;
            for k in 0..2 {
                if self.phase[k].is_none() && f[k].refreshed() > base[k].refreshed() {
                    // Between the last poll and this one.
                    let t = before + (at - before) / 2;
                    self.phase[k] = Some(t);
                    progress(&format!(
                        "{} refreshed its {} marker flows at +{:.1} s",
                        self.agents[k].name,
                        f[k].refreshed() - base[k].refreshed(),
                        (t - self.started).as_secs_f64()
                    ));
                }
            }
            before = at;
        }
        self.settle(Duration::from_secs(5))?;
        Ok(())
    }

    /// Agent `k`'s first refresh at or after `t`.
    pub(crate) fn next_refresh(&self, k: usize, t: Instant) -> Instant {
        let p = self.phase[k].expect("phase found");
        let period = Duration::from_secs_f64(self.period);
        if t <= p {
            return p;
        }
        let n = ((t - p).as_secs_f64() / self.period).ceil() as u32;
        let mut r = p + period * n;
        if r < t {
            r += period;
        }
        r
    }

    /// Waits, measuring refreshes, until a window of `secs` fits before the next one.
    pub(crate) fn place_window(&mut self, secs: f64) -> Result<()> {
        let need = secs + WINDOW_OVERHEAD + TICK_MARGIN;
        if need + TICK_MARGIN > self.period {
            progress(&format!(
                "a window of {secs} s cannot fit between refreshes {} s apart: it will include one (flagged REFRESH)",
                self.period
            ));
            return Ok(());
        }
        for _ in 0..4 {
            let now = Instant::now();
            let next = (0..2).map(|k| self.next_refresh(k, now)).min().unwrap();
            if (next - now).as_secs_f64() >= need {
                return Ok(());
            }
            self.measure_next_refresh()?;
        }
        bail!("could not place a window between refreshes")
    }

    /// Measures the next refresh (and the other agent's, if it follows closely): from just
    /// before it until both agents are quiet again.
    pub(crate) fn measure_next_refresh(&mut self) -> Result<()> {
        let now = Instant::now() + Duration::from_millis(200);
        let mut ticks: Vec<(Instant, usize)> =
            (0..2).map(|k| (self.next_refresh(k, now), k)).collect();
        ticks.sort();
        let first = ticks[0].0;
        // The other agent's refresh joins this measurement when it comes within 4 s.
        ticks.retain(|(t, _)| (*t - first).as_secs_f64() <= 4.0);
        let last = ticks.last().unwrap().0;
        let names: Vec<&str> = ticks
            .iter()
            .map(|(_, k)| self.agents[*k].name.as_str())
            .collect();
        progress(&format!(
            "waiting {:.1} s for the refresh of {} (measured apart from the windows)",
            (first - Instant::now()).as_secs_f64().max(0.0),
            names.join(" and ")
        ));
        sleep_until(first - Duration::from_secs_f64(TICK_MARGIN))?;
        let a = self.snapshot()?;
        sleep_until(last + Duration::from_secs(1))?;
        // Flows made within the last period are re-sent: wait to see them go.
        for &(t, k) in &ticks {
            let expect = self.last_syn[k]
                .is_some_and(|s| s + Duration::from_secs_f64(self.period - 1.0) > t);
            if expect {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let f = peer_flows(self.lab, &self.agents[k])?;
                    if f.refreshed() > a.0[k].flows.refreshed() || Instant::now() > deadline {
                        break;
                    }
                    nap(Duration::from_millis(100))?;
                }
            }
        }
        self.settle(Duration::from_secs(20))?;
        let z = self.snapshot()?;
        let dt = (z.0[0].at - a.0[0].at).as_secs_f64();
        let cpu = |k: usize| {
            delta(a.0[k].cpu_ticks, z.0[k].cpu_ticks) as f64 / self.tck
                - self.idle.cpu_s_per_s[k] * (z.0[k].at - a.0[k].at).as_secs_f64()
        };
        let refreshed = |k: usize| z.0[k].flows.refreshed() - a.0[k].flows.refreshed();
        let app = delta(a.0[1].flows.bytes_received, z.0[1].flows.bytes_received) as f64
            - self.idle.app_bytes_per_s * dt;
        let ev = json!({
            "at_secs": (first - self.started).as_secs_f64(),
            "refresh_of": names,
            "lb1_flows_refreshed": refreshed(0),
            "lb2_flows_refreshed": refreshed(1),
            "lb2_imported": delta(a.0[1].flows.imported, z.0[1].flows.imported),
            "lb1_to_lb2_app_bytes": app.round(),
            "lb1_agent_cpu_secs": cpu(0),
            "lb2_agent_cpu_secs": cpu(1),
            "measured_secs": dt,
            "links_up": z.0.iter().all(|r| r.flows.link_up),
        });
        progress(&format!(
            "refresh of {}: lb1 re-sent {} flows ({:.0} kB), lb1 agent {:.3} CPU-s, lb2 agent {:.3} CPU-s",
            names.join(" and "),
            refreshed(0),
            app / 1000.0,
            cpu(0),
            cpu(1)
        ));
        self.refreshes.push(ev);
        Ok(())
    }

    pub(crate) fn run_rate(&mut self, rate: u32, secs: f64) -> Result<Row> {
        let label = format!("{rate}/s");
        let count = (rate as f64 * secs).round() as u64;
        let first = self.next_flow;
        let frames = (first..first + count)
            .map(|n| self.ports[0].new_flow(n))
            .collect::<Result<Vec<_>>>()?
            .concat();
        self.next_flow += count;
        progress(&format!(
            "{label}: {count} new flows (SYN, first ACK) over {secs} s (frames checked: IPv4 and TCP checksums)"
        ));
        let a = self.snapshot()?;
        let sent = send_paced(&self.ports[0], &frames, 2, rate, &label)?;
        self.last_syn[0] = Some(Instant::now());
        drop(frames);
        let settle_s = self.settle(Duration::from_secs(10))?;
        let z = self.snapshot()?;

        let (x, y) = (&a.0, &z.0);
        let window_s = (y[0].at - x[0].at).as_secs_f64();
        let cpu = |k: usize| {
            delta(x[k].cpu_ticks, y[k].cpu_ticks) as f64 / self.tck
                - self.idle.cpu_s_per_s[k] * (y[k].at - x[k].at).as_secs_f64()
        };
        let (f0, f1) = ((&x[0].flows, &y[0].flows), (&x[1].flows, &y[1].flows));
        // What arrived at lb2 from lb1, counted per message (lb1's own count lags; kept below
        // as a cross-check).
        let app_raw = delta(x[1].flows.bytes_received, y[1].flows.bytes_received);
        let sent_counter = y[0].flows.bytes_sent as i64 - x[0].flows.bytes_sent as i64;
        let wire_raw: u64 = (0..2).map(|k| delta(x[k].wire.0, y[k].wire.0)).sum();
        let mut row = Row {
            rate,
            sent,
            window_s,
            settle_s,
            syn: delta(x[0].syn, y[0].syn),
            events: delta(x[0].events, y[0].events),
            events_lost: delta(x[0].events_lost, y[0].events_lost),
            exported: delta(f0.0.exported, f0.1.exported),
            imported: delta(f1.0.imported, f1.1.imported),
            dropped_queue: delta(f0.0.dropped_queue, f0.1.dropped_queue),
            dropped_import: delta(f1.0.dropped_import, f1.1.dropped_import),
            untranslated: delta(f1.0.untranslated, f1.1.untranslated),
            refreshed_in_window: f0.1.refreshed() - f0.0.refreshed(),
            app_bytes: app_raw as f64 - self.idle.app_bytes_per_s * window_s,
            wire_bytes: wire_raw as f64 - self.idle.wire_bytes_per_s * window_s,
            lb1_bytes_sent_counter: sent_counter,
            cpu_s: [cpu(0), cpu(1)],
            flags: Vec::new(),
        };
        let sent_n = row.sent.frames as f64;
        if (row.exported as f64) < LOSSY_BELOW * sent_n
            || (row.imported as f64) < LOSSY_BELOW * sent_n
        {
            row.flags.push("LOSSY".into());
            progress(&format!(
                "{label}: LOSSY: {} SYNs sent, lb1 saw {}, {} flow events ({} lost), exported {}, lb2 imported {}, dropped: send queue {}, import queue {}, untranslated {}",
                row.sent.frames,
                row.syn,
                row.events,
                row.events_lost,
                row.exported,
                row.imported,
                row.dropped_queue,
                row.dropped_import,
                row.untranslated
            ));
        }
        if row.events_lost + row.dropped_queue + row.dropped_import + row.untranslated > 0 {
            row.flags.push("DROPS".into());
        }
        if row.syn != row.sent.frames {
            row.flags.push(format!(
                "SYN!=SENT({})",
                row.syn as i64 - row.sent.frames as i64
            ));
        }
        if sent_n < 0.95 * count as f64 || row.sent.frames as f64 / row.secs() < 0.95 * rate as f64
        {
            row.flags.push("SLOW-GENERATOR".into());
        }
        if row.sent.errors > 0 {
            row.flags.push("SEND-ERRORS".into());
        }
        if row.refreshed_in_window != 0 {
            row.flags.push("REFRESH".into());
        }
        if sent_counter < 0 || !y.iter().all(|r| r.flows.link_up) {
            row.flags.push("LINK-RESET".into());
        }
        progress(&format!(
            "{label}: sent {} in {:.2} s ({:.0}/s), settled {:.1} s after; lb1 SYNs {}, events {} (lost {}), exported {}, lb2 imported {}",
            row.sent.frames,
            row.sent.secs,
            row.sent.frames as f64 / row.secs(),
            settle_s,
            row.syn,
            row.events,
            row.events_lost,
            row.exported,
            row.imported
        ));
        Ok(row)
    }

    /// Connection-table entries of each load balancer (a table walk: only after measuring).
    pub(crate) fn table_entries(&self) -> Value {
        let mut out = serde_json::Map::new();
        for a in &self.agents {
            let n = self
                .lab
                .lb_json(a.i, &["backend", "list"])
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|bs| bs.iter().filter_map(|b| b["flows"].as_u64()).sum::<u64>())
                });
            out.insert(a.name.clone(), json!(n));
        }
        Value::Object(out)
    }

    /// `lb_sync_bytes_sent_total{peer="lb2"}` from lb1's /metrics (a cross-check).
    pub(crate) fn metrics_bytes_sent(&self) -> Value {
        let r = in_ns(&self.lab.ns("lb1"), || -> Result<u64> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:9450".parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let line = text
                .lines()
                .find(|l| l.starts_with("lb_sync_bytes_sent_total{peer=\"lb2\"}"))
                .context("no lb_sync_bytes_sent_total{peer=\"lb2\"} in /metrics")?;
            Ok(line.rsplit(' ').next().unwrap_or("").trim().parse()?)
        });
        match r {
            Ok(Ok(n)) => json!(n),
            Ok(Err(e)) => json!(format!("unavailable: {e:#}")),
            Err(e) => json!(format!("unavailable: {e:#}")),
        }
    }
}
