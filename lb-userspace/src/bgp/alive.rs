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

/// The liveness interface's name unless `[bgp] alive_iface` says otherwise.
pub const DEFAULT_ALIVE_IFACE: &str = "lb-alive";

/// Holds the TUN device: it goes away with this value, or with the process.
#[derive(Debug)]
pub struct AliveIface {
    _tun: File,
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
        set_up(name).with_context(|| format!("setting the liveness interface {name} up"))?;
        Ok(Self {
            _tun: tun,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
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

fn set_up(name: &str) -> std::io::Result<()> {
    // SAFETY: socket has no preconditions; the descriptor is owned by `sock` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and nothing else owns it.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of one ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS set the flags field of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads one ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
