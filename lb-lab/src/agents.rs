//! The load balancers' agents: config, start and stop, fleet key, and the `lb` CLI against them.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::cli::{lb_cmd, lb_json};
use crate::plan::*;
use crate::process::*;
use crate::topology::Lab;

impl Lab {
    pub fn agent_config(&self, i: usize) -> String {
        let o = &self.opts;
        let lb = lb_name(i);
        let dir = self.dir(&lb);
        let (r4, _) = lb_link4(i);
        let (_, l6) = lb_link6(i);
        let h = o.health;
        let mut c = format!(
            "[agent]\napi_socket = \"{}\"\npin_dir = \"{}\"\nmetrics = \"127.0.0.1:9450\"\n\n\
             [dataplane]\ntunnel_source = \"{l6}\"\nseed = {SEED}\nmax_flows = {}\nnew_flow_rate = {}\n\
             tcp_closing_timeout_secs = 10\n{}\n\
             [[interface]]\nname = \"eth0\"\ngateway = \"{r4}\"\n\n\
             [health]\ninterval_ms = {}\ntimeout_ms = {}\nrise = {}\nfall = {}\n\n\
             [bgp]\nbird_socket = \"{}\"\nroutes_file = \"{}\"\n\n\
             [sync]\nnode = \"{lb}\"\nlisten = \"[{}]:{SYNC_PORT}\"\nkey_file = \"{}\"\n\
             state_file = \"{}\"\nflows = {}\n",
            self.socket(i).display(),
            o.pin_root.join(&lb).display(),
            o.max_flows,
            o.new_flow_rate,
            o.second_chance_secs
                .map(|s| format!("second_chance_secs = {s}\n"))
                .unwrap_or_default(),
            h.interval_ms,
            h.timeout_ms,
            h.rise,
            h.fall,
            self.bird_socket(&lb).display(),
            dir.join("vips.conf").display(),
            lb_sync6(i),
            self.key_file().display(),
            dir.join("sync-state.json").display(),
            match &o.flow_mode {
                Some(m) => format!("\"{m}\""),
                None => o.flow_sync.to_string(),
            },
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

    pub(crate) fn start_agents(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
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

    /// `lb` in `node`'s namespace; with `capabilities`, under setpriv, which drops the rest
    /// from the bounding set: root's exec then keeps only those, as under a unit's
    /// `CapabilityBoundingSet=`, and no_new_privs is set as `NoNewPrivileges=` does.
    pub(crate) fn lb_command(&self, node: &str) -> Result<std::process::Command> {
        let Some(caps) = &self.opts.capabilities else {
            return command_in(&self.ns(node), &self.opts.lb_bin);
        };
        let set: Vec<String> = caps
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let mut cmd = command_in(&self.ns(node), Path::new("/usr/bin/setpriv"))?;
        cmd.arg("--no-new-privs")
            .arg("--bounding-set")
            .arg(format!("-all,{}", set.join(",")))
            .arg("--")
            .arg(&self.opts.lb_bin);
        Ok(cmd)
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
        let mut cmd = self.lb_command(&lb)?;
        let child = cmd
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
