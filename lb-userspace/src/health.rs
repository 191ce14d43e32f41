//! Health checks through the tunnel.
//!
//! Each (VIP, backend) gets a check: a TCP connection to the VIP's port, optionally with an
//! HTTP GET, made by the agent's own kernel stack. The socket carries a mark that names the
//! backend; the `lb_health_encap` TC egress program (lb-ebpf/src/bin/lb_health_encap.rs)
//! encapsulates its packets to that backend like client packets, and the backend answers
//! directly. A passing check therefore proves the backend's decapsulation, VIP on `lo`,
//! service and return path.
//!
//! The health task owns the TC program and writes its target maps (`HEALTH_TARGETS`, `HEALTH_VIPS`).
//! It runs one small loop per check and sends transitions only ([`Transition`], on the channel
//! the agent hands [`run`]); the agent takes a down backend out of the Maglev table like a
//! drained one. [`spawn`] starts it and returns the agent's [`Handle`]: the checks it wants,
//! the transitions, and the TC program's counters.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TcAttachType};
use lb_common::health::{HEALTH_MARK_BASE, HealthCounter, HealthTarget, MAX_HEALTH_TARGETS, names};
use lb_common::v6_words;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::CheckKind;
use crate::state::Vip;

mod spec;
use spec::target;
pub use spec::{CheckSpec, Tunnel};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet (counts as up: a restarted agent must not empty its tables).
    #[default]
    Unknown,
    Up,
    Down,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A check's transition: what the health task tells the agent.
#[derive(Clone, Debug)]
pub struct Transition {
    pub vip: Vip,
    pub backend: Ipv6Addr,
    pub health: Health,
    /// The last result: "ok" or why it failed.
    pub detail: String,
}

/// A check that could not run for a reason of this host (no descriptor, memory, buffer or
/// local port): it says nothing about the backend, so it leaves its state as it was ("unknown"
/// for this round) and is counted, never taken as "down". Otherwise a host out of descriptors
/// would mark every backend down and drop every new flow.
#[derive(Debug)]
pub struct LocalError(pub std::io::Error);

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "check not run here: {}", self.0)
    }
}

impl std::error::Error for LocalError {}

static LOCAL_ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Checks that could not run for a local reason, since the agent started (`/metrics`).
pub fn local_errors() -> u64 {
    LOCAL_ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

/// `e` as a [`LocalError`] if it says this host ran out of something.
fn local(e: std::io::Error) -> anyhow::Error {
    if crate::listen::is_local_exhaustion(&e) {
        LocalError(e).into()
    } else {
        e.into()
    }
}

/// Rise/fall bookkeeping of one check. The first result decides at once (nothing is known
/// before it); after that, `rise` successes or `fall` failures in a row flip the state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hysteresis {
    pub health: Health,
    streak: u32,
}

impl Hysteresis {
    /// Feeds one result; returns the new state if it changed.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Health> {
        let next = match (self.health, ok) {
            (Health::Unknown, true) => Health::Up,
            (Health::Unknown, false) => Health::Down,
            (Health::Up, true) | (Health::Down, false) => {
                self.streak = 0;
                return None;
            }
            (Health::Up, false) | (Health::Down, true) => {
                self.streak += 1;
                let need = if ok { rise } else { fall };
                if self.streak < need {
                    return None;
                }
                if ok { Health::Up } else { Health::Down }
            }
        };
        self.streak = 0;
        self.health = next;
        Some(next)
    }
}

/// Loads `lb_health_encap` and attaches it to the egress of each NIC (TCX links, owned by the
/// returned object: they go away with the agent, and so do the checks).
pub fn load_encap(ifaces: &[String]) -> Result<Ebpf> {
    let mut ebpf =
        Ebpf::load(crate::HEALTH_ENCAP_OBJECT).context("loading the health-check program")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut("lb_health_encap")
        .context("lb_health_encap missing from the object")?
        .try_into()?;
    prog.load().context("verifying lb_health_encap")?;
    for iface in ifaces {
        prog.attach(iface, TcAttachType::Egress)
            .with_context(|| format!("attaching the health-check encapsulation to {iface}"))?;
    }
    Ok(ebpf)
}

/// What the agent keeps of the health task.
pub struct Handle {
    /// The checks to run; the task follows every change.
    pub checks: watch::Sender<Vec<CheckSpec>>,
    /// Each check's changes of state.
    pub transitions: mpsc::Receiver<Transition>,
    /// The TC program's counters (None, logged, if its map could not be taken).
    pub counters: Option<EncapCounters>,
}

