//! The lab's pages, reachable from the host: each load balancer's status page (its agent's
//! metrics listener is on 127.0.0.1:9450 inside the load balancer's namespace) forwarded to a
//! host port, and a lab-wide page that shows the router's ECMP next hops per VIP and the load
//! balancers' pages side by side, so a `lab shift` can be watched moving traffic.
//!
//! One process (`lb-lab web`, started by `Lab::up` with `LabOptions::web`) serves them all and
//! writes its ports to `<run_dir>/web.json`; `lab down` stops it with the others.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::plan::*;
use crate::process::*;
use crate::topology::Lab;

const LAB_PAGE: &str = include_str!("lab_page.html");
/// Where each agent serves its status page, inside its namespace.
const AGENT_PAGE: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9450);

/// The host ports of the lab's pages (`<run_dir>/web.json`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct WebPorts {
    pub lab: u16,
    /// Load balancer i's page is `lbs[i - 1]`.
    pub lbs: Vec<u16>,
}

impl Lab {
    /// Starts `lb-lab web` in the host's namespace and waits for its ports.
    pub(crate) fn start_web(&self, base: u16, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let o = &self.opts;
        let bin = o.echo_bin.with_file_name("lb-lab");
        let mut cmd = Command::new(&bin);
        cmd.arg("web")
            .arg(&o.prefix)
            .arg(&o.run_dir)
            .arg(o.lbs.to_string())
            .arg(base.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(o.run_dir.join("web.log"))?);
        // SAFETY: `own_session` makes only async-signal-safe calls: the server outlives `lb-lab
        // up` in its own session and keeps none of its caller's files.
        unsafe {
            cmd.pre_exec(crate::process::own_session);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.record("web", "host", child.id())?;
        let pid = child.id();
        wait_for("the lab's pages", Duration::from_secs(10), || {
            anyhow::ensure!(alive(pid), "lb-lab web exited: {}", self.web_log());
            Ok(self.web_ports().is_some())
        })?;
        let ports = self.web_ports().expect("waited for");
        progress(&format!(
            "status pages on the host: the lab http://127.0.0.1:{}/, {}",
            ports.lab,
            ports
                .lbs
                .iter()
                .enumerate()
                .map(|(i, p)| format!("lb{} http://127.0.0.1:{p}/", i + 1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(())
    }

    /// The pages' host ports, once `lb-lab web` has bound them.
    pub fn web_ports(&self) -> Option<WebPorts> {
        let text = std::fs::read_to_string(self.opts.run_dir.join("web.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn web_log(&self) -> String {
        std::fs::read_to_string(self.opts.run_dir.join("web.log")).unwrap_or_default()
    }
}

/// `lb-lab web PREFIX RUN_DIR LBS BASE_PORT`: serves the pages until killed. Base port 0 takes
/// any free ports; otherwise the lab page is on BASE and load balancer i's on BASE + i.
pub fn serve(prefix: &str, run_dir: &Path, lbs: usize, base: u16) -> Result<()> {
    let port = |i: u16| if base == 0 { 0 } else { base + i };
    let bind = |p: u16| {
        TcpListener::bind((Ipv4Addr::LOCALHOST, p))
            .with_context(|| format!("binding 127.0.0.1:{p}"))
    };
    let lab = bind(port(0))?;
    let mut forwarders = Vec::new();
    for i in 1..=lbs {
        forwarders.push(bind(port(i as u16))?);
    }
    let ports = WebPorts {
        lab: lab.local_addr()?.port(),
        lbs: forwarders
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?,
    };
    let tmp = run_dir.join("web.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&ports)?)?;
    std::fs::rename(&tmp, run_dir.join("web.json"))?;
    for (i, l) in forwarders.into_iter().enumerate() {
        let ns = PathBuf::from(format!("/run/netns/{prefix}-{}", lb_name(i + 1)));
        std::thread::spawn(move || forward(l, ns));
    }
    let opts = LabOptions::new(
        prefix.into(),
        run_dir.into(),
        PathBuf::new(),
        PathBuf::new(),
        PathBuf::new(),
    );
    let view = Lab {
        opts: LabOptions { lbs, ..opts },
        owned: false,
    };
    for stream in lab.incoming().flatten() {
        let _ = answer(&view, &ports, stream);
    }
    bail!("the lab page's listener closed")
}

/// Each connection to `listener` is joined to the agent's page inside namespace `ns`.
fn forward(listener: TcpListener, ns: PathBuf) {
    for client in listener.incoming().flatten() {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let Ok(agent) = connect_in(&ns) else {
                return;
            };
            let (Ok(mut c2), Ok(mut a2)) = (client.try_clone(), agent.try_clone()) else {
                return;
            };
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut a2);
                let _ = a2.shutdown(std::net::Shutdown::Write);
            });
            let (mut a, mut c) = (agent, client);
            let _ = std::io::copy(&mut a, &mut c);
            let _ = c.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        });
    }
}

/// A connection to the agent's page from inside `ns` (this thread enters it for good: each
/// forwarded connection has a thread of its own).
fn connect_in(ns: &Path) -> Result<TcpStream> {
    let f = std::fs::File::open(ns)?;
    // SAFETY: setns changes only this thread's network namespace; the fd is valid for the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(TcpStream::connect_timeout(
        &AGENT_PAGE,
        Duration::from_secs(2),
    )?)
}

/// The lab page (`/`) and the router's next hops (`/router.json`).
fn answer(lab: &Lab, ports: &WebPorts, mut s: TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 2048];
    let n = s.read(&mut buf)?;
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let (status, kind, body) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", LAB_PAGE.to_string()),
        "/router.json" => ("200 OK", "application/json", router(lab, ports).to_string()),
        _ => (
            "404 Not Found",
            "text/plain",
            "only / and /router.json\n".into(),
        ),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

/// The router's ECMP next hops for each VIP, with the load balancer each belongs to, and the
/// load balancers' page ports.
fn router(lab: &Lab, ports: &WebPorts) -> serde_json::Value {
    let vips: Vec<serde_json::Value> = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
        .into_iter()
        .map(|vip| {
            let hops: Vec<serde_json::Value> = lab
                .router_paths(vip)
                .unwrap_or_default()
                .into_iter()
                .map(|h| json!({"hop": h.to_string(), "lb": lab.lb_of_hop(h).map(lb_name)}))
                .collect();
            json!({"vip": vip.to_string(), "hops": hops})
        })
        .collect();
    json!({"vips": vips, "lbs": ports.lbs.iter().enumerate()
        .map(|(i, p)| json!({"name": lb_name(i + 1), "port": p})).collect::<Vec<_>>()})
}
