//! The flow walker: a thread of its own that reads the connection table in batches and encodes
//! the flows this load balancer forwards itself as refresh batches, once for every peer.
//!
//! Every `refresh_secs` it walks the flows active within the period and publishes the batches
//! on a watch channel each sender reads; a sender that connects asks for all live flows, and
//! requests that arrive during a walk share the next one. The senders only send what it hands
//! them, between their heartbeats: a walk, however long, never holds up a link.
//!
//! With `flows = "changes"` (`moved`) it walks for the flows a change moved: after a change, the
//! live local entries in the slots it changed, queued once to every peer (bounded by
//! `changes_max`); on refresh and connect, only the live local entries the current rings send
//! elsewhere.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_common::{CONN_F_PEER, PROTO_TCP};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use tokio::sync::mpsc;

use super::counters::Counters;
use super::flows::{self, FlowRecord, Mode};
use super::messages::Local;
use super::moved::ChangedSlots;
use super::registry::PeerEvent;
use crate::config::FlowSync;
use crate::dataplane::{FlowTable, is_live, monotonic_ns};

/// One walk's result: encoded `Mode::Refresh` batches (each at most `flows::MAX_BATCH` flows).
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub batches: Vec<Arc<Vec<u8>>>,
    pub flows: u64,
}

/// A sender's request for all live flows (on connect).
pub(super) type Request = oneshot::Sender<Arc<Walk>>;

/// Work for the walker.
pub(super) enum Job {
    /// A sender's request for the live flows it owes a peer that connected.
    Connect(Request),
    /// `flows = "changes"`: an install changed these slots; queue their live flows to peers.
    Changed(Arc<ChangedSlots>),
}

/// The per-peer queues the walker hands change batches to (the exporter's, unused then).
pub(super) struct Queues {
    pub peers: Vec<(String, mpsc::Sender<Arc<Vec<u8>>>)>,
    pub events: mpsc::UnboundedSender<PeerEvent>,
    /// Flows one change queues at most.
    pub max: u32,
}

/// What a sender holds of the walker.
#[derive(Clone)]
pub(super) struct Walker {
    pub requests: std_mpsc::Sender<Job>,
    /// The latest periodic refresh (None before the first).
    pub periodic: watch::Receiver<Option<Arc<Walk>>>,
}

/// A walk that takes longer than this is logged at info.
const SLOW: Duration = Duration::from_millis(200);

