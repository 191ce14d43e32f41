//! `lb agent`: one per load balancer. A few tasks that talk through typed messages:
//!
//! - the dataplane task (this module's `Agent`) owns the maps, the desired state and the
//!   reconciler, and is the only writer;
//! - the control API serves the unix socket and sends it `Command`s;
//! - the metrics endpoint (optional) asks it for counters;
//! - the signal task turns SIGHUP into a reload and SIGTERM/SIGINT into a clean exit that
//!   leaves the pinned dataplane forwarding;
//! - the neighbour task follows the next hop's MAC for NICs configured with a gateway;
//! - the log task forwards the XDP program's aya-log records into tracing;
//! - the health task checks every backend through the tunnel and reports transitions;
//! - the BGP task keeps BIRD announcing exactly the VIPs this node can serve;
//! - with `[sync]`, the sync tasks (`crate::sync`) link the agent to its peers: peers' states
//!   arrive as `Command::PeerState`, and the agent publishes its own after every install.

mod fleet;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use aya::programs::XdpMode;
use lb_common::{IfaceConfig, LbConfig, v6_words};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::api::{
    BackendInfo, BgpStatus, ChangeReply, CounterInfo, InterfaceStatus, NodeReply, ReloadReply,
    Stats, Status, VipInfo,
};
use crate::config::{AttachMode, Config, format_mac, parse_mac};
use crate::dataplane::{Attachment, Dataplane, FlowCounts, monotonic_ns};
use crate::health::{CheckSpec, Health, Transition};
use crate::http::{self, Request, Response};
use crate::reconcile::{ApplyReport, Reconciler};
use crate::state::{BackendState, Change, DesiredState, Vip};
use crate::{bird, health, metrics, neighbour};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The TOML config file (see examples/lb.toml).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only validate the config file and print what it declares; touch nothing.
    #[arg(long)]
    pub check: bool,
}

type Reply<T> = oneshot::Sender<Result<T>>;

/// Messages to the dataplane task.
pub enum Command {
    Change(Change, Reply<ChangeReply>),
    Reload(Reply<ReloadReply>),
    Status(Reply<Status>),
    Vips(Reply<Vec<VipInfo>>),
    /// Backends (of one VIP, or all), without flow counts, plus (id, generation) per entry.
    Backends(Option<Vip>, Reply<Vec<(BackendInfo, u32)>>),
    Stats(Reply<Stats>),
    SetNextHop {
        iface: String,
        mac: [u8; 6],
    },
    /// A backend's check changed state.
    Health(Transition),
    /// `lb node drain` (true) / `undrain` (false): withdraw or announce every VIP.
    NodeDrain(bool, Reply<NodeReply>),
    /// What BIRD answered to the last announcement.
    BgpResult {
        announced: BTreeSet<IpAddr>,
        result: std::result::Result<String, String>,
    },
    /// A peer's replicated state (authenticated and validated by the sync task).
    PeerState {
        from: String,
        state: crate::sync::replicated::ReplicatedState,
    },
    /// A peer has sent us its state and its live flows (after each link comes up).
    PeerSynced(String),
    /// `[sync] startup_wait_secs` after start: announce even if some peer never synced.
    SyncWaitOver,
    /// `lb peer list`.
    Peers(Reply<crate::api::SyncStatus>),
}

/// A backend's last known check result.
#[derive(Clone, Debug, Default)]
struct BackendHealth {
    health: Health,
    detail: String,
}

struct Iface {
    name: String,
    ifindex: u32,
    attachment: Option<Attachment>,
    src_mac: [u8; 6],
    next_hop: Option<[u8; 6]>,
    /// Largest outer IP packet this NIC may send (`[[interface]] mtu`, else the NIC's MTU).
    mtu: u16,
}

impl Iface {
    /// Points the NIC's encapsulated packets at `mac`; true if that changed anything.
    fn set_next_hop(&mut self, dp: &mut Dataplane, mac: [u8; 6]) -> Result<bool> {
        if self.next_hop == Some(mac) {
            return Ok(false);
        }
        self.write(dp, mac)?;
        self.next_hop = Some(mac);
        Ok(true)
    }

    /// A new egress MTU; written at once if the next hop is known.
    fn set_mtu(&mut self, dp: &mut Dataplane, mtu: u16) -> Result<()> {
        if self.mtu != mtu {
            self.mtu = mtu;
            if let Some(mac) = self.next_hop {
                self.write(dp, mac)?;
            }
            info!(iface = self.name, mtu, "egress MTU set");
        }
        Ok(())
    }

    fn write(&self, dp: &mut Dataplane, mac: [u8; 6]) -> Result<()> {
        dp.set_iface(
            self.ifindex,
            IfaceConfig {
                src_mac: self.src_mac,
                dst_mac: mac,
                mtu: self.mtu,
                _pad: 0,
            },
        )
    }
}

