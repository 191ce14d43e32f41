//! `cargo xtask <command>`: setup, build, run and test the load balancer.
//!
//! Every command except `setup` first checks the prerequisites and installs what is missing,
//! so a fresh Debian machine needs nothing but `cargo xtask test` (as root).

mod package;
mod progress;
mod setup;

use progress::step;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Build, run and test the XDP load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install prerequisites: Debian packages, the nightly's rust-src, bpf-linker (idempotent).
    Setup,
    /// Build the XDP object and the userspace binaries.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `lb` with the given arguments (as root), e.g.
    /// `cargo xtask run -- agent --config /etc/lb/lb.toml`.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks (root). By default the bench of BENCHMARKS.md, printed as one markdown table:
    /// dataplane cost per packet (BPF_PROG_TEST_RUN, ratios to a floor program), scale, live
    /// XDP_TX throughput, control-plane times and kernel map memory (about 3 minutes). With
    /// `--conntrack`, the connection-table layouts; with `--sync`, what peer flow sync costs.
    Bench {
        /// Only these sections: dataplane, egress, scale, live, control, memory (default: all).
        #[arg(value_parser = ["dataplane", "egress", "scale", "live", "control", "memory"])]
        sections: Vec<String>,
        /// Compare the connection-table layouts under concurrent inserts and hits instead.
        #[arg(long, conflicts_with = "sync")]
        conntrack: bool,
        /// With --conntrack: new flows per CPU in each scenario.
        #[arg(long, default_value_t = 100_000, requires = "conntrack")]
        flows: u32,
        /// Run the flow-sync cost bench (lb-sync-bench) instead.
        #[arg(long)]
        sync: bool,
        /// With --sync: new flows per second, one measured window each (default 2000,5000,10000,20000).
        #[arg(long, value_delimiter = ',', requires = "sync")]
        rates: Vec<u32>,
        /// With --sync: seconds of sending per rate (default 10).
        #[arg(long, requires = "sync")]
        secs: Option<f64>,
        /// With --sync: print the results as JSON.
        #[arg(long, requires = "sync")]
        json: bool,
        /// With --sync: compare the `[sync] flows` modes (all, changes, off): steady new flows,
        /// with a drain every 3 s, and a spoofed SYN flood (BENCHMARKS.md, "Flow sync modes").
        #[arg(long, requires = "sync")]
        modes: bool,
        /// With --sync --modes: the flood's SYNs per second (default 50000).
        #[arg(long, requires = "modes")]
        flood_rate: Option<u32>,
    },
    /// The anycast lab in namespaces: client, BGP router with ECMP, load balancers (2 unless
    /// --lbs), 3 backends. `up` (the default) builds it and shows a live view.
    Lab {
        /// Load balancers to build (1 to 8), all peered with the router (ECMP) and each other.
        /// (lb-lab checks the same bound, lb_lab::MAX_LBS; here it fails before the build.)
        #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..=8))]
        lbs: Option<u16>,
        #[command(subcommand)]
        action: Option<LabCmd>,
    },
    /// Build the Debian package (target/debian/lb_<version>_<arch>.deb) from a release build:
    /// `lb`, the systemd units, the example configs, the alert rules, the dashboard, the docs.
    Package,
    /// Run the whole test suite: host unit tests and BPF_PROG_TEST_RUN packet tests (root).
    /// It builds the package first, for the tests that install it.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build and start the lab, then show the live view.
    Up {
        /// Seconds of live view (0: none).
        #[arg(long, default_value_t = 20)]
        view: u64,
    },
    /// Live view of the running lab: requests per backend, per load balancer, health.
    View {
        #[arg(long, default_value_t = 20)]
        secs: u64,
    },
    /// Withdraw one load balancer's routes (`lb node drain`), or restore them.
    Shift {
        /// lb1, lb2, ... (one of the running lab's).
        lb: String,
        #[arg(long)]
        restore: bool,
    },
    /// Stop every process the lab started and remove its namespaces and pins.
    Down,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(true),
        Cmd::Build { release } => {
            setup::run(false)?;
            build(release)
        }
        Cmd::Run { release, args } => {
            setup::run(false)?;
            build(release)?;
            let bin = format!("target/{}/lb", if release { "release" } else { "debug" });
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {bin}"))?;
            if !status.success() {
                bail!("lb exited with {status}");
            }
            Ok(())
        }
        Cmd::Lab { lbs, action } => {
            let action = action.unwrap_or(LabCmd::Up { view: 20 });
            if lbs.is_some() && !matches!(action, LabCmd::Up { .. }) {
                bail!(
                    "--lbs is for building the lab (`cargo xtask lab --lbs N`, or `lab up --lbs N`)"
                );
            }
            setup::run(false)?;
            setup::require_root("the lab creates namespaces and loads XDP programs")?;
            let args: Vec<String> = match action {
                LabCmd::Up { view } => {
                    build(false)?;
                    let mut a = vec!["up".into(), "--view".into(), view.to_string()];
                    if let Some(n) = lbs {
                        a.extend(["--lbs".into(), n.to_string()]);
                    }
                    a
                }
                LabCmd::View { secs } => vec!["view".into(), "--secs".into(), secs.to_string()],
                LabCmd::Shift { lb, restore } => {
                    let mut a = vec!["shift".into(), lb];
                    if restore {
                        a.push("--restore".into());
                    }
                    a
                }
                LabCmd::Down => vec!["down".into()],
            };
            // Absolute paths, so the lab works from any directory of the checkout.
            let bin =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/lb-lab");
            if !bin.exists() {
                build(false)?;
            }
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            if !status.success() {
                bail!("the lab command failed ({status})");
            }
            Ok(())
        }
        Cmd::Bench {
            flows,
            sync,
            rates,
            secs,
            json,
            modes,
            flood_rate,
            sections,
            conntrack,
        } => {
            setup::run(false)?;
            setup::require_root("the benchmarks load XDP programs")?;
            if sync {
                bench_sync(&rates, secs, json, modes, flood_rate)
            } else if conntrack {
                bench_conntrack(flows)
            } else {
                bench(&sections)
            }
        }
        Cmd::Package => {
            setup::run(false)?;
            package::run(&workspace()).map(drop)
        }
        Cmd::Test { args } => {
            setup::run(false)?;
            setup::require_root("the test suite loads XDP programs")?;
            let deb = package::run(&workspace())?;
            step("running the test suite (host unit tests + XDP packet tests)");
            test(&args, &deb)
        }
    }
}

