//! `lb decap`: the backend's XDP decapsulation program (`lb_decap`): load, configure, attach and
//! pin it so it runs without a process, read its counters, detach it.
//!
//! Every run loads a new program with new maps, fills them, and only then makes it live: a first
//! run attaches it (driver mode, else generic) and pins the link; a re-run switches the pinned
//! link to the new program with `bpf_link_update`, so the address set and GUE port change in one
//! atomic step. The maps are pinned next to the link so `--stats` can read them.
//!
//! The `lb` binary's `decap` subcommand delegates to [`run`]. This crate depends on lb-common
//! (the map contract), lb-objects (the compiled program), lb-host (bpffs, interfaces, tables)
//! and aya, never on the agent.

mod addr_list;
mod attach;
mod kernel;
mod pins;
mod program;
mod status;

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail, ensure};
use aya::programs::XdpMode;
use lb_common::{DEFAULT_GUE_PORT, decap::DECAP_MAX_ADDRS};
use serde_json::json;

pub use attach::{AttachReport, attach, detach};
pub use program::Decap;
pub use status::{DecapStatus, status};

/// Where `lb decap` pins an interface's link and maps unless told otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";

#[derive(clap::Args, Debug, Clone)]
pub struct DecapArgs {
    /// The NIC the tunnelled packets arrive on.
    #[arg(long)]
    pub iface: String,
    /// A tunnel address of this backend: the IPv6 address the load balancers send to (repeat
    /// for several, up to 16). Packets to other addresses pass untouched.
    #[arg(long = "address", value_name = "IPV6", conflicts_with_all = ["stats", "detach"])]
    pub addresses: Vec<String>,
    /// UDP destination port of GUE (variant 1) tunnel packets; the load balancers' `gue_port`.
    #[arg(long, default_value_t = DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// XDP mode; driver mode falls back to generic (with a warning) where the driver lacks XDP.
    #[arg(long, value_enum, default_value_t = Mode::Driver)]
    pub mode: Mode,
    /// bpffs directory for the pinned link and maps [default: /sys/fs/bpf/lb-decap/<iface>].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Print the attached program's counters and settings instead of attaching.
    #[arg(long, conflicts_with = "detach")]
    pub stats: bool,
    /// Detach the program from the NIC and remove its pins.
    #[arg(long)]
    pub detach: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Driver,
    Generic,
}

/// `lb decap ...`.
pub fn run(args: DecapArgs, json: bool) -> Result<()> {
    check_iface_name(&args.iface)?;
    let pin_dir = args
        .pin_dir
        .clone()
        .unwrap_or_else(|| default_pin_dir(&args.iface));
    if args.stats {
        let st = status(&args.iface, &pin_dir)?;
        return print(json, &st.to_json(), || st.render());
    }
    if args.detach {
        let removed = detach(&args.iface, &pin_dir)?;
        let text = if removed {
            format!(
                "lb-decap detached from {} and {} removed\n",
                args.iface,
                pin_dir.display()
            )
        } else {
            format!(
                "lb-decap is not attached to {} (nothing pinned at {})\n",
                args.iface,
                pin_dir.display()
            )
        };
        let j = json!({"iface": args.iface, "pin_dir": pin_dir, "detached": removed});
        return print(json, &j, || text.clone());
    }
    // Everything is checked before anything changes.
    let addresses = parse_addresses(&args.addresses)?;
    ensure!(
        args.gue_port != 0,
        "--gue-port 0: GUE needs a UDP port from 1 to 65535 (the load balancers' gue_port)"
    );
    lb_host::ifindex(&args.iface)?;
    let mode = match args.mode {
        Mode::Driver => XdpMode::Driver,
        Mode::Generic => XdpMode::Skb,
    };
    let report = attach(&args.iface, &addresses, args.gue_port, mode, &pin_dir)?;
    print(json, &report.to_json(), || report.render())
}

fn print(json: bool, j: &serde_json::Value, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(j)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(iface)
}

/// The name becomes a path component of the pin directory: keep it to what Linux allows.
fn check_iface_name(iface: &str) -> Result<()> {
    ensure!(
        !iface.is_empty()
            && iface.len() < libc::IFNAMSIZ
            && !iface.contains(['/', '\0'])
            && iface != "."
            && iface != "..",
        "`{iface}` is not an interface name"
    );
    Ok(())
}

/// The tunnel addresses, in order and without repeats.
pub fn parse_addresses(args: &[String]) -> Result<Vec<Ipv6Addr>> {
    ensure!(
        !args.is_empty(),
        "give the backend's tunnel address with --address <IPV6> (the address the load \
         balancers send to)"
    );
    let mut out: Vec<Ipv6Addr> = Vec::new();
    for s in args {
        let a = match s.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => a,
            Ok(IpAddr::V4(_)) => bail!(
                "--address {s} is an IPv4 address: the load balancers tunnel to the backend's \
                 IPv6 address"
            ),
            Err(_) if s.contains('/') => {
                bail!("--address {s}: give the address alone, without a prefix length")
            }
            Err(_) => bail!("--address {s} is not an IPv6 address"),
        };
        ensure!(
            !a.is_unspecified() && !a.is_multicast() && !a.is_loopback(),
            "--address {s} cannot be a tunnel destination (unspecified, loopback or multicast)"
        );
        if !out.contains(&a) {
            out.push(a);
        }
    }
    ensure!(
        out.len() <= DECAP_MAX_ADDRS as usize,
        "{} tunnel addresses given; lb decap takes at most {DECAP_MAX_ADDRS}",
        out.len()
    );
    Ok(out)
}