/// The egress MTU of a NIC: the config's, else the NIC's own.
fn egress_mtu(cfg: &crate::config::InterfaceConfig) -> Result<u16> {
    let mtu = match cfg.mtu {
        Some(m) => m,
        None => {
            let m = neighbour::mtu(&cfg.name)?;
            if m < crate::config::MIN_EGRESS_MTU {
                warn!(
                    iface = cfg.name,
                    mtu = m,
                    "the NIC's MTU is below {} bytes: IPv6 clients cannot be served through it",
                    crate::config::MIN_EGRESS_MTU
                );
            }
            m
        }
    };
    Ok(mtu.min(u16::MAX as u32) as u16)
}

struct Agent {
    dp: Dataplane,
    reconciler: Reconciler,
    desired: DesiredState,
    config: Config,
    config_path: PathBuf,
    started: Instant,
    ifaces: Vec<Iface>,
    health: BTreeMap<(Vip, Ipv6Addr), BackendHealth>,
    checks: watch::Sender<Vec<CheckSpec>>,
    /// `lb node drain`: every VIP withdrawn, the tables untouched.
    node_drained: bool,
    /// Why the dataplane cannot forward, if it cannot (a NIC vanished, a map write failed).
    dataplane_fault: Option<String>,
    announce: watch::Sender<BTreeSet<IpAddr>>,
    bgp: BgpStatus,
    /// Peer sync, with `[sync]`.
    fleet: Option<fleet::Fleet>,
}

fn lb_config(cfg: &Config) -> LbConfig {
    let d = &cfg.dataplane;
    let s = 1_000_000_000u64;
    LbConfig {
        src_ip6: v6_words(d.tunnel_source),
        hash_seed: d.seed,
        udp_timeout_ns: d.udp_idle_timeout_secs * s,
        tcp_idle_timeout_ns: d.tcp_idle_timeout_secs * s,
        tcp_closing_timeout_ns: d.tcp_closing_timeout_secs * s,
        gue_port: d.gue_port.to_be(),
        flags: if cfg.sync.as_ref().is_some_and(|s| s.flows) {
            lb_common::LB_F_FLOW_EVENTS
        } else {
            0
        },
        _pad: [0; 2],
    }
}

