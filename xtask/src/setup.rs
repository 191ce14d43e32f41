//! Prerequisites, checked and installed idempotently.
//!
//! - Debian packages: LLVM 22 (bpf-linker links against it) and the network tools tests use.
//! - The nightly toolchain's rust-src (the eBPF crate is built with -Z build-std=core).
//! - bpf-linker 0.13, built against Debian's LLVM 22.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::progress::step;

/// Debian packages the build and the tests need. util-linux: nsenter (lab) and setpriv (tests);
/// iproute2: ip (the agent's neighbour lookup, the lab, the tests); bird2 and nginx-light: the
/// lab's BGP speakers and HTTP backends; curl: for people trying the lab; binutils: objdump
/// (the package's libc6 dependency); chromium: the status page's test, in a real browser.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "util-linux",
    "ethtool",
    "bpftool",
    "tcpdump",
    "bird2",
    "nginx-light",
    "curl",
    "iputils-ping",
    "strace",
    "binutils",
    "chromium",
];
/// promtool (the metrics and alert-rule tests) comes from Debian's `prometheus` package, but
/// only the tool is installed: the package would also install and start a Prometheus server.
const PROMTOOL: &str = "/usr/local/bin/promtool";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

fn quiet(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing_packages() -> Vec<&'static str> {
    APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            quiet(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect()
}

fn has_rust_src() -> bool {
    quiet(Command::new("rustup").args(["+nightly", "component", "list", "--installed"]))
        .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")))
}

fn has_nightly() -> bool {
    quiet(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])).is_some()
}

fn has_bpf_linker() -> bool {
    quiet(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
}

pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("{why}: run as root (CAP_BPF and CAP_NET_ADMIN are needed)");
    }
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Downloads Debian's prometheus package and copies its promtool to PROMTOOL.
fn install_promtool() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("lb-promtool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let download = |dir: &std::path::Path| {
        Command::new("apt-get")
            .args(["download", "-q", "prometheus"])
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !download(&dir) {
        // The package lists may be missing or stale on a fresh machine.
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        if !download(&dir) {
            bail!("apt-get download prometheus failed");
        }
    }
    let deb = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    sh(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("x")))?;
    std::fs::copy(dir.join("x/usr/bin/promtool"), PROMTOOL).context("installing promtool")?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Checks every prerequisite and installs what is missing. With `verbose`, reports each one.
pub fn run(verbose: bool) -> Result<()> {
    let packages = missing_packages();
    let nightly = has_nightly();
    let rust_src = nightly && has_rust_src();
    let linker = has_bpf_linker();
    let promtool = std::path::Path::new(PROMTOOL).exists();
    if packages.is_empty() && rust_src && linker && promtool {
        if verbose {
            step("all prerequisites are installed:");
            eprintln!("    Debian packages: {}", APT_PACKAGES.join(" "));
            eprintln!("    nightly toolchain with rust-src");
            eprintln!("    bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
            eprintln!("    {PROMTOOL} (from Debian's prometheus package)");
        }
        return Ok(());
    }
    let debian = std::path::Path::new("/etc/debian_version").exists();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc_geteuid() } == 0;
    if !debian || !root {
        let mut todo = Vec::new();
        if !packages.is_empty() {
            todo.push(format!(
                "packages: {} (LLVM 22 development files and network tools)",
                packages.join(" ")
            ));
        }
        if !rust_src {
            todo.push("`rustup toolchain install nightly --component rust-src`".into());
        }
        if !promtool {
            todo.push(format!(
                "promtool at {PROMTOOL} (Debian's prometheus package has it)"
            ));
        }
        if !linker {
            todo.push(format!(
                "`LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22`"
            ));
        }
        bail!(
            "prerequisites are missing and automatic setup needs {} — install by hand:\n  - {}",
            if !debian { "Debian (apt)" } else { "root" },
            todo.join("\n  - ")
        );
    }
    if !packages.is_empty() {
        step(&format!(
            "installing Debian packages: {}",
            packages.join(" ")
        ));
        sh(Command::new("apt-get").args(["update", "-q"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !promtool {
        step("installing promtool from Debian's prometheus package (the tool only)");
        install_promtool()?;
    }
    if !nightly {
        bail!(
            "the nightly toolchain is missing: `rustup toolchain install nightly --component rust-src`"
        );
    }
    if !rust_src {
        step("adding rust-src to the nightly toolchain (the eBPF crate builds core from source)");
        sh(Command::new("rustup").args(["+nightly", "component", "add", "rust-src"]))?;
    }
    if !linker {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        ));
        // bpf-linker finds LLVM through llvm-config on PATH, which on Debian may be another
        // LLVM version: point it (and llvm-sys) at LLVM 22 explicitly.
        sh(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))?;
    }
    step("prerequisites installed");
    Ok(())
}

fn sh(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