/// Loads and attaches the TC program on `ifaces` and starts the health task with no checks.
pub fn spawn(ifaces: &[String], tunnel: Tunnel) -> Result<Handle> {
    let mut ebpf = load_encap(ifaces)?;
    let counters = match EncapCounters::take(&mut ebpf) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!("health-check counters unavailable: {e:#}");
            None
        }
    };
    let (checks, wanted) = watch::channel(Vec::new());
    let (tx, transitions) = mpsc::channel(64);
    tokio::spawn(run(ebpf, tunnel, wanted, tx));
    Ok(Handle {
        checks,
        transitions,
        counters,
    })
}

/// The TC program's packet counters (`HEALTH_STATS`), taken out of its object so the agent can
/// read them while the health task owns the rest.
pub struct EncapCounters(PerCpuArray<MapData, u64>);

impl EncapCounters {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let map = ebpf
            .take_map(names::HEALTH_STATS)
            .with_context(|| format!("map {} missing from the object", names::HEALTH_STATS))?;
        Ok(Self(PerCpuArray::try_from(map)?))
    }

    /// Each counter summed over CPUs.
    pub fn read(&self) -> Result<Vec<(&'static str, u64)>> {
        HealthCounter::ALL
            .iter()
            .map(|&c| Ok((c.name(), self.0.get(&(c as u32), 0)?.iter().sum())))
            .collect()
    }
}

struct Running {
    spec: CheckSpec,
    index: u32,
    task: JoinHandle<()>,
}

/// The health task: keeps one loop per wanted check, each with its own mark and map entry.
pub async fn run(
    mut ebpf: Ebpf,
    tunnel: Tunnel,
    mut wanted: watch::Receiver<Vec<CheckSpec>>,
    tx: mpsc::Sender<Transition>,
) {
    let mut targets: BpfHashMap<_, u32, HealthTarget> = match ebpf
        .take_map(names::HEALTH_TARGETS)
        .map(BpfHashMap::try_from)
    {
        Some(Ok(m)) => m,
        _ => {
            return warn!(
                "health checks disabled: {} map missing",
                names::HEALTH_TARGETS
            );
        }
    };
    let mut vips: BpfHashMap<_, [u32; 4], u8> =
        match ebpf.take_map(names::HEALTH_VIPS).map(BpfHashMap::try_from) {
            Some(Ok(m)) => m,
            _ => return warn!("health checks disabled: {} map missing", names::HEALTH_VIPS),
        };
    let mut running: BTreeMap<(Vip, Ipv6Addr), Running> = BTreeMap::new();
    let mut free: Vec<u32> = (0..MAX_HEALTH_TARGETS).rev().collect();
    loop {
        let specs = wanted.borrow_and_update().clone();
        // The addresses whose stray resets the TC program drops.
        let want: BTreeSet<[u32; 4]> = specs.iter().map(|s| vip_words(s.vip.addr)).collect();
        let have: Vec<[u32; 4]> = vips.keys().filter_map(|k| k.ok()).collect();
        for k in have.iter().filter(|k| !want.contains(*k)) {
            let _ = vips.remove(k);
        }
        for k in want.iter().filter(|k| !have.contains(k)) {
            if let Err(e) = vips.insert(*k, 1, 0) {
                warn!("health-check VIP filter not installed: {e}");
            }
        }
        let keep: BTreeSet<(Vip, Ipv6Addr)> = specs.iter().map(|s| (s.vip, s.backend)).collect();
        // A new route to a backend only moves its check's packets: the target is rewritten.
        for r in running.values_mut() {
            let moved = |s: &&CheckSpec| s.same_check(&r.spec) && s.egress != r.spec.egress;
            if let Some(s) = specs.iter().find(moved) {
                if let Err(e) = targets.insert(HEALTH_MARK_BASE | r.index, target(&tunnel, s), 0) {
                    warn!(backend = %s.backend, "health-check target not updated: {e}");
                }
                r.spec.egress = s.egress;
            }
        }
        // Stop checks no longer wanted, or whose settings changed.
        let stale: Vec<_> = running
            .iter()
            .filter(|(k, r)| !keep.contains(k) || !specs.contains(&r.spec))
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            let r = running.remove(&k).expect("listed above");
            r.task.abort();
            let _ = targets.remove(&(HEALTH_MARK_BASE | r.index));
            free.push(r.index);
        }
        for spec in specs {
            let key = (spec.vip, spec.backend);
            if running.contains_key(&key) {
                continue;
            }
            let Some(index) = free.pop() else {
                warn!(
                    "more than {MAX_HEALTH_TARGETS} checks; {} is not checked",
                    spec.backend
                );
                continue;
            };
            let mark = HEALTH_MARK_BASE | index;
            if let Err(e) = targets.insert(mark, target(&tunnel, &spec), 0) {
                warn!(backend = %spec.backend, "health-check target not installed: {e}");
                free.push(index);
                continue;
            }
            info!(vip = %spec.vip, backend = %spec.backend, check = spec.describe(), "checking");
            let task = tokio::spawn(check_loop(
                spec.clone(),
                mark,
                tunnel.iface.clone(),
                tx.clone(),
            ));
            running.insert(key, Running { spec, index, task });
        }
        if wanted.changed().await.is_err() {
            break;
        }
    }
    for r in running.values() {
        r.task.abort();
    }
}

