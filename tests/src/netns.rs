//! Real-network test support: a client/load-balancer topology, a packet wire, an `lb agent`
//! process and the `lb` CLI against it. The namespaces themselves are the lab's
//! (`lb_lab::netns`, re-exported here).
//!
//! Everything is named per test and removed by name (namespaces) or PID (agents) on drop.
//! Only documentation addresses are used.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

pub use lb_lab::netns::*;
pub use lb_testkit::af_packet::Wire;

/// `GET /metrics` from the agent's metrics endpoint (127.0.0.1:9450) inside namespace `ns`.
pub fn metrics_in(ns: &str) -> Result<String> {
    in_ns(ns, || -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9450")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
    .context("GET /metrics")
}

/// The `lb` binary built next to this test.
pub fn lb_bin() -> PathBuf {
    built_bin("lb")
}

/// A binary of the workspace (another package's, so not `CARGO_BIN_EXE_*`) in the target
/// directory of this test (target/<profile>/); `cargo xtask test` builds lb, lb-echo, lb-bench.
pub fn built_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo xtask test` (it builds {name})",
        bin.display()
    );
    bin
}

/// Client namespace `c0` <-> load-balancer namespace `l0`.
///
/// Client: 198.51.100.1/24, 2001:db8:1b::fe/64, routes 192.0.2.0/24 via the LB. LB: 198.51.100.2,
/// 2001:db8:1b::1 (its tunnel source). The LB's next hop towards the backends is the client's
/// NIC, so encapsulated packets come back to the client namespace, where tests capture them.
pub struct Topology {
    pub client: Netns,
    pub lb: Netns,
    pub client_mac: [u8; 6],
    pub lb_mac: [u8; 6],
    /// Keeps `xdp_pass` on `c0` (veth hands XDP_TX frames only to an XDP-enabled peer).
    _pass: aya::Ebpf,
}

impl Topology {
    pub fn new(tag: &str) -> Result<Self> {
        crate::require_root();
        let client = Netns::new(&format!("lbt-{tag}-c"))?;
        let lb = Netns::new(&format!("lbt-{tag}-lb"))?;
        sh(
            "ip",
            &[
                "link",
                "add",
                "c0",
                "netns",
                &client.name,
                "type",
                "veth",
                "peer",
                "name",
                "l0",
                "netns",
                &lb.name,
            ],
        )?;
        client.ip(&["addr", "add", "198.51.100.1/24", "dev", "c0"])?;
        client.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1b::fe/64",
            "dev",
            "c0",
            "nodad",
        ])?;
        client.ip(&["link", "set", "c0", "up"])?;
        client.ip(&["route", "add", "192.0.2.0/24", "via", "198.51.100.2"])?;
        lb.ip(&["addr", "add", "198.51.100.2/24", "dev", "l0"])?;
        lb.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:1b::1/64",
            "dev",
            "l0",
            "nodad",
        ])?;
        lb.ip(&["link", "set", "l0", "up"])?;
        let pass =
            client.run(|| lb_objects::testing::attach_pass("c0").map_err(|e| e.to_string()))?;
        let pass = pass.map_err(anyhow::Error::msg)?;
        Ok(Self {
            client_mac: client.mac("c0")?,
            lb_mac: lb.mac("l0")?,
            client,
            lb,
            _pass: pass,
        })
    }

    /// A packet socket on the client's `c0`: sends raw frames, receives what comes back.
    pub fn wire(&self) -> Result<Wire> {
        self.client
            .run(|| Wire::open("c0").map_err(|e| e.to_string()))?
            .map_err(anyhow::Error::msg)
    }
}

/// A running `lb agent`, stopped (SIGTERM, then SIGKILL) on drop. Its pins are removed by
/// `AgentPins` so a restart test can keep them across agents.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

/// Config and pin locations of one test's agents; `lb detach` on drop.
pub struct AgentFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
}

impl AgentFiles {
    pub fn new(tag: &str, config_body: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lbt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("lb.sock");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/lbt-{tag}-{}", std::process::id()));
        let config = dir.join("lb.toml");
        let files = Self {
            dir,
            config,
            socket,
            pin_dir,
        };
        files.write_config(config_body)?;
        Ok(files)
    }

    /// Writes the config: `[agent]` pointing at this test's socket and pins, then `body`.
    /// Health checks are off unless `body` has a `[health]` table: these tests' backends are
    /// addresses that capture their packets, not servers (the lab tests check health).
    pub fn write_config(&self, body: &str) -> Result<()> {
        let health = if body.contains("[health]") {
            ""
        } else {
            "\n[health]\nenabled = false\n"
        };
        let text = format!(
            "[agent]\napi_socket = \"{}\"\npin_dir = \"{}\"\n{body}{health}",
            self.socket.display(),
            self.pin_dir.display()
        );
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    pub fn start(&self, ns: &Netns, n: u32) -> Result<Agent> {
        let log = self.dir.join(format!("agent-{n}.log"));
        let mut cmd = Command::new(lb_bin());
        cmd.args(["agent", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?.try_clone()?);
        let child = ns.spawn(&mut cmd)?;
        let mut agent = Agent {
            child,
            socket: self.socket.clone(),
            log,
        };
        agent.wait_ready()?;
        Ok(agent)
    }
}

impl Drop for AgentFiles {
    fn drop(&mut self) {
        let _ = Command::new(lb_bin())
            .args(["detach", "--pin-dir"])
            .arg(&self.pin_dir)
            .arg("--socket")
            .arg(&self.socket)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Agent {
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                bail!("the agent exited ({st}):\n{}", self.log_text());
            }
            if lb(&self.socket, &["status"]).status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the agent did not become ready in 20 s:\n{}",
            self.log_text()
        )
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signals our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait (up to 10 s) for a clean exit.
    pub fn stop(mut self) -> Result<String> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait()? {
                ensure!(
                    st.success(),
                    "the agent exited with {st}:\n{}",
                    self.log_text()
                );
                return Ok(self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the agent did not stop within 10 s")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `lb --socket SOCKET ARGS...`.
pub fn lb(socket: &Path, args: &[&str]) -> Output {
    Command::new(lb_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running lb")
}

/// Runs lb and returns stdout, failing with stderr if it failed.
pub fn lb_ok(socket: &Path, args: &[&str]) -> String {
    let out = lb(socket, args);
    assert!(
        out.status.success(),
        "lb {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs lb, expects failure, returns stderr.
pub fn lb_err(socket: &Path, args: &[&str]) -> String {
    let out = lb(socket, args);
    assert!(
        !out.status.success(),
        "lb {} should have failed but printed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn lb_json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&lb_ok(socket, &a)).expect("lb --json prints JSON")
}

pub fn ipaddr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One raw request to the agent's control socket (for what the CLI never sends); the status
/// and the body.
pub fn raw_http(socket: &std::path::Path, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A POST with a JSON body, as bytes for `raw_http`.
pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A backend namespace `<prefix>-b` reached over a veth (`b0`) from a "wire" namespace
/// `<prefix>-w` (`w0`: the router/load-balancer side, where a test injects and captures frames).
/// The backend is set up as docs/backends.md says: its tunnel address 2001:db8:be::1 on the NIC,
/// `vip4` and `vip6` on lo, replies by the normal route, loose reverse-path filtering.
pub fn wire_and_backend(prefix: &str, vip4: &str, vip6: &str) -> Result<(Netns, Netns)> {
    let wire = Netns::new(&format!("{prefix}-w"))?;
    let be = Netns::new(&format!("{prefix}-b"))?;
    sh(
        "ip",
        &[
            "link", "add", "w0", "netns", &wire.name, "type", "veth", "peer", "name", "b0",
            "netns", &be.name,
        ],
    )?;
    wire.ip(&["addr", "add", "198.51.100.1/24", "dev", "w0"])?;
    wire.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:be::fe/64",
        "dev",
        "w0",
        "nodad",
    ])?;
    wire.ip(&["link", "set", "w0", "up"])?;
    be.ip(&["addr", "add", "198.51.100.2/24", "dev", "b0"])?;
    be.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:be::1/64",
        "dev",
        "b0",
        "nodad",
    ])?;
    be.ip(&["link", "set", "b0", "up"])?;
    be.ip(&["addr", "add", &format!("{vip4}/32"), "dev", "lo"])?;
    be.ip(&["-6", "addr", "add", &format!("{vip6}/128"), "dev", "lo"])?;
    be.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
    be.ip(&["-6", "route", "add", "default", "via", "2001:db8:be::fe"])?;
    be.sysctl(&[
        ("net.ipv4.conf.all.rp_filter", "2"),
        ("net.ipv4.conf.b0.rp_filter", "2"),
    ])?;
    Ok((wire, be))
}
