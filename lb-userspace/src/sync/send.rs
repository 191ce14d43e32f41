//! One sender per configured peer: dials it, sends our state on connect and on every change,
//! a summary every second, the exporter's new flows, and our live flows on connect and every
//! `refresh_secs`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use lb_common::CONN_F_PEER;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use super::counters::Counters;
use super::flows::{self, FlowRecord, Mode};
use super::link::{KIND_FLOWS, KIND_STATE, KIND_SUMMARY, KIND_SYNCED, tune};
use super::messages::Local;
use super::receive::log_refusal;
use super::registry::PeerEvent;
use super::wire::{self, FleetKey};
use crate::dataplane::{FlowTable, monotonic_ns};

pub(super) struct Sender {
    pub peer: crate::config::PeerConfig,
    pub node: String,
    pub key: FleetKey,
    pub local: watch::Receiver<Local>,
    pub queue: mpsc::Receiver<Arc<Vec<u8>>>,
    pub table: Option<FlowTable>,
    pub refresh: Duration,
    pub events: mpsc::UnboundedSender<PeerEvent>,
    pub counters: Arc<Counters>,
}

pub(super) async fn run(mut s: Sender) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = link(&mut s).await;
        let why = match &result {
            Ok(()) => "closed".to_string(),
            Err(e) => {
                if !log_refusal(&s.counters, &s.peer.name, e, None) {
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
    // One deadline for the whole handshake, as on the listener's side.
    let dial = wire::dial(stream, &s.key, &s.node, &s.peer.name);
    let mut tx = tokio::time::timeout(wire::IO_TIMEOUT, dial)
        .await
        .map_err(|_| anyhow::anyhow!("handshake not done within {:?}", wire::IO_TIMEOUT))??;
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