async fn check_loop(spec: CheckSpec, mark: u32, iface: String, tx: mpsc::Sender<Transition>) {
    let mut state = Hysteresis::default();
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(spec.timeout, probe(&spec, mark, &iface)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow!("no answer within {} ms", spec.timeout.as_millis())),
        };
        let detail = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if let Err(e) = &result
            && e.downcast_ref::<LocalError>().is_some()
        {
            let n = LOCAL_ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(vip = %spec.vip, backend = %spec.backend, "{detail} ({n} such checks so far; the backend keeps its state)");
            }
            continue;
        }
        if let Some(health) = state.record(result.is_ok(), spec.rise, spec.fall) {
            let t = Transition {
                vip: spec.vip,
                backend: spec.backend,
                health,
                detail,
            };
            if tx.send(t).await.is_err() {
                return;
            }
        }
    }
}

/// A VIP address as the TC program loads it from the packet: IPv4 in the first word.
fn vip_words(addr: std::net::IpAddr) -> [u32; 4] {
    match addr {
        std::net::IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        std::net::IpAddr::V6(a) => v6_words(a),
    }
}

/// One check: connect to the VIP through the tunnel to this backend, then (HTTP) ask.
async fn probe(spec: &CheckSpec, mark: u32, iface: &str) -> Result<()> {
    let addr = SocketAddr::new(spec.vip.addr, spec.port);
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(local)?;
    set_sockopt(socket.as_raw_fd(), libc::SO_MARK, &mark.to_ne_bytes())?;
    set_sockopt(socket.as_raw_fd(), libc::SO_BINDTODEVICE, iface.as_bytes())?;
    // A normal close, not a reset: the orphaned socket and then its TIME_WAIT keep the mark,
    // so whatever the backend still sends (a greeting, its FIN) is answered through the tunnel
    // too. A reset would leave the kernel answering those with unmarked, untunnelled resets.
    let mut stream = match socket.connect(addr).await {
        Ok(s) => s,
        Err(e) if crate::listen::is_local_exhaustion(&e) => return Err(LocalError(e).into()),
        Err(e) => return Err(anyhow::Error::from(e).context("connect")),
    };
    if spec.kind == CheckKind::Tcp {
        return Ok(());
    }
    let host = match spec.vip.addr {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    let req = format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: lb-health\r\nConnection: close\r\n\r\n",
        spec.http_path
    );
    stream
        .write_all(req.as_bytes())
        .await
        .context("sending the request")?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < buf.len() && !buf[..got].contains(&b'\n') {
        let n = stream
            .read(&mut buf[got..])
            .await
            .context("reading the answer")?;
        ensure!(n > 0, "connection closed before a status line");
        got += n;
    }
    let status = parse_status(&buf[..got])?;
    if status != spec.http_status {
        bail!("HTTP status {status}, expected {}", spec.http_status);
    }
    // Read to the server's close (bounded by the timeout around the probe): closing first
    // would leave the server's last segments to a socket that is gone, and the kernel's
    // unmarked resets to them would leave untunnelled.
    let mut rest = 0usize;
    while rest < 1 << 20 {
        let n = stream.read(&mut buf).await.context("reading the answer")?;
        if n == 0 {
            break;
        }
        rest += n;
    }
    Ok(())
}

/// The status code of an HTTP/1.x status line.
pub fn parse_status(head: &[u8]) -> Result<u16> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).context("the status line is not text")?;
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next().unwrap_or_default();
    ensure!(
        version.starts_with("HTTP/1."),
        "not an HTTP/1 answer: {:?}",
        line.trim()
    );
    parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..=599).contains(c))
        .ok_or_else(|| anyhow!("bad status line {:?}", line.trim()))
}

fn set_sockopt(fd: i32, opt: libc::c_int, value: &[u8]) -> Result<()> {
    // SAFETY: `value` is valid for its length; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(local(std::io::Error::last_os_error()).context("setsockopt"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
