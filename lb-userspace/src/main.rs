//! `lb`: the load balancer's command line.

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::dataplane::{Dataplane, DataplaneLimits};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP anycast TCP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the load balancer to a NIC and forward the given services until Ctrl-C.
    Run(lb_userspace::run::RunArgs),
    /// Load the XDP program, let the kernel verify it, and print its map limits.
    Check {
        /// Maglev table size (a prime).
        #[arg(long, default_value_t = lb_common::DEFAULT_RING_SIZE)]
        ring_size: u32,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Run(args) => lb_userspace::run::run(args).await,
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
