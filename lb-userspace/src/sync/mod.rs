//! Peer sync: one fleet of agents with one desired state, identical Maglev tables, and each
//! other's flows.
//!
//! Tasks (all talk through channels; the agent's actor stays the only writer of the desired
//! state, and the importer writes only the connection table). They report to the agent with
//! [`Event`]s on the channel the agent hands [`spawn`]; none of them knows the agent:
//! - the listener accepts peers' links and runs a receiver per link: states go to the agent
//!   (`Event::PeerState`), summaries to the peer registry, flow batches to the importer;
//! - a sender per configured peer dials it, sends our whole state on connect and what changed
//!   after every change (`state_msg`), a
//!   summary every second, the flows the exporter hands it, and our live flows on connect and
//!   every `refresh_secs`;
//! - the exporter reads the XDP program's new-flow ring buffer and hands batches to senders;
//! - the walker (a thread) reads the connection table in batches, every `refresh_secs` and when
//!   a link comes up, and hands the encoded live flows to the senders: one walk for all peers;
//! - with `flows = "changes"` the exporter does not run: the walker queues the live flows in
//!   the slots each change moved (the agent hands it [`ChangedSlots`] through [`Sync::moved`]),
//!   and the senders pace them (`changes_rate`);
//! - the importer installs peers' flows in the connection table;
//! - the registry keeps what is known of each peer for `lb peer list` and `/metrics`;
//! - a timer tells the agent when `startup_wait_secs` is over (`Event::WaitOver`).
//!
//! docs/sync.md has the protocol, the guarantees and the overload policy.

pub mod flows;
pub mod moved;
pub mod replicated;
pub mod state_msg;
pub mod wire;

mod counters;
mod flow_tasks;
mod link;
mod log_limit;
mod messages;
mod receive;
mod registry;
mod send;
mod walk;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::api::PeerStatus;
use crate::config::{FlowSync, SyncConfig};
use crate::dataplane::FlowTable;
use wire::FleetKey;

pub use counters::Counters;
pub use link::{
    KIND_FLOWS, KIND_STATE, KIND_STATE_DELTA, KIND_STATE_PART, KIND_SUMMARY, KIND_SYNCED, Summary,
};
pub use messages::{Event, Local};
pub use moved::{ChangedSlots, Rings};

/// Handles the agent keeps.
pub struct Sync {
    pub local: watch::Sender<Local>,
    pub peers: watch::Receiver<BTreeMap<String, (PeerStatus, Option<Instant>)>>,
    pub counters: Arc<Counters>,
    pub node: String,
    pub flows: FlowSync,
    /// With `flows = "changes"` and peers: where the agent sends the slots each install changed.
    moved: Option<std::sync::mpsc::Sender<walk::Job>>,
}

impl Sync {
    /// Whether the agent should diff its rings around installs (`flows = "changes"`).
    pub fn wants_moved(&self) -> bool {
        self.moved.is_some()
    }

    /// Hands the walker the slots an install changed: their live flows go to every peer.
    pub fn moved(&self, changed: ChangedSlots) {
        if let Some(m) = &self.moved {
            let _ = m.send(walk::Job::Changed(Arc::new(changed)));
        }
    }

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
    info!(listen = %config.listen, node = config.node, peers = config.peers.len(), flows = %config.flows, "peer sync listening");
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
    let mode = config.flows;
    if mode.shares() {
        let table = FlowTable::open_pinned(&pin_dir)?;
        tokio::spawn(flow_tasks::run_importer(
            table,
            import_rx,
            local_rx.clone(),
            counters.clone(),
            agent.clone(),
        ));
    }
    // The per-peer flow queues: the exporter's (all) or the walker's change batches (changes).
    let mut queues = Vec::new();
    let mut receivers = Vec::new();
    for p in &config.peers {
        let (tx, rx) = mpsc::channel(config.flow_queue);
        queues.push((p.name.clone(), tx));
        receivers.push(rx);
    }
    // One walker for every peer, on a thread of its own.
    let walker = if mode.shares() && !config.peers.is_empty() {
        Some(walk::spawn(
            FlowTable::open_pinned(&pin_dir)?,
            Duration::from_secs(config.refresh_secs),
            mode,
            walk::Queues {
                peers: if mode == FlowSync::Changes {
                    queues.clone()
                } else {
                    Vec::new()
                },
                events: events_tx.clone(),
                max: config.changes_max,
            },
            local_rx.clone(),
            counters.clone(),
        )?)
    } else {
        None
    };
    let pace = (mode == FlowSync::Changes).then_some(config.changes_rate);
    for (p, rx) in config.peers.iter().zip(receivers) {
        tokio::spawn(send::run(send::Sender {
            peer: p.clone(),
            node: config.node.clone(),
            key: key.clone(),
            local: local_rx.clone(),
            queue: rx,
            walker: walker.clone(),
            pace,
            events: events_tx.clone(),
            counters: counters.clone(),
        }));
    }
    if let (FlowSync::All, Some(ring)) = (mode, flow_events) {
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
        import: mode.shares().then_some(import_tx),
        events: events_tx,
        counters: counters.clone(),
        local: local_rx,
        max_clock_jump: config.max_clock_jump,
        pre_auth_log: std::sync::Mutex::new(log_limit::LogLimit::new(
            log_limit::PRE_AUTH_LINES,
            log_limit::PRE_AUTH_INTERVAL,
        )),
        max_connections: config.max_connections,
    }));
    Ok(Sync {
        local: local_tx,
        peers: peers_rx,
        counters,
        node: config.node,
        flows: mode,
        moved: walker
            .filter(|_| mode == FlowSync::Changes)
            .map(|w| w.requests),
    })
}
