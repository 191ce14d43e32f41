//! The operator verbs' arguments, and the value parsers that turn their text into typed values
//! once, at the edge: a bad VIP, backend, weight or interval stops `lb` before it calls the
//! agent, with clap's "invalid value" and the reason.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::state::{DEFAULT_WEIGHT, Vip, check_weight, parse_backend};

#[derive(Args, Debug)]
pub struct ReloadArgs {
    /// Show what the reload would change, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With peer sync: also turn the file's differences from the fleet's state into changes
    /// every load balancer applies. Shows them first and asks, unless --yes.
    #[arg(long)]
    pub fleet: bool,
    /// With --fleet: apply the shown changes without asking.
    #[arg(long, requires = "fleet")]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum VipCmd {
    /// Add a VIP (no backends yet: packets to it are dropped until one is added).
    Add {
        /// ADDR:PORT/PROTO, e.g. 192.0.2.10:80/tcp or [2001:db8::10]:443/tcp (port * = any).
        #[arg(value_parser = vip)]
        vip: Vip,
        /// Encapsulate in IPv6 + UDP (GUE) instead of plain IPv6.
        #[arg(long)]
        gue: bool,
    },
    /// Remove a VIP and its backends (its flows stop being forwarded).
    Remove {
        #[arg(value_parser = vip)]
        vip: Vip,
    },
    /// List VIPs.
    List,
}

#[derive(Subcommand, Debug)]
pub enum BackendCmd {
    /// Add a backend (its IPv6 tunnel endpoint) to a VIP.
    Add {
        #[arg(value_parser = vip)]
        vip: Vip,
        #[arg(value_parser = backend)]
        backend: Ipv6Addr,
        /// Weight, 1..=1000.
        #[arg(long, default_value_t = DEFAULT_WEIGHT, value_parser = weight)]
        weight: u32,
        /// Add it draining (no new flows until `undrain`).
        #[arg(long)]
        draining: bool,
    },
    /// Remove a backend: its flows move to the others. Drain it first.
    Remove {
        #[arg(value_parser = vip)]
        vip: Vip,
        #[arg(value_parser = backend)]
        backend: Ipv6Addr,
    },
    /// Stop new flows to a backend; existing flows continue until they end or idle out.
    Drain {
        #[arg(value_parser = vip)]
        vip: Vip,
        #[arg(value_parser = backend)]
        backend: Ipv6Addr,
    },
    /// Let a drained backend take new flows again.
    Undrain {
        #[arg(value_parser = vip)]
        vip: Vip,
        #[arg(value_parser = backend)]
        backend: Ipv6Addr,
    },
    /// Set a backend's weight (1..=1000).
    Weight {
        #[arg(value_parser = vip)]
        vip: Vip,
        #[arg(value_parser = backend)]
        backend: Ipv6Addr,
        #[arg(value_parser = weight)]
        weight: u32,
    },
    /// List backends with state, Maglev share and the flows still pinned to each.
    List {
        /// Only this VIP's backends.
        #[arg(value_parser = vip)]
        vip: Option<Vip>,
    },
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Keep printing, every --interval seconds.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between the two samples a rate is computed from.
    #[arg(long, default_value_t = 1.0, value_parser = interval)]
    pub interval: f64,
    /// With --watch: stop after this many reports.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Withdraw every VIP from BGP; the tables and existing flows stay as they are.
    Drain,
    /// Announce the VIPs again (those with a healthy backend).
    Undrain,
}

#[derive(Subcommand, Debug)]
pub enum PeerCmd {
    /// Each peer: links, its state version and digests, whether they match ours, flows.
    List,
}

#[derive(Args, Debug)]
pub struct DetachArgs {
    /// Take the pin directory (and socket) from this config file.
    #[arg(long, conflicts_with = "pin_dir")]
    pub config: Option<PathBuf>,
    /// The pin directory.
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Maglev table size (a prime).
    #[arg(long, default_value_t = lb_common::DEFAULT_RING_SIZE)]
    pub ring_size: u32,
}

