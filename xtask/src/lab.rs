//! `cargo xtask lab [up|down]`: one load balancer on a veth pair in two namespaces, its agent
//! running with examples/lab.toml, and a little client traffic, so the CLI has something to
//! show. (The full anycast lab, with a router, two load balancers and backends, builds on it.)

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const CLIENT: &str = "lb-lab-client";
const LB: &str = "lb-lab-lb";
const RUN_DIR: &str = "/run/lb-lab";
const SOCKET: &str = "/run/lb-lab/lb.sock";
const PIN_DIR: &str = "/sys/fs/bpf/lb-lab";

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub fn up(lb_bin: &str, config: &str) -> Result<()> {
    if netns_exists(CLIENT) || netns_exists(LB) {
        bail!("the lab is already up (`cargo xtask lab down` removes it)");
    }
    println!("[lab] namespaces {CLIENT} and {LB}, veth c0 <-> l0");
    for ns in [CLIENT, LB] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "link", "add", "c0", "netns", CLIENT, "type", "veth", "peer", "name", "l0", "netns", LB,
    ])?;
    ip(&["-n", CLIENT, "addr", "add", "198.51.100.1/24", "dev", "c0"])?;
    ip(&[
        "-n",
        CLIENT,
        "-6",
        "addr",
        "add",
        "2001:db8:1b::fe/64",
        "dev",
        "c0",
        "nodad",
    ])?;
    ip(&["-n", CLIENT, "link", "set", "c0", "up"])?;
    ip(&[
        "-n",
        CLIENT,
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        "198.51.100.2",
    ])?;
    ip(&["-n", LB, "addr", "add", "198.51.100.2/24", "dev", "l0"])?;
    ip(&[
        "-n",
        LB,
        "-6",
        "addr",
        "add",
        "2001:db8:1b::1/64",
        "dev",
        "l0",
        "nodad",
    ])?;
    ip(&["-n", LB, "link", "set", "l0", "up"])?;

    std::fs::create_dir_all(RUN_DIR)?;
    let log = std::fs::File::create(format!("{RUN_DIR}/agent.log"))?;
    // nsenter switches only the network namespace, so the agent's bpffs pins stay visible to
    // the host (and to a restarted agent).
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{LB}"))
        .args([lb_bin, "agent", "--config", config])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    std::fs::write(format!("{RUN_DIR}/agent.pid"), child.id().to_string())?;
    print!("[lab] starting the agent (log: {RUN_DIR}/agent.log) ");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(lb_bin)
            .args(["--socket", SOCKET, "status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success();
        if ok {
            println!(" ready");
            break;
        }
        if Instant::now() > deadline {
            println!();
            bail!(
                "the agent did not come up in 30 s; see {RUN_DIR}/agent.log:\n{}",
                std::fs::read_to_string(format!("{RUN_DIR}/agent.log")).unwrap_or_default()
            );
        }
        print!(".");
        use std::io::Write;
        std::io::stdout().flush().ok();
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("[lab] client traffic: 6 TCP connection attempts to 192.0.2.10:80");
    for _ in 0..6 {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                CLIENT,
                "timeout",
                "0.3",
                "bash",
                "-c",
                "exec 3<>/dev/tcp/192.0.2.10/80",
            ])
            .stderr(Stdio::null())
            .status();
    }
    println!(
        "[lab] up. Try:\n  export LB_SOCKET={SOCKET}\n  {lb_bin} status\n  {lb_bin} backend list\n  \
         {lb_bin} backend drain 192.0.2.10:80/tcp 2001:db8:be::2\n  {lb_bin} stats --watch\n\
         Remove it with `cargo xtask lab down`."
    );
    Ok(())
}

pub fn down(lb_bin: &str) -> Result<()> {
    let pid_file = format!("{RUN_DIR}/agent.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        let pid: i32 = pid.trim().parse().context("agent.pid")?;
        println!("[lab] stopping the agent (pid {pid})");
        // SAFETY: signals the agent this lab started, by its recorded PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = Command::new(lb_bin)
        .args(["detach", "--pin-dir", PIN_DIR, "--socket", SOCKET])
        .status();
    for ns in [CLIENT, LB] {
        if netns_exists(ns) {
            println!("[lab] removing namespace {ns}");
            ip(&["netns", "del", ns])?;
        }
    }
    let _ = std::fs::remove_dir_all(RUN_DIR);
    println!("[lab] down");
    Ok(())
}
