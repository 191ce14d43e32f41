//! An edge in namespaces for the egress tests: clients reach the load balancer's `eth0`
//! through a router, the backend sits behind the load balancer's `eth1` (and `eth2`: a second
//! uplink), and the backend answers clients directly (DSR) through the same router.
//!
//! ```text
//! client c0 ── rc router rl0 ── eth0 LB eth1 ── rl1 router rb ── b0 backend
//! 198.51.100.10   (VIP via 203.0.113.2)  eth2 ── rl2    (2001:db8:be::/64, 203.0.113.8/30)
//! ```
//! Everything is named per test and removed by name (namespaces, pins) or PID (the agent) on
//! drop. Only documentation addresses are used.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{Agent, AgentFiles, Netns, lb_bin, sh};

pub const VIP: &str = "192.0.2.10";
pub const BACKEND: &str = "2001:db8:be::1";
/// The router's address on the load balancer's backend-side links (its next hop there).
pub const GW1: &str = "2001:db8:f::1";
pub const GW2: &str = "2001:db8:f:1::1";

pub struct Edge {
    pub client: Netns,
    pub router: Netns,
    pub lb: Netns,
    pub backend: Netns,
    /// `xdp_pass` on the router's ends of the load balancer's links: veth hands XDP_TX and
    /// XDP_REDIRECT frames only to a peer with NAPI.
    _pass: Vec<aya::Ebpf>,
    decap_pins: PathBuf,
}

fn veth(a: &str, a_ns: &Netns, b: &str, b_ns: &Netns) -> Result<()> {
    sh(
        "ip",
        &[
            "link", "add", a, "netns", &a_ns.name, "type", "veth", "peer", "name", b, "netns",
            &b_ns.name,
        ],
    )?;
    a_ns.ip(&["link", "set", a, "up"])?;
    b_ns.ip(&["link", "set", b, "up"])?;
    Ok(())
}

