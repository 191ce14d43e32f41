//! rtnetlink spoken with libc: one request socket (a route lookup, a neighbour dump) and one
//! event socket subscribed to route, neighbour and link changes. Only what the egress
//! follower needs: IPv6 routes to backends (with ECMP), IPv6 neighbours, any link change.

use std::io;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
/// `rtmsg.rtm_flags`: return the FIB entry that matched (all its ECMP next hops), not the one
/// path the kernel would pick for this address (Linux 4.13).
const RTM_F_FIB_MATCH: u32 = 0x2000;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RTN_UNICAST: u8 = 1;
const RTNH_F_DEAD: u8 = 1;
const RTNH_F_LINKDOWN: u8 = 16;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// Neighbour states whose MAC the kernel itself would send to (REACHABLE, STALE, DELAY,
/// PROBE, NOARP, PERMANENT); INCOMPLETE, FAILED and NONE have none.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
/// Multicast groups (the legacy bitmask of `bind`): links, neighbours, IPv6 routes.
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// One next hop of a route: the NIC and the neighbour to send to (the gateway, or the
/// backend itself on a connected route).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hop {
    pub ifindex: u32,
    pub neighbour: Ipv6Addr,
}

/// A NETLINK_ROUTE socket.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// A socket for requests (`groups` 0), or one that receives these multicast groups' events.
    fn open(groups: u32) -> Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("opening a netlink socket");
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid start.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: a valid fd and a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("binding a netlink socket");
        }
        Ok(Self { fd, seq: 1 })
    }

    pub fn requests() -> Result<Self> {
        Self::open(0)
    }

    /// A socket that receives every IPv6 route, neighbour and link change.
    pub fn events() -> Result<Self> {
        Self::open(RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV6_ROUTE)
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Sends `body` (the message after the netlink header) and returns the replies' bodies of
    /// type `want`. Err: the kernel's error (e.g. ENETUNREACH for no route).
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        body: &[u8],
        want: u16,
    ) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a valid fd and buffer; the kernel is the default destination.
        if unsafe { libc::send(self.raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let dump = flags & NLM_F_DUMP != 0;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: a valid fd and a buffer of the size given.
            let n = unsafe { libc::recv(self.raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (ty, seq, payload) in messages(&buf[..n as usize]) {
                if seq != self.seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(payload[..4].try_into().unwrap_or([0; 4]));
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    t if t == want => {
                        out.push(payload.to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The next hops of the route the kernel matches for `dst` (every live ECMP path): empty
    /// if there is no unicast route (none, unreachable, blackhole, local).
    pub fn route_hops(&mut self, dst: Ipv6Addr) -> Result<Vec<Hop>> {
        let mut body = vec![0u8; 12];
        body[0] = libc::AF_INET6 as u8;
        body[1] = 128;
        body[8..12].copy_from_slice(&RTM_F_FIB_MATCH.to_ne_bytes());
        push_attr(&mut body, RTA_DST, &dst.octets());
        let replies = match self.request(RTM_GETROUTE, 0, &body, RTM_NEWROUTE) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(
                        libc::ENETUNREACH
                            | libc::EHOSTUNREACH
                            | libc::ESRCH
                            | libc::ENOENT
                            | libc::EINVAL
                            | libc::EACCES
                            | libc::EPERM
                    )
                ) =>
            {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e).with_context(|| format!("looking up the route to {dst}")),
        };
        let Some(r) = replies.first() else {
            return Ok(Vec::new());
        };
        if r.len() < 12 || r[7] != RTN_UNICAST {
            return Ok(Vec::new());
        }
        let (mut oif, mut gw, mut hops) = (None, None, Vec::new());
        for (ty, v) in attrs(&r[12..]) {
            match ty {
                RTA_OIF if v.len() >= 4 => oif = Some(u32::from_ne_bytes(v[..4].try_into()?)),
                RTA_GATEWAY => gw = v6(v),
                RTA_MULTIPATH => hops = multipath(v, dst),
                _ => {}
            }
        }
        if hops.is_empty()
            && let Some(ifindex) = oif
        {
            hops.push(Hop {
                ifindex,
                neighbour: gw.unwrap_or(dst),
            });
        }
        hops.sort();
        hops.dedup();
        Ok(hops)
    }

    /// Every IPv6 neighbour with a usable MAC: (ifindex, address) -> MAC; and those without
    /// one (INCOMPLETE, FAILED), which are being resolved or failed.
    pub fn neighbours(&mut self) -> Result<Neighbours> {
        let mut body = vec![0u8; 12];
        body[0] = libc::AF_INET6 as u8;
        let replies = self
            .request(RTM_GETNEIGH, NLM_F_DUMP, &body, RTM_NEWNEIGH)
            .context("dumping the neighbour table")?;
        let mut out = Neighbours::default();
        for r in replies {
            if r.len() < 12 {
                continue;
            }
            let ifindex = i32::from_ne_bytes(r[4..8].try_into()?) as u32;
            let state = u16::from_ne_bytes(r[8..10].try_into()?);
            let (mut dst, mut mac) = (None, None);
            for (ty, v) in attrs(&r[12..]) {
                match ty {
                    NDA_DST => dst = v6(v),
                    NDA_LLADDR if v.len() == 6 => mac = Some(<[u8; 6]>::try_from(v)?),
                    _ => {}
                }
            }
            let Some(dst) = dst else { continue };
            match mac {
                Some(mac) if state & NUD_USABLE != 0 && mac != [0; 6] => {
                    out.usable.insert((ifindex, dst), mac);
                }
                _ => {
                    out.pending.insert((ifindex, dst));
                }
            }
        }
        Ok(out)
    }

    /// Waits up to `timeout_ms` for events and drains them; true if any arrived. ENOBUFS (the
    /// kernel dropped events) counts as an event: the caller re-reads everything anyway.
    pub fn wait_events(&mut self, timeout_ms: i32) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            bail!("waiting for netlink events: {e}");
        }
        if rc == 0 {
            return Ok(false);
        }
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: a valid fd and buffer; non-blocking read of what is queued.
            let n = unsafe {
                libc::recv(
                    self.raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(true),
                    Some(libc::ENOBUFS) | Some(libc::EINTR) => continue,
                    _ => Err(e).context("reading netlink events"),
                };
            }
        }
    }
}

/// The neighbour table, as `Netlink::neighbours` read it.
#[derive(Default, Debug)]
pub struct Neighbours {
    pub usable: std::collections::BTreeMap<(u32, Ipv6Addr), [u8; 6]>,
    pub pending: std::collections::BTreeSet<(u32, Ipv6Addr)>,
}

fn v6(v: &[u8]) -> Option<Ipv6Addr> {
    <[u8; 16]>::try_from(v).ok().map(Ipv6Addr::from)
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, v: &[u8]) {
    let len = 4 + v.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(v);
    buf.resize(buf.len() + (align4(len) - len), 0);
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netlink messages in one datagram: (type, sequence, payload).
fn messages(mut b: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(b[..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(b[4..6].try_into().ok()?);
        let seq = u32::from_ne_bytes(b[8..12].try_into().ok()?);
        let payload = &b[NLMSG_HDRLEN..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, seq, payload))
    })
}

/// Route attributes (`rtattr`): (type, value).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        if len < 4 || len > b.len() {
            return None;
        }
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        let v = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, v))
    })
}