/// Fails if an agent already answers on `socket`; removes a stale socket file.
async fn claim_socket(socket: &Path) -> Result<()> {
    if UnixStream::connect(socket).await.is_ok() {
        bail!(
            "an agent is already running on {} (one agent per pin directory and socket)",
            socket.display()
        );
    }
    match std::fs::remove_file(socket) {
        Ok(()) => info!("removed the stale socket {}", socket.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", socket.display())),
    }
    Ok(())
}

fn bind_api(socket: &Path) -> Result<UnixListener> {
    if let Some(dir) = socket.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // Root-only from the first moment: no window with a wider mode.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(socket);
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn print_check(cfg: &Config, path: &Path) {
    let state = cfg.desired_state().expect("validated");
    println!(
        "{}: valid. {} interface(s), {} VIP(s), {} backend(s); ring size {}, tunnel source {}.",
        path.display(),
        cfg.interfaces.len(),
        state.vips.len(),
        state.backend_count(),
        cfg.dataplane.ring_size,
        cfg.dataplane.tunnel_source
    );
}

pub async fn run(args: AgentArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    if args.check {
        print_check(&config, &args.config);
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the agent loads XDP programs and needs root");
    }
    let pin_dir = config.agent.pin_dir.clone();
    crate::dataplane::ensure_bpffs(&pin_dir)?;
    claim_socket(&config.agent.api_socket).await?;

    let mut dp = Dataplane::load_pinned(config.limits(), &pin_dir)?;
    start_log_bridge(&mut dp);
    let mut reconciler = if dp.adopted() {
        let r = Reconciler::adopt(&mut dp, config.dataplane.seed)?;
        info!(
            pin_dir = %pin_dir.display(),
            vips = r.vips().len(),
            "adopted the pinned dataplane of a previous agent"
        );
        r
    } else {
        let l = config.limits();
        Reconciler::new(
            l.ring_size,
            config.dataplane.seed,
            l.max_vips.min(l.max_rings),
            l.max_backends,
        )
    };
    dp.set_config(&lb_config(&config))?;

    let mut ifaces = Vec::new();
    for i in &config.interfaces {
        let ifindex = neighbour::ifindex(&i.name)?;
        let src_mac = neighbour::iface_mac(&i.name)?;
        let next_hop = match (&i.next_hop_mac, i.gateway) {
            (Some(mac), _) => Some(parse_mac(mac)?),
            (None, Some(gw)) => {
                let mac = tokio::task::block_in_place(|| neighbour::resolve(gw, &i.name, 15))?;
                if mac.is_none() {
                    warn!(iface = i.name, %gw, "the gateway's MAC is not resolved yet; VIP packets on this NIC are dropped (drop_no_iface) until it is");
                }
                mac
            }
            (None, None) => unreachable!("validated"),
        };
        let mut iface = Iface {
            name: i.name.clone(),
            ifindex,
            attachment: None,
            src_mac,
            next_hop: None,
            mtu: egress_mtu(i)?,
        };
        if let Some(mac) = next_hop {
            iface.set_next_hop(&mut dp, mac)?;
        }
        ifaces.push(iface);
    }
    for (ifindex, _) in dp.ifaces()? {
        if !ifaces.iter().any(|i| i.ifindex == ifindex) {
            dp.remove_iface(ifindex)?;
        }
    }
    let key = match &config.sync {
        Some(s) => Some(crate::sync::wire::FleetKey::load(&s.key_file)?),
        None => None,
    };
    let replicated = fleet::initial_state(&config)?;
    let desired = match &replicated {
        Some(r) => fleet::materialize(&config, r),
        None => config.desired_state()?,
    };
    // Until checks say otherwise backends count as healthy (a restart must not empty tables).
    let report = reconciler.apply(&mut dp, &desired)?;
    info!(?report, "dataplane state written");
    // Attach (or take over the pinned links) only once the maps hold the state.
    for (iface, cfg) in ifaces.iter_mut().zip(&config.interfaces) {
        let mode = match cfg.mode {
            AttachMode::Driver => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        };
        let how = dp.attach(&iface.name, mode)?;
        info!(iface = iface.name, attachment = ?how, "XDP program attached");
        iface.attachment = Some(how);
    }
    // NICs a previous agent attached that the config no longer names.
    if let Ok(entries) = std::fs::read_dir(&pin_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(nic) = name.strip_prefix("link_")
                && !config.interfaces.iter().any(|i| i.name == nic)
            {
                crate::dataplane::unpin_link(&pin_dir, nic)?;
                info!(iface = nic, "detached: no longer in the config");
            }
        }
    }

    let listener = bind_api(&config.agent.api_socket)?;
    let (tx, mut rx) = mpsc::channel::<Command>(64);
    tokio::spawn(serve_api(listener, tx.clone(), pin_dir.clone()));
    if let Some(addr) = config.agent.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        info!(%addr, "serving Prometheus metrics on /metrics");
        tokio::spawn(serve_metrics(l, tx.clone()));
    }
    let gateways: Vec<(String, std::net::IpAddr)> = config
        .interfaces
        .iter()
        .filter_map(|i| i.gateway.map(|g| (i.name.clone(), g)))
        .collect();
    if !gateways.is_empty() {
        let every = Duration::from_secs(config.agent.neighbour_refresh_secs.max(1));
        tokio::spawn(follow_gateways(gateways, every, tx.clone()));
    }
    let socket = config.agent.api_socket.clone();
    let (checks, checks_rx) = watch::channel(Vec::new());
    let health_ebpf = health::load_encap(
        &config
            .interfaces
            .iter()
            .map(|i| i.name.clone())
            .collect::<Vec<_>>(),
    )?;
    let tunnel = health::Tunnel {
        source: config.dataplane.tunnel_source,
        gue_port: config.dataplane.gue_port,
        iface: config.interfaces[0].name.clone(),
    };
    tokio::spawn(health::run(health_ebpf, tunnel, checks_rx, tx.clone()));
    let (announce, announce_rx) = watch::channel(BTreeSet::new());
    let bird = config
        .bgp
        .as_ref()
        .map(|b| bird::Bird::new(b.bird_socket.clone(), b.routes_file.clone()));
    if let Some(bird) = bird.clone() {
        // bird.conf includes the routes file: make sure it exists (empty) before BIRD reads it.
        bird::write_initial_routes(bird.routes_file())?;
        tokio::spawn(drive_bird(bird, announce_rx, tx.clone()));
    }
    let flow_events = match &config.sync {
        Some(s) if s.flows => Some(dp.take_flow_events()?),
        _ => None,
    };
    let mut agent = Agent {
        dp,
        reconciler,
        desired,
        config,
        config_path: args.config.clone(),
        started: Instant::now(),
        ifaces,
        health: BTreeMap::new(),
        checks,
        node_drained: false,
        dataplane_fault: None,
        announce,
        bgp: BgpStatus::default(),
        fleet: None,
    };
    if let (Some(sync), Some(key), Some(replicated)) = (agent.config.sync.clone(), key, replicated)
    {
        let state_file = sync.state_file.clone();
        let sync = crate::sync::spawn(crate::sync::Start {
            config: sync,
            key,
            pin_dir: pin_dir.clone(),
            agent: tx.clone(),
            flow_events,
            local: agent.local(&replicated),
        })
        .await?;
        fleet::persist(&state_file, &replicated)?;
        let wait = Duration::from_secs(
            agent
                .config
                .sync
                .as_ref()
                .map_or(0, |s| s.startup_wait_secs),
        );
        let waiting = agent
            .config
            .sync
            .iter()
            .flat_map(|s| s.peers.iter().map(|p| p.name.clone()))
            .collect::<BTreeSet<_>>();
        if !waiting.is_empty() {
            info!(peers = ?waiting, "VIPs stay unannounced until every peer has sent its state and flows (at most {wait:?})");
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Command::SyncWaitOver).await;
            });
        }
        agent.fleet = Some(fleet::Fleet {
            sync,
            replicated,
            state_file,
            waiting,
        });
    }
    agent.publish();
    info!(socket = %socket.display(), "agent ready");

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watchdog = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(cmd) = rx.recv() => agent.handle(cmd),
            _ = watchdog.tick() => agent.watchdog(),
            _ = hup.recv() => {
                match agent.reload() {
                    Ok(r) => info!(changes = r.changes.len(), report = ?r.report, "reloaded {}", agent.config_path.display()),
                    Err(e) => error!("reload refused, nothing changed: {e:#}"),
                }
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    // A stopping agent can no longer follow health or operators: withdraw its VIPs. The pinned
    // dataplane keeps forwarding the flows routers still send while the withdrawal spreads.
    if let Some(bird) = bird {
        match bird.announce(&BTreeSet::new()).await {
            Ok(_) => info!("VIPs withdrawn from BIRD"),
            Err(e) => error!("withdrawing the VIPs from BIRD: {e:#}"),
        }
    }
    info!(
        "agent stopped; the XDP program keeps forwarding from {} (`lb detach` stops it)",
        pin_dir.display()
    );
    Ok(())
}

