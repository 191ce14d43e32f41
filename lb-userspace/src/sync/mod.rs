//! Peer sync: one fleet of agents with one desired state, identical Maglev tables, and each
//! other's flows.
//!
//! Tasks (all talk through channels; the agent task stays the only writer of the desired
//! state and of everything but the connection table):
//! - the listener accepts peers' links and runs a receiver per link: states go to the agent
//!   (`Command::PeerState`), summaries to the peer registry, flow batches to the importer;
//! - a sender per configured peer dials it, sends our state on connect and on every change, a
//!   summary every second, the flows the exporter hands it, and our live flows on connect and
//!   every `refresh_secs`;
//! - the exporter reads the XDP program's new-flow ring buffer and hands batches to senders;
//! - the importer installs peers' flows in the connection table;
//! - the registry keeps what is known of each peer for `lb peer list` and `/metrics`.
//!
//! docs/sync.md has the protocol, the guarantees and the overload policy.

pub mod flows;
pub mod replicated;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use lb_common::{CONN_F_PEER, FlowEvent};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::agent::Command;
use crate::config::SyncConfig;
use crate::dataplane::{FlowTable, monotonic_ns};
use flows::{FlowIndex, FlowRecord, Mode, Untranslated};
use replicated::ReplicatedState;
use wire::{FleetKey, Refusal, Refused};

pub const KIND_SUMMARY: u8 = 1;
pub const KIND_STATE: u8 = 2;
pub const KIND_FLOWS: u8 = 3;
/// The sender has sent its state and all its live flows: the receiver is caught up.
pub const KIND_SYNCED: u8 = 4;

/// Unacknowledged data for this long ends a link, so a cut-off peer is noticed (and the
/// link re-dialed) in seconds rather than after TCP's full retransmission schedule.
const USER_TIMEOUT_MS: u32 = 3000;

fn tune(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = stream.set_nodelay(true);
    let v = USER_TIMEOUT_MS;
    // SAFETY: setsockopt reads `v` for the given length and nothing else.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&v as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        );
    }
}

/// Sent every second: what a peer needs to tell whether we agree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub version: u64,
    pub state_digest: String,
    pub table_digest: String,
    pub flows: bool,
}

/// What the agent publishes for the sync tasks after every change it installs.
#[derive(Clone, Debug, Default)]
pub struct Local {
    pub state: Arc<ReplicatedState>,
    pub summary: Summary,
    pub index: Arc<FlowIndex>,
}

/// Counters shared by the sync tasks (read by `/metrics` and `lb peer list`).
#[derive(Debug, Default)]
pub struct Counters {
    pub flows_exported: AtomicU64,
    pub flows_imported: AtomicU64,
    /// A sender's queue was full (the peer is slow or away): the batch was not queued.
    pub flows_dropped_queue: AtomicU64,
    /// The importer's queue was full: a received batch was not installed.
    pub flows_dropped_import: AtomicU64,
    /// A received flow for a VIP or backend this agent does not have.
    pub flows_untranslated: AtomicU64,
    /// An exported flow whose backend id the agent no longer knows.
    pub flows_unknown_id: AtomicU64,
    pub refused: [AtomicU64; 8],
}

