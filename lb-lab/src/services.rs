//! The backends' side: `lb decap`, nginx and lb-echo, and an HTTP client for the VIPs.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::plan::*;
use crate::process::*;
use crate::topology::Lab;

impl Lab {
    pub(crate) fn start_backends(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let o = &self.opts;
        for j in 1..=o.backends {
            let b = backend_name(j);
            let (_, addr6) = backend_link6(j);
            let pin = o.pin_root.join(format!("{b}-decap"));
            let out = self
                .lb_command(&b)?
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

    /// `lb decap --stats` on backend `j`, as JSON (settings, attachment, and each counter's
    /// packets and bytes under `counters`).
    pub fn decap_stats(&self, j: usize) -> Result<serde_json::Value> {
        let b = backend_name(j);
        let out = self
            .lb_command(&b)?
            .args(["--json", "decap", "--iface", "eth0", "--stats"])
            .arg("--pin-dir")
            .arg(self.opts.pin_root.join(format!("{b}-decap")))
            .output()?;
        ensure!(
            out.status.success(),
            "lb decap --stats on {b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Http,
    Echo,
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
