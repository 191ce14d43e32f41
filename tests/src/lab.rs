//! The anycast lab: a client, a router running BIRD with ECMP, load balancers each running
//! `lb agent` and BIRD, and backends each running `lb decap`, nginx and `lb-echo` with the
//! VIPs on `lo`. `cargo xtask lab` builds it for people; the end-to-end tests build one each.
//!
//! ```text
//!  client ─── router ─┬─ lb1   (BGP: router AS 64500, load balancers AS 64501)
//!                     ├─ lb2
//!                     ├─ b1    (backends: replies go straight back through the router)
//!                     ├─ b2
//!                     └─ b3
//! ```
//!
//! Everything started is recorded in `<run_dir>/pids` and every namespace is named
//! `<prefix>-<node>`, so `down` (also from another process) removes exactly what `up` made.
//! Documentation addresses only.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub use crate::netns::in_ns;
use crate::netns::sh;

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
const ROUTER_AS: u32 = 64500;
const LB_AS: u32 = 64501;

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
    /// MTU of the links behind the router (load balancers, backends).
    pub fabric_mtu: u32,
    /// A route MTU on the router towards the client's networks (path MTU discovery tests):
    /// backends' packets larger than it make the router send ICMP "too big" to the VIP.
    pub client_route_mtu: Option<u32>,
    /// `[sync] refresh_secs` of the agents (None: the default).
    pub sync_refresh_secs: Option<u64>,
}

impl LabOptions {
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
            fabric_mtu: FABRIC_MTU,
            client_route_mtu: None,
            sync_refresh_secs: None,
        }
    }
}

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

pub struct Lab {
    pub opts: LabOptions,
    /// Tear down on drop (tests); `cargo xtask lab` keeps its lab running.
    pub owned: bool,
}

/// A command whose child runs in namespace `ns` (network only: bpffs pins stay visible),
/// in its own session so it outlives the command that started it.
fn command_in(ns: &str, program: &Path) -> Result<Command> {
    let file = File::open(format!("/run/netns/{ns}")).with_context(|| format!("netns {ns}"))?;
    let mut cmd = Command::new(program);
    // SAFETY: setns and setsid are async-signal-safe; the fd stays open until spawn returns
    // because `file` moves into the closure.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::setsid();
            Ok(())
        });
    }
    Ok(cmd)
}

pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; a zombie is gone for our purpose.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn reap(pid: u32) {
    // Our own children (tests) would stay zombies; others are not ours to wait for.
    // SAFETY: waitpid with WNOHANG on a specific PID has no other effect.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
}