impl Counters {
    fn refuse(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|r| *r == why).expect("listed");
        self.refused[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, c)| (r.name(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

/// What this agent knows of one peer.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    /// Our link to it is up (handshake done).
    pub outbound: bool,
    /// Why our link to it is not up, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_error: Option<String>,
    /// Its link to us is up.
    pub inbound: bool,
    /// How many of its links to us are up (a reconnect may overlap the old link's end).
    #[serde(skip)]
    pub inbound_links: u32,
    /// Milliseconds since its last message (None: never heard from).
    pub last_heard_ms: Option<u64>,
    /// Its last summary.
    pub summary: Option<Summary>,
    pub state_match: bool,
    pub table_match: bool,
    pub flows_sent: u64,
    pub flows_received: u64,
    pub flows_dropped: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

enum PeerEvent {
    OutboundUp(String),
    OutboundDown(String, String),
    InboundUp(String),
    InboundDown(String),
    Heard(String, Option<Summary>, u64),
    Sent(String, u64, u64),
    Dropped(String, u64),
    Received(String, u64),
}

/// Handles the agent keeps.
pub struct Sync {
    pub local: watch::Sender<Local>,
    pub peers: watch::Receiver<BTreeMap<String, (PeerStatus, Option<Instant>)>>,
    pub counters: Arc<Counters>,
    pub node: String,
    pub flows: bool,
}

impl Sync {
    /// Peers as `lb peer list` shows them, compared with our own summary.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        let ours = self.local.borrow().summary.clone();
        self.peers
            .borrow()
            .values()
            .map(|(p, heard)| {
                let mut p = p.clone();
                p.last_heard_ms = heard.map(|t| t.elapsed().as_millis() as u64);
                if let Some(s) = &p.summary {
                    p.state_match = s.state_digest == ours.state_digest;
                    p.table_match = s.table_digest == ours.table_digest;
                }
                p
            })
            .collect()
    }
}

/// Everything the sync tasks need from the agent at start.
pub struct Start {
    pub config: SyncConfig,
    pub key: FleetKey,
    pub pin_dir: PathBuf,
    pub agent: mpsc::Sender<Command>,
    pub flow_events: Option<RingBuf<MapData>>,
    pub local: Local,
}

/// Binds the listener and starts every sync task.
pub async fn spawn(start: Start) -> Result<Sync> {
    let Start {
        config,
        key,
        pin_dir,
        agent,
        flow_events,
        local,
    } = start;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the sync listener {}", config.listen))?;
    info!(listen = %config.listen, node = config.node, peers = config.peers.len(), flows = config.flows, "peer sync listening");
    let (local_tx, local_rx) = watch::channel(local);
    let counters = Arc::new(Counters::default());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut registry = BTreeMap::new();
    for p in &config.peers {
        registry.insert(
            p.name.clone(),
            (
                PeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    outbound_error: Some("not connected yet".into()),
                    ..Default::default()
                },
                None,
            ),
        );
    }
    let (peers_tx, peers_rx) = watch::channel(registry);
    tokio::spawn(run_registry(events_rx, peers_tx));

    let (import_tx, import_rx) = mpsc::channel(config.import_queue);
    if config.flows {
        let table = FlowTable::open_pinned(&pin_dir)?;
        tokio::spawn(run_importer(
            table,
            import_rx,
            local_rx.clone(),
            counters.clone(),
            agent.clone(),
        ));
    }
    let mut queues = Vec::new();
    for p in &config.peers {
        let (tx, rx) = mpsc::channel(config.flow_queue);
        queues.push((p.name.clone(), tx));
        let table = if config.flows {
            Some(FlowTable::open_pinned(&pin_dir)?)
        } else {
            None
        };
        tokio::spawn(run_sender(Sender {
            peer: p.clone(),
            node: config.node.clone(),
            key: key.clone(),
            local: local_rx.clone(),
            queue: rx,
            table,
            refresh: Duration::from_secs(config.refresh_secs),
            events: events_tx.clone(),
            counters: counters.clone(),
        }));
    }
    if let (true, Some(ring)) = (config.flows, flow_events) {
        tokio::spawn(run_exporter(
            ring,
            queues,
            local_rx.clone(),
            counters.clone(),
            events_tx.clone(),
        ));
    }
    let known: Vec<String> = config.peers.iter().map(|p| p.name.clone()).collect();
    tokio::spawn(run_listener(Listener {
        listener,
        node: config.node.clone(),
        key,
        known,
        agent,
        import: config.flows.then_some(import_tx),
        events: events_tx,
        counters: counters.clone(),
    }));
    Ok(Sync {
        local: local_tx,
        peers: peers_rx,
        counters,
        node: config.node,
        flows: config.flows,
    })
}

type Registry = BTreeMap<String, (PeerStatus, Option<Instant>)>;

async fn run_registry(mut rx: mpsc::UnboundedReceiver<PeerEvent>, tx: watch::Sender<Registry>) {
    while let Some(ev) = rx.recv().await {
        tx.send_modify(|reg| {
            let name = match &ev {
                PeerEvent::OutboundUp(n)
                | PeerEvent::OutboundDown(n, _)
                | PeerEvent::InboundUp(n)
                | PeerEvent::InboundDown(n)
                | PeerEvent::Heard(n, _, _)
                | PeerEvent::Sent(n, _, _)
                | PeerEvent::Dropped(n, _)
                | PeerEvent::Received(n, _) => n.clone(),
            };
            let Some((p, heard)) = reg.get_mut(&name) else {
                return;
            };
            match ev {
                PeerEvent::OutboundUp(_) => {
                    p.outbound = true;
                    p.outbound_error = None;
                }
                PeerEvent::OutboundDown(_, e) => {
                    p.outbound = false;
                    p.outbound_error = Some(e);
                }
                PeerEvent::InboundUp(_) => {
                    p.inbound_links += 1;
                    p.inbound = true;
                    *heard = Some(Instant::now());
                }
                PeerEvent::InboundDown(_) => {
                    p.inbound_links = p.inbound_links.saturating_sub(1);
                    p.inbound = p.inbound_links > 0;
                }
                PeerEvent::Heard(_, s, bytes) => {
                    *heard = Some(Instant::now());
                    p.bytes_received += bytes;
                    if s.is_some() {
                        p.summary = s;
                    }
                }
                PeerEvent::Sent(_, n, bytes) => {
                    p.flows_sent += n;
                    p.bytes_sent = bytes;
                }
                PeerEvent::Dropped(_, n) => p.flows_dropped += n,
                PeerEvent::Received(_, n) => p.flows_received += n,
            }
        });
    }
}

struct Listener {
    listener: TcpListener,
    node: String,
    key: FleetKey,
    known: Vec<String>,
    agent: mpsc::Sender<Command>,
    import: Option<mpsc::Sender<Import>>,
    events: mpsc::UnboundedSender<PeerEvent>,
    counters: Arc<Counters>,
}

/// Logs and counts a refused link.
fn log_refusal(counters: &Counters, from: &str, e: &anyhow::Error) -> bool {
    match e.downcast_ref::<Refused>() {
        Some(r) => {
            counters.refuse(r.why);
            warn!(peer = from, "sync link refused: {r}");
            true
        }
        None => false,
    }
}

async fn run_listener(l: Listener) {
    let l = Arc::new(l);
    loop {
        let (stream, addr) = match l.listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("sync accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tune(&stream);
        let l = l.clone();
        tokio::spawn(async move {
            let from = addr.to_string();
            let known = |n: &str| l.known.iter().any(|k| k == n);
            let (name, rx) = match wire::accept(stream, &l.key, &l.node, known).await {
                Ok(x) => x,
                Err(e) => {
                    if !log_refusal(&l.counters, &from, &e) {
                        debug!(peer = from, "sync handshake: {e:#}");
                    }
                    return;
                }
            };
            info!(peer = name, from, "sync link from peer up");
            let _ = l.events.send(PeerEvent::InboundUp(name.clone()));
            if let Err(e) = receive(&l, &name, rx).await
                && !log_refusal(&l.counters, &format!("{name} ({from})"), &e)
            {
                warn!(peer = name, "sync link from peer: {e:#}");
            }
            info!(peer = name, "sync link from peer down");
            let _ = l.events.send(PeerEvent::InboundDown(name));
        });
    }
}

/// A peer that says nothing for this long (it sends a summary every second) is gone.
const IDLE: Duration = Duration::from_secs(5);

async fn receive(l: &Listener, name: &str, mut rx: wire::Receiver<TcpStream>) -> Result<()> {
    let malformed = |what: &str, e: &dyn std::fmt::Display| {
        wire::refused(Refusal::Malformed, format!("{what}: {e}"))
    };
    loop {
        let frame = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("silent for {IDLE:?}"),
        };
        let Some((kind, body)) = frame else {
            return Ok(());
        };
        let bytes = body.len() as u64 + 45;
        match kind {
            KIND_SUMMARY => {
                let s: Summary =
                    serde_json::from_slice(&body).map_err(|e| malformed("summary", &e))?;
                let _ = l
                    .events
                    .send(PeerEvent::Heard(name.to_string(), Some(s), bytes));
            }
            KIND_STATE => {
                let state: ReplicatedState =
                    serde_json::from_slice(&body).map_err(|e| malformed("state", &e))?;
                state.validate().map_err(|e| malformed("state", &e))?;
                let _ = l
                    .events
                    .send(PeerEvent::Heard(name.to_string(), None, bytes));
                l.agent
                    .send(Command::PeerState {
                        from: name.to_string(),
                        state,
                    })
                    .await
                    .map_err(|_| anyhow::anyhow!("the agent stopped"))?;
            }
            KIND_FLOWS => {
                let (mode, records) =
                    flows::decode_batch(&body).map_err(|e| malformed("flows", &e))?;
                let _ = l
                    .events
                    .send(PeerEvent::Heard(name.to_string(), None, bytes));
                let n = records.len() as u64;
                let _ = l.events.send(PeerEvent::Received(name.to_string(), n));
                if let Some(import) = &l.import
                    && import
                        .try_send(Import::Flows(name.to_string(), mode, records))
                        .is_err()
                {
                    l.counters
                        .flows_dropped_import
                        .fetch_add(n, Ordering::Relaxed);
                }
            }
            KIND_SYNCED => {
                ensure_empty(&body).map_err(|e| malformed("synced", &e))?;
                let _ = l
                    .events
                    .send(PeerEvent::Heard(name.to_string(), None, bytes));
                // Through the importer when there is one, so the agent hears of it only once
                // the flows before it are installed.
                let sent = match &l.import {
                    Some(import) => import.send(Import::Synced(name.to_string())).await.is_ok(),
                    None => l
                        .agent
                        .send(Command::PeerSynced(name.to_string()))
                        .await
                        .is_ok(),
                };
                anyhow::ensure!(sent, "the agent stopped");
            }
            k => return Err(malformed("message", &format!("unknown kind {k}"))),
        }
    }
}

fn ensure_empty(body: &[u8]) -> Result<()> {
    anyhow::ensure!(body.is_empty(), "{} unexpected bytes", body.len());
    Ok(())
}

/// Work for the importer, in the order the links delivered it.
enum Import {
    Flows(String, Mode, Vec<FlowRecord>),
    /// The peer's initial flows are all in the queue before this.
    Synced(String),
}

async fn run_importer(
    mut table: FlowTable,
    mut rx: mpsc::Receiver<Import>,
    local: watch::Receiver<Local>,
    counters: Arc<Counters>,
    agent: mpsc::Sender<Command>,
) {
    while let Some(item) = rx.recv().await {
        let (peer, mode, records) = match item {
            Import::Flows(peer, mode, records) => (peer, mode, records),
            Import::Synced(peer) => {
                if agent.send(Command::PeerSynced(peer)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let index = local.borrow().index.clone();
        let now = monotonic_ns();
        let mut entries = Vec::with_capacity(records.len());
        for r in &records {
            match index.entry(r, now) {
                Ok(e) => entries.push((r.key, e)),
                Err(Untranslated::UnknownVip | Untranslated::UnknownBackend) => {
                    counters.flows_untranslated.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if mode == Mode::Refresh {
            // A flow this load balancer forwards itself keeps its own entry.
            entries.retain(|(k, _)| match table.get(k) {
                Ok(Some(cur)) => cur.flags & CONN_F_PEER != 0,
                _ => true,
            });
        }
        match tokio::task::block_in_place(|| table.insert_batch(&entries)) {
            Ok(n) => {
                counters
                    .flows_imported
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => warn!(peer, "installing peer flows: {e:#}"),
        }
    }
}

async fn run_exporter(
    ring: RingBuf<MapData>,
    queues: Vec<(String, mpsc::Sender<Arc<Vec<u8>>>)>,
    local: watch::Receiver<Local>,
    counters: Arc<Counters>,
    events: mpsc::UnboundedSender<PeerEvent>,
) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => return warn!("flow export disabled: {e}"),
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        // Let a few milliseconds of new flows gather into one batch.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let index = local.borrow().index.clone();
        let ring = guard.get_inner_mut();
        let mut records = Vec::new();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the XDP program writes whole FlowEvents; read unaligned from its bytes.
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            match index.address(ev.backend, None) {
                Some(backend) => records.push(FlowRecord {
                    key: ev.key,
                    backend,
                    hash: ev.hash,
                }),
                None => {
                    counters.flows_unknown_id.fetch_add(1, Ordering::Relaxed);
                }
            }
            if records.len() == flows::MAX_BATCH {
                fan_out(&queues, &records, &counters, &events);
                records.clear();
            }
        }
        guard.clear_ready();
        if !records.is_empty() {
            fan_out(&queues, &records, &counters, &events);
        }
    }
}

fn fan_out(
    queues: &[(String, mpsc::Sender<Arc<Vec<u8>>>)],
    records: &[FlowRecord],
    counters: &Counters,
    events: &mpsc::UnboundedSender<PeerEvent>,
) {
    counters
        .flows_exported
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    let body = Arc::new(flows::encode_batch(Mode::New, records));
    for (peer, q) in queues {
        // Overload policy: never wait for a slow peer; drop the batch and count it. The
        // peer gets those flows again with our next refresh (or when it reconnects).
        if q.try_send(body.clone()).is_err() {
            counters
                .flows_dropped_queue
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            let _ = events.send(PeerEvent::Dropped(peer.clone(), records.len() as u64));
        }
    }
}

struct Sender {
    peer: crate::config::PeerConfig,
    node: String,
    key: FleetKey,
    local: watch::Receiver<Local>,
    queue: mpsc::Receiver<Arc<Vec<u8>>>,
    table: Option<FlowTable>,
    refresh: Duration,
    events: mpsc::UnboundedSender<PeerEvent>,
    counters: Arc<Counters>,
}

async fn run_sender(mut s: Sender) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = link(&mut s).await;
        let why = match &result {
            Ok(()) => "closed".to_string(),
            Err(e) => {
                if !log_refusal(&s.counters, &s.peer.name, e) {
                    debug!(peer = s.peer.name, "sync link to peer: {e:#}");
                }
                format!("{e:#}")
            }
        };
        let _ = s
            .events
            .send(PeerEvent::OutboundDown(s.peer.name.clone(), why));
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
        if result.is_ok() {
            backoff = Duration::from_millis(200);
        }
    }
}

/// One link's life: connect, handshake, full state and flows, then follow changes.
async fn link(s: &mut Sender) -> Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(s.peer.address))
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))??;
    tune(&stream);
    let mut tx = wire::dial(stream, &s.key, &s.node, &s.peer.name).await?;
    info!(peer = s.peer.name, "sync link to peer up");
    let _ = s.events.send(PeerEvent::OutboundUp(s.peer.name.clone()));
    let peer = s.peer.name.clone();
    let local = s.local.borrow_and_update().clone();
    tx.send(KIND_STATE, &serde_json::to_vec(&*local.state)?)
        .await?;
    tx.send(KIND_SUMMARY, &serde_json::to_vec(&local.summary)?)
        .await?;
    // Batches queued while the link was down are covered by the full pass below.
    while s.queue.try_recv().is_ok() {}
    if s.table.is_some() {
        send_live_flows(s, &mut tx, None).await?;
    }
    tx.send(KIND_SYNCED, &[]).await?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    // Peers' links come up together: spread their refreshes over the period.
    let jitter = s.refresh.mul_f64(wire::nonce()[0] as f64 / 256.0);
    let mut refresh =
        tokio::time::interval_at(tokio::time::Instant::now() + s.refresh + jitter, s.refresh);
    loop {
        tokio::select! {
            changed = s.local.changed() => {
                changed?;
                let local = s.local.borrow_and_update().clone();
                tx.send(KIND_STATE, &serde_json::to_vec(&*local.state)?).await?;
                tx.send(KIND_SUMMARY, &serde_json::to_vec(&local.summary)?).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), 0, tx.bytes));
            }
            _ = heartbeat.tick() => {
                let summary = s.local.borrow().summary.clone();
                tx.send(KIND_SUMMARY, &serde_json::to_vec(&summary)?).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), 0, tx.bytes));
            }
            Some(batch) = s.queue.recv() => {
                let n = u32::from_be_bytes(batch[1..5].try_into().expect("encoded")) as u64;
                tx.send(KIND_FLOWS, &batch).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), n, tx.bytes));
            }
            _ = refresh.tick(), if s.table.is_some() => {
                send_live_flows(s, &mut tx, Some(s.refresh)).await?;
            }
        }
    }
}

