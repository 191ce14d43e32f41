//! The BGP task: keeps BIRD announcing what the agent wants and reports how each attempt went.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

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
pub async fn drive(
    bird: Bird,
    mut want: watch::Receiver<BTreeSet<IpAddr>>,
    tx: mpsc::Sender<Outcome>,
) {
    const RETRY: Duration = Duration::from_secs(2);
    const REASSERT: Duration = Duration::from_secs(30);
    loop {
        let vips = want.borrow_and_update().clone();
        let result = bird
            .announce(&vips)
            .await
            .map(|r| format!("{r:?}"))
            .map_err(|e| format!("{e:#}"));
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
