//! The flow tasks: the exporter reads the XDP program's new-flow ring buffer and hands
//! batches to the senders; the importer installs peers' flows in the connection table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use lb_common::{CONN_F_PEER, FLOW_EVENT_F_SYN, FlowEvent};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use super::counters::Counters;
use super::flows::{self, FlowRecord, Mode, Untranslated};
use super::messages::{Event, Local};
use super::registry::PeerEvent;
use crate::dataplane::{FlowTable, monotonic_ns};

/// Work for the importer, in the order the links delivered it.
pub(super) enum Import {
    Flows(String, Mode, Vec<FlowRecord>),
    /// The peer's initial flows are all in the queue before this.
    Synced(String),
}

pub(super) async fn run_importer(
    mut table: FlowTable,
    mut rx: mpsc::Receiver<Import>,
    local: watch::Receiver<Local>,
    counters: Arc<Counters>,
    agent: mpsc::Sender<Event>,
) {
    while let Some(item) = rx.recv().await {
        let (peer, mode, records) = match item {
            Import::Flows(peer, mode, records) => (peer, mode, records),
            Import::Synced(peer) => {
                if agent.send(Event::PeerSynced(peer)).await.is_err() {
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

pub(super) async fn run_exporter(
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
        let (mut starts, mut firsts) = (Vec::new(), Vec::new());
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<FlowEvent>() {
                continue;
            }
            // SAFETY: the XDP program writes whole FlowEvents; read unaligned from its bytes.
            let ev: FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            // A SYN's entry goes over any entry on the peer; a first packet's only where the
            // peer has none of its own (lb_xdp's flowsync.rs): two batches.
            let batch = if ev.flags & FLOW_EVENT_F_SYN != 0 {
                &mut starts
            } else {
                &mut firsts
            };
            match index.address(ev.backend, None) {
                Some(backend) => batch.push(FlowRecord {
                    key: ev.key,
                    backend,
                    hash: ev.hash,
                }),
                None => {
                    counters.flows_unknown_id.fetch_add(1, Ordering::Relaxed);
                }
            }
            for (mode, records) in [(Mode::New, &mut starts), (Mode::Refresh, &mut firsts)] {
                if records.len() == flows::MAX_BATCH {
                    fan_out(&queues, mode, records, &counters, &events);
                    records.clear();
                }
            }
        }
        guard.clear_ready();
        for (mode, records) in [(Mode::New, &starts), (Mode::Refresh, &firsts)] {
            if !records.is_empty() {
                fan_out(&queues, mode, records, &counters, &events);
            }
        }
    }
}

fn fan_out(
    queues: &[(String, mpsc::Sender<Arc<Vec<u8>>>)],
    mode: Mode,
    records: &[FlowRecord],
    counters: &Counters,
    events: &mpsc::UnboundedSender<PeerEvent>,
) {
    counters
        .flows_exported
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    let body = Arc::new(flows::encode_batch(mode, records));
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
