//! The operator CLI: `lb vip ...`, `lb backend ...`, `lb status`, `lb stats`, `lb reload`,
//! talking to the agent's control API. Tables for people, `--json` for machines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{
    BackendInfo, ChangeReply, ChangeRequest, ErrorReply, ReloadReply, Stats, Status, VipInfo,
};
use crate::http;
use crate::state::{BackendState, Vip, parse_backend};

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Add a VIP (no backends yet: packets to it are dropped until one is added).
    Add {
        /// ADDR:PORT/PROTO, e.g. 192.0.2.10:80/tcp or [2001:db8::10]:443/tcp (port * = any).
        vip: String,
        /// Encapsulate in IPv6 + UDP (GUE) instead of plain IPv6.
        #[arg(long)]
        gue: bool,
    },
    /// Remove a VIP and its backends (its flows stop being forwarded).
    Remove { vip: String },
    /// List VIPs.
    List,
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a backend (its IPv6 tunnel endpoint) to a VIP.
    Add {
        vip: String,
        backend: String,
        /// Weight, 1..=1000.
        #[arg(long, default_value_t = 100)]
        weight: u32,
        /// Add it draining (no new flows until `undrain`).
        #[arg(long)]
        draining: bool,
    },
    /// Remove a backend: its flows move to the others. Drain it first.
    Remove { vip: String, backend: String },
    /// Stop new flows to a backend; existing flows continue until they end or idle out.
    Drain { vip: String, backend: String },
    /// Let a drained backend take new flows again.
    Undrain { vip: String, backend: String },
    /// Set a backend's weight (1..=1000).
    Weight {
        vip: String,
        backend: String,
        weight: u32,
    },
    /// List backends with state, Maglev share and the flows still pinned to each.
    List {
        /// Only this VIP's backends.
        vip: Option<String>,
    },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let mut stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    " (is the agent running? `lb agent --config ...`)"
                }
                std::io::ErrorKind::PermissionDenied => " (the control API is root-only)",
                _ => "",
            };
            anyhow!(
                "cannot reach the agent at {}: {e}{hint}",
                self.socket.display()
            )
        })?;
        let (status, body) = http::call(&mut stream, method, target, body.as_deref()).await?;
        if status != 200 {
            let msg = serde_json::from_slice::<ErrorReply>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{msg}");
        }
        serde_json::from_slice(&body).context("decoding the agent's answer")
    }

    pub async fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T> {
        self.call("GET", target, None).await
    }

    pub async fn change(
        &self,
        object: &str,
        verb: &str,
        req: &ChangeRequest,
    ) -> Result<ChangeReply> {
        self.call(
            "POST",
            &format!("/v1/{object}/{verb}"),
            Some(serde_json::to_vec(req)?),
        )
        .await
    }
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// 1234567 -> "1.23M".
pub fn si(v: f64) -> String {
    let (v, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    format!("{v:.2}{unit}")
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn print_change(r: &ChangeReply, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    println!(
        "ok: {} ({} Maglev slots rewritten, table version {})",
        r.change, r.report.slot_writes, r.table_version
    );
    Ok(())
}

fn check_vip(s: &str) -> Result<String> {
    s.parse::<Vip>()?;
    Ok(s.to_string())
}

fn check_backend(s: &str) -> Result<String> {
    parse_backend(s)?;
    Ok(s.to_string())
}

pub async fn vip(client: &Client, cmd: VipCmd, json: bool) -> Result<()> {
    match cmd {
        VipCmd::Add { vip, gue } => {
            let req = ChangeRequest {
                vip: check_vip(&vip)?,
                gue: Some(gue),
                ..Default::default()
            };
            print_change(&client.change("vip", "add", &req).await?, json)
        }
        VipCmd::Remove { vip } => {
            let req = ChangeRequest {
                vip: check_vip(&vip)?,
                ..Default::default()
            };
            print_change(&client.change("vip", "remove", &req).await?, json)
        }
        VipCmd::List => {
            let vips: Vec<VipInfo> = client.get("/v1/vips").await?;
            if json {
                return print_json(&vips);
            }
            let rows: Vec<Vec<String>> = vips
                .iter()
                .map(|v| {
                    vec![
                        v.vip.to_string(),
                        if v.gue { "gue" } else { "ip6" }.into(),
                        v.active.to_string(),
                        v.draining.to_string(),
                        v.packets.to_string(),
                        v.bytes.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["VIP", "ENCAP", "ACTIVE", "DRAINING", "PACKETS", "BYTES"],
                    &rows
                )
            );
            Ok(())
        }
    }
}

pub async fn backend(client: &Client, cmd: BackendCmd, json: bool) -> Result<()> {
    let simple = |vip: &str, backend: &str| -> Result<ChangeRequest> {
        Ok(ChangeRequest {
            vip: check_vip(vip)?,
            backend: Some(check_backend(backend)?),
            ..Default::default()
        })
    };
    let (verb, req) = match cmd {
        BackendCmd::Add {
            vip,
            backend,
            weight,
            draining,
        } => {
            crate::state::check_weight(weight)?;
            let mut req = simple(&vip, &backend)?;
            req.weight = Some(weight);
            req.state = Some(if draining {
                BackendState::Draining
            } else {
                BackendState::Active
            });
            ("add", req)
        }
        BackendCmd::Remove { vip, backend } => ("remove", simple(&vip, &backend)?),
        BackendCmd::Drain { vip, backend } => ("drain", simple(&vip, &backend)?),
        BackendCmd::Undrain { vip, backend } => ("undrain", simple(&vip, &backend)?),
        BackendCmd::Weight {
            vip,
            backend,
            weight,
        } => {
            crate::state::check_weight(weight)?;
            let mut req = simple(&vip, &backend)?;
            req.weight = Some(weight);
            ("weight", req)
        }
        BackendCmd::List { vip } => {
            let target = match vip {
                Some(v) => format!("/v1/backends?vip={}", http::percent_encode(&check_vip(&v)?)),
                None => "/v1/backends".into(),
            };
            let list: Vec<BackendInfo> = client.get(&target).await?;
            if json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        b.vip.to_string(),
                        b.backend.clone(),
                        b.state.to_string(),
                        if b.health_detail.is_empty() {
                            b.health.clone()
                        } else {
                            format!("{} ({})", b.health, b.health_detail)
                        },
                        b.weight.to_string(),
                        b.slots.to_string(),
                        b.flows.to_string(),
                        b.packets.to_string(),
                        b.bytes.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "VIP", "BACKEND", "STATE", "HEALTH", "WEIGHT", "SLOTS", "FLOWS", "PACKETS",
                        "BYTES"
                    ],
                    &rows
                )
            );
            if list.iter().any(|b| b.state == BackendState::Draining) {
                println!("(a draining backend is safe to remove once its FLOWS reach 0)");
            }
            if list.iter().any(|b| b.health == "down") {
                println!(
                    "(a down backend takes no new flows; it rejoins after `rise` good checks)"
                );
            }
            return Ok(());
        }
    };
    print_change(&client.change("backend", verb, &req).await?, json)
}

