//! The `lb` CLI run against an agent's control socket.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Result, ensure};

pub fn lb_cmd(bin: &Path, socket: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running lb")
}

pub fn lb_json(bin: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = lb_cmd(bin, socket, &a);
    ensure!(
        out.status.success(),
        "lb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