/// A command-line value that was refused; clap prints it after "invalid value '...' for '...'".
#[derive(Debug, PartialEq)]
pub enum ArgError {
    /// Not `ADDR:PORT/PROTO`, or an address that cannot be a VIP.
    Vip(String),
    /// Not an IPv6 address, or one a tunnel cannot be sent to.
    Backend(String),
    /// Not a whole number, or outside 1..=MAX_WEIGHT.
    Weight(String),
    /// Seconds outside 0.1..=3600.
    Interval(String),
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ArgError::Vip(why)
            | ArgError::Backend(why)
            | ArgError::Weight(why)
            | ArgError::Interval(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ArgError {}

/// `192.0.2.10:80/tcp`, `[2001:db8::10]:443/tcp`, `192.0.2.10:*/udp`.
pub fn vip(s: &str) -> Result<Vip, ArgError> {
    s.parse().map_err(|e| ArgError::Vip(format!("{e:#}")))
}

/// A backend's IPv6 tunnel endpoint.
pub fn backend(s: &str) -> Result<Ipv6Addr, ArgError> {
    parse_backend(s).map_err(|e| ArgError::Backend(format!("{e:#}")))
}

/// A backend's weight, 1..=MAX_WEIGHT.
pub fn weight(s: &str) -> Result<u32, ArgError> {
    let w: u32 = s
        .parse()
        .map_err(|_| ArgError::Weight(format!("weight `{s}` is not a whole number")))?;
    check_weight(w).map_err(|e| ArgError::Weight(format!("{e:#}")))?;
    Ok(w)
}

/// `lb stats --interval`: 0.1 to 3600 seconds.
pub fn interval(s: &str) -> Result<f64, ArgError> {
    let secs: f64 = s
        .parse()
        .map_err(|_| ArgError::Interval(format!("`{s}` is not a number of seconds")))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(ArgError::Interval("use 0.1 to 3600 seconds".into()));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::state::Proto;

    #[derive(Parser, Debug)]
    struct Lb {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand, Debug)]
    enum Cmd {
        #[command(subcommand)]
        Vip(VipCmd),
        #[command(subcommand)]
        Backend(BackendCmd),
        Stats(StatsArgs),
    }

    /// Parses `lb ARGS` (verbs only), or returns clap's message.
    fn lb(args: &str) -> Result<Cmd, String> {
        Lb::try_parse_from(std::iter::once("lb").chain(args.split_whitespace()))
            .map(|l| l.cmd)
            .map_err(|e| e.to_string())
    }

    fn refused(args: &str, why: &str) {
        let e = lb(args).expect_err(args);
        assert!(e.contains(why), "lb {args}: `{e}` should say `{why}`");
    }

    #[test]
    fn the_verbs_parse_their_values_once() {
        <Lb as clap::CommandFactory>::command().debug_assert();
        let Ok(Cmd::Vip(VipCmd::Add { vip, gue: true })) = lb("vip add [2001:db8::10]:*/udp --gue")
        else {
            panic!("vip add");
        };
        assert_eq!(vip.port, 0);
        assert_eq!(vip.proto, Proto::Udp);
        let Ok(Cmd::Backend(BackendCmd::Add {
            backend,
            weight,
            draining: false,
            ..
        })) = lb("backend add 192.0.2.10:80/tcp 2001:db8:be::1")
        else {
            panic!("backend add");
        };
        assert_eq!(backend, "2001:db8:be::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(weight, DEFAULT_WEIGHT, "the one default weight");
        let Ok(Cmd::Backend(BackendCmd::Weight { weight: 1000, .. })) =
            lb("backend weight 192.0.2.10:80/tcp 2001:db8:be::1 1000")
        else {
            panic!("backend weight");
        };
        let Ok(Cmd::Stats(s)) = lb("stats") else {
            panic!("stats");
        };
        assert_eq!(s.interval, 1.0);
    }

    #[test]
    fn bad_vips_are_refused_with_the_reason() {
        refused("vip add 192.0.2.300:80/tcp", "is not ADDR:PORT");
        refused("vip add 192.0.2.10:80", "expected ADDR:PORT/tcp");
        refused("vip remove 192.0.2.10:80/sctp", "use tcp or udp");
        refused("vip add 0.0.0.0:80/tcp", "cannot be a VIP address");
        refused("backend list nonsense", "expected ADDR:PORT/tcp");
        refused(
            "backend drain 192.0.2.10:70000/tcp 2001:db8::1",
            "is not ADDR:PORT",
        );
        // clap names the argument that was refused.
        refused(
            "vip add 192.0.2.10:80",
            "invalid value '192.0.2.10:80' for '<VIP>'",
        );
    }

    #[test]
    fn bad_backends_are_refused_with_the_reason() {
        refused(
            "backend add 192.0.2.10:80/tcp 192.0.2.1",
            "not an IPv6 address",
        );
        refused(
            "backend remove 192.0.2.10:80/tcp ::",
            "cannot be a tunnel endpoint",
        );
        refused(
            "backend undrain 192.0.2.10:80/tcp ::1",
            "cannot be a tunnel endpoint",
        );
        refused(
            "backend drain 192.0.2.10:80/tcp ff02::1",
            "cannot be a tunnel endpoint",
        );
        refused("backend add 192.0.2.10:80/tcp", "required");
        assert_eq!(
            backend("nope"),
            Err(ArgError::Backend(
                "backend `nope` is not an IPv6 address (backends are reached through IPv6 tunnels)"
                    .into()
            ))
        );
    }

    #[test]
    fn bad_weights_are_refused_with_the_reason() {
        let (v, b) = ("192.0.2.10:80/tcp", "2001:db8:be::1");
        refused(
            &format!("backend add {v} {b} --weight 0"),
            "outside 1..=1000",
        );
        refused(&format!("backend weight {v} {b} 1001"), "outside 1..=1000");
        refused(
            &format!("backend weight {v} {b} heavy"),
            "`heavy` is not a whole number",
        );
        refused(&format!("backend weight {v} {b} -3"), "unexpected argument");
        assert!(matches!(weight("0"), Err(ArgError::Weight(_))));
        assert_eq!(weight("1"), Ok(1));
    }

    #[test]
    fn bad_intervals_are_refused_with_the_reason() {
        refused("stats --interval 0", "use 0.1 to 3600");
        refused("stats --interval 3601", "use 0.1 to 3600");
        refused("stats --interval soon", "not a number of seconds");
        assert_eq!(interval("0.5"), Ok(0.5));
    }
}
