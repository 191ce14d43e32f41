//! Issue 17: the Debian package and its systemd units. `cargo xtask test` builds the package
//! (`cargo xtask package`, a release build) and passes its path in LB_DEB.
//!
//! - The package installs with `dpkg -i` into a scratch root, whose dpkg database is a copy of
//!   this machine's (so its dependencies are checked for real); the installed `lb` runs and
//!   validates the shipped example; the units pass `systemd-analyze verify`; `dpkg -r` removes
//!   it again. Its file list is exactly the one docs/operating.md shows.
//! - The agent's unit runs it as root with a reduced capability bounding set. The lab runs its
//!   agents with exactly that set (as systemd would), and everything works: XDP, health
//!   checks, BIRD, peer sync, real TCP through the VIP. Each capability of the set is needed:
//!   without it the agent does not start or does not serve.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tests::e2e::*;
use tests::lab::{self, HTTP_PORT, Lab, LabOptions, VIP4};

fn deb() -> PathBuf {
    let deb = std::env::var_os("LB_DEB").map(PathBuf::from).expect(
        "LB_DEB is not set: run the suite with `cargo xtask test`, which builds the package \
         first (or `cargo xtask package` and set LB_DEB to the .deb it prints)",
    );
    assert!(deb.exists(), "{} is missing", deb.display());
    deb
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The file list docs/operating.md shows, between its `package files` markers.
fn documented_files() -> Vec<String> {
    let doc = std::fs::read_to_string(workspace().join("docs/operating.md")).unwrap();
    let block = doc
        .split("<!-- package files: begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- package files: end -->").next())
        .expect("docs/operating.md lists the package's files between its markers");
    let mut files: Vec<String> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(String::from)
        .collect();
    files.sort();
    files
}

