//! The actor: the one task that owns the dataplane handle, the desired state and the
//! reconciler. It takes requests from the control API and the metrics endpoint ([`Command`]s)
//! and the workers' events (health transitions, next hops, BIRD's outcomes, peer sync), and
//! tells the workers what it wants through watch channels (checks to run, VIPs to announce).
//!
//! It writes the forwarding maps (through the reconciler, which orders the writes; see
//! `crate::reconcile`) and `IFACES`. Other tasks write other maps: the health task its TC
//! program's maps, and peer sync's importer the connection table.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use lb_common::{LbConfig, v6_words};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::fault::Fault;
use super::fleet;
use super::nic::Iface;
use crate::api::{
    BackendInfo, BgpStatus, ChangeReply, NodeReply, ReloadReply, ReloadRequest, Stats, Status,
    VipInfo,
};
use crate::bgp;
use crate::config::{Config, Settings, format_mac};
use crate::dataplane::Dataplane;
use crate::health::{CheckSpec, EncapCounters, Health, Transition};
use crate::neighbour::NextHop;
use crate::reconcile::{ApplyReport, Reconciler};
use crate::state::history::History;
use crate::state::{BackendState, Change, DesiredState, Refused, Vip, not_found};
use crate::sync;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

/// Requests to the actor, each with the channel for its reply.
pub enum Command {
    Change(Change, Reply<ChangeReply>),
    Reload(ReloadRequest, Reply<ReloadReply>),
    Status(Reply<Status>),
    Vips(Reply<Vec<VipInfo>>),
    /// Backends (of one VIP, or all), without flow counts, plus (id, generation) per entry.
    Backends(Option<Vip>, Reply<Vec<(BackendInfo, u32)>>),
    Stats(Reply<Stats>),
    /// `lb node drain` (true) / `undrain` (false): withdraw or announce every VIP.
    NodeDrain(bool, Reply<NodeReply>),
    /// `lb peer list`.
    Peers(Reply<crate::api::SyncStatus>),
}

/// Everything that reaches the actor: requests and the workers' events.
pub(super) struct Inputs {
    pub commands: mpsc::Receiver<Command>,
    pub transitions: mpsc::Receiver<Transition>,
    pub next_hops: mpsc::Receiver<NextHop>,
    /// Routes and neighbours of the backends (next hops from the kernel only).
    pub routes: mpsc::Receiver<crate::routes::Routes>,
    pub bgp: mpsc::Receiver<bgp::Outcome>,
    pub sync: mpsc::Receiver<sync::Event>,
}

/// A backend's last known check result.
#[derive(Clone, Debug, Default)]
pub(super) struct BackendHealth {
    pub health: Health,
    pub detail: String,
}

pub(super) struct Agent {
    pub dp: Dataplane,
    pub reconciler: Reconciler,
    pub desired: DesiredState,
    pub config: Config,
    pub config_path: PathBuf,
    /// The file's node-local settings as last applied, to list what a reload changes.
    pub settings: Settings,
    pub started: Instant,
    pub ifaces: Vec<Iface>,
    pub health: BTreeMap<(Vip, Ipv6Addr), BackendHealth>,
    pub checks: watch::Sender<Vec<CheckSpec>>,
    /// The health-check program's counters (None if its map could not be taken).
    pub health_encap: Option<EncapCounters>,
    /// `lb node drain`: every VIP withdrawn, the tables untouched.
    pub node_drained: bool,
    /// Why the dataplane cannot forward, if it cannot (a NIC vanished, a map write failed).
    pub fault: Option<Fault>,
    pub announce: watch::Sender<BTreeSet<IpAddr>>,
    pub bgp: BgpStatus,
    /// Peer sync, with `[sync]`.
    pub fleet: Option<fleet::Fleet>,
    /// Second chance, standalone: this agent's own steps of each VIP's members (in a fleet
    /// they are in the replicated state).
    pub history: BTreeMap<Vip, History>,
    /// CLOCK_MONOTONIC minus Unix time (`second_chance::mono_offset_ns`).
    pub mono_offset_ns: i128,
    /// The egress cache: static next hops or the kernel's routes (`agent::egress`).
    pub egress: super::nic::EgressState,
}