impl Edge {
    /// The edge with one backend-side uplink (`eth1`), or two (`eth1`, `eth2`) with an ECMP
    /// route to the backends over both.
    pub fn new(tag: &str, uplinks: u32) -> Result<Self> {
        crate::require_root();
        let n = |s: &str| format!("lbt-{tag}-{s}");
        let (client, router, lb, backend) = (
            Netns::new(&n("c"))?,
            Netns::new(&n("r"))?,
            Netns::new(&n("l"))?,
            Netns::new(&n("b"))?,
        );
        router.sysctl(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            // DSR: replies from the VIP arrive from the backend, not from where the VIP is
            // routed (the load balancer).
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            // A router whose MAC changes says so (unsolicited neighbour advertisements).
            ("net.ipv6.conf.all.ndisc_notify", "1"),
            ("net.ipv6.conf.default.ndisc_notify", "1"),
        ])?;
        veth("c0", &client, "rc", &router)?;
        veth("eth0", &lb, "rl0", &router)?;
        veth("eth1", &lb, "rl1", &router)?;
        if uplinks == 2 {
            veth("eth2", &lb, "rl2", &router)?;
        }
        veth("b0", &backend, "rb", &router)?;
        // XDP on the path sees the client's packets as they are on the wire; a veth would
        // otherwise hand over TCP checksums still to be filled in (CHECKSUM_PARTIAL).
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &client.name,
                "ethtool",
                "-K",
                "c0",
                "tx",
                "off",
            ],
        )?;
        client.ip(&["addr", "add", "198.51.100.10/24", "dev", "c0"])?;
        client.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        router.ip(&["addr", "add", "198.51.100.1/24", "dev", "rc"])?;
        router.ip(&["addr", "add", "203.0.113.1/30", "dev", "rl0"])?;
        router.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:f::1/64",
            "dev",
            "rl1",
            "nodad",
        ])?;
        router.ip(&["addr", "add", "203.0.113.9/30", "dev", "rb"])?;
        router.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:be::fe/64",
            "dev",
            "rb",
            "nodad",
        ])?;
        router.ip(&["route", "add", "192.0.2.10/32", "via", "203.0.113.2"])?;
        lb.ip(&["addr", "add", "203.0.113.2/30", "dev", "eth0"])?;
        // The VIP's route (health checks are made to the VIP) is the client side's.
        lb.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        // Health checks leave through the kernel: full checksums before the encapsulation.
        sh(
            "ip",
            &[
                "netns", "exec", &lb.name, "ethtool", "-K", "eth0", "tx", "off",
            ],
        )?;
        lb.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:f::2/64",
            "dev",
            "eth1",
            "nodad",
        ])?;
        if uplinks == 2 {
            router.ip(&[
                "-6",
                "addr",
                "add",
                "2001:db8:f:1::1/64",
                "dev",
                "rl2",
                "nodad",
            ])?;
            lb.ip(&[
                "-6",
                "addr",
                "add",
                "2001:db8:f:1::2/64",
                "dev",
                "eth2",
                "nodad",
            ])?;
            lb.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8:be::/64",
                "nexthop",
                "via",
                GW1,
                "dev",
                "eth1",
                "nexthop",
                "via",
                GW2,
                "dev",
                "eth2",
            ])?;
        } else {
            lb.ip(&[
                "-6",
                "route",
                "add",
                "2001:db8:be::/64",
                "via",
                GW1,
                "dev",
                "eth1",
            ])?;
        }
        backend.ip(&["addr", "add", "203.0.113.10/30", "dev", "b0"])?;
        backend.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:be::1/64",
            "dev",
            "b0",
            "nodad",
        ])?;
        backend.ip(&["addr", "add", "192.0.2.10/32", "dev", "lo"])?;
        backend.ip(&["route", "add", "default", "via", "203.0.113.9"])?;
        backend.ip(&["-6", "route", "add", "default", "via", "2001:db8:be::fe"])?;
        backend.sysctl(&[
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.b0.rp_filter", "2"),
        ])?;
        let mut pass = Vec::new();
        for i in 0..=uplinks {
            let nic = format!("rl{i}");
            let p = router
                .run(move || lb_objects::testing::attach_pass(&nic).map_err(|e| e.to_string()))?
                .map_err(anyhow::Error::msg)?;
            pass.push(p);
        }
        let decap_pins = PathBuf::from(format!(
            "/sys/fs/bpf/lbt-{tag}-decap-{}",
            std::process::id()
        ));
        let out = backend.spawn(
            std::process::Command::new(lb_bin())
                .args(["decap", "--iface", "b0", "--address", BACKEND, "--pin-dir"])
                .arg(&decap_pins),
        )?;
        let out = out.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "lb decap failed");
        Ok(Self {
            client,
            router,
            lb,
            backend,
            _pass: pass,
            decap_pins,
        })
    }

    /// The agent's config: every uplink named, no next hop (the kernel's routes), one VIP.
    pub fn config(uplinks: u32, extra: &str) -> String {
        let mut c = String::from(
            "metrics = \"127.0.0.1:9450\"\n\n[dataplane]\ntunnel_source = \"2001:db8:f::2\"\n\
             seed = 7\nring_size = 4099\nmax_vips = 4\nmax_backends = 16\nmax_flows = 10000\n",
        );
        for i in 0..=uplinks {
            c.push_str(&format!("\n[[interface]]\nname = \"eth{i}\"\n"));
        }
        c.push_str(&format!(
            "\n[[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n  [[vip.backend]]\n  address = \"{BACKEND}\"\n"
        ));
        c.push_str(extra);
        c
    }

    /// The agent with `Edge::config(uplinks, extra)`.
    pub fn start_agent(&self, tag: &str, uplinks: u32, extra: &str) -> Result<(AgentFiles, Agent)> {
        let files = AgentFiles::new(tag, &Self::config(uplinks, extra))?;
        let agent = files.start(&self.lb, 0)?;
        Ok((files, agent))
    }

    /// An echo server on the backend at VIP:80 (DSR: it answers from the VIP). Runs until the
    /// test process ends; each connection echoes until its client closes.
    pub fn echo_server(&self) -> Result<()> {
        let l = self
            .backend
            .run(|| TcpListener::bind((VIP, 80)))?
            .context("binding the echo server")?;
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || echo(s));
            }
        });
        Ok(())
    }

    /// A TCP connection from the client to VIP:80 from `sport`, within `timeout`.
    pub fn connect(&self, timeout: Duration) -> Result<TcpStream> {
        let to: SocketAddr = format!("{VIP}:80").parse()?;
        let s = self
            .client
            .run(move || TcpStream::connect_timeout(&to, timeout))?
            .context("connecting to the VIP")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(s)
    }
}

fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Sends `msg` on `s` and checks the echo.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).context("reading the echo")?;
    anyhow::ensure!(got == msg, "echo differs");
    Ok(())
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self
            .backend
            .spawn(
                std::process::Command::new(lb_bin())
                    .args(["decap", "--detach", "--iface", "b0", "--pin-dir"])
                    .arg(&self.decap_pins),
            )
            .and_then(|c| Ok(c.wait_with_output()?));
        let _ = std::fs::remove_dir_all(&self.decap_pins);
    }
}
