//! `lb detach`: remove a stopped agent's program and pinned maps.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::args::DetachArgs;
use crate::config::Config;

/// `socket` is the global `--socket`, used when no config file is given.
pub async fn run(args: DetachArgs, socket: PathBuf) -> Result<()> {
    let (pin_dir, socket) = match (args.config, args.pin_dir) {
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
    let removed = crate::dataplane::detach_pinned(&pin_dir)?;
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
