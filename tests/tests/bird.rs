//! `lb_userspace::bird` against a real BIRD 2 (Debian's bird2) in network namespaces (root).
//!
//! - announce / withdraw: BIRD's static protocols follow the routes file;
//! - a broken routes file: `configure` fails with BIRD's message and BIRD keeps the old config;
//! - the whole announce path: a load balancer's BIRD announces the VIPs over eBGP to a router's
//!   BIRD, which installs them in its kernel table, and withdraws them again.
//!
//! Every BIRD runs in the foreground as this test's child, in a namespace named after the test
//! and this process; both are removed on drop (the BIRD by its PID, the namespace by its name).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lb_userspace::bgp::{self, Bird, BirdError};
use tests::netns::{Netns, sh};

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8:100::10";

fn vips(addrs: &[&str]) -> BTreeSet<IpAddr> {
    addrs.iter().map(|a| a.parse().unwrap()).collect()
}

fn require_bird() {
    tests::require_root();
    assert!(
        Path::new("/usr/sbin/bird").exists() && Path::new("/usr/sbin/birdc").exists(),
        "BIRD 2 is missing: apt-get install -y bird2"
    );
}

/// A per-test directory under the temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("lbt-bird-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A BIRD running in the foreground (`bird -f`) in one namespace; SIGTERM, then SIGKILL, by
/// its PID on drop.
struct BirdProc {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    name: String,
}

