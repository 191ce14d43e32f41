//! Building the agent: load or adopt the dataplane, write the state, attach, then start the
//! workers, each on its own channel to the actor, and run the actor until a signal stops it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::actor::{Agent, Command, Inputs, flow_gate, lb_config};
use super::api_server::serve_api;
use super::fleet;
use super::metrics::serve_metrics;
use super::nic::{Iface, egress_mtus};
use crate::api::BgpStatus;
use crate::bgp::{self, Bird};
use crate::config::{AttachMode, Config, parse_mac};
use crate::dataplane::{Dataplane, ensure_bpffs, unpin_link};
use crate::health;
use crate::neighbour::{self, NextHop};
use crate::reconcile::Reconciler;
use crate::sync::{self, wire::FleetKey};

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The TOML config file (see examples/lb.toml).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only validate the config file and print what it declares; touch nothing.
    #[arg(long)]
    pub check: bool,
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
    // SAFETY: restores the mask read above; umask has no other effect.
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
    let (config, settings) = Config::load_with_settings(&args.config)?;
    if args.check {
        print_check(&config, &args.config);
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the agent loads XDP programs and needs root");
    }
    crate::listen::raise_nofile();
    let pin_dir = config.agent.pin_dir.clone();
    ensure_bpffs(&pin_dir).context("agent.pin_dir")?;
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
    dp.set_flow_gate(flow_gate(&config))?;

    let ifctl = std::sync::Arc::new(
        crate::ifctl::IfaceControl::open().context("a socket for the NIC checks")?,
    );
    let mut ifaces = Vec::new();
    let kernel_hops = config.kernel_next_hops();
    let mtus = egress_mtus(&config)?;
    for (dev, (i, mtu)) in config.interfaces.iter().zip(mtus).enumerate() {
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
            // Next hops from the kernel's routes (agent::egress).
            (None, None) => None,
        };
        let mut iface = Iface {
            name: i.name.clone(),
            ifindex,
            attachment: None,
            src_mac,
            next_hop: None,
            routed: false,
            dev: dev as u32,
            mtu,
            ctl: ifctl.clone(),
        };
        if let Some(mac) = next_hop {
            iface.set_next_hop(&mut dp, mac)?;
        }
        if kernel_hops {
            iface.set_routed(&mut dp)?;
        }
        // Every configured NIC may be a redirect's target; each also gets the program
        // attached below, which drivers need to accept redirected frames.
        dp.set_egress_dev(iface.dev, ifindex)?;
        ifaces.push(iface);
    }
    for (ifindex, _) in dp.ifaces()? {
        if !ifaces.iter().any(|i| i.ifindex == ifindex) {
            dp.remove_iface(ifindex)?;
        }
    }
    let key = match &config.sync {
        Some(s) => Some(FleetKey::load(&s.key_file)?),
        None => None,
    };
    let replicated = fleet::initial_state(&config)?;
    let mut held_back = Vec::new();
    let desired = match &replicated {
        Some(r) => {
            let m = r.state.materialize(&config.capacity());
            fleet::log_skipped(&[], &m);
            held_back = m.held_back;
            m.desired
        }
        None => config.desired_state()?,
    };
    // Until checks say otherwise backends count as healthy (a restart must not empty tables).
    // Second chance from the replicated state's steps (a standalone agent starts with none;
    // the rings it adopts keep theirs until the first pass).
    let mono_offset_ns = super::second_chance::mono_offset_ns();
    let histories = replicated
        .as_ref()
        .map(|r| r.state.histories())
        .unwrap_or_default();
    let chance = super::second_chance::input(
        &desired,
        &histories,
        config.dataplane.second_chance_ms(),
        mono_offset_ns,
    );
    // Next hops from the kernel: every backend's way out is known (or marked unresolved)
    // before the first ring slot names it.
    let (routes_tx, routes_rx) = mpsc::channel::<crate::routes::Routes>(16);
    let mut egress = super::nic::EgressState {
        kernel: kernel_hops,
        routes: Default::default(),
        addrs: None,
    };
    if kernel_hops {
        dp.set_egress_default(lb_common::Egress::UNRESOLVED)?;
        let addrs: BTreeSet<std::net::Ipv6Addr> = desired
            .vips
            .values()
            .flat_map(|v| v.backends.keys().copied())
            .collect();
        let routes = tokio::task::block_in_place(|| {
            crate::routes::resolve_now(&addrs, Duration::from_secs(1))
        })?;
        super::egress::write_routes(&mut dp, &ifaces, &routes)?;
        egress.routes = routes;
        let (tx, rx) = watch::channel(addrs);
        crate::routes::follow(rx, routes_tx)?;
        egress.addrs = Some(tx);
    } else {
        drop(routes_tx);
    }
    let report = reconciler.apply(&mut dp, &desired, &chance)?;
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
                unpin_link(&pin_dir, nic)?;
                info!(iface = nic, "detached: no longer in the config");
            }
        }
    }

    // The actor's inputs: one channel per kind of message, each worker holding its sender.
    let listener = bind_api(&config.agent.api_socket)?;
    let (commands, commands_rx) = mpsc::channel::<Command>(64);
    tokio::spawn(serve_api(
        listener,
        commands.clone(),
        pin_dir.clone(),
        config.agent.api_max_connections,
    ));
    if let Some(addr) = config.agent.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics endpoint {addr}"))?;
        info!(%addr, "serving Prometheus metrics on /metrics and the status page on /");
        tokio::spawn(serve_metrics(
            l,
            commands.clone(),
            config.agent.metrics_max_connections,
            pin_dir.clone(),
        ));
    }
    let (next_hops, next_hops_rx) = mpsc::channel::<NextHop>(16);
    let gateways: Vec<(String, IpAddr)> = config
        .interfaces
        .iter()
        .filter_map(|i| i.gateway.map(|g| (i.name.clone(), g)))
        .collect();
    if !gateways.is_empty() {
        let every = Duration::from_secs(config.agent.neighbour_refresh_secs.max(1));
        tokio::spawn(neighbour::follow(gateways, every, next_hops));
    }
    let socket = config.agent.api_socket.clone();
    let health = health::spawn(
        &config
            .interfaces
            .iter()
            .map(|i| i.name.clone())
            .collect::<Vec<_>>(),
        health::Tunnel {
            source: config.dataplane.tunnel_source,
            gue_port: config.dataplane.gue_port,
            iface: config.interfaces[0].name.clone(),
        },
    )?;
    let (announce, announce_rx) = watch::channel(BTreeSet::new());
    let (outcomes, outcomes_rx) = mpsc::channel::<bgp::Outcome>(16);
    // Held for the agent's whole life: the kernel removes it when the agent ends, and BIRD
    // withdraws every route through it (bgp::alive).
    let alive = match &config.bgp {
        Some(b) => Some(std::sync::Arc::new(bgp::AliveIface::create(
            &b.alive_iface,
        )?)),
        None => None,
    };
    let bird = config.bgp.as_ref().map(|b| {
        Bird::new(b.bird_socket.clone(), b.routes_file.clone()).with_alive_iface(&b.alive_iface)
    });
    if let Some(bird) = bird.clone() {
        // bird.conf includes the routes file: make sure it exists (empty) before BIRD reads it.
        bgp::write_initial_routes(bird.routes_file())?;
        tokio::spawn(bgp::drive(bird, announce_rx, outcomes, alive.clone()));
    }
    let flow_events = match &config.sync {
        Some(s) if s.flows == crate::config::FlowSync::All => Some(dp.take_flow_events()?),
        _ => None,
    };
    let mut agent = Agent {
        dp,
        reconciler,
        desired,
        config,
        config_path: args.config.clone(),
        settings,
        started: Instant::now(),
        ifaces,
        health: BTreeMap::new(),
        checks: health.checks,
        health_encap: health.counters,
        node_drained: false,
        fault: None,
        announce,
        bgp: BgpStatus::default(),
        fleet: None,
        history: BTreeMap::new(),
        mono_offset_ns,
        egress,
    };
    let (sync_events, sync_events_rx) = mpsc::channel::<sync::Event>(64);
    if let (Some(sync), Some(key), Some(replicated)) = (agent.config.sync.clone(), key, replicated)
    {
        let state_file = sync.state_file.clone();
        let wait = Duration::from_secs(sync.startup_wait_secs);
        let waiting = sync
            .peers
            .iter()
            .map(|p| p.name.clone())
            .collect::<BTreeSet<_>>();
        // The rings the first change is diffed against, for refreshes of moved flows.
        let rings = std::sync::Arc::new(if sync.flows == crate::config::FlowSync::Changes {
            super::moved::rings(&super::moved::snapshot(agent.reconciler.vips()))
        } else {
            sync::Rings::default()
        });
        let mut local = agent.local(&replicated.state);
        local.rings = rings.clone();
        let sync = sync::spawn(sync::Start {
            config: sync,
            key,
            pin_dir: pin_dir.clone(),
            events: sync_events,
            flow_events,
            local,
        })
        .await?;
        if !waiting.is_empty() {
            info!(peers = ?waiting, "VIPs stay unannounced until every peer has sent its state and flows (at most {wait:?})");
        }
        let mut fleet = fleet::Fleet {
            sync,
            replicated: replicated.state,
            state_file,
            waiting,
            held_back,
            skipped: Vec::new(),
            file: replicated.file,
            peer_versions: BTreeMap::new(),
            collected: 0,
            rings,
        };
        // A state directory that cannot be written must not keep the agent from forwarding.
        fleet.persist();
        agent.fleet = Some(fleet);
    }
    agent.publish();
    info!(socket = %socket.display(), "agent ready");

    agent
        .run(Inputs {
            commands: commands_rx,
            transitions: health.transitions,
            next_hops: next_hops_rx,
            routes: routes_rx,
            bgp: outcomes_rx,
            sync: sync_events_rx,
        })
        .await?;
    let _ = std::fs::remove_file(&socket);
    // A stopping agent can no longer follow health or operators: withdraw its VIPs. The pinned
    // dataplane keeps forwarding the flows routers still send while the withdrawal spreads.
    if let Some(bird) = bird {
        match bird.announce(&BTreeSet::new()).await {
            Ok(_) => info!("VIPs withdrawn from BIRD"),
            Err(e) => error!("withdrawing the VIPs from BIRD: {e:#}"),
        }
    }
    drop(alive);
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
