//! The lab itself: its namespaces, links and addresses; building it up and tearing it down.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::cli::lb_json;
use crate::netns::{in_ns, sh};
use crate::plan::*;
use crate::process::*;

pub struct Lab {
    pub opts: LabOptions,
    /// Tear down on drop (tests); `cargo xtask lab` keeps its lab running.
    pub owned: bool,
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

    pub(crate) fn dir(&self, node: &str) -> PathBuf {
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

    /// How many load balancers the running lab with `prefix` has: its highest `<prefix>-lbN`
    /// namespace (0 when none is up), so `view`, `shift` and `down` see every one of them.
    pub fn running_lbs(prefix: &str) -> usize {
        let head = format!("{prefix}-lb");
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_prefix(&head)?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    pub fn exists(opts: &LabOptions) -> bool {
        Path::new("/run/netns")
            .join(format!("{}-router", opts.prefix))
            .exists()
    }

    pub(crate) fn ip(&self, node: &str, args: &[&str]) -> Result<String> {
        let ns = self.ns(node);
        let mut a = vec!["-n", ns.as_str()];
        a.extend_from_slice(args);
        sh("ip", &a)
    }

    pub(crate) fn sysctl(&self, node: &str, settings: &[(&str, &str)]) -> Result<()> {
        crate::netns::sysctl(&self.ns(node), settings)
    }

    pub(crate) fn record(&self, kind: &str, node: &str, pid: u32) -> Result<()> {
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
        opts.check()?;
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
        if let Some(base) = o.web {
            self.start_web(base, progress)?;
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
            self.accept_xdp_tx(&lb)?;
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
            // A backend hands a packet on to the previous backend (second chance) with XDP_TX
            // back to the router.
            self.accept_xdp_tx(&b)?;
        }
        Ok(())
    }
}

impl Lab {
    /// Lets the router's end of `node`'s link take the XDP_TX frames `node` sends back: veth
    /// hands them only to a peer with NAPI, which a pass-through XDP program turns on. (GRO
    /// on the router's end turns NAPI on too, but on this kernel such frames then waited up to
    /// a second in the lab, so requests timed out.)
    fn accept_xdp_tx(&self, node: &str) -> Result<()> {
        let pin = self.opts.pin_root.join(format!("router-{node}-pass"));
        let iface = node.to_string();
        in_ns(&self.ns("router"), move || {
            lb_objects::testing::attach_pass_pinned(&iface, &pin).map_err(|e| format!("{e:#}"))
        })?
        .map_err(anyhow::Error::msg)
    }

    /// Stops every recorded process, removes the pins, the namespaces and the run directory.
    pub fn down(&self) -> Cleanup {
        let mut c = Cleanup::default();
        let procs = self.processes();
        // Agents first: they withdraw their VIPs from BIRD while it still runs.
        for kind in ["agent", "echo", "nginx", "bird", "web"] {
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

fn ethtool_tx_off(ns: &str, iface: &str) -> Result<()> {
    sh(
        "ip",
        &["netns", "exec", ns, "ethtool", "-K", iface, "tx", "off"],
    )?;
    Ok(())
}