/// Sends `sig`, then waits up to `grace` before SIGKILL.
fn stop_pid(pid: u32, sig: i32, grace: Duration) {
    // SAFETY: signals one recorded PID.
    unsafe { libc::kill(pid as i32, sig) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap(pid);
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    for _ in 0..100 {
        reap(pid);
        if !alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match ok() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!(": {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "timed out after {} s waiting for {what}{last}",
        timeout.as_secs()
    )
}

/// What `down` removed, and anything it could not.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub processes: usize,
    pub namespaces: usize,
    pub leftovers: Vec<String>,
}

impl Lab {
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.opts.prefix)
    }

    fn dir(&self, node: &str) -> PathBuf {
        self.opts.run_dir.join(node)
    }

    pub fn nodes(&self) -> Vec<String> {
        let mut n = vec!["client".to_string(), "router".to_string(), "sw".to_string()];
        n.extend((1..=self.opts.lbs).map(lb_name));
        n.extend((1..=self.opts.backends).map(backend_name));
        n
    }

    pub fn socket(&self, lb: usize) -> PathBuf {
        self.dir(&lb_name(lb)).join("lb.sock")
    }

    pub fn bird_socket(&self, node: &str) -> PathBuf {
        self.dir(node).join("bird.ctl")
    }

    pub fn exists(opts: &LabOptions) -> bool {
        Path::new("/run/netns")
            .join(format!("{}-router", opts.prefix))
            .exists()
    }

    fn ip(&self, node: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(node);
        let mut a = vec!["-n", ns.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    fn sysctl(&self, node: &str, settings: &[(&str, &str)]) -> Result<()> {
        crate::netns::sysctl(&self.ns(node), settings)
    }

    fn record(&self, kind: &str, node: &str, pid: u32) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.opts.run_dir.join("pids"))?;
        writeln!(f, "{kind} {node} {pid}")?;
        Ok(())
    }

    /// The recorded processes: (kind, node, pid).
    pub fn processes(&self) -> Vec<(String, String, u32)> {
        let text = std::fs::read_to_string(self.opts.run_dir.join("pids")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                Some((
                    p.next()?.to_string(),
                    p.next()?.to_string(),
                    p.next()?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Builds and starts everything; `progress` hears about each step.
    pub fn up(opts: LabOptions, progress: &mut dyn FnMut(&str)) -> Result<Lab> {
        ensure!(
            !Self::exists(&opts),
            "a lab with prefix {} is already up (`cargo xtask lab down` removes it)",
            opts.prefix
        );
        let lab = Lab { opts, owned: true };
        // From here on, a failure tears down what was built (Drop).
        lab.build(progress)?;
        Ok(lab)
    }

    fn build(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let o = &self.opts;
        let _ = std::fs::remove_dir_all(&o.run_dir);
        for n in self.nodes() {
            std::fs::create_dir_all(self.dir(&n))?;
        }
        lb_userspace::dataplane::ensure_bpffs(&o.pin_root)?;
        std::fs::create_dir_all(&o.pin_root)
            .with_context(|| format!("creating {}", o.pin_root.display()))?;

        progress(&format!(
            "namespaces {}-{{{}}}",
            o.prefix,
            self.nodes().join(",")
        ));
        for n in self.nodes() {
            let ns = self.ns(&n);
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
            sh("ip", &["netns", "add", &ns])?;
            self.ip(&n, &["link", "set", "lo", "up"])?;
        }
        self.wire()?;
        self.start_backends(progress)?;
        self.start_bird(progress)?;
        self.start_agents(progress)?;
        progress(
            "waiting for BGP: the router must have an ECMP route to each VIP via every load balancer",
        );
        for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
            wait_for(
                &format!("ECMP route to {vip} via {} load balancers", o.lbs),
                Duration::from_secs(30),
                || Ok(self.router_paths(vip)?.len() == o.lbs),
            )?;
        }
        progress("waiting for every backend's health check to pass on every load balancer");
        for i in 1..=o.lbs {
            let socket = self.socket(i);
            let lb_bin = o.lb_bin.clone();
            wait_for(
                &format!("healthy backends on lb{i}"),
                Duration::from_secs(30),
                || {
                    let v = lb_json(&lb_bin, &socket, &["backend", "list"])?;
                    let all = v.as_array().context("backend list")?;
                    Ok(!all.is_empty() && all.iter().all(|b| b["health"] == "up"))
                },
            )?;
        }
        Ok(())
    }

    /// Links, addresses, routes and sysctls.
    fn wire(&self) -> Result<()> {
        let o = &self.opts;
        let veth = |a: &str, a_if: &str, b: &str, b_if: &str, mtu: u32| -> Result<()> {
            let (na, nb) = (self.ns(a), self.ns(b));
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    a_if,
                    "mtu",
                    &mtu.to_string(),
                    "netns",
                    &na,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    b_if,
                    "mtu",
                    &mtu.to_string(),
                    "netns",
                    &nb,
                ],
            )?;
            self.ip(a, &["link", "set", a_if, "up"])?;
            self.ip(b, &["link", "set", b_if, "up"])?;
            Ok(())
        };
        let addr = |node: &str, a: String, dev: &str| -> Result<()> {
            if a.contains(':') {
                self.ip(node, &["-6", "addr", "add", &a, "dev", dev, "nodad"])?;
            } else {
                self.ip(node, &["addr", "add", &a, "dev", dev])?;
            }
            Ok(())
        };
        // Router: forwards, hashes L4 for ECMP, and must not drop the backends' replies (their
        // source is the VIP, which it routes towards the load balancers).
        self.sysctl(
            "router",
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.fib_multipath_hash_policy", "1"),
                ("net.ipv6.fib_multipath_hash_policy", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ],
        )?;
        veth("client", "eth0", "router", "c0", 1500)?;
        addr("client", format!("{CLIENT4}/24"), "eth0")?;
        addr("client", format!("{CLIENT6}/64"), "eth0")?;
        addr("router", "198.51.100.1/24".into(), "c0")?;
        addr("router", "2001:db8:c::1/64".into(), "c0")?;
        self.ip(
            "client",
            &["route", "add", "default", "via", "198.51.100.1"],
        )?;
        self.ip(
            "client",
            &["-6", "route", "add", "default", "via", "2001:db8:c::1"],
        )?;
        if let Some(mtu) = o.client_route_mtu {
            let mtu = mtu.to_string();
            self.ip(
                "router",
                &[
                    "route",
                    "replace",
                    "198.51.100.0/24",
                    "dev",
                    "c0",
                    "mtu",
                    &mtu,
                ],
            )?;
            self.ip(
                "router",
                &[
                    "-6",
                    "route",
                    "replace",
                    "2001:db8:c::/64",
                    "dev",
                    "c0",
                    // The kernel's own route has metric 256: replace that one.
                    "metric",
                    "256",
                    "mtu",
                    &mtu,
                ],
            )?;
        }
        // XDP on the path sees the client's packets as they are on the wire; a veth would
        // otherwise hand over TCP checksums still to be filled in (CHECKSUM_PARTIAL).
        ethtool_tx_off(&self.ns("client"), "eth0")?;

        for i in 1..=o.lbs {
            let lb = lb_name(i);
            veth("router", &lb, &lb, "eth0", o.fabric_mtu)?;
            let (r4, l4) = lb_link4(i);
            let (r6, l6) = lb_link6(i);
            addr("router", format!("{r4}/30"), &lb)?;
            addr("router", format!("{r6}/64"), &lb)?;
            addr(&lb, format!("{l4}/30"), "eth0")?;
            addr(&lb, format!("{l6}/64"), "eth0")?;
            self.ip(&lb, &["route", "add", "default", "via", &r4.to_string()])?;
            self.ip(
                &lb,
                &["-6", "route", "add", "default", "via", &r6.to_string()],
            )?;
            // Health checks leave this NIC through the kernel: full checksums before the
            // encapsulation, as for the client.
            ethtool_tx_off(&self.ns(&lb), "eth0")?;
            // veth hands XDP_TX frames only to a peer running XDP.
            let pin = o.pin_root.join(format!("router-{lb}-pass"));
            let iface = lb.clone();
            in_ns(&self.ns("router"), move || {
                lb_userspace::attach_pass_pinned(&iface, &pin).map_err(|e| format!("{e:#}"))
            })?
            .map_err(anyhow::Error::msg)?;
        }
        // The sync network: each load balancer's sync0 on one bridge, apart from the fabric,
        // so a test can cut a load balancer off from its peers and nothing else.
        self.ip("sw", &["link", "add", "br0", "type", "bridge"])?;
        self.ip("sw", &["link", "set", "br0", "up"])?;
        for i in 1..=o.lbs {
            let lb = lb_name(i);
            veth("sw", &lb, &lb, "sync0", 1500)?;
            self.ip("sw", &["link", "set", &lb, "master", "br0"])?;
            addr(&lb, format!("{}/64", lb_sync6(i)), "sync0")?;
        }
        for j in 1..=o.backends {
            let b = backend_name(j);
            veth("router", &b, &b, "eth0", o.fabric_mtu)?;
            let (r4, b4) = backend_link4(j);
            let (r6, b6) = backend_link6(j);
            addr("router", format!("{r4}/30"), &b)?;
            addr("router", format!("{r6}/64"), &b)?;
            addr(&b, format!("{b4}/30"), "eth0")?;
            addr(&b, format!("{b6}/64"), "eth0")?;
            self.ip(&b, &["route", "add", "default", "via", &r4.to_string()])?;
            self.ip(
                &b,
                &["-6", "route", "add", "default", "via", &r6.to_string()],
            )?;
            // Direct server return: the VIPs on lo, and no reverse-path filter (the inner
            // source is the client, reached through the default route, not the tunnel).
            addr(&b, format!("{VIP4}/32"), "lo")?;
            addr(&b, format!("{VIP6}/128"), "lo")?;
            self.sysctl(
                &b,
                &[
                    ("net.ipv4.conf.all.rp_filter", "0"),
                    ("net.ipv4.conf.default.rp_filter", "0"),
                    ("net.ipv4.conf.eth0.rp_filter", "0"),
                ],
            )?;
        }
        Ok(())
    }

    fn start_backends(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let o = &self.opts;
        for j in 1..=o.backends {
            let b = backend_name(j);
            let (_, addr6) = backend_link6(j);
            let pin = o.pin_root.join(format!("{b}-decap"));
            let out = command_in(&self.ns(&b), &o.lb_bin)?
                .args(["decap", "--iface", "eth0", "--address", &addr6.to_string()])
                .arg("--pin-dir")
                .arg(&pin)
                .output()?;
            ensure!(
                out.status.success(),
                "lb decap on {b}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            self.start_server(j, Server::Http)?;
            self.start_server(j, Server::Echo)?;
        }
        progress(&format!(
            "{} backends: lb decap on eth0, VIPs {VIP4} and {VIP6} on lo, nginx on :{HTTP_PORT}, lb-echo on :{ECHO_PORT}",
            o.backends
        ));
        Ok(())
    }

    /// Starts backend `j`'s HTTP (nginx) or echo server.
    pub fn start_server(&self, j: usize, which: Server) -> Result<()> {
        let b = backend_name(j);
        let dir = self.dir(&b);
        match which {
            Server::Http => {
                let conf = dir.join("nginx.conf");
                let pidfile = dir.join("nginx.pid");
                let d = dir.display();
                std::fs::write(
                    &conf,
                    format!(
                        "worker_processes 1;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/nginx.log warn;\n\
                         events {{ worker_connections 4096; }}\n\
                         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  \
                         fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  \
                         keepalive_timeout 5;\n  \
                         server {{\n    listen {VIP4}:{HTTP_PORT};\n    listen [{VIP6}]:{HTTP_PORT};\n    \
                         location / {{ default_type text/plain; return 200 \"{b}\\n\"; }}\n  }}\n}}\n"
                    ),
                )?;
                let _ = std::fs::remove_file(&pidfile);
                let out = command_in(&self.ns(&b), Path::new("/usr/sbin/nginx"))?
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf)
                    .output()
                    .context("starting nginx (apt-get install nginx-light; `cargo xtask setup`)")?;
                ensure!(
                    out.status.success(),
                    "nginx on {b}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let mut pid = 0;
                wait_for("nginx's pid file", Duration::from_secs(5), || {
                    pid = read_pid(&pidfile).unwrap_or(0);
                    Ok(pid != 0)
                })?;
                self.record("nginx", &b, pid)?;
            }
            Server::Echo => {
                let log = File::create(dir.join("echo.log"))?;
                let child = command_in(&self.ns(&b), &self.opts.echo_bin)?
                    .args([b.as_str(), &ECHO_PORT.to_string()])
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .context("starting lb-echo")?;
                self.record("echo", &b, child.id())?;
            }
        }
        Ok(())
    }

    /// Stops backend `j`'s HTTP or echo server (the backend itself stays up).
    pub fn stop_server(&self, j: usize, which: Server) -> Result<()> {
        let kind = match which {
            Server::Http => "nginx",
            Server::Echo => "echo",
        };
        let b = backend_name(j);
        let mut stopped = 0;
        for (k, node, pid) in self.processes() {
            if k == kind && node == b && alive(pid) {
                stop_pid(pid, libc::SIGTERM, Duration::from_secs(5));
                stopped += 1;
            }
        }
        ensure!(stopped > 0, "no running {kind} on {b}");
        Ok(())
    }

    fn start_bird(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let o = &self.opts;
        // Fast timers: the lab should converge in seconds, not BGP's default minutes.
        let timers = "connect delay time 1; connect retry time 2; error wait time 1, 4; hold time 9; keepalive time 3;";
        let mut router = format!(
            "router id 203.0.113.1;\nlog \"{}\" all;\nprotocol device {{ scan time 5; }}\n\
             # ECMP: equal routes from the load balancers (one AS) become one multipath route.\n\
             protocol kernel kernel4 {{ ipv4 {{ export all; }}; merge paths on; }}\n\
             protocol kernel kernel6 {{ ipv6 {{ export all; }}; merge paths on; }}\n",
            self.dir("router").join("bird.log").display()
        );
        for i in 1..=o.lbs {
            let ((r4, l4), (r6, l6)) = (lb_link4(i), lb_link6(i));
            let _ = write!(
                router,
                "protocol bgp lb{i}_v4 {{ local {r4} as {ROUTER_AS}; neighbor {l4} as {LB_AS}; {timers} \
                 ipv4 {{ import all; export none; }}; }}\n\
                 protocol bgp lb{i}_v6 {{ local {r6} as {ROUTER_AS}; neighbor {l6} as {LB_AS}; {timers} \
                 ipv6 {{ import all; export none; }}; }}\n"
            );
        }
        self.start_bird_in("router", &router)?;
        for i in 1..=o.lbs {
            let lb = lb_name(i);
            let ((r4, l4), (r6, l6)) = (lb_link4(i), lb_link6(i));
            let routes = self.dir(&lb).join("vips.conf");
            lb_userspace::bgp::write_initial_routes(&routes)?;
            let conf = format!(
                "router id {l4};\nlog \"{}\" all;\nprotocol device {{ scan time 5; }}\n\
                 # The agent owns this file: protocols lb_vips4 and lb_vips6 hold the VIPs it announces.\n\
                 include \"{}\";\n\
                 protocol bgp router_v4 {{ local {l4} as {LB_AS}; neighbor {r4} as {ROUTER_AS}; {timers} \
                 ipv4 {{ import none; export where proto = \"lb_vips4\"; }}; }}\n\
                 protocol bgp router_v6 {{ local {l6} as {LB_AS}; neighbor {r6} as {ROUTER_AS}; {timers} \
                 ipv6 {{ import none; export where proto = \"lb_vips6\"; }}; }}\n",
                self.dir(&lb).join("bird.log").display(),
                routes.display()
            );
            self.start_bird_in(&lb, &conf)?;
        }
        progress(&format!(
            "BIRD: router AS {ROUTER_AS} (kernel protocols with merge paths, L4 multipath hash), {} load balancers AS {LB_AS}",
            o.lbs
        ));
        Ok(())
    }

    fn start_bird_in(&self, node: &str, conf: &str) -> Result<()> {
        let dir = self.dir(node);
        let path = dir.join("bird.conf");
        std::fs::write(&path, conf)?;
        let pidfile = dir.join("bird.pid");
        let out = command_in(&self.ns(node), Path::new("/usr/sbin/bird"))?
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(self.bird_socket(node))
            .arg("-P")
            .arg(&pidfile)
            .output()
            .context("starting bird (apt-get install bird2; `cargo xtask setup`)")?;
        ensure!(
            out.status.success(),
            "bird on {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pid = 0;
        wait_for("bird's pid file", Duration::from_secs(5), || {
            pid = read_pid(&pidfile).unwrap_or(0);
            Ok(pid != 0)
        })?;
        self.record("bird", node, pid)?;
        Ok(())
    }

    pub fn agent_config(&self, i: usize) -> String {
        let o = &self.opts;
        let lb = lb_name(i);
        let dir = self.dir(&lb);
        let (r4, _) = lb_link4(i);
        let (_, l6) = lb_link6(i);
        let h = o.health;
        let mut c = format!(
            "[agent]\napi_socket = \"{}\"\npin_dir = \"{}\"\nmetrics = \"127.0.0.1:9450\"\n\n\
             [dataplane]\ntunnel_source = \"{l6}\"\nseed = {SEED}\nmax_flows = 200000\n\
             tcp_closing_timeout_secs = 10\n\n\
             [[interface]]\nname = \"eth0\"\ngateway = \"{r4}\"\n\n\
             [health]\ninterval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}\n\n\
             [bgp]\nbird_socket = \"{}\"\nroutes_file = \"{}\"\n\n\
             [sync]\nnode = \"{lb}\"\nlisten = \"[{}]:{SYNC_PORT}\"\nkey_file = \"{}\"\n\
             state_file = \"{}\"\nflows = {}\n",
            self.socket(i).display(),
            o.pin_root.join(&lb).display(),
            h.interval_ms,
            h.timeout_ms,
            h.rise,
            h.fall,
            self.bird_socket(&lb).display(),
            dir.join("vips.conf").display(),
            lb_sync6(i),
            self.key_file().display(),
            dir.join("sync-state.json").display(),
            o.flow_sync,
        );
        if let Some(r) = o.sync_refresh_secs {
            let _ = writeln!(c, "refresh_secs = {r}");
        }
        for k in (1..=o.lbs).filter(|&k| k != i) {
            let _ = write!(
                c,
                "[[sync.peer]]\nname = \"{}\"\naddress = \"[{}]:{SYNC_PORT}\"\n",
                lb_name(k),
                lb_sync6(k)
            );
        }
        for (addr, port, gue) in services() {
            let _ = write!(
                c,
                "\n[[vip]]\naddress = \"{addr}\"\nport = {port}\nprotocol = \"tcp\"\ngue = {gue}\n"
            );
            if port == HTTP_PORT {
                c.push_str("[vip.health]\nkind = \"http\"\nhttp_path = \"/\"\n");
            }
            for j in 1..=o.configured_backends {
                let _ = write!(c, "[[vip.backend]]\naddress = \"{}\"\n", backend_link6(j).1);
            }
        }
        c
    }

    /// The fleet key every lab agent shares.
    pub fn key_file(&self) -> PathBuf {
        self.opts.run_dir.join("fleet.key")
    }

    /// Cuts load balancer `i` off from its peers, or reconnects it: the switch's port goes
    /// down, so the load balancer sees its sync link lose carrier (its addresses stay, as
    /// with a pulled cable).
    pub fn set_sync_link(&self, i: usize, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        self.ip("sw", &["link", "set", &lb_name(i), state])?;
        Ok(())
    }

    fn start_agents(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        write_fleet_key(&self.key_file())?;
        for i in 1..=self.opts.lbs {
            self.start_agent(i)?;
        }
        progress(&format!(
            "{} load balancers: lb agent on eth0 (XDP), health checks through the tunnel, VIPs announced through BIRD",
            self.opts.lbs
        ));
        Ok(())
    }

    pub fn start_agent(&self, i: usize) -> Result<()> {
        let lb = lb_name(i);
        let dir = self.dir(&lb);
        let config = dir.join("lb.toml");
        std::fs::write(&config, self.agent_config(i))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let child = command_in(&self.ns(&lb), &self.opts.lb_bin)?
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting lb agent")?;
        let pid = child.id();
        self.record("agent", &lb, pid)?;
        let socket = self.socket(i);
        let bin = self.opts.lb_bin.clone();
        wait_for(
            &format!("the agent on {lb}"),
            Duration::from_secs(20),
            || {
                ensure!(
                    alive(pid),
                    "the agent on {lb} exited:\n{}",
                    self.agent_log(i)
                );
                Ok(lb_cmd(&bin, &socket, &["status"]).status.success())
            },
        )
    }

    /// SIGTERM to load balancer `i`'s agent; waits for it to exit.
    pub fn stop_agent(&self, i: usize) -> Result<()> {
        let lb = lb_name(i);
        let mut n = 0;
        for (k, node, pid) in self.processes() {
            if k == "agent" && node == lb && alive(pid) {
                stop_pid(pid, libc::SIGTERM, Duration::from_secs(10));
                n += 1;
            }
        }
        ensure!(n > 0, "no agent running on {lb}");
        Ok(())
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir(&lb_name(i)).join("agent.log")).unwrap_or_default()
    }

    /// `lb ARGS` against load balancer `i`'s agent.
    pub fn lb(&self, i: usize, args: &[&str]) -> Output {
        lb_cmd(&self.opts.lb_bin, &self.socket(i), args)
    }

    pub fn lb_json(&self, i: usize, args: &[&str]) -> Result<serde_json::Value> {
        lb_json(&self.opts.lb_bin, &self.socket(i), args)
    }

    /// The router's next hops for `vip` (the load balancers' addresses it spreads over).
    pub fn router_paths(&self, vip: IpAddr) -> Result<Vec<IpAddr>> {
        let fam = if vip.is_ipv4() { "-4" } else { "-6" };
        let out = self.ip("router", &[fam, "-j", "route", "show", &vip.to_string()])?;
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
        let mut hops = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(gw) = r["gateway"].as_str() {
                hops.extend(gw.parse::<IpAddr>().ok());
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                hops.extend(
                    nh["gateway"]
                        .as_str()
                        .and_then(|g| g.parse::<IpAddr>().ok()),
                );
            }
        }
        Ok(hops)
    }

    /// Which load balancer (1-based) owns a router next hop.
    pub fn lb_of_hop(&self, hop: IpAddr) -> Option<usize> {
        (1..=self.opts.lbs)
            .find(|&i| IpAddr::V4(lb_link4(i).1) == hop || IpAddr::V6(lb_link6(i).1) == hop)
    }

    /// Stops every recorded process, removes the pins, the namespaces and the run directory.
    pub fn down(&self) -> Cleanup {
        let mut c = Cleanup::default();
        let procs = self.processes();
        // Agents first: they withdraw their VIPs from BIRD while it still runs.
        for kind in ["agent", "echo", "nginx", "bird"] {
            for (k, node, pid) in &procs {
                if k == kind && alive(*pid) {
                    let grace = if kind == "agent" { 10 } else { 5 };
                    stop_pid(*pid, libc::SIGTERM, Duration::from_secs(grace));
                    c.processes += 1;
                }
                if k == kind && alive(*pid) {
                    c.leftovers.push(format!("{kind} on {node} (pid {pid})"));
                }
            }
        }
        // Unpinning the links detaches the programs; the maps go with their last reference.
        if self.opts.pin_root.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.opts.pin_root)
        {
            c.leftovers
                .push(format!("pins at {}: {e}", self.opts.pin_root.display()));
        }
        for n in self.nodes() {
            let ns = self.ns(&n);
            if Path::new("/run/netns").join(&ns).exists() {
                match sh("ip", &["netns", "del", &ns]) {
                    Ok(_) => c.namespaces += 1,
                    Err(e) => c.leftovers.push(format!("namespace {ns}: {e:#}")),
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.opts.run_dir);
        c
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.owned {
            let c = self.down();
            if !c.leftovers.is_empty() {
                eprintln!("lab cleanup left: {:?}", c.leftovers);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Http,
    Echo,
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn ethtool_tx_off(ns: &str, iface: &str) -> Result<()> {
    sh(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", iface, "tx", "off"],
    )?;
    Ok(())
}

pub fn lb_cmd(bin: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running lb")
}

pub fn lb_json(bin: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = lb_cmd(bin, socket, &a);
    ensure!(
        out.status.success(),
        "lb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One HTTP/1.0 GET over a fresh connection (from the calling thread's namespace); returns
/// the body, which names the backend.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let host = match addr.ip() {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    write!(s, "GET / HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).context("reading the answer")?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header in {resp:?}"))?;
    ensure!(head.starts_with("HTTP/1.1 200"), "answer: {head}");
    Ok(body.trim().to_string())
}

/// Writes a fresh random fleet key (hex, mode 0600) for peer sync to `path`.
pub fn write_fleet_key(path: &std::path::Path) -> Result<()> {
    let key: String = lb_userspace::sync::wire::nonce()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the fleet key {}", path.display()))?;
    writeln!(f, "{key}")?;
    Ok(())
}