/// Runs `cargo test`, echoing its output, and closes with one summary line over all test
/// binaries ("N passed, N failed"), so the last line tells the whole suite's result.
fn test(extra: &[String], deb: &std::path::Path) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The tests run binaries of other packages, which cargo test alone does not build: `lb`
    // (agent tests), `lb-echo` and `lb-lab` (end-to-end labs, their pages) and `lb-bench` (the
    // bench's self-check). They
    // find them next to their own directory (target/<profile>/).
    let mut build = Command::new(&cargo);
    build.args(["build", "--package", "lb-userspace", "--bin", "lb"]);
    build.args(["--package", "lb-lab", "--bin", "lb-echo", "--bin", "lb-lab"]);
    build.args(["--package", "lb-bench", "--bin", "lb-bench"]);
    if extra.iter().any(|a| a == "--release") {
        build.arg("--release");
    }
    if !build
        .status()
        .context("building lb, lb-echo, lb-bench")?
        .success()
    {
        bail!("building lb, lb-echo and lb-bench failed");
    }
    let mut child = Command::new(cargo)
        .args(["test", "--no-fail-fast"])
        .args(extra)
        // tests/tests/package.rs installs this package into a scratch root.
        .env("LB_DEB", deb)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let n: u64 = n.parse().unwrap_or(0);
                match what {
                    "passed" => passed += n,
                    "failed" => failed += n,
                    "ignored" => ignored += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("the test suite failed");
    }
    if passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

/// The workspace root (xtask's parent directory).
fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// Connection-table layouts compared by the bench: (label, lb-ebpf feature).
const CONN_VARIANTS: &[(&str, &str)] = &[
    ("shared (default)", ""),
    ("shared, per-CPU LRU lists", "conns-no-common-lru"),
    ("per-CPU tables", "conns-percpu-lru"),
];

