//! Peer flow sync, the dataplane half: a new TCP flow (its connection entry just made) is
//! exported on the `FLOW_EVENTS` ring buffer, from which the agent sends it to its peers.
//!
//! Entries a SYN made are marked `FLOW_EVENT_F_SYN`: peers install them over any entry. With
//! second chance on, most SYNs make none and the flow's first packet after the SYN does. That
//! packet may also be a flow that moved here before its peer's entry arrived, so such an export
//! never overwrites an entry the peer made itself (flow_tasks.rs). UDP has no connection start
//! to tell a new flow by.

use lb_common::{Counter, FLOW_EVENT_F_SYN, FlowEvent, FlowKey};

use crate::{maps::FLOW_EVENTS, stats};

/// Exports a new flow's entry. A full ring buffer loses the export only (counted); the packet
/// is forwarded all the same.
#[inline(always)]
pub fn export(key: &FlowKey, backend: u32, hash: u32, syn: bool) {
    let counter = match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut ev) => {
            ev.write(FlowEvent {
                key: *key,
                backend,
                hash,
                flags: if syn { FLOW_EVENT_F_SYN } else { 0 },
            });
            ev.submit(0);
            Counter::FlowEvents
        }
        None => Counter::DropFlowEvent,
    };
    stats::count(counter);
}
