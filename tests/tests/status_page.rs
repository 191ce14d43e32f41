//! Issue 17: the agent's live status page, in a real browser. Headless Chromium (Debian's
//! `chromium`, installed by `cargo xtask setup`) runs in a load balancer's namespace, loads
//! `http://127.0.0.1:9450/` from the lab's agent, lets the page poll for a few seconds and
//! dumps its DOM, while real HTTP traffic flows through the VIP. The test checks that every
//! VIP, backend and peer is on the page, and that the charts' numbers move with the traffic.
//! The screenshot is kept in target/test-artifacts/status-page.png. The lab page (the router's
//! next hops and both load balancers' pages, served on the host by `lb-lab web`) is loaded from
//! the host namespace too: target/test-artifacts/lab-page.png. The same lab's `/metrics`
//! must hold every metric the shipped alert rules and Grafana dashboard query.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tests::deploy::{alert_metrics, dashboard_metrics, exposed_metrics};
use tests::e2e::*;
use tests::lab::{self, HTTP_PORT, VIP4, backend_link6, services};

/// Runs headless Chromium in namespace `ns` (None: the host's) on `url` with `args` (after
/// the common ones); its stdout.
fn chromium(ns: Option<&str>, profile: &Path, url: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("timeout");
    cmd.arg("60");
    if let Some(ns) = ns {
        cmd.args(["ip", "netns", "exec", ns]);
    }
    let out = cmd
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "chromium failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every value of attribute `name` in `dom`, in order.
fn attr_values<'a>(dom: &'a str, name: &str) -> Vec<&'a str> {
    let needle = format!("{name}=\"");
    dom.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &dom[i + needle.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// The `data-packets` of the VIP block for `vip` in the DOM.
fn vip_packets(dom: &str, vip: &str) -> u64 {
    let at = dom
        .find(&format!("data-vip=\"{vip}\" data-packets=\""))
        .unwrap_or_else(|| panic!("no block for {vip} in the page:\n{dom}"));
    attr_values(&dom[at..], "data-packets")[0].parse().unwrap()
}

#[test]
fn the_status_page_shows_the_fleet_and_moves_with_the_traffic() {
    let lab = lab_with("page", |o| o.web = Some(0));
    wait_until("the peers to agree", Duration::from_secs(15), || {
        lab.lb_json(1, &["peer", "list"]).unwrap()["peers"][0]["state_match"] == true
    });
    // All client traffic through lb1, whose page we read.
    assert!(lab.lb(2, &["node", "drain"]).status.success());
    let ns = lab.ns(&lab::lb_name(1));
    let profile = std::env::temp_dir().join(format!("lb-chromium-{}", std::process::id()));
    let url = "http://127.0.0.1:9450/";

    // Traffic: HTTP through the VIP from the client, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let client = lab.ns("client");
        std::thread::spawn(move || {
            let target = SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT);
            let mut served = 0u32;
            for _ in 0..2000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let ok = tests::lab::in_ns(&client, move || {
                    lab::http_get(target, Duration::from_secs(2)).is_ok()
                })
                .unwrap_or(false);
                served += u32::from(ok);
                std::thread::sleep(Duration::from_millis(20));
            }
            served
        })
    };
    std::thread::sleep(Duration::from_secs(1));

    // The page polls once a second; 5 s of (virtual) time gives it several samples.
    let first = chromium(
        Some(&ns),
        &profile,
        url,
        &["--virtual-time-budget=5000", "--dump-dom"],
    );
    let second = chromium(
        Some(&ns),
        &profile,
        url,
        &["--virtual-time-budget=5000", "--dump-dom"],
    );
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        Some(&ns),
        &profile,
        url,
        &[
            "--virtual-time-budget=5000",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    stop.store(true, Ordering::Relaxed);
    let served = traffic.join().unwrap();
    assert!(served > 20, "the traffic was served ({served} requests)");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "a screenshot at {}",
        shot.display()
    );

    // Every VIP, backend and peer is on the page.
    for (addr, port, _) in services() {
        let vip = match addr {
            IpAddr::V4(a) => format!("{a}:{port}/tcp"),
            IpAddr::V6(a) => format!("[{a}]:{port}/tcp"),
        };
        assert!(
            first.contains(&format!("data-vip=\"{vip}\"")),
            "{vip}:\n{first}"
        );
    }
    let backends = attr_values(&first, "data-backend");
    for j in 1..=3 {
        let b = backend_link6(j).1.to_string();
        assert_eq!(
            backends.iter().filter(|x| **x == b).count(),
            4,
            "{b} under each of the 4 VIPs"
        );
    }
    assert!(first.contains("data-peer=\"lb2\""), "{first}");
    assert!(first.contains("data-bgp=\"announced\""), "{first}");
    // Its polls succeeded: the error line is hidden (the page's script sets this on success).
    assert!(
        first.contains("<div id=\"error\" class=\"bad\" style=\"display: none;\"></div>"),
        "{first}"
    );

    // The charts move: the VIP's packets grew between the two loads, and the last rates drawn
    // (packets and bits per second) are above zero for the VIP that takes the traffic.
    let v4 = format!("{VIP4}:{HTTP_PORT}/tcp");
    let (a, b) = (vip_packets(&first, &v4), vip_packets(&second, &v4));
    assert!(b > a, "packets {a} then {b}");
    for dom in [&first, &second] {
        let at = dom
            .find(&format!("data-vip=\"{v4}\" data-packets"))
            .unwrap();
        let block = &dom[at..];
        let rates: Vec<f64> = attr_values(block, "data-rate")
            .iter()
            .take(2)
            .map(|r| r.parse().unwrap())
            .collect();
        assert!(
            rates.len() == 2 && rates.iter().all(|r| *r > 0.0),
            "VIP rates drawn: {rates:?}"
        );
    }

    // From the host: the lab page shows the router's next hops (lb1 only: lb2 is drained) and
    // frames both load balancers' pages, which the lab forwards to host ports.
    let ports = lab.web_ports().expect("the lab serves its pages");
    let lab_url = format!("http://127.0.0.1:{}/", ports.lab);
    let page = chromium(
        None,
        &profile,
        &lab_url,
        &["--virtual-time-budget=3000", "--dump-dom"],
    );
    for v in [VIP4.to_string(), lab::VIP6.to_string()] {
        let at = page
            .find(&format!("data-vip=\"{v}\""))
            .unwrap_or_else(|| panic!("no router row for {v}:\n{page}"));
        let row = &page[at..page[at..].find("</div>").map_or(page.len(), |e| at + e)];
        assert_eq!(attr_values(row, "data-lb"), ["lb1"], "{row}");
    }
    for lb in ["lb1", "lb2"] {
        assert!(page.contains(&format!("data-lb-page=\"{lb}\"")), "{page}");
    }
    let lb1 = chromium(
        None,
        &profile,
        &format!("http://127.0.0.1:{}/", ports.lbs[0]),
        &["--virtual-time-budget=3000", "--dump-dom"],
    );
    assert!(lb1.contains(&format!("data-vip=\"{v4}\"")), "{lb1}");
    let shot = artifacts.join("lab-page.png");
    chromium(
        None,
        &profile,
        &lab_url,
        &[
            "--virtual-time-budget=4000",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000));
    let _ = std::fs::remove_dir_all(&profile);

    // Every metric the shipped alerts and dashboard query is in this agent's /metrics.
    let exposed = exposed_metrics(&tests::netns::metrics_in(&ns).unwrap());
    for m in alert_metrics().union(&dashboard_metrics()) {
        assert!(exposed.contains(m), "{m} is not in /metrics: {exposed:?}");
    }
    finish(lab);
}
