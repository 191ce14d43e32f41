//! The agent's liveness interface: a TUN device that lives exactly as long as the agent.
//!
//! The routes file names every VIP `via "<this interface>"`, and BIRD keeps a static route
//! through an interface only while that interface is up. The kernel deletes a non-persistent
//! TUN device when the last descriptor on it closes, which happens however the agent ends
//! (SIGTERM, SIGKILL, a panic, a reboot), so BIRD withdraws every VIP the moment the agent is
//! gone, and a BIRD started or restarted while no agent runs announces nothing, whatever the
//! routes file still says (docs/bgp.md).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, ensure};

use crate::ifctl::IfaceControl;

/// The liveness interface's name unless `[bgp] alive_iface` says otherwise.
pub const DEFAULT_ALIVE_IFACE: &str = "lb-alive";

/// Holds the TUN device: it goes away with this value, or with the process.
#[derive(Debug)]
pub struct AliveIface {
    _tun: File,
    /// Kept open so [`AliveIface::set_up`] needs no new descriptor.
    ctl: IfaceControl,
    name: String,
}

impl AliveIface {
    /// Creates the TUN device `name` in this network namespace and sets it up. Fails if the
    /// name is taken (another agent holds it) or /dev/net/tun is missing.
    pub fn create(name: &str) -> Result<Self> {
        ensure!(
            !name.is_empty() && name.len() < libc::IFNAMSIZ && !name.contains(['/', ' ', '"']),
            "liveness interface name `{name}`: use 1-15 characters, no '/', ' ' or '\"'"
        );
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun for the liveness interface (modprobe tun)")?;
        let mut req = ifreq(name);
        // The union's flags field is the one TUNSETIFF reads (writing a union field is safe).
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        ensure!(
            rc == 0,
            "creating the liveness interface {name} (is another agent running here?): {}",
            std::io::Error::last_os_error()
        );
        let ctl = IfaceControl::open().context("a socket for the liveness interface")?;
        ctl.set_up(name, true)
            .with_context(|| format!("setting the liveness interface {name} up"))?;
        Ok(Self {
            _tun: tun,
            ctl,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the interface up or down, with descriptors the agent already holds: down, BIRD
    /// withdraws every route through it at once, even when the agent can open no file or
    /// socket to rewrite the routes file or reach BIRD's control socket.
    pub fn set_up(&self, up: bool) -> std::io::Result<()> {
        self.ctl.set_up(&self.name, up)
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}
