//! Raw frames out of one router veth: a send-only packet socket and a paced sender.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use lb_lab::netns::mac;
use lb_lab::{self as lab, HTTP_PORT, Lab, VIP4, in_ns};
use lb_testkit::{Flow, Tcp, check_inner_checksums, ip_packet};

use crate::params::*;
use crate::steps::*;

/// A packet socket that only sends (protocol 0: it receives nothing, so it adds no tap on the
/// interface), bound to the router's veth towards one load balancer.
pub(crate) struct Port {
    pub(crate) fd: OwnedFd,
    pub(crate) ifindex: i32,
    pub(crate) src_mac: [u8; 6],
    pub(crate) dst_mac: [u8; 6],
}

impl Port {
    /// The router's veth `lbN` (source MAC) towards `lbN`'s eth0 (destination MAC).
    pub(crate) fn open(lab: &Lab, i: usize) -> Result<Port> {
        let name = lab::lb_name(i);
        let src_mac = mac(&lab.ns("router"), &name)?;
        let dst_mac = mac(&lab.ns(&name), "eth0")?;
        let iface = name.clone();
        let (fd, ifindex) = in_ns(&lab.ns("router"), move || -> Result<(OwnedFd, i32)> {
            // SAFETY: plain socket creation; the fd is owned right away.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a fresh, valid descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = lb_userspace::neighbour::ifindex(&iface)? as i32;
            Ok((fd, ifindex))
        })??;
        Ok(Port {
            fd,
            ifindex,
            src_mac,
            dst_mac,
        })
    }

    pub(crate) fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: a zeroed sockaddr_ll with family, protocol and interface set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&self.dst_mac);
        // SAFETY: sends from a valid buffer with a valid address of its stated size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n == frame.len() as isize {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SYN number `n` (distinct for every n below 64 x 64000) to VIP4:80, checked.
    pub(crate) fn syn(&self, n: u64) -> Result<Vec<u8>> {
        self.segment(n, Tcp::Syn)
    }

    /// New flow number `n` as a client makes it: its SYN, then its first ACK. Since issue 18 a
    /// SYN (second chance on, an unchanged slot) writes no connection entry; the first ACK does,
    /// and that entry is what flow sync exports. A spoofed SYN flood is `syn` alone.
    pub(crate) fn new_flow(&self, n: u64) -> Result<[Vec<u8>; 2]> {
        Ok([self.segment(n, Tcp::Syn)?, self.segment(n, Tcp::Ack)?])
    }

    fn segment(&self, n: u64, flags: Tcp) -> Result<Vec<u8>> {
        let src = Ipv4Addr::new(203, 0, 113, SRC_BASE + (n % SRC_HOSTS) as u8);
        let sport = PORT_BASE + ((n / SRC_HOSTS) % PORTS) as u16;
        let mut flow = Flow::new("203.0.113.192", sport, "192.0.2.10", HTTP_PORT)
            .macs(self.src_mac, self.dst_mac);
        flow.src = IpAddr::V4(src);
        let frame = flow.tcp(flags, &[]);
        // The frame builder's flags: SYN alone, or ACK with PSH.
        let want = if flags == Tcp::Syn { 0x02 } else { 0x18 };
        self.check(&frame, src, sport, want)?;
        Ok(frame)
    }

    /// A well-formed SYN or ACK (`flags`): our MACs, IPv4 to the VIP, correct IPv4 and TCP
    /// checksums.
    pub(crate) fn check(&self, f: &[u8], src: Ipv4Addr, sport: u16, flags: u8) -> Result<()> {
        ensure!(f.len() == 14 + 20 + 20, "a TCP frame of {} bytes", f.len());
        ensure!(
            f[0..6] == self.dst_mac && f[6..12] == self.src_mac,
            "frame MACs"
        );
        ensure!(f[12..14] == [0x08, 0x00], "ethertype {:02x?}", &f[12..14]);
        let ip = ip_packet(f);
        ensure!(
            ip[0] == 0x45
                && ip[9] == 6
                && ip[12..16] == src.octets()
                && ip[16..20] == VIP4.octets(),
            "IPv4 header {:02x?}",
            &ip[..20]
        );
        let tcp = &ip[20..];
        ensure!(
            u16::from_be_bytes([tcp[0], tcp[1]]) == sport
                && u16::from_be_bytes([tcp[2], tcp[3]]) == HTTP_PORT
                && tcp[13] == flags,
            "TCP header {:02x?}",
            tcp
        );
        check_inner_checksums(ip)
    }
}

pub(crate) fn thread_cpu_s() -> f64 {
    // SAFETY: clock_gettime fills the timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) frames: u64,
    pub(crate) errors: u64,
    pub(crate) secs: f64,
    pub(crate) cpu_s: f64,
}

/// Sends `frames`, `per_flow` frames to a flow, at `rate` flows per second: a bounded loop
/// (every frame once, and a deadline). `Sent::frames` counts flows (frames / `per_flow`).
pub(crate) fn send_paced(
    port: &Port,
    frames: &[Vec<u8>],
    per_flow: usize,
    rate: u32,
    label: &str,
) -> Result<Sent> {
    let rate = rate * per_flow as u32;
    let total = frames.len();
    let planned = total as f64 / rate as f64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(planned * 1.5 + 2.0);
    let cpu0 = thread_cpu_s();
    let (mut i, mut errors, mut last_err) = (0usize, 0u64, None);
    let mut next_report = 1.0;
    while i < total {
        let now = Instant::now();
        if now >= deadline {
            progress(&format!(
                "{label}: deadline reached after {i} of {total} frames"
            ));
            break;
        }
        check_stop()?;
        let elapsed = (now - start).as_secs_f64();
        let due = ((elapsed * rate as f64) as usize + 1).min(total);
        let burst_end = due.min(i + MAX_BURST);
        while i < burst_end {
            if let Err(e) = port.send(&frames[i]) {
                errors += 1;
                last_err = Some(e);
            }
            i += 1;
        }
        if elapsed >= next_report {
            progress(&format!(
                "{label}: {:>4.1} s, {i} frames sent ({:.0}/s)",
                elapsed,
                i as f64 / elapsed
            ));
            next_report += if planned > 12.0 { 5.0 } else { 2.0 };
        }
        if i >= due {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = last_err {
        progress(&format!("{label}: {errors} sends failed, the last: {e}"));
    }
    Ok(Sent {
        frames: (i as u64 - errors) / per_flow as u64,
        errors,
        secs,
        cpu_s: thread_cpu_s() - cpu0,
    })
}
