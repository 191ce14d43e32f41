//! `lb`: the load balancer's agent and operator CLI.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use lb_userspace::cli::{self, BackendCmd, Client, VipCmd};
use lb_userspace::config::{Config, DEFAULT_API_SOCKET};
use lb_userspace::dataplane::{Dataplane, DataplaneLimits};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "XDP anycast TCP load balancer: agent and operator CLI"
)]
struct Cli {
    /// The agent's control socket.
    #[arg(long, global = true, env = "LB_SOCKET", default_value = DEFAULT_API_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and attach the XDP program, keep its maps equal to the config and
    /// to operators' changes, serve the control API.
    Agent(lb_userspace::agent::AgentArgs),
    /// The agent's state: interfaces, table version, runtime changes.
    Status,
    /// Add, remove and list VIPs.
    #[command(subcommand)]
    Vip(VipCmd),
    /// Add, remove, drain, undrain, weight and list backends.
    #[command(subcommand)]
    Backend(BackendCmd),
    /// Packet and bit rates per VIP and backend, and the dataplane's counters.
    Stats {
        /// Keep printing, every --interval seconds.
        #[arg(long)]
        watch: bool,
        /// Seconds between the two samples a rate is computed from.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// With --watch: stop after this many reports.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Drain or undrain the whole node: withdraw or announce its VIPs through BGP.
    #[command(subcommand)]
    Node(cli::NodeCmd),
    /// The fleet: peers, their state versions and digests, flow sync.
    #[command(subcommand)]
    Peer(cli::PeerCmd),
    /// Make the agent re-read its config file and apply the difference (same as SIGHUP).
    Reload,
    /// Detach the XDP program and remove its pinned maps: forwarding stops and all connection
    /// state is dropped. The agent must be stopped first.
    Detach {
        /// Take the pin directory (and socket) from this config file.
        #[arg(long, conflicts_with = "pin_dir")]
        config: Option<PathBuf>,
        /// The pin directory.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// On a backend: attach the XDP decapsulation program to a NIC (it stays attached, pinned,
    /// after `lb` exits), or show its counters (--stats), or remove it (--detach).
    Decap(lb_decap::DecapArgs),
    /// Load the XDP program, let the kernel verify it, and print its map limits.
    Check {
        /// Maglev table size (a prime).
        #[arg(long, default_value_t = lb_common::DEFAULT_RING_SIZE)]
        ring_size: u32,
    },
}

async fn detach(config: Option<PathBuf>, pin_dir: Option<PathBuf>, socket: PathBuf) -> Result<()> {
    let (pin_dir, socket) = match (config, pin_dir) {
        (Some(c), _) => {
            let cfg = Config::load(&c)?;
            (cfg.agent.pin_dir, cfg.agent.api_socket)
        }
        (None, Some(p)) => (p, socket),
        (None, None) => bail!("give --config or --pin-dir"),
    };
    if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        bail!(
            "an agent is running on {}; stop it first (it holds the program attached)",
            socket.display()
        );
    }
    let removed = lb_userspace::dataplane::detach_pinned(&pin_dir)?;
    if removed.is_empty() {
        println!("nothing pinned at {}", pin_dir.display());
    } else {
        println!(
            "detached and unpinned {}: {}",
            pin_dir.display(),
            removed.join(", ")
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Cli::parse();
    let client = Client::new(&args.socket);
    match args.command {
        Command::Agent(a) => lb_userspace::agent::run(a).await,
        Command::Status => cli::status(&client, args.json).await,
        Command::Vip(cmd) => cli::vip(&client, cmd, args.json).await,
        Command::Backend(cmd) => cli::backend(&client, cmd, args.json).await,
        Command::Stats {
            watch,
            interval,
            count,
        } => cli::stats(&client, args.json, watch, interval, count).await,
        Command::Reload => cli::reload(&client, args.json).await,
        Command::Node(cmd) => cli::node(&client, cmd, args.json).await,
        Command::Peer(cmd) => cli::peer(&client, cmd, args.json).await,
        Command::Detach { config, pin_dir } => detach(config, pin_dir, args.socket).await,
        Command::Decap(a) => lb_decap::run(a, args.json),
        Command::Check { ring_size } => {
            let dp = Dataplane::load(DataplaneLimits {
                ring_size,
                ..Default::default()
            })?;
            println!("XDP program verified and loaded: {:?}", dp.limits());
            Ok(())
        }
    }
}
