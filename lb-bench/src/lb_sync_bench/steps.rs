//! The bench's steps in time: Ctrl-C stops it between steps, its naps are short enough to hear
//! that, and each step says what it does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

pub(crate) extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub(crate) fn check_stop() -> Result<()> {
    ensure!(
        !STOP.load(Ordering::Relaxed),
        "interrupted (the lab is being torn down)"
    );
    Ok(())
}

/// Sleeps up to `d`, in short steps so Ctrl-C is heard.
pub(crate) fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

pub(crate) fn sleep_until(t: Instant) -> Result<()> {
    nap(t.saturating_duration_since(Instant::now()))
}

pub(crate) fn progress(msg: &str) {
    eprintln!("[sync-bench] {msg}");
}
