//! The listener and one receiver per inbound link: states go to the agent, summaries to the
//! registry, flow batches to the importer. A link's deltas are applied to a copy of the state
//! its peer sent first (the *mirror*), so the agent always merges a peer's whole state.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::flow_tasks::Import;
use super::flows;
use super::link::{
    KIND_FLOWS, KIND_STATE, KIND_STATE_DELTA, KIND_STATE_PART, KIND_SUMMARY, KIND_SYNCED, Summary,
    tune,
};
use super::log_limit::LogLimit;
use super::messages::{Event, Local};
use super::registry::PeerEvent;
use super::replicated::ReplicatedState;
use super::state_msg::{Assembly, StateDelta};
use super::wire::{self, FleetKey, Refusal, Refused};
use crate::listen::{self, Gate};

pub(super) struct Listener {
    pub listener: TcpListener,
    pub node: String,
    pub key: FleetKey,
    pub known: Vec<String>,
    pub agent: mpsc::Sender<Event>,
    pub import: Option<mpsc::Sender<Import>>,
    pub events: mpsc::UnboundedSender<PeerEvent>,
    pub counters: Arc<Counters>,
    /// What the agent last published: its state's version bounds a peer's clock.
    pub local: watch::Receiver<Local>,
    pub max_clock_jump: u64,
    /// Anyone can open a connection: their refusals' log lines are rate-limited.
    pub pre_auth_log: Mutex<LogLimit>,
    /// Handshakes in progress at once (`[sync] max_connections`).
    pub max_connections: usize,
}

/// Logs and counts a refused link; with `limit`, logs only what it lets through.
pub(super) fn log_refusal(
    counters: &Counters,
    from: &str,
    e: &anyhow::Error,
    limit: Option<&Mutex<LogLimit>>,
) -> bool {
    let Some(r) = e.downcast_ref::<Refused>() else {
        return false;
    };
    counters.refuse(r.why);
    let admitted = match limit {
        Some(l) => l
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now()),
        None => Some(0),
    };
    match admitted {
        Some(0) => warn!(peer = from, "sync link refused: {r}"),
        Some(k) => warn!(
            peer = from,
            "sync link refused: {r} ({k} similar lines suppressed before this one)"
        ),
        None => {}
    }
    true
}

/// The whole handshake, however its bytes trickle in, must be done within this (each read
/// also has `wire::IO_TIMEOUT`, but a handshake has several reads).
pub(super) const HANDSHAKE_DEADLINE: Duration = wire::IO_TIMEOUT;

pub(super) async fn run(l: Listener) {
    let l = Arc::new(l);
    // Caps connections still in their handshake: anyone who can reach the port can open one,
    // while authenticated links are bounded by the configured peers and give their slot back.
    let mut gate = Gate::new(listen::Listener::Sync, l.max_connections);
    loop {
        let accepted = l.listener.accept().await;
        let Some(((stream, addr), slot)) = gate.admit(accepted).await else {
            continue;
        };
        tune(&stream);
        let l = l.clone();
        tokio::spawn(async move {
            let from = addr.to_string();
            let known = |n: &str| l.known.iter().any(|k| k == n);
            let handshake = wire::accept(stream, &l.key, &l.node, known);
            let accepted = match tokio::time::timeout(HANDSHAKE_DEADLINE, handshake).await {
                Ok(r) => r,
                Err(_) => {
                    listen::refused(listen::Listener::Sync, listen::Reason::Deadline);
                    Err(wire::refused(
                        Refusal::Truncated,
                        format!("handshake not done within {HANDSHAKE_DEADLINE:?}"),
                    ))
                }
            };
            drop(slot);
            let (name, rx) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    if !log_refusal(&l.counters, &from, &e, Some(&l.pre_auth_log)) {
                        debug!(peer = from, "sync handshake: {e:#}");
                    }
                    return;
                }
            };
            info!(peer = name, from, "sync link from peer up");
            let _ = l.events.send(PeerEvent::InboundUp(name.clone()));
            if let Err(e) = receive(&l, &name, rx).await
                && !log_refusal(&l.counters, &format!("{name} ({from})"), &e, None)
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
    // The peer's whole state as it sent it on this link, and the parts of a long one.
    let mut mirror: Option<ReplicatedState> = None;
    let mut assembly = Assembly::default();
    loop {
        let frame = match tokio::time::timeout(IDLE, rx.recv()).await {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("silent for {IDLE:?}"),
        };
        let Some((kind, body)) = frame else {
            return Ok(());
        };
        let bytes = wire::wire_len(body.len());
        if assembly.pending() && ![KIND_STATE_PART, KIND_STATE, KIND_STATE_DELTA].contains(&kind) {
            return Err(malformed(
                "state",
                &format!("a kind {kind} frame inside a state"),
            ));
        }
        match kind {
            KIND_SUMMARY => {
                let s: Summary =
                    serde_json::from_slice(&body).map_err(|e| malformed("summary", &e))?;
                let _ = l
                    .events
                    .send(PeerEvent::Heard(name.to_string(), Some(s), bytes));
            }
            KIND_STATE_PART => {
                assembly.part(&body)?;
                let _ = l
                    .events
                    .send(PeerEvent::Heard(name.to_string(), None, bytes));
            }
            KIND_STATE => {
                let body = assembly.finish(body)?;
                let state: ReplicatedState =
                    serde_json::from_slice(&body).map_err(|e| malformed("state", &e))?;
                take_state(l, name, &state, bytes).await?;
                mirror = Some(state);
            }
            KIND_STATE_DELTA => {
                let body = assembly.finish(body)?;
                let delta: StateDelta =
                    serde_json::from_slice(&body).map_err(|e| malformed("delta", &e))?;
                let Some(before) = &mirror else {
                    return Err(malformed("delta", &"before any state"));
                };
                let mut state = before.clone();
                delta.apply_to(&mut state);
                take_state(l, name, &state, bytes).await?;
                mirror = Some(state);
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
                        .send(Event::PeerSynced(name.to_string()))
                        .await
                        .is_ok(),
                };
                anyhow::ensure!(sent, "the agent stopped");
            }
            k => return Err(malformed("message", &format!("unknown kind {k}"))),
        }
    }
}

/// Checks a peer's whole state (as sent, or as its deltas made it) and hands it to the agent.
/// A refused state ends the link (counted by reason) and changes nothing.
async fn take_state(l: &Listener, name: &str, state: &ReplicatedState, bytes: u64) -> Result<()> {
    state.validate()?;
    let ours = l.local.borrow().summary.version;
    state.check_clock(ours, l.max_clock_jump)?;
    let _ = l
        .events
        .send(PeerEvent::Heard(name.to_string(), None, bytes));
    l.agent
        .send(Event::PeerState {
            from: name.to_string(),
            state: state.clone(),
        })
        .await
        .map_err(|_| anyhow::anyhow!("the agent stopped"))
}

fn ensure_empty(body: &[u8]) -> Result<()> {
    anyhow::ensure!(body.is_empty(), "{} unexpected bytes", body.len());
    Ok(())
}
