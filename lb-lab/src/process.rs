//! Processes the lab starts in its namespaces: spawning, liveness, stopping, waiting.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A command whose child runs in namespace `ns` (network only: bpffs pins stay visible),
/// in its own session so it outlives the command that started it.
///
/// The child keeps only stdin, stdout and stderr: a daemon that outlives `lb-lab up` must not
/// hold what its caller had open, such as the file of `flock /tmp/lb-test.lock cargo xtask lab
/// up`, whose lock would otherwise stay taken until `lab down` (which waits for that lock).
pub(crate) fn command_in(ns: &str, program: &Path) -> Result<Command> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns, setsid and close_range are async-signal-safe; the namespace fd stays open
    // until spawn returns because `file` moves into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            own_session()
        });
    }
    Ok(cmd)
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; a zombie is gone for our purpose.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub(crate) fn reap(pid: u32) {
    // Our own children (tests) would stay zombies; others are not ours to wait for.
    // SAFETY: waitpid with WNOHANG on a specific PID has no other effect.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Sends `sig`, then waits up to `grace` before SIGKILL.
pub(crate) fn stop_pid(pid: u32, sig: i32, grace: Duration) {
    // SAFETY: signals one recorded PID.
    unsafe { libc::kill(pid as i32, sig) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap(pid);
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    for _ in 0..100 {
        reap(pid);
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut ok: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match ok() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!(": {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "timed out after {} s waiting for {what}{last}",
        timeout.as_secs()
    )
}

pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// For `pre_exec`: a new session, and none of the caller's files kept across exec (such as the
/// lock of `flock /tmp/lb-test.lock cargo xtask lab`, which `lab down` would otherwise wait for).
/// Close-on-exec rather than close, so the spawn's own error pipe stays usable. Only
/// async-signal-safe calls.
pub(crate) fn own_session() -> std::io::Result<()> {
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::setsid();
        if libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