/// Starts the walker thread.
pub(super) fn spawn(
    table: FlowTable,
    refresh: Duration,
    mode: FlowSync,
    queues: Queues,
    local: watch::Receiver<Local>,
    counters: Arc<Counters>,
) -> Result<Walker> {
    let (req_tx, req_rx) = std_mpsc::channel::<Job>();
    let moved = mode == FlowSync::Changes;
    let (periodic_tx, periodic_rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("lb-flow-walk".into())
        .spawn(move || {
            let mut next = Instant::now() + refresh;
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                match req_rx.recv_timeout(wait) {
                    Ok(first) => {
                        // Every request queued by now shares this walk; changes each walk
                        // their own slots, in order.
                        let mut replies = Vec::new();
                        for job in std::iter::once(first).chain(req_rx.try_iter()) {
                            match job {
                                Job::Connect(r) => replies.push(r),
                                Job::Changed(c) => changed(&table, &local, &counters, &queues, &c),
                            }
                        }
                        if replies.is_empty() {
                            continue;
                        }
                        let select = if moved {
                            Select::Moved(None)
                        } else {
                            Select::All(None)
                        };
                        if let Some(w) = walk(&table, &local, &counters, select, u64::MAX) {
                            for r in replies {
                                let _ = r.send(w.clone());
                            }
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        next = Instant::now() + refresh;
                        let select = if moved {
                            Select::Moved(Some(refresh))
                        } else {
                            Select::All(Some(refresh))
                        };
                        if let Some(w) = walk(&table, &local, &counters, select, u64::MAX) {
                            periodic_tx.send_replace(Some(w));
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
    Ok(Walker {
        requests: req_tx,
        periodic: periodic_rx,
    })
}

/// Which of the live local flows a walk takes.
enum Select<'a> {
    /// Every one (active within the period, if given): `flows = "all"`.
    All(Option<Duration>),
    /// Those the current rings send to another backend (active within the period, if given).
    Moved(Option<Duration>),
    /// Those in slots a change just changed.
    Changed(&'a ChangedSlots),
}

/// A change's flows, queued to every peer: a full queue drops the batch for that peer (counted;
/// a refresh or the second chance at the backends covers it).
fn changed(
    table: &FlowTable,
    local: &watch::Receiver<Local>,
    counters: &Counters,
    queues: &Queues,
    c: &ChangedSlots,
) {
    let Some(w) = walk(
        table,
        local,
        counters,
        Select::Changed(c),
        queues.max as u64,
    ) else {
        return;
    };
    counters.flows_moved.fetch_add(w.flows, Ordering::Relaxed);
    info!(
        slots = c.slots,
        flows = w.flows,
        "sending the live flows in the slots a change moved"
    );
    for b in &w.batches {
        let n = u32::from_be_bytes(b[1..5].try_into().expect("encoded")) as u64;
        for (peer, q) in &queues.peers {
            if q.try_send(b.clone()).is_err() {
                counters.flows_dropped_queue.fetch_add(n, Ordering::Relaxed);
                let _ = queues.events.send(PeerEvent::Dropped(peer.clone(), n));
            }
        }
    }
}

/// The flows this load balancer forwards itself (not peers' copies), TCP, live, and chosen by
/// `select`, at most `max` of them (the rest counted in `flows_moved_over`), encoded for every
/// peer. None if the table could not be read.
fn walk(
    table: &FlowTable,
    local: &watch::Receiver<Local>,
    counters: &Counters,
    select: Select<'_>,
    max: u64,
) -> Option<Arc<Walk>> {
    let started = Instant::now();
    let now = monotonic_ns();
    let cfg = match table.config() {
        Ok(c) => c,
        Err(e) => {
            warn!("flow refresh: {e:#}");
            return None;
        }
    };
    let (index, rings) = {
        let l = local.borrow();
        (l.index.clone(), l.rings.clone())
    };
    let recent = match select {
        Select::All(r) | Select::Moved(r) => r,
        Select::Changed(_) => None,
    };
    let since =
        recent.map(|r| now.saturating_sub(r.as_nanos() as u64 + lb_common::ATIME_GRANULARITY_NS));
    let mut out = Walk::default();
    let mut records = Vec::with_capacity(flows::MAX_BATCH);
    let mut over = 0u64;
    let read = table.walk(|k, e| {
        if e.flags & CONN_F_PEER != 0
            || k.proto != PROTO_TCP
            || !is_live(&cfg, k, e, now)
            || since.is_some_and(|t| e.atime_ns < t)
        {
            return;
        }
        let chosen = match select {
            Select::All(_) => true,
            Select::Moved(_) => rings.moved(e.backend, e.hash),
            Select::Changed(c) => c.contains(e.backend, e.hash),
        };
        if !chosen {
            return;
        }
        let Some(backend) = index.address(e.backend, Some(e.generation)) else {
            return;
        };
        if out.flows + records.len() as u64 >= max {
            over += 1;
            return;
        }
        records.push(FlowRecord {
            key: *k,
            backend,
            hash: e.hash,
        });
        if records.len() == flows::MAX_BATCH {
            out.flows += records.len() as u64;
            out.batches
                .push(Arc::new(flows::encode_batch(Mode::Refresh, &records)));
            records.clear();
        }
    });
    let entries = match read {
        Ok(n) => n,
        Err(e) => {
            warn!("flow refresh: {e:#}");
            return None;
        }
    };
    if !records.is_empty() {
        out.flows += records.len() as u64;
        out.batches
            .push(Arc::new(flows::encode_batch(Mode::Refresh, &records)));
    }
    if over > 0 {
        counters.flows_moved_over.fetch_add(over, Ordering::Relaxed);
        warn!(
            sent = out.flows,
            left_out = over,
            "a change moved more live flows than [sync] changes_max: the rest are left to the backends' second chance"
        );
    }
    let took = started.elapsed();
    let us = took.as_micros() as u64;
    counters.flow_walks.fetch_add(1, Ordering::Relaxed);
    counters.flow_walk_last_us.store(us, Ordering::Relaxed);
    counters.flow_walk_max_us.fetch_max(us, Ordering::Relaxed);
    counters.flow_walk_flows.store(out.flows, Ordering::Relaxed);
    let what = match select {
        Select::Changed(_) => "change",
        _ if recent.is_some() => "refresh",
        _ => "connect",
    };
    if took >= SLOW {
        info!(
            entries,
            flows = out.flows,
            seconds = took.as_secs_f64(),
            what,
            "walked the connection table"
        );
    } else {
        debug!(
            entries,
            flows = out.flows,
            seconds = took.as_secs_f64(),
            what,
            "walked the connection table"
        );
    }
    Some(Arc::new(out))
}