pub async fn status(client: &Client, json: bool) -> Result<()> {
    let s: Status = client.get("/v1/status").await?;
    if json {
        return print_json(&s);
    }
    println!(
        "agent        lb {} (pid {}), up {} s",
        s.version, s.pid, s.uptime_secs
    );
    println!("config       {}", s.config);
    println!(
        "dataplane    pinned at {}{}",
        s.pin_dir,
        if s.adopted {
            " (adopted from a previous agent)"
        } else {
            ""
        }
    );
    println!("tunnel src   {}", s.tunnel_source);
    println!(
        "maglev       {} slots per VIP, table version {}",
        s.ring_size, s.table_version
    );
    println!(
        "services     {} VIPs, {} backends, up to {} flows",
        s.vips, s.backends, s.max_flows
    );
    println!("metrics      {}", s.metrics.as_deref().unwrap_or("off"));
    let rows: Vec<Vec<String>> = s
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.ifindex.to_string(),
                i.attachment.clone(),
                i.next_hop_mac.clone(),
                i.mtu.to_string(),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(&["INTERFACE", "IFINDEX", "XDP", "NEXT HOP", "MTU"], &rows)
    );
    println!();
    println!(
        "node         {}",
        match (&s.dataplane_fault, s.node_drained) {
            (Some(f), _) => format!("NOT FORWARDING: {f}; every VIP withdrawn"),
            (None, true) => "drained (`lb node undrain` announces again)".into(),
            (None, false) => "serving".into(),
        }
    );
    let announcing = if s.announcing.is_empty() {
        "nothing".to_string()
    } else {
        s.announcing.join(", ")
    };
    match &s.bgp {
        None => println!(
            "bgp          not driven (no [bgp] in the config); would announce {announcing}"
        ),
        Some(b) => {
            println!("bgp          announcing {announcing}");
            if let Some(e) = &b.error {
                println!("             BIRD refused or is unreachable (retrying): {e}");
            } else if b.announced != s.announcing {
                println!("             BIRD last told: {}", b.announced.join(", "));
            }
        }
    }
    match &s.sync {
        None => println!("sync         off (no [sync] in the config)"),
        Some(y) => {
            let agree = y.peers.iter().filter(|p| p.state_match).count();
            println!(
                "sync         node {}, state version {} ({}), tables {}; {} of {} peers agree{}",
                y.node,
                y.version,
                y.state_digest,
                y.table_digest,
                agree,
                y.peers.len(),
                if y.flows {
                    "; flows shared"
                } else {
                    "; flows not shared"
                }
            );
            if !y.peers.is_empty() {
                print!("{}", peer_table(y));
            }
            if !y.waiting_for.is_empty() {
                println!(
                    "             just started: VIPs unannounced until caught up with {}",
                    y.waiting_for.join(", ")
                );
            }
        }
    }
    if !s.drift.is_empty() {
        println!("\nruntime changes not in the config file (a reload or restart reverts them):");
        for d in &s.drift {
            println!("  {d}");
        }
    }
    Ok(())
}

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

