//! Interface flags and indexes through one socket opened at start and kept.
//!
//! The watchdog's NIC checks and the withdrawal through the liveness interface must work
//! when the process cannot open a descriptor (a flood or a leak used them all): `if_nametoindex`
//! and a fresh ioctl socket would fail then, and the watchdog would see every NIC "gone" while
//! the withdrawal could not happen. This socket is opened once and reused by both.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An AF_INET datagram socket for interface ioctls (no traffic is ever sent on it).
#[derive(Debug)]
pub struct IfaceControl(OwnedFd);

fn ifreq(name: &str) -> std::io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

impl IfaceControl {
    pub fn open() -> std::io::Result<Self> {
        // SAFETY: socket has no preconditions; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just opened and nothing else owns it.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq) -> std::io::Result<()> {
        // SAFETY: the interface ioctls used here read and write one ifreq that outlives the
        // call, on a socket this value owns.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, req as *mut libc::ifreq) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface's index (ENODEV: no such interface in this namespace).
    pub fn index(&self, name: &str) -> std::io::Result<u32> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFINDEX, &mut req)?;
        // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
    }

    pub fn flags(&self, name: &str) -> std::io::Result<libc::c_int> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_flags } as libc::c_int & 0xffff)
    }

    /// Whether `name` is administratively up with its carrier (IFF_UP and IFF_RUNNING).
    pub fn is_up(&self, name: &str) -> std::io::Result<bool> {
        let f = self.flags(name)?;
        Ok(f & libc::IFF_UP != 0 && f & libc::IFF_RUNNING != 0)
    }

    /// Sets `name` administratively up or down.
    pub fn set_up(&self, name: &str, up: bool) -> std::io::Result<()> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS set the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        let want = if up {
            flags | libc::IFF_UP as libc::c_short
        } else {
            flags & !(libc::IFF_UP as libc::c_short)
        };
        if want == flags {
            return Ok(());
        }
        req.ifr_ifru.ifru_flags = want;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_found_and_a_missing_name_is_enodev() {
        let c = IfaceControl::open().unwrap();
        assert_eq!(c.index("lo").unwrap(), lb_host::ifindex("lo").unwrap());
        assert!(c.is_up("lo").unwrap());
        let e = c.index("no-such-if0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert!(c.index("").is_err() && c.index("a-name-far-too-long").is_err());
    }
}
