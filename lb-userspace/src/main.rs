//! `lb`: the load balancer's agent and operator CLI.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP anycast TCP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, let the kernel verify it, and print its map limits.
    Check {
        /// Maglev table size (a prime).
        #[arg(long, default_value_t = lb_common::DEFAULT_RING_SIZE)]
        ring_size: u32,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
    ).init();
    match Cli::parse().command {
        Command::Check { ring_size } => {
            let limits = lb_userspace::dataplane::DataplaneLimits { ring_size, ..Default::default() };
            let dp = lb_userspace::dataplane::Dataplane::load(limits)?;
            println!("XDP program verified and loaded: {:?}", dp.limits());
        }
    }
    Ok(())
}
