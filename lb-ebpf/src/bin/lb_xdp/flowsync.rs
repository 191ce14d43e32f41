//! Peer flow sync, the dataplane half: a new TCP flow (a SYN that created its connection entry)
//! is exported on the `FLOW_EVENTS` ring buffer, from which the agent sends it to its peers.
//!
//! Only SYN-created entries are exported. A mid-flow miss may be a flow that moved here before
//! its peer's entry arrived: exporting the entry this load balancer just made up could overwrite
//! the correct one on the peer. UDP has no connection start to tell a new flow by.

use lb_common::{Counter, FlowEvent, FlowKey};

use crate::{maps::FLOW_EVENTS, stats};

/// Exports a new flow's entry. A full ring buffer loses the export only (counted); the packet
/// is forwarded all the same.
#[inline(always)]
pub fn export(key: &FlowKey, backend: u32, hash: u32) {
    let counter = match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut ev) => {
            ev.write(FlowEvent {
                key: *key,
                backend,
                hash,
            });
            ev.submit(0);
            Counter::FlowEvents
        }
        None => Counter::DropFlowEvent,
    };
    stats::count(counter);
}
