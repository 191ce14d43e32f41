//! `cargo xtask package`: a Debian package of a release build, made with dpkg-deb (no other
//! tool). Its file list is `FILES`, and docs/operating.md shows the same list (a test compares
//! the built package with both).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

use crate::progress::step;

/// Where each packaged file comes from (relative to the workspace), where it goes, its mode.
/// `lb` itself is the release binary.
const FILES: &[(&str, &str, u32)] = &[
    ("target/release/lb", "usr/sbin/lb", 0o755),
    (
        "deploy/systemd/lb-agent.service",
        "lib/systemd/system/lb-agent.service",
        0o644,
    ),
    (
        "deploy/systemd/lb-decap@.service",
        "lib/systemd/system/lb-decap@.service",
        0o644,
    ),
    ("examples/lb.toml", "etc/lb/lb.toml.example", 0o644),
    (
        "deploy/decap.conf.example",
        "etc/lb/decap/eth0.conf.example",
        0o644,
    ),
    (
        "deploy/prometheus/lb-alerts.yml",
        "usr/share/lb/prometheus/lb-alerts.yml",
        0o644,
    ),
    (
        "deploy/prometheus/lb-alerts.test.yml",
        "usr/share/lb/prometheus/lb-alerts.test.yml",
        0o644,
    ),
    (
        "deploy/grafana/lb-dashboard.json",
        "usr/share/lb/grafana/lb-dashboard.json",
        0o644,
    ),
    (
        "deploy/debian/copyright",
        "usr/share/doc/lb/copyright",
        0o644,
    ),
    ("README.md", "usr/share/doc/lb/README.md", 0o644),
    ("BENCHMARKS.md", "usr/share/doc/lb/BENCHMARKS.md", 0o644),
    (
        "docs/architecture.md",
        "usr/share/doc/lb/architecture.md",
        0o644,
    ),
    ("docs/backends.md", "usr/share/doc/lb/backends.md", 0o644),
    ("docs/bgp.md", "usr/share/doc/lb/bgp.md", 0o644),
    ("docs/dataplane.md", "usr/share/doc/lb/dataplane.md", 0o644),
    ("docs/operating.md", "usr/share/doc/lb/operating.md", 0o644),
    ("docs/security.md", "usr/share/doc/lb/security.md", 0o644),
    ("docs/sync.md", "usr/share/doc/lb/sync.md", 0o644),
    ("docs/sync-cost.md", "usr/share/doc/lb/sync-cost.md", 0o644),
];

/// The maintainer scripts (deploy/debian/<name>), run by dpkg.
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// Builds the release binary and the package; returns the .deb's path (under target/debian/).
pub fn run(workspace: &Path) -> Result<PathBuf> {
    step("building the release binary (lb)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "lb-userspace", "--bin", "lb"])
        .current_dir(workspace)
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building the release binary failed");
    step("building the Debian package");
    let deb = build(workspace)?;
    println!("{}", deb.display());
    Ok(deb)
}

fn build(workspace: &Path) -> Result<PathBuf> {
    let version = workspace_version(workspace)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let out = workspace.join("target/debian");
    let root = out.join(format!("lb_{version}_{arch}"));
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    for (from, to, mode) in FILES {
        let src = workspace.join(from);
        let dst = root.join(to);
        std::fs::create_dir_all(dst.parent().unwrap())?;
        std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        set_mode(&dst, *mode)?;
    }
    let debian = root.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    for s in SCRIPTS {
        let dst = debian.join(s);
        std::fs::copy(workspace.join("deploy/debian").join(s), &dst)?;
        set_mode(&dst, 0o755)?;
    }
    let conffiles: String = FILES
        .iter()
        .filter(|(_, to, _)| to.starts_with("etc/"))
        .map(|(_, to, _)| format!("/{to}\n"))
        .collect();
    std::fs::write(debian.join("conffiles"), conffiles)?;
    let libc = glibc_needed(&root.join("usr/sbin/lb"))?;
    let size_kib = dir_size(&root)?.div_ceil(1024);
    let control = format!(
        "Package: lb\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: lb developers <lb@example.org>\n\
         Section: net\n\
         Priority: optional\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6 (>= {libc}), bird2, iproute2\n\
         Description: XDP anycast TCP load balancer\n \
         An XDP program that hashes flows through Maglev tables to backends and\n \
         encapsulates them in IPv6, an agent that drives it, checks backends, announces\n \
         VIPs through BIRD and syncs with its peers, and the backends' decapsulation.\n"
    );
    std::fs::write(debian.join("control"), control)?;
    let deb = out.join(format!("lb_{version}_{arch}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb)
        .status()
        .context("running dpkg-deb")?;
    ensure!(status.success(), "dpkg-deb failed");
    Ok(deb)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The version in the workspace's Cargo.toml (`[workspace.package] version`).
fn workspace_version(workspace: &Path) -> Result<String> {
    let text = std::fs::read_to_string(workspace.join("Cargo.toml"))?;
    let after = text
        .split("[workspace.package]")
        .nth(1)
        .context("no [workspace.package] in Cargo.toml")?;
    for line in after.lines() {
        if let Some(v) = line.trim().strip_prefix("version = ") {
            return Ok(v.trim_matches('"').to_string());
        }
    }
    bail!("no version in [workspace.package]")
}

/// The newest glibc symbol version the binary needs: the lowest libc6 it runs with.
fn glibc_needed(binary: &Path) -> Result<String> {
    let text = output(Command::new("objdump").arg("-T").arg(binary))?;
    let mut best: Option<Vec<u32>> = None;
    for word in text.split_whitespace() {
        // objdump -T shows the version as `(GLIBC_2.34)`.
        let word = word.trim_matches(['(', ')']);
        let Some(v) = word.strip_prefix("GLIBC_") else {
            continue;
        };
        let Ok(parts) = v
            .split('.')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()
        else {
            continue;
        };
        if best.as_ref().is_none_or(|b| parts > *b) {
            best = Some(parts);
        }
    }
    let best = best.context("the binary links no glibc symbol: not a dynamic glibc binary?")?;
    Ok(best
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