fn start_log_bridge(dp: &mut Dataplane) {
    match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the logger owns its ring-buffer fd for as long as AsyncFd holds it.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                let mut fd = match registered {
                    Ok(fd) => fd,
                    Err(e) => return warn!("XDP log bridge: {e}"),
                };
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!("XDP program logs are not bridged: {e}"),
    }
}

impl Agent {
    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Change(change, reply) => {
                let r = self.change(&change);
                if let Err(e) = &r {
                    warn!("refused: {change}: {e:#}");
                } else {
                    info!("applied: {change}");
                }
                let _ = reply.send(r);
            }
            Command::Reload(reply) => {
                let r = self.reload();
                match &r {
                    Ok(r) => info!(
                        changes = r.changes.len(),
                        "reloaded {}",
                        self.config_path.display()
                    ),
                    Err(e) => error!("reload refused, nothing changed: {e:#}"),
                }
                let _ = reply.send(r);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Vips(reply) => {
                let _ = reply.send(self.vips());
            }
            Command::Backends(vip, reply) => {
                let _ = reply.send(self.backends(vip));
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            Command::SetNextHop { iface, mac } => {
                if let Err(e) = self.set_next_hop(&iface, mac) {
                    error!(iface, "updating the next hop: {e:#}");
                }
            }
            Command::Health(t) => self.health_transition(t),
            Command::NodeDrain(drain, reply) => {
                if drain != self.node_drained {
                    info!(
                        "node {}",
                        if drain {
                            "drained: withdrawing every VIP"
                        } else {
                            "undrained"
                        }
                    );
                }
                self.node_drained = drain;
                self.publish();
                let _ = reply.send(Ok(NodeReply {
                    drained: drain,
                    announcing: self
                        .announcements()
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                }));
            }
            Command::PeerState { from, state } => self.peer_state(&from, state),
            Command::PeerSynced(from) => self.peer_synced(&from),
            Command::SyncWaitOver => self.sync_wait_over(),
            Command::Peers(reply) => {
                let _ = reply.send(self.sync_status().ok_or_else(|| {
                    crate::state::not_found("peer sync is not configured ([sync])".into())
                }));
            }
            Command::BgpResult { announced, result } => {
                match &result {
                    Ok(_) => {
                        if self.bgp.error.is_some() || self.bgp.announced.len() != announced.len() {
                            info!(vips = ?announced, "BIRD announces");
                        }
                    }
                    Err(e) => error!("BIRD: {e}"),
                }
                self.bgp.announced = announced.iter().map(ToString::to_string).collect();
                self.bgp.error = result.err();
            }
        }
    }

    /// The state written to the maps: the operators' state with down backends drained.
    fn effective(&self, desired: &DesiredState) -> DesiredState {
        let mut out = desired.clone();
        for (vip, spec) in out.vips.iter_mut() {
            for (addr, b) in spec.backends.iter_mut() {
                if self
                    .health
                    .get(&(*vip, *addr))
                    .is_some_and(|h| h.health == Health::Down)
                {
                    b.state = BackendState::Draining;
                }
            }
        }
        out
    }

