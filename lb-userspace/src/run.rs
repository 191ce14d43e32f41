//! `lb run`: attach the load balancer to a NIC with services given on the command line, and
//! print its counters until interrupted. (The config-driven agent supersedes this.)

use std::net::Ipv6Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aya::programs::XdpMode;
use lb_common::{LbConfig, v6_words};
use tracing::{info, warn};

use crate::dataplane::{Dataplane, DataplaneLimits};
use crate::service::{ServiceSpec, install};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The anycast-facing NIC.
    #[arg(long)]
    pub iface: String,
    /// XDP attach mode: `driver` (falls back to `generic` with a warning) or `generic`.
    #[arg(long, default_value = "driver")]
    pub mode: String,
    /// This load balancer's IPv6 tunnel source address.
    #[arg(long)]
    pub tunnel_src: Ipv6Addr,
    /// MAC address of the next hop towards the backends (aa:bb:cc:dd:ee:ff).
    #[arg(long, value_parser = parse_mac)]
    pub next_hop_mac: [u8; 6],
    /// A service: ADDR:PORT/tcp|udp[/gue]=BACKEND6[@WEIGHT],... (repeatable).
    #[arg(long = "service", required = true)]
    pub services: Vec<ServiceSpec>,
    /// Fleet-wide hash seed: the same on every load balancer of the fleet.
    #[arg(long, default_value_t = 0x6c62_7365_6564)]
    pub seed: u64,
    /// Maglev table size (a prime).
    #[arg(long, default_value_t = lb_common::DEFAULT_RING_SIZE)]
    pub ring_size: u32,
    /// GUE destination port.
    #[arg(long, default_value_t = lb_common::DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// Seconds between counter reports.
    #[arg(long, default_value_t = 5)]
    pub report_every: u64,
}

pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("`{s}` is not a MAC address (aa:bb:cc:dd:ee:ff)");
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("`{s}` is not a MAC address"))?;
    }
    Ok(mac)
}

fn iface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let s = std::fs::read_to_string(&path)
        .with_context(|| format!("no interface `{iface}` ({path})"))?;
    parse_mac(s.trim())
}

pub async fn run(args: RunArgs) -> Result<()> {
    let src_mac = iface_mac(&args.iface)?;
    let limits = DataplaneLimits {
        ring_size: args.ring_size,
        ..Default::default()
    };
    let mut dp = Dataplane::load(limits)?;
    dp.set_config(&LbConfig {
        src_mac,
        dst_mac: args.next_hop_mac,
        gue_port: args.gue_port.to_be(),
        _pad: 0,
        src_ip6: v6_words(args.tunnel_src),
        hash_seed: args.seed,
        udp_timeout_ns: lb_common::DEFAULT_UDP_TIMEOUT_NS,
    })?;
    let backends = install(&mut dp, &args.services, args.seed)?;
    let flags = match args.mode.as_str() {
        "driver" => XdpMode::Driver,
        "generic" => XdpMode::Skb,
        m => bail!("attach mode `{m}`: use driver or generic"),
    };
    let iface = args.iface.clone();
    if let Err(e) = dp.program_mut().attach(&iface, flags) {
        if flags != XdpMode::Driver {
            return Err(e).context(format!("attaching to {iface}"));
        }
        warn!(
            "driver-mode XDP failed on {iface} ({e}); falling back to generic mode, which is much slower"
        );
        dp.program_mut()
            .attach(&iface, XdpMode::Skb)
            .with_context(|| format!("attaching to {iface}"))?;
    }
    info!(
        iface,
        services = args.services.len(),
        backends = backends.len(),
        "load balancer attached"
    );
    let mut tick = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let counters = dp.counters()?;
                let line: Vec<String> = counters.iter()
                    .filter(|(_, v)| v.packets > 0)
                    .map(|(c, v)| format!("{}={}", c.name(), v.packets))
                    .collect();
                println!("{}", if line.is_empty() { "no packets yet".to_string() } else { line.join(" ") });
            }
        }
    }
    info!("interrupted; detaching from {iface}");
    Ok(())
}