#[test]
fn the_package_installs_into_a_scratch_root_and_holds_what_the_docs_list() {
    tests::require_root();
    let deb = deb();

    // Its files (regular files; directories are implied) are the documented ones.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut files: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    files.sort();
    assert_eq!(files, documented_files(), "package vs docs/operating.md");
    for l in listing.lines().filter(|l| l.starts_with('-')) {
        assert!(l.contains(" root/root "), "owned by root: {l}");
    }
    assert!(listing.contains("-rwxr-xr-x root/root"), "lb is executable");

    // Depends on what the agent runs (BIRD, iproute2) and the C library, nothing else.
    let depends = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends"));
    let names: Vec<&str> = depends
        .trim()
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["libc6", "bird2", "iproute2"], "{depends}");

    // Install into a scratch root with this machine's package database.
    let root = std::env::temp_dir().join(format!("lb-pkg-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::copy("/var/lib/dpkg/status", admin.join("status")).unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    let dpkg = |args: &[&str]| {
        let mut c = Command::new("dpkg");
        c.arg(format!("--root={}", root.display()))
            .arg("--force-script-chrootless")
            .arg("--log=/dev/null")
            .args(args);
        c
    };
    run(dpkg(&["-i"]).arg(&deb));
    let lb = root.join("usr/sbin/lb");
    let version = run(Command::new(&lb).arg("--version"));
    assert!(version.starts_with("lb 0."), "{version}");
    let check = run(Command::new(&lb)
        .args(["agent", "--check", "--config"])
        .arg(root.join("etc/lb/lb.toml.example")));
    assert!(check.contains("valid."), "{check}");
    // The shipped units are the repository's, and systemd finds nothing wrong in them.
    for unit in ["lb-agent.service", "lb-decap@.service"] {
        assert_eq!(
            std::fs::read(root.join("lib/systemd/system").join(unit)).unwrap(),
            std::fs::read(workspace().join("deploy/systemd").join(unit)).unwrap()
        );
    }
    // systemd-analyze checks the commands and the units they order against in the root: give
    // it the host's targets and kill(1), as a real system has.
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for t in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let t = t.unwrap().path();
        if t.extension().is_some_and(|e| e == "target") {
            std::fs::copy(&t, units.join(t.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    for tool in ["kill", "sh"] {
        std::fs::copy(
            Path::new("/usr/bin").join(tool),
            root.join("usr/bin").join(tool),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(["lb-agent.service", "lb-decap@eth0.service"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && !text.contains("lb-"),
        "systemd-analyze verify:\n{text}"
    );

    // Removed, only the conffiles stay (until purge).
    run(&mut dpkg(&["-r", "lb"]));
    assert!(!lb.exists());
    assert!(root.join("etc/lb/lb.toml.example").exists());
    run(&mut dpkg(&["-P", "lb"]));
    assert!(!root.join("etc/lb/lb.toml.example").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

/// The capabilities `CapabilityBoundingSet=` of a shipped unit names.
fn capabilities_of(unit: &str) -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("deploy/systemd").join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap_or_else(|| panic!("{unit} sets CapabilityBoundingSet="));
    line.split_whitespace().map(String::from).collect()
}

/// Load balancer 1 serves the VIP: the agent answers, every backend is healthy, BIRD announces
/// the VIP through it (lb2 is drained), and real HTTP through the VIP is answered.
fn lb1_serves(lab: &Lab, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let v4 = format!("{VIP4}:{HTTP_PORT}/tcp");
    let mut last = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(list) = lab.lb_json(1, &["backend", "list", &v4]) else {
            last = "the agent does not answer".into();
            continue;
        };
        let healthy = list
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|b| b["health"] == "up"));
        if !healthy {
            last = format!("backends not all healthy: {list}");
            continue;
        }
        let hops = lab.router_paths(IpAddr::V4(VIP4)).unwrap_or_default();
        if !hops.iter().any(|h| lab.lb_of_hop(*h) == Some(1)) {
            last = format!("the router has no path through lb1: {hops:?}");
            continue;
        }
        let target = SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT);
        let got = tests::lab::in_ns(&lab.ns("client"), move || {
            lab::http_get(target, Duration::from_secs(2)).map_err(|e| format!("{e:#}"))
        })
        .map_err(|e| format!("{e:#}"))?;
        match got {
            Ok(body) if !body.trim().is_empty() => return Ok(()),
            Ok(body) => last = format!("empty answer {body:?}"),
            Err(e) => last = format!("HTTP through the VIP: {e}"),
        }
    }
    Err(last)
}

#[test]
fn the_agent_serves_with_the_units_capabilities_and_needs_each_of_them() {
    // The lab runs both the agents and the backends' `lb decap` with the set: one set serves
    // both units.
    let caps = capabilities_of("lb-agent.service");
    assert_eq!(caps, capabilities_of("lb-decap@.service"));
    let mut lab = lab_with("caps", |o: &mut LabOptions| {
        o.capabilities = Some(caps.clone());
    });
    // Only lb1 is announced, so the client's requests go through it.
    assert!(lab.lb(2, &["node", "drain"]).status.success());
    lb1_serves(&lab, Duration::from_secs(20)).expect("lb1 serves with the unit's capabilities");
    let pins = lab.opts.pin_root.join(lab::lb_name(1));

    // Each capability is needed: a fresh start (no pins to adopt) without it fails or does
    // not serve.
    let fresh = |lab: &Lab| {
        let _ = lab.stop_agent(1);
        let _ = Command::new(&lab.opts.lb_bin)
            .args(["detach", "--pin-dir"])
            .arg(&pins)
            .output();
        assert!(!pins.exists(), "{} detached", pins.display());
    };
    for missing in &caps {
        fresh(&lab);
        lab.opts.capabilities = Some(caps.iter().filter(|c| *c != missing).cloned().collect());
        let outcome = match lab.start_agent(1) {
            Err(e) => Err(format!("does not start: {e:#}")),
            Ok(()) => {
                lb1_serves(&lab, Duration::from_secs(8)).map_err(|e| format!("does not serve: {e}"))
            }
        };
        eprintln!("without {missing}: {outcome:?}");
        assert!(
            outcome.is_err(),
            "the agent works without {missing}: drop it from the unit"
        );
    }
    // And back with the whole set, from scratch, it serves again.
    fresh(&lab);
    lab.opts.capabilities = Some(caps.clone());
    lab.start_agent(1).unwrap();
    lb1_serves(&lab, Duration::from_secs(20)).expect("lb1 serves again");
    finish(lab);
}
