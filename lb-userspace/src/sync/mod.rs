//! Peer sync: one fleet of agents with one desired state, identical Maglev tables, and each
//! other's flows.
//!
//! Tasks (all talk through channels; the agent's actor stays the only writer of the desired
//! state, and the importer writes only the connection table). They report to the agent with
//! [`Event`]s on the channel the agent hands [`spawn`]; none of them knows the agent:
//! - the listener accepts peers' links and runs a receiver per link: states go to the agent
//!   (`Event::PeerState`), summaries to the peer registry, flow batches to the importer;
//! - a sender per configured peer dials it, sends our state on connect and on every change, a
//!   summary every second, the flows the exporter hands it, and our live flows on connect and
//!   every `refresh_secs`;
//! - the exporter reads the XDP program's new-flow ring buffer and hands batches to senders;
//! - the importer installs peers' flows in the connection table;
//! - the registry keeps what is known of each peer for `lb peer list` and `/metrics`;
//! - a timer tells the agent when `startup_wait_secs` is over (`Event::WaitOver`).
//!
//! docs/sync.md has the protocol, the guarantees and the overload policy.

pub mod flows;
pub mod replicated;
pub mod wire;

mod flow_tasks;
mod receive;
mod registry;
mod send;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::api::{PeerStatus, PeerSummary};
use crate::config::SyncConfig;
use crate::dataplane::FlowTable;
use flows::FlowIndex;
use replicated::ReplicatedState;
use wire::{FleetKey, Refusal};

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

/// What the sync tasks tell the agent.
#[derive(Debug)]
pub enum Event {
    /// A peer's replicated state (authenticated and validated).
    PeerState {
        from: String,
        state: ReplicatedState,
    },
    /// A peer has sent us its state and its live flows (after each link comes up).
    PeerSynced(String),
    /// `startup_wait_secs` after start: announce even if some peer never synced.
    WaitOver,
}

impl From<&Summary> for PeerSummary {
    fn from(s: &Summary) -> Self {
        PeerSummary {
            version: s.version,
            state_digest: s.state_digest.clone(),
            table_digest: s.table_digest.clone(),
            flows: s.flows,
        }
    }
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
    /// Where the sync tasks report to the agent.
    pub events: mpsc::Sender<Event>,
    pub flow_events: Option<RingBuf<MapData>>,
    pub local: Local,
}

/// Binds the listener and starts every sync task.
pub async fn spawn(start: Start) -> Result<Sync> {
    let Start {
        config,
        key,
        pin_dir,
        events: agent,
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
    tokio::spawn(registry::run(events_rx, peers_tx));

    let (import_tx, import_rx) = mpsc::channel(config.import_queue);
    if config.flows {
        let table = FlowTable::open_pinned(&pin_dir)?;
        tokio::spawn(flow_tasks::run_importer(
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
        tokio::spawn(send::run(send::Sender {
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
        tokio::spawn(flow_tasks::run_exporter(
            ring,
            queues,
            local_rx.clone(),
            counters.clone(),
            events_tx.clone(),
        ));
    }
    if !config.peers.is_empty() {
        let wait = Duration::from_secs(config.startup_wait_secs);
        let agent = agent.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = agent.send(Event::WaitOver).await;
        });
    }
    let known: Vec<String> = config.peers.iter().map(|p| p.name.clone()).collect();
    tokio::spawn(receive::run(receive::Listener {
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
