//! The token bucket that limits the ICMP the XDP program generates (echo replies and "too
//! big" messages): one bucket per CPU, refilled from the coarse clock. The pure half, tested on
//! the host; lb_xdp's `ratelimit` keeps the state in a per-CPU array and counts what it drops.
//! docs/dataplane.md ("Generated ICMP") has the policy.

/// Credit one token is worth: with the rate in tokens per second and time in ns, `elapsed_ns *
/// rate` is the credit earned, with no division.
pub const TOKEN: u64 = 1_000_000_000;

/// Longest idle time counted when refilling (about 19.5 hours): `elapsed * rate` stays far
/// below `u64::MAX` (2^46 * 65535 < 2^62), and any longer idle fills the bucket anyway.
pub const MAX_ELAPSED_NS: u64 = 1 << 46;

/// One CPU's bucket (`ICMP_BUCKET[0]`): all zeroes is a fresh, full bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit held, in 1/`TOKEN` tokens; at most `burst * TOKEN`.
    pub credit: u64,
    /// When the credit was last brought up to date (coarse clock, ns); 0: never used.
    pub last_ns: u64,
}

// SAFETY: repr(C), two u64s: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for TokenBucket {}

impl TokenBucket {
    /// Takes one token at `now_ns` from a bucket refilled at `rate` tokens per second and
    /// holding at most `burst`: whether the message may be sent. `rate` 0: no limit (nothing
    /// is read or written). A clock that steps back earns nothing and loses nothing.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, rate: u16, burst: u16) -> bool {
        if rate == 0 {
            return true;
        }
        self.take_at(now_ns, rate as u64, burst as u64, MAX_ELAPSED_NS)
    }

    /// `take` for the new-flow gate's larger rates (`FlowGate`): `rate` and `burst` are capped
    /// at `MAX_GATE_RATE` and `MAX_GATE_BURST`, and an idle time at `MAX_GATE_ELAPSED_NS` (so
    /// a burst of up to 4 s of the rate refills completely). `rate` 0: no limit.
    #[inline(always)]
    pub fn take_wide(&mut self, now_ns: u64, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = if rate > MAX_GATE_RATE {
            MAX_GATE_RATE
        } else {
            rate
        };
        let burst = if burst > MAX_GATE_BURST {
            MAX_GATE_BURST
        } else {
            burst
        };
        self.take_at(now_ns, rate as u64, burst as u64, MAX_GATE_ELAPSED_NS)
    }

    #[inline(always)]
    fn take_at(&mut self, now_ns: u64, rate: u64, burst: u64, max_elapsed: u64) -> bool {
        let cap = burst * TOKEN;
        let credit = if self.last_ns == 0 {
            cap
        } else {
            let elapsed = now_ns.saturating_sub(self.last_ns);
            let elapsed = if elapsed > max_elapsed {
                max_elapsed
            } else {
                elapsed
            };
            let credit = self.credit + elapsed * rate;
            if credit > cap { cap } else { credit }
        };
        if now_ns > self.last_ns {
            self.last_ns = now_ns;
        }
        if credit < TOKEN {
            self.credit = credit;
            return false;
        }
        self.credit = credit - TOKEN;
        true
    }
}

/// The new-flow gate's highest rate (per second per CPU) and burst.
pub const MAX_GATE_RATE: u32 = 1 << 24;
pub const MAX_GATE_BURST: u32 = 1 << 26;
/// Longest idle time the gate's bucket counts when refilling (about 4.3 s).
pub const MAX_GATE_ELAPSED_NS: u64 = 1 << 32;

/// The new-flow gate (`FLOW_GATE[0]`, written by the agent): above `rate` new connection
/// entries per second on a CPU (after a `burst`), new flows are still forwarded by Maglev but
/// get no entry (counted `lru_insert_gated`), so a flood of new flows cannot evict the
/// established ones from the connection table. `rate` 0 (all zeroes): no gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowGate {
    pub rate: u32,
    pub burst: u32,
}

// SAFETY: repr(C), two u32s: no padding, every bit pattern valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowGate {}

