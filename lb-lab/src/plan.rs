//! The lab's plan: addresses, ports, ASes, node names, health timing and options.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::{Result, ensure};

pub const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7777;
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10);
/// Links behind the router carry the tunnel's 40 or 48 extra bytes (veth XDP allows up to
/// about 3500 without multi-buffer support).
pub const FABRIC_MTU: u32 = 3000;
pub const SEED: u64 = 20_261_123;
pub const ROUTER_AS: u32 = 64500;
pub const LB_AS: u32 = 64501;

/// Health-check timing for the load balancers' config.
#[derive(Clone, Copy, Debug)]
pub struct HealthTiming {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthTiming {
    /// GLB's: every 2 s, 1 s timeout, 3 to rise or fall.
    fn default() -> Self {
        Self {
            interval_ms: 2000,
            timeout_ms: 1000,
            rise: 3,
            fall: 3,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Namespace prefix: namespaces are `<prefix>-client`, `<prefix>-router`, ...
    pub prefix: String,
    /// Configs, logs, sockets and the PID list.
    pub run_dir: PathBuf,
    /// bpffs directory for every pinned program of the lab.
    pub pin_root: PathBuf,
    pub lb_bin: PathBuf,
    pub echo_bin: PathBuf,
    pub lbs: usize,
    pub backends: usize,
    /// Backends b1..=bN in the agents' config; the others run but join only when a test adds
    /// them.
    pub configured_backends: usize,
    pub health: HealthTiming,
    /// Whether the agents share new flows with each other (the state is always replicated).
    pub flow_sync: bool,
    /// `[sync] flows` as a mode (`all`, `changes`, `off`); when set it overrides `flow_sync`.
    pub flow_mode: Option<String>,
    /// `[dataplane] second_chance_secs` of the agents (None: the default; 0: second chance off).
    pub second_chance_secs: Option<u64>,
    /// MTU of the links behind the router (load balancers, backends).
    pub fabric_mtu: u32,
    /// A route MTU on the router towards the client's networks (path MTU discovery tests):
    /// backends' packets larger than it make the router send ICMP "too big" to the VIP.
    pub client_route_mtu: Option<u32>,
    /// `[sync] refresh_secs` of the agents (None: the default).
    pub sync_refresh_secs: Option<u64>,
    /// Run the agents and `lb decap` with only these capabilities, as systemd's
    /// `CapabilityBoundingSet=` does (names as in the units, e.g. `CAP_BPF`), and with
    /// no_new_privs. None: full root.
    pub capabilities: Option<Vec<String>>,
    /// Serve the lab's pages on the host (`web`): the lab page on this port and load balancer
    /// i's status page on port + i; `Some(0)` takes any free ports. None: no pages.
    pub web: Option<u16>,
    /// `[dataplane] max_flows` of the agents (the connection table's size).
    pub max_flows: u32,
    /// `[dataplane] new_flow_rate` of the agents (0: no gate).
    pub new_flow_rate: u32,
}

impl LabOptions {
    /// A lab's load-balancer count must fit the address plan: [`MAX_LBS`].
    pub fn check(&self) -> Result<()> {
        ensure!(
            (1..=MAX_LBS).contains(&self.lbs),
            "the lab takes 1 to {MAX_LBS} load balancers, not {}",
            self.lbs
        );
        ensure!(
            (1..=MAX_BACKENDS).contains(&self.backends)
                && self.configured_backends <= self.backends,
            "the lab takes 1 to {MAX_BACKENDS} backends, {} configured of {}",
            self.configured_backends,
            self.backends
        );
        Ok(())
    }

    /// A test lab: 2 load balancers, `backends` backends all configured, flow sync on.
    pub fn new(
        prefix: String,
        run_dir: PathBuf,
        pin_root: PathBuf,
        lb_bin: PathBuf,
        echo_bin: PathBuf,
    ) -> Self {
        Self {
            prefix,
            run_dir,
            pin_root,
            lb_bin,
            echo_bin,
            lbs: 2,
            backends: 3,
            configured_backends: 3,
            health: HealthTiming::default(),
            flow_sync: true,
            flow_mode: None,
            second_chance_secs: None,
            fabric_mtu: FABRIC_MTU,
            client_route_mtu: None,
            sync_refresh_secs: None,
            capabilities: None,
            web: None,
            max_flows: 200_000,
            new_flow_rate: 0,
        }
    }
}

/// Load balancers the address plan has room for: lb i's links are 203.0.113.4i/30 (below the
/// backends' from .64) and 2001:db8:f:i::/64; 8 keeps the lab's page readable.
pub const MAX_LBS: usize = 8;
/// Backends: b j's IPv4 link is 203.0.113.(64 + 4j)/30, the last one .252/30.
pub const MAX_BACKENDS: usize = 47;

/// The peer-sync port every lab agent listens on.
pub const SYNC_PORT: u16 = 7946;

/// Load balancer `i`'s address on the sync network (a bridge in the `sw` namespace).
pub fn lb_sync6(i: usize) -> Ipv6Addr {
    v6([0x2001, 0xdb8, 0x5, 0], i as u16)
}

/// Which node: names match the namespaces' suffixes.
pub fn lb_name(i: usize) -> String {
    format!("lb{i}")
}
pub fn backend_name(j: usize) -> String {
    format!("b{j}")
}

/// Router side and far side of load balancer `i`'s link.
pub fn lb_link4(i: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = 4 * i as u8;
    (
        Ipv4Addr::new(203, 0, 113, base + 1),
        Ipv4Addr::new(203, 0, 113, base + 2),
    )
}
pub fn lb_link6(i: usize) -> (Ipv6Addr, Ipv6Addr) {
    let net = [0x2001, 0xdb8, 0xf, i as u16];
    (v6(net, 1), v6(net, 2))
}
pub fn backend_link4(j: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = 64 + 4 * j as u8;
    (
        Ipv4Addr::new(203, 0, 113, base + 1),
        Ipv4Addr::new(203, 0, 113, base + 2),
    )
}
/// Router side and backend `j`'s own (tunnel) address.
pub fn backend_link6(j: usize) -> (Ipv6Addr, Ipv6Addr) {
    let net = [0x2001, 0xdb8, 0xb, j as u16];
    (v6(net, 1), v6(net, 2))
}
fn v6(net: [u16; 4], host: u16) -> Ipv6Addr {
    Ipv6Addr::new(net[0], net[1], net[2], net[3], 0, 0, 0, host)
}

/// The lab's services: (address, port, GUE). Both encapsulations and both families are used,
/// so the backends' decapsulation sees all four kinds.
pub fn services() -> [(IpAddr, u16, bool); 4] {
    [
        (IpAddr::V4(VIP4), HTTP_PORT, false),
        (IpAddr::V4(VIP4), ECHO_PORT, true),
        (IpAddr::V6(VIP6), HTTP_PORT, true),
        (IpAddr::V6(VIP6), ECHO_PORT, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(lbs: usize) -> LabOptions {
        let mut o = LabOptions::new(
            "t".into(),
            PathBuf::new(),
            PathBuf::new(),
            PathBuf::new(),
            PathBuf::new(),
        );
        o.lbs = lbs;
        o
    }

    #[test]
    fn the_load_balancer_count_fits_the_address_plan() {
        for n in 1..=MAX_LBS {
            opts(n).check().unwrap();
        }
        for n in [0, MAX_LBS + 1] {
            let e = opts(n).check().unwrap_err().to_string();
            assert!(e.contains("1 to 8 load balancers"), "{e}");
        }
        // Every load balancer's links and sync address are distinct, and below the backends'.
        let mut seen = std::collections::BTreeSet::new();
        for i in 1..=MAX_LBS {
            let (r4, l4) = lb_link4(i);
            assert!(l4 < backend_link4(1).0);
            assert!(seen.insert(r4.to_string()) && seen.insert(l4.to_string()));
            assert!(seen.insert(lb_link6(i).1.to_string()));
            assert!(seen.insert(lb_sync6(i).to_string()));
        }
        assert_eq!(backend_link4(MAX_BACKENDS).1.octets()[3], 254);
    }
}
