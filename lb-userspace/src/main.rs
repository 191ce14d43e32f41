//! `lb`: the load balancer's agent and operator CLI. This file only parses the command line
//! and dispatches; each verb lives in `cli/` (the agent in `agent`).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::cli::args::{
    BackendCmd, CheckArgs, DetachArgs, NodeCmd, PeerCmd, ReloadArgs, StatsArgs, VipCmd,
};
use lb_userspace::cli::{self, Client};
use lb_userspace::config::DEFAULT_API_SOCKET;

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
    /// Seconds to wait for the agent's answer (a reload of tens of thousands of backends on
    /// a slow machine can take minutes).
    #[arg(long, global = true, env = "LB_TIMEOUT", default_value_t = 120,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: u64,
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
    Stats(StatsArgs),
    /// Drain or undrain the whole node: withdraw or announce its VIPs through BGP.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The fleet: peers, their state versions and digests, flow sync.
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Make the agent re-read its config file and apply the difference (same as SIGHUP). With
    /// peer sync, only node-local settings: the fleet's state rules unless --fleet.
    Reload(ReloadArgs),
    /// Detach the XDP program and remove its pinned maps: forwarding stops and all connection
    /// state is dropped. The agent must be stopped first.
    Detach(DetachArgs),
    /// On a backend: attach the XDP decapsulation program to a NIC (it stays attached, pinned,
    /// after `lb` exits), or show its counters (--stats), or remove it (--detach).
    Decap(lb_decap::DecapArgs),
    /// Load the XDP program, let the kernel verify it, and print its map limits.
    Check(CheckArgs),
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
    let client = Client::new(&args.socket, std::time::Duration::from_secs(args.timeout));
    let json = args.json;
    match args.command {
        Command::Agent(a) => lb_userspace::agent::run(a).await,
        Command::Status => cli::status::run(&client, json).await,
        Command::Vip(cmd) => cli::vip::run(&client, cmd, json).await,
        Command::Backend(cmd) => cli::backend::run(&client, cmd, json).await,
        Command::Stats(a) => cli::stats::run(&client, a, json).await,
        Command::Reload(a) => cli::reload::run(&client, a, json).await,
        Command::Node(cmd) => cli::node::run(&client, cmd, json).await,
        Command::Peer(cmd) => cli::peer::run(&client, cmd, json).await,
        Command::Detach(a) => cli::detach::run(a, args.socket).await,
        Command::Decap(a) => lb_decap::run(a, args.json),
        Command::Check(a) => cli::check::run(a),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
