//! The messages between the agent and the sync tasks: what the agent publishes after every
//! install (`Local`), and what the sync tasks report (`Event`).

use std::sync::Arc;

use super::flows::FlowIndex;
use super::link::Summary;
use super::moved::Rings;
use super::replicated::ReplicatedState;

/// What the agent publishes for the sync tasks after every change it installs.
#[derive(Clone, Debug, Default)]
pub struct Local {
    pub state: Arc<ReplicatedState>,
    pub summary: Summary,
    pub index: Arc<FlowIndex>,
    /// With `flows = "changes"`: the rings as installed (empty otherwise).
    pub rings: Arc<Rings>,
}

/// What the sync tasks tell the agent.
#[derive(Debug)]
pub enum Event {
    /// A peer's replicated state (authenticated and validated).
    PeerState {
        from: String,
        state: ReplicatedState,
    },
    /// A peer has sent us its state and its live flows (after each link comes up).
    PeerSynced(String),
    /// `startup_wait_secs` after start: announce even if some peer never synced.
    WaitOver,
}