const _: () = assert!(core::mem::size_of::<TokenBucket>() == 16);
const _: () = assert!(core::mem::size_of::<FlowGate>() == 8);
const _: () = assert!(
    (MAX_GATE_BURST as u64 * TOKEN)
        .checked_add(MAX_GATE_ELAPSED_NS * MAX_GATE_RATE as u64)
        .is_some()
);
const _: () = assert!(MAX_ELAPSED_NS.checked_mul(u16::MAX as u64).is_some());
const _: () = assert!(
    (u16::MAX as u64 * TOKEN)
        .checked_add(MAX_ELAPSED_NS * u16::MAX as u64)
        .is_some()
);

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 5_000_000_000;

    /// How many of `n` takes at `now` succeed.
    fn takes(b: &mut TokenBucket, now: u64, rate: u16, burst: u16, n: u32) -> u32 {
        (0..n).filter(|_| b.take(now, rate, burst)).count() as u32
    }

    #[test]
    fn a_fresh_bucket_holds_the_burst_then_refuses() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, T0, 10, 5, 5), 5);
        assert!(!b.take(T0, 10, 5));
        assert_eq!(
            b,
            TokenBucket {
                credit: 0,
                last_ns: T0
            }
        );
    }

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, T0, 10, 5, 5), 5);
        // 10 per second: one token every 100 ms, none before.
        assert!(!b.take(T0 + 99_999_999, 10, 5));
        assert!(b.take(T0 + 100_000_000, 10, 5));
        assert!(!b.take(T0 + 100_000_000, 10, 5));
        // Partial credit is kept across refusals: 50 ms + 50 ms make a token.
        assert!(!b.take(T0 + 150_000_000, 10, 5));
        assert!(b.take(T0 + 200_000_000, 10, 5));
        // A long idle fills the bucket to the burst, no more.
        assert_eq!(takes(&mut b, T0 + 3_600_000_000_000, 10, 5, 10), 5);
    }

    #[test]
    fn rate_zero_is_unlimited_and_leaves_the_state_alone() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, T0, 0, 0, 1000), 1000);
        assert_eq!(b, TokenBucket::default());
    }

    #[test]
    fn a_clock_stepping_back_earns_nothing_and_extremes_do_not_overflow() {
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, T0, 1, 2, 2), 2);
        assert!(!b.take(T0 - 1_000_000_000, 1, 2));
        assert_eq!(b.last_ns, T0);
        // The largest rate and burst after the longest idle, then a clock at its end.
        let mut b = TokenBucket {
            credit: 0,
            last_ns: 1,
        };
        assert_eq!(takes(&mut b, u64::MAX, u16::MAX, u16::MAX, 70_000), 65_535);
        // Lowering the burst caps the credit at the next take.
        let mut b = TokenBucket::default();
        assert!(b.take(T0, 1, 100));
        assert_eq!(takes(&mut b, T0 + 1, 1, 3, 10), 3);
    }

    #[test]
    fn the_wide_bucket_gates_high_rates_and_caps_its_inputs() {
        let mut b = TokenBucket::default();
        // 1,000,000 per second, a burst of 100,000: the burst, then 1000 per ms.
        assert_eq!(
            (0..200_000)
                .filter(|_| b.take_wide(T0, 1_000_000, 100_000))
                .count(),
            100_000
        );
        assert_eq!(
            (0..5000)
                .filter(|_| b.take_wide(T0 + 1_000_000, 1_000_000, 100_000))
                .count(),
            1000
        );
        // The largest inputs after the longest idle do not overflow, and are capped.
        let mut b = TokenBucket {
            credit: 0,
            last_ns: 1,
        };
        assert!(b.take_wide(u64::MAX, u32::MAX, u32::MAX));
        assert_eq!(b.credit, MAX_GATE_BURST as u64 * TOKEN - TOKEN);
        assert!(
            TokenBucket::default().take_wide(T0, 0, 0),
            "rate 0: no gate"
        );
    }

    #[test]
    fn a_high_rate_refills_within_one_tick() {
        // 65535 per second: a 4 ms jiffy earns 262 tokens (coarse clock steps).
        let mut b = TokenBucket::default();
        assert_eq!(takes(&mut b, T0, u16::MAX, 1000, 2000), 1000);
        assert_eq!(takes(&mut b, T0 + 4_000_000, u16::MAX, 1000, 2000), 262);
    }
}
