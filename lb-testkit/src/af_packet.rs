//! An AF_PACKET socket bound to one interface: frames sent on it and captured from it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Result, ensure};

use crate::encap::decode;

/// An AF_PACKET socket bound to one interface.
pub struct Wire {
    fd: OwnedFd,
    ifindex: i32,
}

impl Wire {
    pub fn open(iface: &str) -> Result<Self> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: plain socket creation; the fd is owned right away.
        let fd =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        ensure!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` was just returned by socket() and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = lb_userspace::neighbour::ifindex(iface)? as i32;
        // SAFETY: a zeroed sockaddr_ll with family, protocol and ifindex set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll for the given length, on an open socket.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "binding the packet socket: {}",
            std::io::Error::last_os_error()
        );
        let buf: libc::c_int = 8 << 20;
        // SAFETY: setsockopt reads a c_int of the given length from `buf`.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &buf as *const _ as *const libc::c_void,
                4,
            );
        }
        Ok(Self { fd, ifindex })
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: sends from a valid buffer on a valid socket.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            n == frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Frames received until `timeout` passes without one, or `max` frames.
    pub fn recv_until_quiet(&self, timeout: Duration, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65536];
        while out.len() < max {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
            if r <= 0 {
                break;
            }
            // SAFETY: receives into our buffer; MSG_DONTWAIT after poll said readable.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= 0 {
                continue;
            }
            // Only what arrived on our interface (not our own transmissions).
            if sll.sll_ifindex == self.ifindex && sll.sll_pkttype != libc::PACKET_OUTGOING {
                out.push(buf[..n as usize].to_vec());
            }
        }
        out
    }

    /// Encapsulated frames (outer IPv6 carrying IPv4, IPv6 or UDP) among `frames`.
    pub fn tunnelled(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        frames
            .into_iter()
            .filter(|f| f.len() > 54 && f[12..14] == [0x86, 0xdd] && matches!(f[20], 4 | 41 | 17))
            .filter(|f| decode(f).is_ok())
            .collect()
    }
}