    /// Writes `next` (with health applied) to the maps; on success it becomes the desired state.
    fn install(&mut self, next: DesiredState) -> Result<ApplyReport> {
        let effective = self.effective(&next);
        match self.reconciler.apply(&mut self.dp, &effective) {
            Ok(report) => {
                self.desired = next;
                if let Err(e) = self.write_echo_flags() {
                    error!("writing the ICMP echo switches: {e:#}");
                }
                if self.dataplane_fault.take().is_some() {
                    info!("dataplane writes succeed again");
                }
                self.publish();
                self.publish_fleet();
                Ok(report)
            }
            Err(e) => {
                // The reconciler writes nothing when it cannot build a table; a failed map
                // write, though, means the dataplane may not match what we announce.
                if e.downcast_ref::<crate::state::Refused>().is_none() {
                    self.dataplane_fault = Some(format!("map write failed: {e:#}"));
                    self.publish();
                }
                Err(e)
            }
        }
    }

    /// Each VIP address answers ping unless a `[[vip]]` of it says `icmp_echo = false`.
    fn write_echo_flags(&mut self) -> Result<()> {
        let off = self.config.echo_off();
        let addrs: BTreeSet<IpAddr> = self.desired.vips.keys().map(|v| v.addr).collect();
        for addr in addrs {
            let flags = if off.contains(&addr) {
                lb_common::VIP_F_NO_ECHO
            } else {
                0
            };
            self.dp.set_address_flags(addr, flags)?;
        }
        Ok(())
    }

    fn health_transition(&mut self, t: Transition) {
        let key = (t.vip, t.backend);
        let before = self.health.get(&key).map(|h| h.health).unwrap_or_default();
        if before != t.health {
            let log = if t.health == Health::Down {
                "backend down: out of the table"
            } else {
                "backend healthy"
            };
            if t.health == Health::Down {
                warn!(vip = %t.vip, backend = %t.backend, detail = t.detail, "{log}");
            } else {
                info!(vip = %t.vip, backend = %t.backend, "{log}");
            }
        }
        self.health.insert(
            key,
            BackendHealth {
                health: t.health,
                detail: t.detail,
            },
        );
        let desired = self.desired.clone();
        if let Err(e) = self.install(desired) {
            error!("applying a health change: {e:#}");
        }
    }

    /// Tells the health task which checks to run and the BGP task what to announce.
    fn publish(&mut self) {
        let mut specs = Vec::new();
        for (vip, spec) in &self.desired.vips {
            let cfg = self.config.health_for(vip);
            for addr in spec.backends.keys() {
                if let Some(c) = CheckSpec::new(*vip, *addr, spec.gue, &cfg) {
                    specs.push(c);
                }
            }
        }
        // Forget the health of backends no longer checked (removed, or checks turned off).
        self.health
            .retain(|k, _| specs.iter().any(|s| (s.vip, s.backend) == *k));
        self.checks.send_if_modified(|cur| {
            let changed = *cur != specs;
            if changed {
                *cur = specs;
            }
            changed
        });
        let want = self.announcements();
        self.announce.send_if_modified(|cur| {
            let changed = *cur != want;
            if changed {
                *cur = want;
            }
            changed
        });
    }

    /// VIP addresses to announce: those with a service that has an active backend not known
    /// to be down, unless the node is drained or its dataplane is broken.
    fn announcements(&self) -> BTreeSet<IpAddr> {
        if self.node_drained || self.dataplane_fault.is_some() || !self.caught_up() {
            return BTreeSet::new();
        }
        self.desired
            .vips
            .iter()
            .filter(|(vip, spec)| {
                spec.backends.iter().any(|(addr, b)| {
                    b.state == BackendState::Active
                        && self
                            .health
                            .get(&(**vip, *addr))
                            .is_none_or(|h| h.health != Health::Down)
                })
            })
            .map(|(vip, _)| vip.addr)
            .collect()
    }

    /// Every second: is each NIC still there, with the index we attached to?
    fn watchdog(&mut self) {
        let mut fault = None;
        for i in &self.ifaces {
            match neighbour::ifindex(&i.name) {
                Ok(idx) if idx == i.ifindex => {}
                Ok(_) => fault = Some(format!("{} was replaced (new ifindex)", i.name)),
                Err(_) => fault = Some(format!("{} is gone", i.name)),
            }
            if fault.is_none() && !neighbour::is_up(&i.name) {
                fault = Some(format!("{} is down", i.name));
            }
        }
        let nic_fault = self
            .dataplane_fault
            .as_ref()
            .is_none_or(|f| !f.starts_with("map write"));
        if nic_fault && fault != self.dataplane_fault {
            match &fault {
                Some(f) => error!("dataplane cannot forward: {f}; withdrawing every VIP"),
                None => info!("dataplane NICs are back"),
            }
            self.dataplane_fault = fault;
            self.publish();
        }
    }

    fn change(&mut self, change: &Change) -> Result<ChangeReply> {
        let mut next = self.desired.clone();
        next.apply(change, &self.config.capacity())?;
        let report = if self.fleet.is_some() {
            self.commit_changes(std::slice::from_ref(change))?
        } else {
            self.install(next)?
        };
        Ok(ChangeReply {
            change: change.to_string(),
            report,
            table_version: self.reconciler.version,
        })
    }