/// `RTA_MULTIPATH`: `rtnexthop`s (len u16, flags u8, hops u8, ifindex i32, then attributes),
/// without the dead and link-down ones.
fn multipath(mut b: &[u8], dst: Ipv6Addr) -> Vec<Hop> {
    let mut out = Vec::new();
    while b.len() >= 8 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        if len < 8 || len > b.len() {
            break;
        }
        let flags = b[2];
        let ifindex = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]) as u32;
        let gw = attrs(&b[8..len])
            .find(|(t, _)| *t == RTA_GATEWAY)
            .and_then(|(_, v)| v6(v));
        if flags & (RTNH_F_DEAD | RTNH_F_LINKDOWN) == 0 {
            out.push(Hop {
                ifindex,
                neighbour: gw.unwrap_or(dst),
            });
        }
        b = &b[align4(len).min(b.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_skips_dead_and_linkdown_hops() {
        let gw = |last: u8| {
            let mut a = [0u8; 16];
            a[0] = 0xfe;
            a[1] = 0x80;
            a[15] = last;
            a
        };
        let mut b = Vec::new();
        for (flags, ifindex, last) in [(0u8, 2i32, 1u8), (RTNH_F_LINKDOWN, 3, 2), (0, 4, 3)] {
            let mut attr = Vec::new();
            push_attr(&mut attr, RTA_GATEWAY, &gw(last));
            b.extend_from_slice(&((8 + attr.len()) as u16).to_ne_bytes());
            b.push(flags);
            b.push(0);
            b.extend_from_slice(&ifindex.to_ne_bytes());
            b.extend_from_slice(&attr);
        }
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let hops = multipath(&b, dst);
        assert_eq!(
            hops,
            vec![
                Hop {
                    ifindex: 2,
                    neighbour: gw(1).into()
                },
                Hop {
                    ifindex: 4,
                    neighbour: gw(3).into()
                },
            ]
        );
        // A truncated buffer ends the walk without panicking.
        assert_eq!(multipath(&b[..10], dst), vec![]);
    }

    #[test]
    fn attributes_and_messages_parse_and_stop_on_bad_lengths() {
        let mut b = Vec::new();
        push_attr(&mut b, RTA_OIF, &7u32.to_ne_bytes());
        push_attr(&mut b, RTA_DST, &[1, 2, 3]);
        let got: Vec<(u16, Vec<u8>)> = attrs(&b).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (RTA_OIF, 7u32.to_ne_bytes().to_vec()),
                (RTA_DST, vec![1, 2, 3])
            ]
        );
        assert_eq!(attrs(&[0xff, 0xff, 0, 0]).count(), 0);
        assert_eq!(messages(&[0u8; 8]).count(), 0);
    }
}