/// Sends the flows this load balancer forwards itself (not peers' copies): all live ones, or
/// those active within `recent`.
async fn send_live_flows(
    s: &mut Sender,
    tx: &mut wire::Sender<TcpStream>,
    recent: Option<Duration>,
) -> Result<()> {
    let Some(table) = s.table.as_mut() else {
        return Ok(());
    };
    let now = monotonic_ns();
    let live = tokio::task::block_in_place(|| -> Result<_> {
        let cfg = table.config()?;
        Ok(table.live(&cfg, now))
    })?;
    let index = s.local.borrow().index.clone();
    let since =
        recent.map(|r| now.saturating_sub(r.as_nanos() as u64 + lb_common::ATIME_GRANULARITY_NS));
    let records: Vec<FlowRecord> = live
        .iter()
        .filter(|(k, e)| {
            e.flags & CONN_F_PEER == 0
                && k.proto == lb_common::PROTO_TCP
                && since.is_none_or(|t| e.atime_ns >= t)
        })
        .filter_map(|(k, e)| {
            Some(FlowRecord {
                key: *k,
                backend: index.address(e.backend, Some(e.generation))?,
                hash: e.hash,
            })
        })
        .collect();
    let total = records.len() as u64;
    for chunk in records.chunks(flows::MAX_BATCH) {
        tx.send(KIND_FLOWS, &flows::encode_batch(Mode::Refresh, chunk))
            .await?;
    }
    let _ = s
        .events
        .send(PeerEvent::Sent(s.peer.name.clone(), total, tx.bytes));
    if total > 0 {
        debug!(peer = s.peer.name, flows = total, "sent live flows");
    }
    Ok(())
}
