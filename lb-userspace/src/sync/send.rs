//! One sender per configured peer: dials it, sends our whole state on connect and, after every
//! change, the entries that changed since (a delta), a summary every second, the exporter's new flows, and our live flows on connect and every
//! `refresh_secs` (walked by the flow walker, `walk`, and sent a batch at a time between the
//! other messages, so heartbeats never wait for a walk).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info};

use super::counters::Counters;
use super::link::{KIND_FLOWS, KIND_STATE, KIND_STATE_DELTA, KIND_SUMMARY, KIND_SYNCED, tune};
use super::messages::Local;
use super::moved::Pacer;
use super::receive::log_refusal;
use super::registry::PeerEvent;
use super::state_msg::{self, StateDelta};
use super::walk::{Walk, Walker};
use super::wire::{self, FleetKey};

pub(super) struct Sender {
    pub peer: crate::config::PeerConfig,
    pub node: String,
    pub key: FleetKey,
    pub local: watch::Receiver<Local>,
    pub queue: mpsc::Receiver<Arc<Vec<u8>>>,
    /// With flow sync: the shared walker's live flows.
    pub walker: Option<Walker>,
    /// With `flows = "changes"`: flows per second this peer gets at most.
    pub pace: Option<u32>,
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
    send_state(s, &mut tx, KIND_STATE, &serde_json::to_vec(&*local.state)?).await?;
    // What the peer holds of ours on this link: the next changes go as deltas from it.
    let mut sent = local.state.clone();
    tx.send(KIND_SUMMARY, &serde_json::to_vec(&local.summary)?)
        .await?;
    // Batches queued while the link was down are covered by the full pass below.
    while s.queue.try_recv().is_ok() {}
    // Frames still to send, one per turn of the loop: walked flows, then Synced.
    let mut pending: VecDeque<(u8, Arc<Vec<u8>>)> = VecDeque::new();
    // All live flows, asked of the walker; Synced follows them.
    let mut initial: Option<oneshot::Receiver<Arc<Walk>>> = None;
    let mut periodic = s.walker.as_ref().map(|w| w.periodic.clone());
    match &s.walker {
        Some(w) => {
            let (reply, rx) = oneshot::channel();
            w.requests
                .send(super::walk::Job::Connect(reply))
                .map_err(|_| anyhow::anyhow!("the flow walker stopped"))?;
            initial = Some(rx);
            // The full pass covers any refresh published before it.
            if let Some(p) = periodic.as_mut() {
                p.borrow_and_update();
            }
        }
        None => pending.push_back((KIND_SYNCED, Arc::new(Vec::new()))),
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut pacer = s
        .pace
        .map(|r| Pacer::new(r, tokio::time::Instant::now().into_std()));
    loop {
        // Flow batches wait for the pacer (changes mode); everything else goes as it comes.
        let now = tokio::time::Instant::now().into_std();
        let flows_may_go = pacer.is_none_or(|p| p.ready(now));
        let resume = tokio::time::Instant::from_std(pacer.map_or(now, |p| p.next()));
        tokio::select! {
            // Heartbeats first: however many flows wait, the peer hears from us every second.
            biased;
            _ = heartbeat.tick() => {
                let summary = s.local.borrow().summary.clone();
                tx.send(KIND_SUMMARY, &serde_json::to_vec(&summary)?).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), 0, tx.bytes));
            }
            changed = s.local.changed() => {
                changed?;
                let local = s.local.borrow_and_update().clone();
                let delta = StateDelta::between(&sent, &local.state);
                if !delta.is_empty() || delta.horizon != sent.horizon {
                    send_state(s, &mut tx, KIND_STATE_DELTA, &serde_json::to_vec(&delta)?).await?;
                    sent = local.state.clone();
                }
                tx.send(KIND_SUMMARY, &serde_json::to_vec(&local.summary)?).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), 0, tx.bytes));
            }
            _ = tokio::time::sleep_until(resume), if !flows_may_go => {}
            Some(batch) = s.queue.recv(), if flows_may_go => {
                let n = u32::from_be_bytes(batch[1..5].try_into().expect("encoded")) as u64;
                if let Some(p) = pacer.as_mut() {
                    p.spend(n, tokio::time::Instant::now().into_std());
                }
                tx.send(KIND_FLOWS, &batch).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), n, tx.bytes));
            }
            Some((kind, body)) = async { pending.pop_front() }, if !pending.is_empty() && flows_may_go => {
                let n = if kind == KIND_FLOWS {
                    u32::from_be_bytes(body[1..5].try_into().expect("encoded")) as u64
                } else {
                    0
                };
                if let Some(p) = pacer.as_mut() {
                    p.spend(n, tokio::time::Instant::now().into_std());
                }
                tx.send(kind, &body).await?;
                let _ = s.events.send(PeerEvent::Sent(peer.clone(), n, tx.bytes));
            }
            walked = async { initial.as_mut().expect("guarded").await }, if initial.is_some() => {
                initial = None;
                let w = walked.map_err(|_| anyhow::anyhow!("the flow walker stopped"))?;
                pending.extend(w.batches.iter().map(|b| (KIND_FLOWS, b.clone())));
                pending.push_back((KIND_SYNCED, Arc::new(Vec::new())));
                if w.flows > 0 {
                    debug!(peer, flows = w.flows, "sending live flows");
                }
            }
            changed = async { periodic.as_mut().expect("guarded").changed().await }, if periodic.is_some() => {
                changed.map_err(|_| anyhow::anyhow!("the flow walker stopped"))?;
                let Some(w) = periodic.as_mut().expect("guarded").borrow_and_update().clone() else {
                    continue;
                };
                if !pending.is_empty() || initial.is_some() {
                    // Still sending the last pass (a slow peer): skip this one, counted; memory
                    // stays bounded and the next refresh carries these flows.
                    s.counters.refreshes_skipped.fetch_add(1, Ordering::Relaxed);
                    let _ = s.events.send(PeerEvent::Dropped(peer.clone(), w.flows));
                    continue;
                }
                pending.extend(w.batches.iter().map(|b| (KIND_FLOWS, b.clone())));
            }
        }
    }
}

/// Sends a state or delta body, in parts if it is longer than a part.
async fn send_state(
    s: &Sender,
    tx: &mut wire::Sender<TcpStream>,
    kind: u8,
    body: &[u8],
) -> Result<()> {
    let frames = state_msg::send_body(tx, kind, body).await?;
    s.counters
        .state_sent(kind == KIND_STATE_DELTA, body.len(), frames);
    Ok(())
}