impl BirdProc {
    /// Writes `<dir>/<name>.conf` with `body` and starts BIRD on it inside `ns`.
    fn start(ns: &Netns, dir: &Path, name: &str, body: &str) -> Result<Self> {
        let conf = dir.join(format!("{name}.conf"));
        let socket = dir.join(format!("{name}.ctl"));
        let pidfile = dir.join(format!("{name}.pid"));
        let log = dir.join(format!("{name}.log"));
        std::fs::write(&conf, body)?;
        let ns_file: File = ns.file()?;
        let raw = ns_file.as_raw_fd();
        let mut cmd = Command::new("/usr/sbin/bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(&pidfile)
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?.try_clone()?);
        // SAFETY: setns is async-signal-safe; only the child's network namespace changes.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting bird")?;
        let mut bird = Self {
            child,
            socket,
            log,
            name: name.into(),
        };
        bird.wait_ready()?;
        Ok(bird)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Until BIRD answers on its socket (at most 10 s).
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..200 {
            if let Some(st) = self.child.try_wait()? {
                bail!("bird {} exited ({st}):\n{}", self.name, self.log_text());
            }
            if self.socket.exists() && birdc(&self.socket, "show status").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "bird {} did not answer on {} within 10 s:\n{}",
            self.name,
            self.socket.display(),
            self.log_text()
        )
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for BirdProc {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        if self.running() {
            // SAFETY: signals our own child by its PID.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..40 {
                if !self.running() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `birdc -s <socket> <cmd>`: its output, or an error if birdc failed.
fn birdc(socket: &Path, cmd: &str) -> Result<String> {
    let mut args = vec!["-s", socket.to_str().unwrap()];
    args.extend(cmd.split_whitespace());
    sh("/usr/sbin/birdc", &args)
}

/// A load balancer's config: its routes file included, plus `extra`.
fn lb_conf(router_id: &str, routes: &Path, extra: &str) -> String {
    format!(
        "router id {router_id};\n\
         log stderr all;\n\
         protocol device {{}}\n\
         include \"{}\";\n\
         {extra}",
        routes.display()
    )
}

/// Polls `f` every 100 ms for at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    for _ in 0..secs * 10 + 1 {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last {
        Some(e) => bail!("{what}: not within {secs} s (last error: {e:#})"),
        None => bail!("{what}: not within {secs} s"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn announce_and_withdraw_through_bird() -> Result<()> {
    require_bird();
    let rt = runtime();
    let ns = Netns::new(&format!("lbt-bird-aw-{}", std::process::id()))?;
    let dir = Dir::new("aw")?;
    let routes = dir.0.join("lb-vips.conf");
    assert!(bgp::write_initial_routes(&routes)?);
    let proc = BirdProc::start(&ns, &dir.0, "lb", &lb_conf("203.0.113.1", &routes, ""))?;
    let bird = Bird::new(&proc.socket, &routes);

    // Both static protocols exist and are up from the initial (empty) file.
    let protocols = rt.block_on(bird.protocols())?;
    for name in [bgp::PROTO_V4, bgp::PROTO_V6] {
        let p = protocols
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("{name} missing from {protocols:?}"))?;
        assert_eq!((p.proto.as_str(), p.state.as_str()), ("Static", "up"));
        assert!(!p.is_bgp());
    }
    assert!(rt.block_on(bird.announced())?.is_empty());

    let both = vips(&[VIP4, VIP6]);
    let reply = rt.block_on(bird.announce(&both))?;
    assert!(bgp::configure_succeeded(reply.code()), "{reply:?}");
    assert_eq!(std::fs::read_to_string(&routes)?, bgp::render_routes(&both));
    let v4 = birdc(&proc.socket, "show route protocol lb_vips4")?;
    assert!(v4.contains("192.0.2.10/32"), "{v4}");
    let v6 = birdc(&proc.socket, "show route protocol lb_vips6")?;
    assert!(v6.contains("2001:db8:100::10/128"), "{v6}");
    assert_eq!(rt.block_on(bird.announced())?, both);
    // Our own command() sees the same.
    let r = rt.block_on(bird.command("show route protocol lb_vips4"))?;
    assert!(r.text().contains("192.0.2.10/32"), "{r:?}");

    // Nothing changed: sync does not even talk to BIRD.
    assert!(rt.block_on(bird.sync(&both))?.is_none());

    // One VIP less, then none.
    rt.block_on(bird.sync(&vips(&[VIP6])))?.expect("configured");
    assert_eq!(rt.block_on(bird.announced())?, vips(&[VIP6]));
    rt.block_on(bird.withdraw_all())?;
    assert!(rt.block_on(bird.announced())?.is_empty());
    let v4 = birdc(&proc.socket, "show route protocol lb_vips4")?;
    assert!(!v4.contains("192.0.2.10"), "{v4}");
    let v6 = birdc(&proc.socket, "show route protocol lb_vips6")?;
    assert!(!v6.contains("2001:db8:100::10"), "{v6}");

    // A command BIRD cannot parse is an error with BIRD's text.
    let err = rt.block_on(bird.command("shwo route")).unwrap_err();
    match err.downcast_ref::<BirdError>() {
        Some(BirdError::Rejected { code, message, .. }) => {
            assert!(*code >= 9000, "{code}");
            assert!(message.contains("syntax error"), "{message}");
        }
        _ => panic!("unexpected error: {err:#}"),
    }
    drop(proc);
    drop(ns);
    Ok(())
}

/// BIRD names the place of a config error as `file:4:2` (2.0.12) or `file, line 4` (older).
fn at_line_4(msg: &str) -> bool {
    msg.contains(".conf:4:") || msg.contains(", line 4:")
}

#[test]
fn broken_routes_file_is_refused_and_bird_keeps_running() -> Result<()> {
    require_bird();
    let rt = runtime();
    let ns = Netns::new(&format!("lbt-bird-br-{}", std::process::id()))?;
    let dir = Dir::new("br")?;
    let routes = dir.0.join("lb-vips.conf");
    bgp::write_initial_routes(&routes)?;
    let mut proc = BirdProc::start(&ns, &dir.0, "lb", &lb_conf("203.0.113.1", &routes, ""))?;
    let bird = Bird::new(&proc.socket, &routes);
    rt.block_on(bird.announce(&vips(&[VIP4])))?;

    std::fs::write(
        &routes,
        "protocol static lb_vips4 {\n\tipv4;\n\troute 192.0.2.10/32 blackhole\n\tgarbage here;\n}\n",
    )?;
    let err = rt.block_on(bird.configure()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("BIRD refused `configure` (8002)")
            && msg.contains(routes.to_str().unwrap())
            && at_line_4(&msg),
        "{msg}"
    );
    // `configure check` reports the same without applying anything.
    let err = rt.block_on(bird.check_config()).unwrap_err();
    assert!(at_line_4(&format!("{err}")), "{err}");

    // BIRD runs on with the old config: the route is still there, lb_vips6 too.
    assert!(proc.running(), "bird died:\n{}", proc.log_text());
    birdc(&proc.socket, "show status")?;
    assert_eq!(rt.block_on(bird.announced())?, vips(&[VIP4]));

    // The next announcement repairs the file (sync too: BIRD never took the garbage).
    let reply = rt
        .block_on(bird.sync(&vips(&[VIP4, VIP6])))?
        .expect("configured");
    assert!(bgp::configure_succeeded(reply.code()));
    assert_eq!(rt.block_on(bird.announced())?, vips(&[VIP4, VIP6]));
    assert_eq!(rt.block_on(bird.check_config())?.code(), 20);
    Ok(())
}

/// The whole path: lb (AS 65001) -- veth -- router (AS 65000, kernel export, merge paths).
#[test]
fn router_learns_and_forgets_vips_over_bgp() -> Result<()> {
    require_bird();
    let rt = runtime();
    let pid = std::process::id();
    let lb_ns = Netns::new(&format!("lbt-bird-lb-{pid}"))?;
    let rt_ns = Netns::new(&format!("lbt-bird-rt-{pid}"))?;
    sh(
        "ip",
        &[
            "link",
            "add",
            "up0",
            "netns",
            &lb_ns.name,
            "type",
            "veth",
            "peer",
            "name",
            "dn0",
            "netns",
            &rt_ns.name,
        ],
    )?;
    lb_ns.ip(&["addr", "add", "203.0.113.1/24", "dev", "up0"])?;
    lb_ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:ff::1/64",
        "dev",
        "up0",
        "nodad",
    ])?;
    lb_ns.ip(&["link", "set", "up0", "up"])?;
    rt_ns.ip(&["addr", "add", "203.0.113.2/24", "dev", "dn0"])?;
    rt_ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:ff::2/64",
        "dev",
        "dn0",
        "nodad",
    ])?;
    rt_ns.ip(&["link", "set", "dn0", "up"])?;