/// The dataplane's settings for this config.
pub(super) fn lb_config(cfg: &Config) -> LbConfig {
    let d = &cfg.dataplane;
    let s = 1_000_000_000u64;
    LbConfig {
        src_ip6: v6_words(d.tunnel_source),
        hash_seed: d.seed,
        udp_timeout_ns: d.udp_idle_timeout_secs * s,
        tcp_idle_timeout_ns: d.tcp_idle_timeout_secs * s,
        tcp_closing_timeout_ns: d.tcp_closing_timeout_secs * s,
        gue_port: d.gue_port.to_be(),
        flags: lb_flags(cfg),
        // validate() keeps both within u16 (0 = no limit).
        icmp_rate: d.icmp_rate as u16,
        icmp_burst: d.icmp_burst as u16,
    }
}

/// `LbConfig::flags` for this config: only `flows = "all"` exports each new flow's entry;
/// with second chance on, rings keep previous backends (SYNs in unchanged slots need no entry).
fn lb_flags(cfg: &Config) -> u16 {
    use lb_common::{LB_F_FLOW_CACHE, LB_F_FLOW_EVENTS, LB_F_SECOND_CHANCE};
    let sync = cfg.sync.as_ref();
    [
        (
            sync.is_some_and(|s| s.flows == crate::config::FlowSync::All),
            LB_F_FLOW_EVENTS,
        ),
        (cfg.dataplane.second_chance_ms() > 0, LB_F_SECOND_CHANCE),
        (cfg.dataplane.flow_cache, LB_F_FLOW_CACHE),
    ]
    .into_iter()
    .filter_map(|(on, bit)| on.then_some(bit))
    .fold(0, |flags, bit| flags | bit)
}

/// The new-flow gate for this config (a burst of 0 means one second of the rate).
pub(super) fn flow_gate(cfg: &Config) -> lb_common::ratelimit::FlowGate {
    let d = &cfg.dataplane;
    lb_common::ratelimit::FlowGate {
        rate: d.new_flow_rate,
        burst: if d.new_flow_burst == 0 {
            d.new_flow_rate
        } else {
            d.new_flow_burst
        },
    }
}

