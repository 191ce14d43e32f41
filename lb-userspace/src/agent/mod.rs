//! `lb agent`: one per load balancer. A few tasks that talk through typed messages; each
//! worker owns the type it sends, and only this module knows them all:
//!
//! - the actor (`actor`) owns the maps, the desired state and the reconciler. It takes
//!   [`Command`]s from the control API and the metrics endpoint, and the workers' events below,
//!   and tells the workers what it wants through watch channels;
//! - the control API (`api_server`) serves the unix socket and sends the actor `Command`s;
//! - the metrics endpoint (`metrics`, optional) asks it for counters, and serves the status
//!   page (`status_page`, with a task that samples the counters every second);
//! - the health task (`crate::health`) checks every backend through the tunnel and sends
//!   `health::Transition`s;
//! - the BGP task (`crate::bgp::drive`) keeps BIRD announcing exactly the VIPs this node can
//!   serve and sends a `bgp::Outcome` per attempt;
//! - the neighbour task (`crate::neighbour::follow`) follows the next hop's MAC for NICs
//!   configured with a gateway and sends `neighbour::NextHop`s;
//! - with `[sync]`, the sync tasks (`crate::sync`) link the agent to its peers and send
//!   `sync::Event`s (a peer's state, a peer caught up, the startup wait over); the actor
//!   publishes its own state after every install (`fleet`);
//! - the log task forwards the XDP program's aya-log records into tracing;
//! - signals: SIGHUP reloads (`reload`), SIGTERM/SIGINT end the agent cleanly and leave the pinned
//!   dataplane forwarding.
//!
//! `spawn` builds all of this and runs the actor; `report` holds what the actor answers
//! about itself; `fault` and `nic` what the watchdog checks.

mod actor;
mod api_server;
mod egress;
mod fault;
mod fleet;
mod metrics;
mod moved;
mod nic;
mod node_metrics;
mod peers;
mod reload;
mod report;
mod second_chance;
mod spawn;
mod status_page;
mod sync_metrics;
mod text_format;

pub use spawn::{AgentArgs, run};