    let dir = Dir::new("bgp")?;
    let routes = dir.0.join("lb-vips.conf");
    bgp::write_initial_routes(&routes)?;
    let timers = "connect delay time 1; connect retry time 2; error wait time 1, 4;";
    let lb_extra = format!(
        "protocol bgp router4 {{\n\
           local 203.0.113.1 as 65001; neighbor 203.0.113.2 as 65000; {timers}\n\
           ipv4 {{ import none; export where proto = \"{v4}\"; }};\n\
         }}\n\
         protocol bgp router6 {{\n\
           local 2001:db8:ff::1 as 65001; neighbor 2001:db8:ff::2 as 65000; {timers}\n\
           ipv6 {{ import none; export where proto = \"{v6}\"; }};\n\
         }}\n",
        v4 = bgp::PROTO_V4,
        v6 = bgp::PROTO_V6,
    );
    let router_conf = format!(
        "router id 203.0.113.2;\n\
         log stderr all;\n\
         protocol device {{}}\n\
         protocol kernel {{ ipv4 {{ export all; }}; merge paths on; }}\n\
         protocol kernel {{ ipv6 {{ export all; }}; merge paths on; }}\n\
         protocol bgp lb1_4 {{\n\
           local 203.0.113.2 as 65000; neighbor 203.0.113.1 as 65001; {timers}\n\
           ipv4 {{ import all; export none; }};\n\
         }}\n\
         protocol bgp lb1_6 {{\n\
           local 2001:db8:ff::2 as 65000; neighbor 2001:db8:ff::1 as 65001; {timers}\n\
           ipv6 {{ import all; export none; }};\n\
         }}\n"
    );
    let router = BirdProc::start(&rt_ns, &dir.0, "router", &router_conf)?;
    let lb = BirdProc::start(
        &lb_ns,
        &dir.0,
        "lb",
        &lb_conf("203.0.113.1", &routes, &lb_extra),
    )?;
    let bird = Bird::new(&lb.socket, &routes);
    let router_bird = Bird::new(&router.socket, dir.0.join("unused.conf"));

    // Both sessions establish; the parsed `show protocols` says so on both sides.
    wait_for(30, "BGP sessions established", || {
        let lb_up = rt
            .block_on(bird.protocols())?
            .iter()
            .filter(|p| p.established())
            .count();
        let rt_up = rt
            .block_on(router_bird.protocols())?
            .iter()
            .filter(|p| p.established())
            .count();
        Ok(lb_up == 2 && rt_up == 2)
    })
    .map_err(|e| {
        e.context(format!(
            "lb:\n{}\nrouter:\n{}",
            lb.log_text(),
            router.log_text()
        ))
    })?;
    let sessions: Vec<_> = rt
        .block_on(bird.protocols())?
        .into_iter()
        .filter(|p| p.is_bgp())
        .collect();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(
        sessions
            .iter()
            .all(|p| p.bgp_state() == Some("Established")),
        "{sessions:?}"
    );

    let kernel_route = |args: &[&str]| -> Result<String> { Ok(rt_ns.ip(args)?.trim().to_string()) };
    assert_eq!(kernel_route(&["route", "show", VIP4])?, "");

    rt.block_on(bird.announce(&vips(&[VIP4, VIP6])))?;
    wait_for(15, "the router installs both VIPs", || {
        Ok(
            kernel_route(&["route", "show", VIP4])?.contains("via 203.0.113.1")
                && kernel_route(&["-6", "route", "show", VIP6])?.contains("via 2001:db8:ff::1"),
        )
    })
    .map_err(|e| e.context(router.log_text()))?;

    // Withdraw the IPv4 VIP only, then everything.
    rt.block_on(bird.announce(&vips(&[VIP6])))?;
    wait_for(15, "the router removes the IPv4 VIP", || {
        Ok(kernel_route(&["route", "show", VIP4])?.is_empty())
    })?;
    assert!(kernel_route(&["-6", "route", "show", VIP6])?.contains("via 2001:db8:ff::1"));
    rt.block_on(bird.withdraw_all())?;
    wait_for(15, "the router removes the IPv6 VIP", || {
        Ok(kernel_route(&["-6", "route", "show", VIP6])?.is_empty())
    })?;
    // The sessions stayed up through every reconfiguration.
    assert!(
        rt.block_on(bird.protocols())?
            .iter()
            .filter(|p| p.is_bgp())
            .all(|p| p.established())
    );
    drop(lb);
    drop(router);
    drop(rt_ns);
    drop(lb_ns);
    Ok(())
}
