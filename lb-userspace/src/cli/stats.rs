//! `lb stats [--watch]`: packet and bit rates per VIP and backend, from two samples of the
//! agent's counters.

use std::time::Duration;

use anyhow::Result;

use super::args::StatsArgs;
use super::client::Client;
use crate::api::Stats;
use lb_host::table::{si, table};

fn rate(now: u64, before: u64, secs: f64) -> f64 {
    now.saturating_sub(before) as f64 / secs
}

fn render_stats(a: &Stats, b: &Stats) -> String {
    let secs = (b.time_ns.saturating_sub(a.time_ns)) as f64 / 1e9;
    let secs = if secs <= 0.0 { 1.0 } else { secs };
    let mut out = String::new();
    let vip_rows: Vec<Vec<String>> = b
        .vips
        .iter()
        .map(|(vip, c)| {
            let prev = a
                .vips
                .iter()
                .find(|(v, _)| v == vip)
                .map(|(_, c)| c.clone())
                .unwrap_or_default();
            vec![
                vip.to_string(),
                si(rate(c.packets, prev.packets, secs)),
                si(rate(c.bytes, prev.bytes, secs) * 8.0),
                c.packets.to_string(),
            ]
        })
        .collect();
    out += &table(&["VIP", "PPS", "BPS", "PACKETS"], &vip_rows);
    out.push('\n');
    let be_rows: Vec<Vec<String>> = b
        .backends
        .iter()
        .map(|(vip, be, c)| {
            let prev = a
                .backends
                .iter()
                .find(|(v, x, _)| v == vip && x == be)
                .map(|(_, _, c)| c.clone())
                .unwrap_or_default();
            vec![
                vip.to_string(),
                be.clone(),
                si(rate(c.packets, prev.packets, secs)),
                si(rate(c.bytes, prev.bytes, secs) * 8.0),
                c.packets.to_string(),
            ]
        })
        .collect();
    out += &table(&["VIP", "BACKEND", "PPS", "BPS", "PACKETS"], &be_rows);
    out.push('\n');
    let c_rows: Vec<Vec<String>> = b
        .counters
        .iter()
        .filter(|c| c.packets > 0)
        .map(|c| {
            let prev = a
                .counters
                .iter()
                .find(|x| x.name == c.name)
                .map_or(0, |x| x.packets);
            vec![
                c.name.clone(),
                si(rate(c.packets, prev, secs)),
                c.packets.to_string(),
            ]
        })
        .collect();
    out += &table(&["COUNTER", "PER SECOND", "TOTAL"], &c_rows);
    out
}

pub async fn run(client: &Client, args: StatsArgs, json: bool) -> Result<()> {
    let StatsArgs {
        watch,
        interval,
        count,
    } = args;
    let period = Duration::from_secs_f64(interval);
    let mut prev: Stats = client.get("/v1/stats").await?;
    let rounds = if watch { count.unwrap_or(u64::MAX) } else { 1 };
    for i in 0..rounds {
        tokio::time::sleep(period).await;
        let now: Stats = client.get("/v1/stats").await?;
        if json {
            let secs = now.time_ns.saturating_sub(prev.time_ns) as f64 / 1e9;
            println!(
                "{}",
                serde_json::to_string(&serde_json::json!({
                    "interval_secs": secs,
                    "before": prev,
                    "now": now,
                }))?
            );
        } else {
            if watch && i > 0 {
                println!("----");
            }
            print!("{}", render_stats(&prev, &now));
        }
        prev = now;
    }
    Ok(())
}
