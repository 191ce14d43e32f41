//! The control-plane bench's setup: one VIP of `BACKENDS` backends, the ring size, the seed,
//! and how long and how often a change is polled for.

use std::net::Ipv4Addr;
use std::time::Duration;

pub(crate) const SEED: u64 = 20_261_123;
pub(crate) const RING: u32 = 65_537;
pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub(crate) const PORT: u16 = 80;
pub(crate) const BACKENDS: u32 = 10;
pub(crate) const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const POLL_SLEEP: Duration = Duration::from_micros(200);
