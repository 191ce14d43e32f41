//! The BGP task: keeps BIRD announcing what the agent wants and reports how each attempt went.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::alive::AliveIface;
use super::client::Bird;

/// One attempt to make BIRD announce a set of VIPs: what the BGP task tells the agent.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub announced: BTreeSet<IpAddr>,
    /// BIRD's reply, or why it failed (retried).
    pub result: Result<String, String>,
}

/// Keeps BIRD announcing `want`, retrying every few seconds on failure (BIRD restarted, socket
/// not there yet), and re-asserting now and then. Ends when either channel's other end is gone.
///
/// With a liveness interface: withdrawing everything first takes it down (no descriptor
/// needed, so it works when the process has none left; BIRD drops every route through it),
/// and it comes back up only once BIRD took a routes file that says what we want.
pub async fn drive(
    bird: Bird,
    mut want: watch::Receiver<BTreeSet<IpAddr>>,
    tx: mpsc::Sender<Outcome>,
    alive: Option<std::sync::Arc<AliveIface>>,
) {
    const RETRY: Duration = Duration::from_secs(2);
    const REASSERT: Duration = Duration::from_secs(30);
    loop {
        let vips = want.borrow_and_update().clone();
        let mut down = None;
        if let (Some(a), true) = (&alive, vips.is_empty())
            && let Err(e) = a.set_up(false)
        {
            down = Some(format!("taking {} down: {e}", a.name()));
        }
        let mut result = bird
            .announce(&vips)
            .await
            .map(|r| format!("{r:?}"))
            .map_err(|e| format!("{e:#}"));
        if let (Some(a), false, true) = (&alive, vips.is_empty(), result.is_ok())
            && let Err(e) = a.set_up(true)
        {
            result = Err(format!("setting {} up: {e}", a.name()));
        }
        if let (Some(e), Ok(_)) = (down, &result) {
            result = Err(e);
        }
        let failed = result.is_err();
        let outcome = Outcome {
            announced: vips,
            result,
        };
        if tx.send(outcome).await.is_err() {
            return;
        }
        let wait = if failed { RETRY } else { REASSERT };
        tokio::select! {
            changed = want.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