    fn reload(&mut self) -> Result<ReloadReply> {
        let new = Config::load(&self.config_path)?;
        if let Some(what) = self.config.restart_only_difference(&new) {
            bail!("{what} changed; that needs an agent restart (and, for map sizes, `lb detach`)");
        }
        let desired = new.desired_state()?;
        let diff = self.desired.changes_to(&desired);
        let changes: Vec<String> = diff.iter().map(ToString::to_string).collect();
        // Next hops first (a resolution failure must not leave half a reload behind).
        let mut hops = Vec::new();
        for (iface, cfg) in self.ifaces.iter().zip(&new.interfaces) {
            let mac = match (&cfg.next_hop_mac, cfg.gateway) {
                (Some(m), _) => Some(parse_mac(m)?),
                (None, Some(gw)) => neighbour::lookup(gw, &iface.name)?.or(iface.next_hop),
                _ => None,
            };
            hops.push(mac);
        }
        let old = std::mem::replace(&mut self.config, new.clone());
        // With peers, the file's differences become operator changes the fleet shares.
        let installed = if self.fleet.is_some() {
            self.commit_changes(&diff)
        } else {
            self.install(desired)
        };
        let report = match installed {
            Ok(r) => r,
            Err(e) => {
                self.config = old;
                return Err(e);
            }
        };
        self.dp.set_config(&lb_config(&new))?;
        for ((iface, mac), cfg) in self.ifaces.iter_mut().zip(hops).zip(&new.interfaces) {
            iface.set_mtu(&mut self.dp, egress_mtu(cfg)?)?;
            if let Some(mac) = mac {
                iface.set_next_hop(&mut self.dp, mac)?;
            }
        }
        for c in &changes {
            info!("reload: {c}");
        }
        // New check settings take effect now.
        self.publish();
        Ok(ReloadReply {
            changes,
            report,
            table_version: self.reconciler.version,
        })
    }

