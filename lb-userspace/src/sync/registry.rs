//! The peer registry: what this agent knows of each peer, for `lb peer list` and `/metrics`.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::link::Summary;
use crate::api::PeerStatus;

pub(super) enum PeerEvent {
    OutboundUp(String),
    OutboundDown(String, String),
    InboundUp(String),
    InboundDown(String),
    Heard(String, Option<Summary>, u64),
    Sent(String, u64, u64),
    Dropped(String, u64),
    Received(String, u64),
}

pub(super) type Registry = BTreeMap<String, (PeerStatus, Option<Instant>)>;

pub(super) async fn run(mut rx: mpsc::UnboundedReceiver<PeerEvent>, tx: watch::Sender<Registry>) {
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
                    p.outbound_connects += 1;
                }
                PeerEvent::OutboundDown(_, e) => {
                    p.outbound = false;
                    p.outbound_error = Some(e);
                }
                PeerEvent::InboundUp(_) => {
                    p.inbound_links += 1;
                    p.inbound_connects += 1;
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
                        p.summary = s.as_ref().map(Into::into);
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
