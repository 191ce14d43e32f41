//! The flow walker: a thread of its own that reads the connection table in batches and encodes
//! the flows this load balancer forwards itself as refresh batches, once for every peer.
//!
//! Every `refresh_secs` it walks the flows active within the period and publishes the batches
//! on a watch channel each sender reads; a sender that connects asks for all live flows, and
//! requests that arrive during a walk share the next one. The senders only send what it hands
//! them, between their heartbeats: a walk, however long, never holds up a link.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_common::{CONN_F_PEER, PROTO_TCP};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use super::counters::Counters;
use super::flows::{self, FlowRecord, Mode};
use super::messages::Local;
use crate::dataplane::{FlowTable, is_live, monotonic_ns};

/// One walk's result: encoded `Mode::Refresh` batches (each at most `flows::MAX_BATCH` flows).
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub batches: Vec<Arc<Vec<u8>>>,
    pub flows: u64,
}

/// A sender's request for all live flows (on connect).
pub(super) type Request = oneshot::Sender<Arc<Walk>>;

/// What a sender holds of the walker.
#[derive(Clone)]
pub(super) struct Walker {
    pub requests: std_mpsc::Sender<Request>,
    /// The latest periodic refresh (None before the first).
    pub periodic: watch::Receiver<Option<Arc<Walk>>>,
}

/// A walk that takes longer than this is logged at info.
const SLOW: Duration = Duration::from_millis(200);

/// Starts the walker thread.
pub(super) fn spawn(
    table: FlowTable,
    refresh: Duration,
    local: watch::Receiver<Local>,
    counters: Arc<Counters>,
) -> Result<Walker> {
    let (req_tx, req_rx) = std_mpsc::channel::<Request>();
    let (periodic_tx, periodic_rx) = watch::channel(None);
    std::thread::Builder::new()
        .name("lb-flow-walk".into())
        .spawn(move || {
            let mut next = Instant::now() + refresh;
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                match req_rx.recv_timeout(wait) {
                    Ok(first) => {
                        // Every request queued by now shares this walk.
                        let mut replies = vec![first];
                        replies.extend(req_rx.try_iter());
                        if let Some(w) = walk(&table, &local, &counters, None) {
                            for r in replies {
                                let _ = r.send(w.clone());
                            }
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        next = Instant::now() + refresh;
                        if let Some(w) = walk(&table, &local, &counters, Some(refresh)) {
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

/// The flows this load balancer forwards itself (not peers' copies), TCP, live, and active
/// within `recent` if given, encoded for every peer. None if the table could not be read.
fn walk(
    table: &FlowTable,
    local: &watch::Receiver<Local>,
    counters: &Counters,
    recent: Option<Duration>,
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
    let index = local.borrow().index.clone();
    let since =
        recent.map(|r| now.saturating_sub(r.as_nanos() as u64 + lb_common::ATIME_GRANULARITY_NS));
    let mut out = Walk::default();
    let mut records = Vec::with_capacity(flows::MAX_BATCH);
    let read = table.walk(|k, e| {
        if e.flags & CONN_F_PEER != 0
            || k.proto != PROTO_TCP
            || !is_live(&cfg, k, e, now)
            || since.is_some_and(|t| e.atime_ns < t)
        {
            return;
        }
        let Some(backend) = index.address(e.backend, Some(e.generation)) else {
            return;
        };
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
    let took = started.elapsed();
    let us = took.as_micros() as u64;
    counters.flow_walks.fetch_add(1, Ordering::Relaxed);
    counters.flow_walk_last_us.store(us, Ordering::Relaxed);
    counters.flow_walk_max_us.fetch_max(us, Ordering::Relaxed);
    counters.flow_walk_flows.store(out.flows, Ordering::Relaxed);
    let what = if recent.is_some() {
        "refresh"
    } else {
        "connect"
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