/// The bench of BENCHMARKS.md (lb-bench/src/lb_bench/): release builds, because the
/// control-plane section runs the real `lb` agent.
fn bench(sections: &[String]) -> Result<()> {
    let mut args = Vec::new();
    // The egress section compares the cache with a lookup per packet: another build of lb-xdp.
    if sections.is_empty() || sections.iter().any(|s| s == "egress") {
        step("building the XDP object with a FIB lookup per packet (egress-fib)");
        args.push("--fib-object".to_string());
        args.push(
            workspace()
                .join(build_variant("egress-fib")?)
                .display()
                .to_string(),
        );
    }
    args.extend(sections.iter().cloned());
    run_release_bin(
        "lb-bench",
        &args,
        "running the bench (progress on stderr, the table on stdout)",
    )
}

/// Builds the release binaries (lb, the bench runners, the XDP objects with them) and runs
/// `target/release/<bin> <args>`.
fn run_release_bin(bin: &str, args: &[String], what: &str) -> Result<()> {
    step("building the release binaries (lb, lb-echo, the bench runners)");
    cargo(&[
        "build",
        "--release",
        "-p",
        "lb-userspace",
        "-p",
        "lb-lab",
        "-p",
        "lb-bench",
        "--bins",
    ])?;
    step(what);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(bin);
    let status = Command::new(&path)
        .args(args)
        .status()
        .with_context(|| format!("starting {}", path.display()))?;
    if !status.success() {
        bail!("{bin} failed ({status})");
    }
    Ok(())
}

/// Builds lb-xdp with an lb-ebpf `feature` ("" for none) into target/bpf-variants/ and returns
/// the object's path.
fn build_variant(feature: &str) -> Result<String> {
    let dir = format!(
        "target/bpf-variants/{}",
        if feature.is_empty() {
            "default"
        } else {
            feature
        }
    );
    // The same flags aya-build uses for the embedded object.
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "build",
            "--quiet",
            "--package",
            "lb-ebpf",
            "--bins",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            &dir,
        ])
        .args(["--features", feature])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .context("building an XDP object variant")?;
    if !status.success() {
        bail!("building the XDP object with feature {feature:?} failed");
    }
    Ok(format!("{dir}/bpfel-unknown-none/release/lb-xdp"))
}

fn bench_conntrack(flows: u32) -> Result<()> {
    let mut specs = Vec::new();
    for (label, feature) in CONN_VARIANTS {
        step(&format!(
            "building the XDP object: connection table {label}"
        ));
        let object = build_variant(feature)?;
        specs.push(format!("{label}={object}"));
    }
    step(
        "running: 2 threads pinned to CPU 0 and 1, BPF_PROG_TEST_RUN, kernel-measured ns per packet",
    );
    let mut args = vec![
        "run",
        "--quiet",
        "--release",
        "-p",
        "lb-bench",
        "--bin",
        "lb-bench",
        "--",
        "conntrack",
    ];
    let flows = flows.to_string();
    args.push(&flows);
    args.extend(specs.iter().map(String::as_str));
    cargo(&args)
}

/// The flow-sync cost bench: release agents in the lab (lb-bench/src/lb_sync_bench/).
fn bench_sync(
    rates: &[u32],
    secs: Option<f64>,
    json: bool,
    modes: bool,
    flood_rate: Option<u32>,
) -> Result<()> {
    let mut args = Vec::new();
    if modes {
        args.push("--modes".to_string());
    }
    if let Some(r) = flood_rate {
        args.extend(["--flood-rate".to_string(), r.to_string()]);
    }
    if !rates.is_empty() {
        let list: Vec<String> = rates.iter().map(u32::to_string).collect();
        args.extend(["--rates".to_string(), list.join(",")]);
    }
    if let Some(s) = secs {
        args.extend(["--secs".to_string(), s.to_string()]);
    }
    if json {
        args.push("--json".to_string());
    }
    run_release_bin(
        "lb-sync-bench",
        &args,
        "running the flow-sync bench: lab lbsb, SYNs at each rate into lb1, synced to lb2",
    )
}

fn build(release: bool) -> Result<()> {
    step("building the XDP object (nightly, bpfel-unknown-none) and the userspace binaries");
    // lb (agent, CLI, decap), and lb-lab with lb-echo (the lab and its echo service).
    let mut args = vec![
        "build",
        "--package",
        "lb-userspace",
        "--package",
        "lb-lab",
        "--bins",
    ];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
