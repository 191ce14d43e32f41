//! Next hops from the kernel: for every backend address, the route the kernel has to it
//! (every ECMP path) and each path's neighbour MAC, read over rtnetlink and followed through
//! its route, neighbour and link events (no polling). The agent turns what `follow` reports
//! into the dataplane's egress cache (`agent::egress`).

pub mod netlink;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

pub use netlink::{Hop, Netlink};

/// One path to a backend: its NIC, the neighbour it goes through, and that neighbour's MAC
/// (None: not resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub ifindex: u32,
    pub neighbour: Ipv6Addr,
    pub mac: Option<[u8; 6]>,
}

/// Every backend address's paths (empty: no route), as the kernel has them now.
pub type Routes = BTreeMap<Ipv6Addr, Vec<Path>>;

/// Reads the route and neighbours of each of `addrs`.
pub fn resolve(nl: &mut Netlink, addrs: &BTreeSet<Ipv6Addr>) -> Result<Routes> {
    let neigh = nl.neighbours()?;
    let mut out = Routes::new();
    for &addr in addrs {
        let hops = nl.route_hops(addr).unwrap_or_else(|e| {
            warn!(%addr, "route lookup: {e:#}");
            Vec::new()
        });
        let paths = hops
            .into_iter()
            .map(|h| Path {
                ifindex: h.ifindex,
                neighbour: h.neighbour,
                mac: neigh.usable.get(&(h.ifindex, h.neighbour)).copied(),
            })
            .collect();
        out.insert(addr, paths);
    }
    Ok(out)
}

/// Asks the kernel to resolve a neighbour: one empty datagram to its discard port (9), out of
/// the path's NIC for a link-local neighbour. The kernel's answer arrives as a neighbour event.
pub fn provoke(path: &Path) {
    let scope = if path.neighbour.segments()[0] & 0xffc0 == 0xfe80 {
        path.ifindex
    } else {
        0
    };
    if let Ok(s) = UdpSocket::bind("[::]:0") {
        let _ = s.send_to(&[], SocketAddrV6::new(path.neighbour, 9, 0, scope));
    }
}

/// Resolves `addrs` once, provoking unresolved neighbours and waiting up to `wait` for them
/// (the agent's start, before the first packets).
pub fn resolve_now(addrs: &BTreeSet<Ipv6Addr>, wait: Duration) -> Result<Routes> {
    let mut nl = Netlink::requests()?;
    let start = Instant::now();
    let mut provoked = false;
    loop {
        let routes = resolve(&mut nl, addrs)?;
        let missing: Vec<&Path> = unresolved(&routes).collect();
        if missing.is_empty() || start.elapsed() >= wait {
            return Ok(routes);
        }
        if !provoked {
            missing.iter().for_each(|p| provoke(p));
            provoked = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unresolved(routes: &Routes) -> impl Iterator<Item = &Path> {
    routes.values().flatten().filter(|p| p.mac.is_none())
}

/// Follows the kernel's routes and neighbours for the backend addresses in `addrs` on a thread
/// of its own, sending every changed `Routes` to `tx`: a pass runs at start, when `addrs`
/// changes, and 10 ms after any IPv6 route, neighbour or link event (the burst that one change
/// makes is read as one). Unresolved neighbours are provoked at most once a second. Ends when
/// either channel's other side is gone.
pub fn follow(
    mut addrs: watch::Receiver<BTreeSet<Ipv6Addr>>,
    tx: mpsc::Sender<Routes>,
) -> Result<()> {
    // Subscribed before the first read, so no change falls between the two.
    let mut events = Netlink::events()?;
    let mut nl = Netlink::requests()?;
    std::thread::Builder::new()
        .name("lb-routes".into())
        .spawn(move || {
            let mut last: Option<Routes> = None;
            let mut provoked: HashMap<(u32, Ipv6Addr), Instant> = HashMap::new();
            loop {
                let want = addrs.borrow_and_update().clone();
                match resolve(&mut nl, &want) {
                    Ok(routes) => {
                        for p in unresolved(&routes) {
                            let key = (p.ifindex, p.neighbour);
                            if provoked
                                .get(&key)
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                            {
                                debug!(neighbour = %p.neighbour, "resolving a next hop");
                                provoke(p);
                                provoked.insert(key, Instant::now());
                            }
                        }
                        if last.as_ref() != Some(&routes) {
                            if tx.blocking_send(routes.clone()).is_err() {
                                return;
                            }
                            last = Some(routes);
                        }
                    }
                    Err(e) => warn!("reading routes and neighbours: {e:#}"),
                }
                let retry_at = Instant::now() + Duration::from_secs(1);
                let pending = last
                    .as_ref()
                    .is_some_and(|r| unresolved(r).next().is_some());
                loop {
                    match events.wait_events(100) {
                        Ok(true) => {
                            std::thread::sleep(Duration::from_millis(10));
                            let _ = events.wait_events(0);
                            break;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            warn!("netlink events: {e:#}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                    match addrs.has_changed() {
                        Ok(true) => break,
                        Ok(false) => {}
                        Err(_) => return,
                    }
                    if tx.is_closed() {
                        return;
                    }
                    if pending && Instant::now() >= retry_at {
                        break;
                    }
                }
            }
        })?;
    Ok(())
}