    fn set_next_hop(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        let iface = self
            .ifaces
            .iter_mut()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("no interface {name}"))?;
        if iface.set_next_hop(&mut self.dp, mac)? {
            info!(iface = name, mac = format_mac(&mac), "next hop MAC updated");
        }
        Ok(())
    }

    fn status(&mut self) -> Result<Status> {
        let drift = self
            .config
            .desired_state()?
            .changes_to(&self.desired)
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.config_path.display().to_string(),
            pin_dir: self.config.agent.pin_dir.display().to_string(),
            adopted: self.dp.adopted(),
            interfaces: self
                .ifaces
                .iter()
                .map(|i| InterfaceStatus {
                    name: i.name.clone(),
                    ifindex: i.ifindex,
                    attachment: i
                        .attachment
                        .map_or("none".into(), |a| format!("{a:?}").to_lowercase()),
                    next_hop_mac: i.next_hop.map_or("unresolved".into(), |m| format_mac(&m)),
                    mtu: i.mtu,
                })
                .collect(),
            tunnel_source: self.config.dataplane.tunnel_source.to_string(),
            ring_size: self.config.dataplane.ring_size,
            table_version: self.reconciler.version,
            vips: self.desired.vips.len(),
            backends: self.desired.backend_count(),
            max_flows: self.config.dataplane.max_flows,
            drift,
            metrics: self.config.agent.metrics.map(|m| m.to_string()),
            node_drained: self.node_drained,
            dataplane_fault: self.dataplane_fault.clone(),
            announcing: self
                .announcements()
                .iter()
                .map(ToString::to_string)
                .collect(),
            bgp: self.config.bgp.as_ref().map(|_| self.bgp.clone()),
            sync: self.sync_status(),
        })
    }

    fn vips(&mut self) -> Result<Vec<VipInfo>> {
        let mut out = Vec::new();
        let installed: Vec<(Vip, u32, bool, usize, usize)> = self
            .reconciler
            .vips()
            .iter()
            .map(|(vip, v)| {
                let draining = v
                    .backends
                    .values()
                    .filter(|b| b.spec.state == crate::state::BackendState::Draining)
                    .count();
                (*vip, v.id, v.gue, v.backends.len() - draining, draining)
            })
            .collect();
        for (vip, id, gue, active, draining) in installed {
            let c = self.dp.vip_counter(id)?;
            out.push(VipInfo {
                vip,
                id,
                gue,
                active,
                draining,
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        Ok(out)
    }

    fn backends(&mut self, only: Option<Vip>) -> Result<Vec<(BackendInfo, u32)>> {
        if let Some(v) = only {
            self.desired.vip(&v)?;
        }
        let mut rows = Vec::new();
        for (vip, v) in self.reconciler.vips() {
            if only.is_some_and(|o| o != *vip) {
                continue;
            }
            let slots = v.slot_counts();
            for (addr, b) in &v.backends {
                rows.push((*vip, *addr, *b, slots.get(&b.id).copied().unwrap_or(0)));
            }
        }
        let checked: BTreeSet<(Vip, Ipv6Addr)> = self
            .checks
            .borrow()
            .iter()
            .map(|c| (c.vip, c.backend))
            .collect();
        let mut out = Vec::new();
        for (vip, addr, mut b, slots) in rows {
            let c = self.dp.backend_counter(b.id)?;
            // The operator's state; health shows separately (a down backend is drained in
            // the maps but not in `desired`).
            if let Some(d) = self
                .desired
                .vips
                .get(&vip)
                .and_then(|v| v.backends.get(&addr))
            {
                b.spec.state = d.state;
            }
            let (health, health_detail) = match self.health.get(&(vip, addr)) {
                Some(h) => (
                    h.health.to_string(),
                    if h.health == Health::Down {
                        h.detail.clone()
                    } else {
                        String::new()
                    },
                ),
                None if checked.contains(&(vip, addr)) => ("unknown".into(), String::new()),
                None => ("unchecked".into(), String::new()),
            };
            out.push((
                BackendInfo {
                    vip,
                    backend: addr.to_string(),
                    id: b.id,
                    weight: b.spec.weight,
                    state: b.spec.state,
                    slots,
                    flows: 0,
                    health,
                    health_detail,
                    packets: c.packets,
                    bytes: c.bytes,
                },
                b.generation,
            ));
        }
        Ok(out)
    }

    fn stats(&mut self) -> Result<Stats> {
        let time_ns = monotonic_ns();
        let counters = self
            .dp
            .counters()?
            .into_iter()
            .map(|(c, v)| CounterInfo {
                name: c.name().into(),
                packets: v.packets,
                bytes: v.bytes,
            })
            .collect();
        let vips = self
            .vips()?
            .into_iter()
            .map(|v| {
                (
                    v.vip,
                    CounterInfo {
                        name: "vip".into(),
                        packets: v.packets,
                        bytes: v.bytes,
                    },
                )
            })
            .collect();
        let backends = self
            .backends(None)?
            .into_iter()
            .map(|(b, _)| {
                (
                    b.vip,
                    b.backend,
                    CounterInfo {
                        name: "backend".into(),
                        packets: b.packets,
                        bytes: b.bytes,
                    },
                )
            })
            .collect();
        Ok(Stats {
            time_ns,
            table_version: self.reconciler.version,
            counters,
            vips,
            backends,
            sync: self.sync_status(),
        })
    }
}

async fn ask<T>(tx: &mpsc::Sender<Command>, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| anyhow!("the agent is shutting down"))?;
    rx.await
        .map_err(|_| anyhow!("the agent is shutting down"))?
}

/// Backends with their live flow counts (the walk runs off the dataplane task).
async fn backends_with_flows(
    tx: &mpsc::Sender<Command>,
    vip: Option<Vip>,
    pin_dir: &Path,
) -> Result<Vec<BackendInfo>> {
    let rows = ask(tx, |r| Command::Backends(vip, r)).await?;
    let dir = pin_dir.to_path_buf();
    let counts: FlowCounts =
        tokio::task::spawn_blocking(move || crate::dataplane::flow_counts_pinned(&dir)).await??;
    Ok(rows
        .into_iter()
        .map(|(mut b, generation)| {
            b.flows = counts.live.get(&(b.id, generation)).copied().unwrap_or(0);
            b
        })
        .collect())
}

async fn serve_api(listener: UnixListener, tx: mpsc::Sender<Command>, pin_dir: PathBuf) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        let pin_dir = pin_dir.clone();
        tokio::spawn(async move {
            // The socket is mode 0600 already; the peer's uid is checked as well.
            let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
            let resp = match http::read_request(&mut stream).await {
                Err(http::HttpError(status, msg)) => Response::error(status, msg),
                Ok(_) if !root => Response::error(403, "the control API is root-only"),
                Ok(req) => route(&req, &tx, &pin_dir).await,
            };
            let _ = http::write_response(&mut stream, &resp).await;
        });
    }
}

fn error_status(e: &anyhow::Error) -> u16 {
    match e.downcast_ref::<crate::state::Refused>().map(|r| r.kind) {
        Some(crate::state::Refusal::NotFound) => 404,
        Some(crate::state::Refusal::Conflict) => 409,
        None => 400,
    }
}