pub async fn stats(
    client: &Client,
    json: bool,
    watch: bool,
    interval: f64,
    count: Option<u64>,
) -> Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval {interval}: use 0.1 to 3600 seconds");
    }
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

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// Withdraw every VIP from BGP; the tables and existing flows stay as they are.
    Drain,
    /// Announce the VIPs again (those with a healthy backend).
    Undrain,
}

pub async fn node(client: &Client, cmd: NodeCmd, json: bool) -> Result<()> {
    let verb = match cmd {
        NodeCmd::Drain => "drain",
        NodeCmd::Undrain => "undrain",
    };
    let r: crate::api::NodeReply = client
        .call("POST", &format!("/v1/node/{verb}"), None)
        .await?;
    if json {
        return print_json(&r);
    }
    if r.drained {
        println!("node drained: every VIP is withdrawn; existing flows keep their backends");
    } else if r.announcing.is_empty() {
        println!("node undrained; nothing to announce (no VIP has a healthy backend)");
    } else {
        println!("node undrained; announcing {}", r.announcing.join(", "));
    }
    Ok(())
}

pub async fn reload(client: &Client, json: bool) -> Result<()> {
    let r: ReloadReply = client.call("POST", "/v1/reload", None).await?;
    if json {
        return print_json(&r);
    }
    if r.changes.is_empty() {
        println!("reloaded: no changes (table version {})", r.table_version);
    } else {
        println!(
            "reloaded: {} change(s), {} Maglev slots rewritten, table version {}",
            r.changes.len(),
            r.report.slot_writes,
            r.table_version
        );
        for c in &r.changes {
            println!("  {c}");
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum PeerCmd {
    /// Each peer: links, its state version and digests, whether they match ours, flows.
    List,
}

pub async fn peer(client: &Client, cmd: PeerCmd, json: bool) -> Result<()> {
    let PeerCmd::List = cmd;
    let s: crate::api::SyncStatus = client.get("/v1/peers").await?;
    if json {
        return print_json(&s);
    }
    println!(
        "this node    {}: state version {}, state {}, tables {}, flows {}",
        s.node,
        s.version,
        s.state_digest,
        s.table_digest,
        if s.flows { "shared" } else { "not shared" }
    );
    println!();
    print!("{}", peer_table(&s));
    for p in &s.peers {
        if let (false, Some(e)) = (p.outbound, &p.outbound_error) {
            println!("{}: {e}", p.name);
        }
    }
    let refused: Vec<String> = s
        .refused
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "\nflows exported {}, imported {}, dropped (queue full) {}, dropped (import queue) {}, unknown VIP/backend {}",
        s.flows_exported,
        s.flows_imported,
        s.flows_dropped_queue,
        s.flows_dropped_import,
        s.flows_untranslated
    );
    println!(
        "links refused: {}",
        if refused.is_empty() {
            "none".into()
        } else {
            refused.join(", ")
        }
    );
    Ok(())
}

/// One row per peer: links, last heard, its version and digests (and whether they match ours),
/// flows each way.
fn peer_table(s: &crate::api::SyncStatus) -> String {
    let yes = |b: bool| if b { "yes" } else { "NO" }.to_string();
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            let link = match (p.outbound, p.inbound) {
                (true, true) => "up".to_string(),
                (true, false) => "out only".to_string(),
                (false, true) => "in only".to_string(),
                (false, false) => "down".to_string(),
            };
            let (version, state, tables) = match &p.summary {
                Some(x) => (
                    x.version.to_string(),
                    format!("{} {}", x.state_digest, yes(p.state_match)),
                    format!("{} {}", x.table_digest, yes(p.table_match)),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![
                p.name.clone(),
                p.address.clone(),
                link,
                p.last_heard_ms
                    .map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                version,
                state,
                tables,
                p.flows_sent.to_string(),
                p.flows_received.to_string(),
                p.flows_dropped.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "ADDRESS",
            "LINK",
            "HEARD",
            "VERSION",
            "STATE (MATCH)",
            "TABLES (MATCH)",
            "FLOWS OUT",
            "FLOWS IN",
            "DROPPED",
        ],
        &rows,
    )
}
