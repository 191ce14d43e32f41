//! A cap on log lines anyone can cause: refused pre-authentication connections. Without it, a
//! flood of garbage connections would be a flood of log lines (disk, journald, the operator's
//! attention). The refusals are still all counted in `lb_sync_refused_total`.

use std::time::{Duration, Instant};

/// At most this many refused pre-authentication connections logged per [`PRE_AUTH_INTERVAL`].
pub const PRE_AUTH_LINES: u32 = 10;
pub const PRE_AUTH_INTERVAL: Duration = Duration::from_secs(10);

/// Lets through at most `max` lines per `interval` (fixed windows).
#[derive(Debug)]
pub struct LogLimit {
    max: u32,
    interval: Duration,
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(max: u32, interval: Duration) -> Self {
        Self {
            max,
            interval,
            window: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// For one line at `now`: `None` to suppress it, or `Some(k)` to log it, `k` being how
    /// many lines were suppressed since the last one logged (to say so on this line).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= self.interval)
        {
            self.window = Some(now);
            self.logged = 0;
        }
        if self.logged >= self.max {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_lines_per_interval_then_a_count_of_the_suppressed() {
        let mut l = LogLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        // A flood of 100 within one window: 3 logged, 97 suppressed.
        let logged: Vec<_> = (0..100).filter_map(|_| l.admit(t0)).collect();
        assert_eq!(logged, vec![0, 0, 0]);
        assert_eq!(l.admit(t0 + 9 * s), None);
        // The next window's first line carries the count (98), then the count starts again.
        assert_eq!(l.admit(t0 + 10 * s), Some(98));
        assert_eq!(l.admit(t0 + 10 * s), Some(0));
        assert_eq!(l.admit(t0 + 11 * s), Some(0));
        assert_eq!(l.admit(t0 + 12 * s), None);
        // A quiet spell: everything is logged again, with the one suppressed line counted.
        assert_eq!(l.admit(t0 + 60 * s), Some(1));
        assert_eq!(l.admit(t0 + 61 * s), Some(0));
    }
}
