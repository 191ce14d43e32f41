//! NIC facts from the kernel: ifindex, MAC, and the next hop's MAC from the neighbour table;
//! and the gateway follower, which reports each gateway's MAC as a [`NextHop`].
//! Everything here works in the caller's network namespace (no /sys/class/net, which shows the
//! namespace sysfs was mounted in).

use std::net::{IpAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;
use tracing::warn;

use crate::config::parse_mac;

pub use lb_host::ifindex;

/// An `ioctl` on `name` with a zeroed `ifreq`; returns the request as the kernel filled it.
fn ifreq_ioctl(name: &str, request: libc::c_ulong, what: &str) -> Result<libc::ifreq> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("socket for an interface ioctl")?;
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        bail!("interface name `{name}` is too long");
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket fd and a properly initialised ifreq.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the {what} of {name}"));
    }
    Ok(req)
}

pub fn iface_mac(name: &str) -> Result<[u8; 6]> {
    let req = ifreq_ioctl(name, libc::SIOCGIFHWADDR, "MAC address")?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Whether `name` is administratively up with its carrier (IFF_UP and IFF_RUNNING).
pub fn is_up(name: &str) -> bool {
    ifreq_ioctl(name, libc::SIOCGIFFLAGS, "flags").is_ok_and(|req| {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
        flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
    })
}

/// The NIC's MTU (the largest IP packet it sends), from the kernel.
pub fn mtu(name: &str) -> Result<u32> {
    let req = ifreq_ioctl(name, libc::SIOCGIFMTU, "MTU")?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// The MAC the kernel's neighbour table holds for `gateway` on `iface`, if resolved.
pub fn lookup(gateway: IpAddr, iface: &str) -> Result<Option<[u8; 6]>> {
    let out = Command::new("ip")
        .args([
            "-j",
            "neigh",
            "show",
            "to",
            &gateway.to_string(),
            "dev",
            iface,
        ])
        .output()
        .context("running `ip neigh` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip neigh show` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let entries: Vec<serde_json::Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        serde_json::from_slice(&out.stdout).context("parsing `ip -j neigh` output")?
    };
    for e in entries {
        let states: Vec<&str> = e["state"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
            .unwrap_or_default();
        if states.iter().any(|s| *s == "FAILED" || *s == "INCOMPLETE") {
            continue;
        }
        if let Some(mac) = e["lladdr"].as_str() {
            return Ok(Some(parse_mac(mac)?));
        }
    }
    Ok(None)
}

/// Makes the kernel resolve `gateway`: one empty datagram to its discard port (9).
pub fn provoke(gateway: IpAddr) {
    let bind = if gateway.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    if let Ok(s) = UdpSocket::bind(bind) {
        let _ = s.send_to(&[], (gateway, 9));
    }
}

/// Resolves `gateway`, provoking resolution and waiting up to `tries` x 200 ms.
pub fn resolve(gateway: IpAddr, iface: &str, tries: u32) -> Result<Option<[u8; 6]>> {
    for i in 0..tries.max(1) {
        if let Some(mac) = lookup(gateway, iface)? {
            return Ok(Some(mac));
        }
        if i == 0 {
            provoke(gateway);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    lookup(gateway, iface)
}

/// A gateway's MAC as the neighbour table has it now: what the follower tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub iface: String,
    pub mac: [u8; 6],
}

/// Looks each `(NIC, gateway)` up every `every`, sending what it finds (the receiver ignores
/// repeats); asks the kernel to resolve gateways missing from the table. Ends when the
/// receiver is gone.
pub async fn follow(gateways: Vec<(String, IpAddr)>, every: Duration, tx: mpsc::Sender<NextHop>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for (iface, gw) in &gateways {
            let (iface2, gw2) = (iface.clone(), *gw);
            let found = tokio::task::spawn_blocking(move || lookup(gw2, &iface2)).await;
            match found {
                Ok(Ok(Some(mac))) => {
                    let hop = NextHop {
                        iface: iface.clone(),
                        mac,
                    };
                    if tx.send(hop).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => {
                    warn!(iface, %gw, "the gateway's MAC is not in the neighbour table; asking the kernel to resolve it");
                    provoke(*gw);
                }
                Ok(Err(e)) => warn!(iface, "neighbour lookup: {e:#}"),
                Err(_) => return,
            }
        }
    }
}
