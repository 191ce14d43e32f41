//! What every listener of the agent shares against connection floods (docs/operating.md,
//! "Listener limits"): a cap on concurrent connections (one over the cap is closed at once),
//! a backoff when `accept` fails (out of descriptors: the loop must not spin), and the
//! counters `/metrics` shows (`lb_listener_*`). Also the descriptor limit raised at start, and
//! which errors mean "this host is out of a resource" rather than "the other end failed".

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

/// The agent's listeners, the `listener` label of the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Sync,
    Metrics,
    Api,
}

impl Listener {
    pub const ALL: [Listener; 3] = [Listener::Sync, Listener::Metrics, Listener::Api];

    pub fn name(self) -> &'static str {
        match self {
            Listener::Sync => "sync",
            Listener::Metrics => "metrics",
            Listener::Api => "api",
        }
    }
}

/// Why a connection was closed without being served, the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Over the listener's `max_connections`: closed right after accept.
    Cap,
    /// The handshake or request was not complete within its one deadline.
    Deadline,
}

impl Reason {
    pub const ALL: [Reason; 2] = [Reason::Cap, Reason::Deadline];

    pub fn name(self) -> &'static str {
        match self {
            Reason::Cap => "cap",
            Reason::Deadline => "deadline",
        }
    }
}

#[derive(Default)]
struct PerListener {
    open: AtomicU64,
    refused: [AtomicU64; Reason::ALL.len()],
    accept_errors: AtomicU64,
}

/// One set per process (one agent per process).
static COUNTERS: [PerListener; Listener::ALL.len()] =
    [PerListener::new(), PerListener::new(), PerListener::new()];

impl PerListener {
    const fn new() -> Self {
        Self {
            open: AtomicU64::new(0),
            refused: [AtomicU64::new(0), AtomicU64::new(0)],
            accept_errors: AtomicU64::new(0),
        }
    }
}

fn counters(l: Listener) -> &'static PerListener {
    &COUNTERS[l as usize]
}

/// A listener's counters, as `/metrics` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub open: u64,
    pub refused: Vec<(&'static str, u64)>,
    pub accept_errors: u64,
}

pub fn snapshot(l: Listener) -> Snapshot {
    let c = counters(l);
    Snapshot {
        open: c.open.load(Ordering::Relaxed),
        refused: Reason::ALL
            .iter()
            .map(|r| (r.name(), c.refused[*r as usize].load(Ordering::Relaxed)))
            .collect(),
        accept_errors: c.accept_errors.load(Ordering::Relaxed),
    }
}

/// Counts a connection closed for `why` (the cap is counted by [`Gate::admit`] itself).
pub fn refused(l: Listener, why: Reason) {
    counters(l).refused[why as usize].fetch_add(1, Ordering::Relaxed);
}

/// A connection being served: holds its place under the cap until dropped.
pub struct Slot {
    listener: Listener,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        counters(self.listener).open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// First wait after a failed accept, and the longest.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Admission to one listener: its cap and its accept backoff.
pub struct Gate {
    listener: Listener,
    slots: Arc<Semaphore>,
    max: usize,
    backoff: Duration,
}

impl Gate {
    pub fn new(listener: Listener, max: usize) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            backoff: BACKOFF_MIN,
        }
    }

    /// Takes the result of one `accept`. A connection under the cap comes back with its slot;
    /// one over the cap is closed here (counted); a failed accept is counted and waited out
    /// (100 ms, doubling to 1 s while accepts keep failing), so a host out of descriptors does
    /// not turn the loop into a busy spin.
    pub async fn admit<S>(&mut self, accepted: std::io::Result<S>) -> Option<(S, Slot)> {
        let c = counters(self.listener);
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                let n = c.accept_errors.fetch_add(1, Ordering::Relaxed);
                // Powers of two only: a persistent failure logs a handful of lines, not one
                // per attempt.
                if (n + 1).is_power_of_two() {
                    warn!(
                        listener = self.listener.name(),
                        "accept failed ({} so far): {e}; retrying in {:?}",
                        n + 1,
                        self.backoff
                    );
                }
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                return None;
            }
        };
        self.backoff = BACKOFF_MIN;
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                c.open.fetch_add(1, Ordering::Relaxed);
                Some((
                    stream,
                    Slot {
                        listener: self.listener,
                        _permit: permit,
                    },
                ))
            }
            Err(_) => {
                let n = c.refused[Reason::Cap as usize].fetch_add(1, Ordering::Relaxed);
                if (n + 1).is_power_of_two() {
                    warn!(
                        listener = self.listener.name(),
                        "{} connections open (the cap): closing new ones ({} so far)",
                        self.max,
                        n + 1
                    );
                }
                drop(stream);
                None
            }
        }
    }
}

/// Whether an I/O error says this host ran out of something (descriptors, memory, buffers,
/// local ports), not that the other end or the network failed.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Raises the soft open-file limit to the hard one, and logs what it is. The listeners' caps
/// bound what peers and scrapers can hold, but the flow tables, health checks and peers need
/// room too; the usual soft default (1024) leaves little.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        warn!(
            "reading the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        return 0;
    }
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        r.rlim_cur = r.rlim_max;
        // SAFETY: setrlimit reads one rlimit that outlives the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } != 0 {
            warn!(
                "raising the open-file limit from {before} to {}: {}",
                r.rlim_max,
                std::io::Error::last_os_error()
            );
            return before;
        }
    }
    info!(
        soft = r.rlim_cur,
        hard = r.rlim_max,
        was = before,
        "open-file limit (RLIMIT_NOFILE)"
    );
    r.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn over_the_cap_is_closed_and_counted_and_a_slot_frees_on_drop() {
        // Metrics is used by no other test in this process.
        let l = Listener::Metrics;
        let mut g = Gate::new(l, 2);
        let a = g.admit(Ok(1)).await.expect("under the cap");
        let _b = g.admit(Ok(2)).await.expect("under the cap");
        assert!(g.admit(Ok(3)).await.is_none(), "over the cap");
        let s = snapshot(l);
        assert_eq!(s.open, 2);
        assert_eq!(s.refused, vec![("cap", 1), ("deadline", 0)]);
        drop(a);
        assert_eq!(snapshot(l).open, 1);
        assert!(g.admit(Ok(4)).await.is_some(), "a slot came free");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_from_100ms_to_1s_and_reset_on_success() {
        let l = Listener::Api;
        let mut g = Gate::new(l, 1);
        let emfile = || Err::<u8, _>(std::io::Error::from_raw_os_error(libc::EMFILE));
        let mut waits = Vec::new();
        for _ in 0..6 {
            let t = tokio::time::Instant::now();
            assert!(g.admit(emfile()).await.is_none());
            waits.push(t.elapsed().as_millis());
        }
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(snapshot(l).accept_errors, 6);
        let _ok = g.admit(Ok(1)).await.expect("accepted");
        let t = tokio::time::Instant::now();
        assert!(g.admit(emfile()).await.is_none());
        assert_eq!(t.elapsed().as_millis(), 100, "the backoff starts again");
    }

    #[test]
    fn local_exhaustion_is_told_from_remote_failures() {
        for e in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_local_exhaustion(&std::io::Error::from_raw_os_error(e)));
        }
        for e in [libc::ECONNREFUSED, libc::ETIMEDOUT, libc::EHOSTUNREACH] {
            assert!(!is_local_exhaustion(&std::io::Error::from_raw_os_error(e)));
        }
    }
}
