//! Agents in namespaces: a real `lb agent` per namespace, its config, pins and CLI.

use std::fmt::Write as _;
use std::fs::File;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lb_lab::netns::Netns;

use super::ring::Ring;
use super::setup::*;

/// `lb`, built next to this bench (`cargo build --release -p lb-userspace -p lb-lab -p lb-bench --bins`).
pub(crate) fn lb_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("the bench's directory")?.join("lb");
    ensure!(
        bin.exists(),
        "{} is missing: `cargo build --release -p lb-userspace -p lb-lab -p lb-bench --bins`",
        bin.display()
    );
    Ok(bin)
}

pub(crate) fn backend(j: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xb, j as u16, 0, 0, 0, 2)
}

pub(crate) fn vip_svc() -> String {
    format!("{VIP}:{PORT}/tcp")
}

/// A running `lb agent`. Drop: SIGTERM (SIGKILL after 10 s) to its PID, then its pins go.
pub(crate) struct Agent {
    pub(crate) name: String,
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) pin_dir: PathBuf,
    pub(crate) log: PathBuf,
}

impl Agent {
    pub(crate) fn start(
        lb: &Path,
        ns: &Netns,
        name: &str,
        config: &Path,
        dir: &Path,
    ) -> Result<Agent> {
        let pin_dir = pin_dir(name);
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let mut cmd = Command::new(lb);
        cmd.args(["agent", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = ns.spawn(&mut cmd)?;
        let mut agent = Agent {
            name: name.to_string(),
            child,
            socket,
            pin_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = agent.child.try_wait()? {
                bail!("agent {name} exited ({st}):\n{}", agent.log_tail());
            }
            if lb_cmd(lb, &agent.socket, &["status"])?.status.success() {
                return Ok(agent);
            }
            ensure!(
                Instant::now() < deadline,
                "agent {name} not ready in 20 s:\n{}",
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub(crate) fn ring(&self) -> Result<Ring> {
        Ring::open(&self.pin_dir)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signals our own child, by its PID.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!("    agent {} ignored SIGTERM: killing it", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // The agent is gone: unpinning the link detaches the program; the maps go with it.
        if let Err(e) = lb_userspace::dataplane::detach_pinned(&self.pin_dir) {
            eprintln!("    removing {}: {e:#}", self.pin_dir.display());
        }
    }
}

pub(crate) fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/lbbc-{}-{name}", std::process::id()))
}

/// The bench's files; removed on drop.
pub(crate) struct RunDir(pub(crate) PathBuf);

impl RunDir {
    pub(crate) fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("lbbc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn ns_name(node: &str) -> String {
    format!("lbbc-{}-{node}", std::process::id())
}

/// A namespace with the agent's dataplane NIC: veth `l0` (XDP) with its peer `l1` beside it.
pub(crate) fn agent_ns(node: &str) -> Result<Netns> {
    let ns = Netns::new(&ns_name(node))?;
    ns.ip(&["link", "add", "l0", "type", "veth", "peer", "name", "l1"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1b::1/64",
        "dev",
        "l0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "l0", "up"])?;
    ns.ip(&["link", "set", "l1", "up"])?;
    Ok(ns)
}

pub(crate) fn agent_config(socket: &Path, pin_dir: &Path, sync: &str) -> String {
    let mut c = format!(
        "[agent]\napi_socket = \"{}\"\npin_dir = \"{}\"\n\n\
         [dataplane]\ntunnel_source = \"2001:db8:1b::1\"\nseed = {SEED}\nring_size = {RING}\n\
         max_vips = 4\nmax_backends = 64\nmax_flows = 4096\n\n\
         [[interface]]\nname = \"l0\"\nnext_hop_mac = \"02:00:00:00:0b:fe\"\n\n\
         # Backends are addresses, not servers: no checks, every backend counts as up.\n\
         [health]\nenabled = false\n\n{sync}\n\
         [[vip]]\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\n",
        socket.display(),
        pin_dir.display(),
    );
    for j in 1..=BACKENDS {
        let _ = writeln!(c, "  [[vip.backend]]\n  address = \"{}\"", backend(j));
    }
    c
}

pub(crate) fn lb_cmd(lb: &Path, socket: &Path, args: &[&str]) -> Result<Output> {
    Command::new(lb)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .context("running lb")
}

pub(crate) fn lb_ok(lb: &Path, socket: &Path, args: &[&str]) -> Result<Output> {
    let out = lb_cmd(lb, socket, args)?;
    ensure!(
        out.status.success(),
        "lb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

pub(crate) fn lb_json(lb: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = lb_ok(lb, socket, &a)?;
    Ok(serde_json::from_slice(&out.stdout)?)
}