impl Agent {
    /// Serves requests and events until SIGTERM or SIGINT; SIGHUP reloads the config.
    pub async fn run(&mut self, mut inputs: Inputs) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                Some(cmd) = inputs.commands.recv() => self.handle(cmd),
                Some(t) = inputs.transitions.recv() => self.health_transition(t),
                Some(hop) = inputs.next_hops.recv() => {
                    if let Err(e) = self.set_next_hop(&hop.iface, hop.mac) {
                        error!(iface = hop.iface, "updating the next hop: {e:#}");
                    }
                }
                Some(routes) = inputs.routes.recv() => self.apply_routes(routes),
                Some(outcome) = inputs.bgp.recv() => self.bgp_outcome(outcome),
                Some(ev) = inputs.sync.recv() => match ev {
                    sync::Event::PeerState { from, state } => self.peer_state(&from, state),
                    sync::Event::PeerSynced(from) => self.peer_synced(&from),
                    sync::Event::WaitOver => self.sync_wait_over(),
                },
                _ = watchdog.tick() => self.watchdog(),
                _ = hup.recv() => {
                    match self.reload(&ReloadRequest::default()) {
                        Ok(r) => info!(changes = r.changes.len(), report = ?r.report, "reloaded {}", self.config_path.display()),
                        Err(e) => error!("reload refused, nothing changed: {e:#}"),
                    }
                }
                _ = term.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }

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
            Command::Reload(req, reply) => {
                let r = self.reload(&req);
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
            Command::Peers(reply) => {
                let _ = reply.send(
                    self.sync_status()
                        .ok_or_else(|| not_found("peer sync is not configured ([sync])".into())),
                );
            }
        }
    }

    fn bgp_outcome(&mut self, outcome: bgp::Outcome) {
        let bgp::Outcome { announced, result } = outcome;
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

    /// The state written to the maps: the operators' state with down backends drained.
    pub fn effective(&self, desired: &DesiredState) -> DesiredState {
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
    pub fn install(&mut self, next: DesiredState) -> Result<ApplyReport> {
        self.resolve_new_backends(&next);
        let effective = self.effective(&next);
        let (chance, history) = self.second_chance_next(&next);
        let rings_before = self.moved_before();
        match self.reconciler.apply(&mut self.dp, &effective, &chance) {
            Ok(report) => {
                let moved = self.moved_after(rings_before);
                self.desired = next;
                if let Some(h) = history {
                    self.history = h;
                }
                if let Err(e) = self.write_echo_flags() {
                    error!("writing the ICMP echo switches: {e:#}");
                }
                if matches!(self.fault, Some(Fault::MapWrite(_))) {
                    self.fault = None;
                    info!("dataplane writes succeed again");
                }
                self.publish();
                self.publish_fleet();
                self.send_moved(moved);
                Ok(report)
            }
            Err(e) => {
                // The reconciler writes nothing when it refuses a state (capacity, a table it
                // cannot build); any other error is a failed write, and the dataplane may not
                // match what we announce.
                if e.downcast_ref::<Refused>().is_none() {
                    self.fault = Some(Fault::MapWrite(format!("{e:#}")));
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
            if t.health == Health::Down {
                warn!(vip = %t.vip, backend = %t.backend, detail = t.detail, "backend down: out of the table");
            } else {
                info!(vip = %t.vip, backend = %t.backend, "backend healthy");
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
    pub fn publish(&mut self) {
        let mut specs = Vec::new();
        for (vip, spec) in &self.desired.vips {
            let cfg = self.config.health_for(vip);
            for addr in spec.backends.keys() {
                if let Some(mut c) = CheckSpec::new(*vip, *addr, spec.gue, &cfg) {
                    c.egress = self.health_egress(addr);
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
        self.publish_backend_addrs();
        let want = self.announcements();
        self.announce.send_if_modified(|cur| {
            let changed = *cur != want;
            if changed {
                *cur = want;
            }
            changed
        });
    }

    /// VIP addresses to announce: those with a service whose entry is in the map (as the
    /// reconciler recorded it) and that has an active backend not known to be down, unless the
    /// node is drained or its dataplane is broken.
    pub fn announcements(&self) -> BTreeSet<IpAddr> {
        if self.node_drained || self.fault.is_some() || !self.caught_up() {
            return BTreeSet::new();
        }
        self.desired
            .vips
            .iter()
            .filter(|(vip, _)| self.reconciler.is_reachable(vip))
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

    /// Every second: is each NIC still there, with the index we attached to, and up? A
    /// map-write fault stays until a write succeeds; meanwhile each second retries the pass,
    /// which writes only what the failed one left missing. Then expired second-chance
    /// backends are cleared.
    fn watchdog(&mut self) {
        self.check_nics();
        if self.fault.is_none() {
            self.expire_second_chance();
        }
    }

    fn check_nics(&mut self) {
        if matches!(self.fault, Some(Fault::MapWrite(_))) {
            let next = match &self.fleet {
                Some(f) => super::fleet::materialize(&self.config, &f.replicated),
                None => self.desired.clone(),
            };
            if let Err(e) = self.install(next) {
                debug!("retrying the dataplane writes: {e:#}");
            }
            return;
        }
        let mut nic = None;
        let mut down = 0;
        for i in &self.ifaces {
            match i.check() {
                // As before: a NIC that is down is reported only if no earlier one failed.
                Some(super::fault::NicFault::Down(_)) if nic.is_some() => down += 1,
                Some(f @ super::fault::NicFault::Down(_)) => {
                    down += 1;
                    nic = Some(f);
                }
                Some(f) => nic = Some(f),
                None => {}
            }
        }
        // Next hops from the kernel: a link down is one path fewer (its routes go, and the
        // egress cache follows); it stops forwarding only when every NIC is down.
        if self.egress.kernel
            && down < self.ifaces.len()
            && matches!(nic, Some(super::fault::NicFault::Down(_)))
        {
            nic = None;
        }
        let fault = nic.map(Fault::Nic);
        if fault != self.fault {
            match &fault {
                Some(f) => error!("dataplane cannot forward: {f}; withdrawing every VIP"),
                None => info!("dataplane NICs are back"),
            }
            self.fault = fault;
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
}