async fn route(req: &Request, tx: &mpsc::Sender<Command>, pin_dir: &Path) -> Response {
    let reply = |r: Result<Response>| match r {
        Ok(resp) => resp,
        Err(e) => Response::error(error_status(&e), format!("{e:#}")),
    };
    let path: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), path.as_slice()) {
        ("GET", ["v1", "status"]) => reply(
            ask(tx, Command::Status)
                .await
                .map(|s| Response::json(200, &s)),
        ),
        ("GET", ["v1", "vips"]) => reply(
            ask(tx, Command::Vips)
                .await
                .map(|v| Response::json(200, &v)),
        ),
        ("GET", ["v1", "backends"]) => {
            let vip = match req.query.iter().find(|(k, _)| k == "vip") {
                Some((_, v)) => match v.parse::<Vip>() {
                    Ok(v) => Some(v),
                    Err(e) => return Response::error(400, format!("{e:#}")),
                },
                None => None,
            };
            if let Some((k, _)) = req.query.iter().find(|(k, _)| k != "vip") {
                return Response::error(400, format!("unknown query parameter `{k}`"));
            }
            reply(
                backends_with_flows(tx, vip, pin_dir)
                    .await
                    .map(|b| Response::json(200, &b)),
            )
        }
        ("GET", ["v1", "stats"]) => reply(
            ask(tx, Command::Stats)
                .await
                .map(|s| Response::json(200, &s)),
        ),
        ("GET", ["v1", "peers"]) => reply(
            ask(tx, Command::Peers)
                .await
                .map(|s| Response::json(200, &s)),
        ),
        ("POST", ["v1", "reload"]) => reply(
            ask(tx, Command::Reload)
                .await
                .map(|r| Response::json(200, &r)),
        ),
        ("POST", ["v1", "node", verb @ ("drain" | "undrain")]) => {
            let drain = *verb == "drain";
            reply(
                ask(tx, |r| Command::NodeDrain(drain, r))
                    .await
                    .map(|r| Response::json(200, &r)),
            )
        }
        ("POST", ["v1", "change"]) => {
            // Deserializing checks the VIP; the actor's `DesiredState::apply` checks the rest.
            let change: Change = match serde_json::from_slice(&req.body) {
                Ok(c) => c,
                Err(e) => return Response::error(400, format!("request body: {e}")),
            };
            reply(
                ask(tx, |r| Command::Change(change, r))
                    .await
                    .map(|c| Response::json(200, &c)),
            )
        }
        (
            _,
            [
                "v1",
                "status" | "vips" | "backends" | "stats" | "reload" | "peers" | "change",
            ],
        )
        | (_, ["v1", "node", "drain" | "undrain"]) => Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::error(404, format!("no such endpoint {}", req.path)),
    }
}

async fn serve_metrics(listener: tokio::net::TcpListener, tx: mpsc::Sender<Command>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let resp = match http::read_request(&mut stream).await {
                Err(http::HttpError(s, m)) => Response::error(s, m),
                Ok(req) if req.method == "GET" && req.path == "/metrics" => {
                    let stats = ask(&tx, Command::Stats).await;
                    // No flow counts here: walking the connection table on every scrape costs
                    // too much; `lb backend list` has them.
                    let backends = ask(&tx, |r| Command::Backends(None, r))
                        .await
                        .map(|rows| rows.into_iter().map(|(b, _)| b).collect::<Vec<_>>());
                    match (stats, backends) {
                        (Ok(s), Ok(b)) => Response::text(
                            200,
                            "text/plain; version=0.0.4",
                            metrics::render(&s, &b),
                        ),
                        (Err(e), _) | (_, Err(e)) => Response::error(500, format!("{e:#}")),
                    }
                }
                Ok(req) => Response::error(
                    404,
                    format!("only GET /metrics here, not {} {}", req.method, req.path),
                ),
            };
            let _ = http::write_response(&mut stream, &resp).await;
        });
    }
}

/// Keeps BIRD announcing what the dataplane task wants, retrying every few seconds on failure
/// (BIRD restarted, socket not there yet), and re-asserting now and then.
async fn drive_bird(
    bird: bird::Bird,
    mut want: watch::Receiver<BTreeSet<IpAddr>>,
    tx: mpsc::Sender<Command>,
) {
    const RETRY: Duration = Duration::from_secs(2);
    const REASSERT: Duration = Duration::from_secs(30);
    loop {
        let vips = want.borrow_and_update().clone();
        let result = bird
            .announce(&vips)
            .await
            .map(|r| format!("{r:?}"))
            .map_err(|e| format!("{e:#}"));
        let failed = result.is_err();
        if tx
            .send(Command::BgpResult {
                announced: vips,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
        let wait = if failed { RETRY } else { REASSERT };
        tokio::select! {
            changed = want.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn follow_gateways(
    gateways: Vec<(String, std::net::IpAddr)>,
    every: Duration,
    tx: mpsc::Sender<Command>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for (iface, gw) in &gateways {
            let (iface2, gw2) = (iface.clone(), *gw);
            let found = tokio::task::spawn_blocking(move || neighbour::lookup(gw2, &iface2)).await;
            match found {
                Ok(Ok(Some(mac))) => {
                    if tx
                        .send(Command::SetNextHop {
                            iface: iface.clone(),
                            mac,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Ok(None)) => {
                    warn!(iface, %gw, "the gateway's MAC is not in the neighbour table; asking the kernel to resolve it");
                    neighbour::provoke(*gw);
                }
                Ok(Err(e)) => warn!(iface, "neighbour lookup: {e:#}"),
                Err(_) => return,
            }
        }
    }
}
