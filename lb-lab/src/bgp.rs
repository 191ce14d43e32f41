//! BGP: BIRD on the router (ECMP over the load balancers) and on each load balancer.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::plan::*;
use crate::process::*;
use crate::topology::Lab;

impl Lab {
    pub(crate) fn start_bird(&self, progress: &mut dyn FnMut(&str)) -> Result<()> {
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

    /// Withdraws load balancer `i`'s routes (`lb node drain`), or restores them (`undrain`),
    /// and waits until the router's routes to both VIPs leave out (or include) its next hops:
    /// its clients move to the other load balancers by ECMP. Returns how long the router took.
    pub fn shift(&self, i: usize, restore: bool, timeout: Duration) -> Result<Duration> {
        ensure!(
            (1..=self.opts.lbs).contains(&i),
            "no load balancer lb{i}: the lab has lb1 to lb{}",
            self.opts.lbs
        );
        let verb = if restore { "undrain" } else { "drain" };
        let out = self.lb(i, &["node", verb]);
        ensure!(
            out.status.success(),
            "lb node {verb} on lb{i}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let started = std::time::Instant::now();
        wait_for(
            &format!(
                "the router to {} lb{i}",
                if restore { "use" } else { "drop" }
            ),
            timeout,
            || {
                for vip in [IpAddr::V4(VIP4), IpAddr::V6(VIP6)] {
                    let routed = self
                        .router_paths(vip)?
                        .into_iter()
                        .any(|h| self.lb_of_hop(h) == Some(i));
                    if routed != restore {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )?;
        Ok(started.elapsed())
    }

    /// Which load balancer (1-based) owns a router next hop.
    pub fn lb_of_hop(&self, hop: IpAddr) -> Option<usize> {
        (1..=self.opts.lbs)
            .find(|&i| IpAddr::V4(lb_link4(i).1) == hop || IpAddr::V6(lb_link6(i).1) == hop)
    }
}
