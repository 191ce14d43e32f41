//! Fault model, issue 15 §1: connection floods against the agent's listeners, and a process
//! out of descriptors. In the anycast lab (client, router, two load balancers with agents and
//! BIRD, three backends), with traffic through the VIPs:
//!
//! - twice the cap of connections held open to lb1's sync port (from an address on the sync
//!   network) and to its `/metrics` (from its namespace), each trickling a byte every 300 ms:
//!   the agent holds at most the cap, ends each within its one deadline, and counts them;
//!   forwarding, health and BGP stay as they were, and `lb status` answers within a second;
//! - lb1's agent with no descriptor left (its RLIMIT_NOFILE lowered to what it holds): its
//!   health checks cannot run, and leave every backend up (never down); `lb status` still
//!   answers (the API's reserved descriptor); and `lb node drain` still withdraws lb1's routes
//!   (the liveness interface is taken down through a socket opened at start).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_userspace::config::{DEFAULT_METRICS_MAX_CONNECTIONS, DEFAULT_SYNC_MAX_CONNECTIONS};
use tests::e2e::*;
use tests::lab::{self, HTTP_PORT, Lab, SYNC_PORT, VIP4, VIP6, in_ns};

/// The listeners' deadline for a whole handshake or request (`HANDSHAKE_DEADLINE`,
/// `http::REQUEST_DEADLINE`), and slack for this test's 300 ms rounds.
const DEADLINE: Duration = Duration::from_secs(5);
const SLACK: Duration = Duration::from_millis(1500);

/// What a flood saw of the agent.
#[derive(Debug, Default)]
struct FloodReport {
    opened: u64,
    /// The most connections the agent held open at once (those open 200 ms or more).
    max_held: usize,
    /// The longest the agent held one connection.
    max_age: Duration,
}

/// `n` connections to `target` from namespace `ns`, each sent one byte of `bytes` every
/// 300 ms; a connection the agent ends (close, reset, any answer) is opened again. Runs until
/// `stop`, at most 60 s.
fn flood(
    ns: String,
    target: SocketAddr,
    n: usize,
    bytes: &'static [u8],
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<FloodReport> {
    std::thread::spawn(move || {
        in_ns(&ns, move || {
            let mut r = FloodReport::default();
            let mut conns: Vec<Option<(TcpStream, Instant, usize)>> =
                (0..n).map(|_| None).collect();
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let round = Instant::now();
                for c in conns.iter_mut() {
                    if c.is_none() {
                        if let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                            s.set_nonblocking(true).unwrap();
                            r.opened += 1;
                            *c = Some((s, Instant::now(), 0));
                        }
                        continue;
                    }
                    let (s, _, sent) = c.as_mut().unwrap();
                    let b = bytes[*sent % bytes.len()];
                    if s.write(&[b]).is_err() {
                        *c = None;
                        continue;
                    }
                    *sent += 1;
                }
                // Which connections does the agent still hold (nothing came back)?
                std::thread::sleep(Duration::from_millis(50));
                let mut held = 0;
                for c in conns.iter_mut() {
                    let Some((s, opened, _)) = c.as_mut() else {
                        continue;
                    };
                    let mut buf = [0u8; 512];
                    match s.read(&mut buf) {
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            let age = opened.elapsed();
                            if age >= Duration::from_millis(200) {
                                held += 1;
                                r.max_age = r.max_age.max(age);
                            }
                        }
                        _ => *c = None,
                    }
                }
                r.max_held = r.max_held.max(held);
                if let Some(rest) = Duration::from_millis(300).checked_sub(round.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            r
        })
        .unwrap()
    })
}

/// What the sync flood trickles, one byte per turn: the protocol's magic and a plausible
/// first handshake message's length, then the message's bytes. Each part passes the
/// listener's checks, so only the handshake's one deadline ends the connection.
fn slow_hello() -> &'static [u8] {
    let mut hello = lb_userspace::sync::wire::MAGIC.to_vec();
    hello.extend_from_slice(&80u16.to_be_bytes());
    hello.extend_from_slice(&[0xa5; 80]);
    Box::leak(hello.into_boxed_slice())
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

fn health_all_up(lab: &Lab, i: usize) -> Result<(), String> {
    let list = lab
        .lb_json(i, &["backend", "list"])
        .map_err(|e| format!("{e:#}"))?;
    let rows = list.as_array().ok_or("not a list")?;
    if rows.is_empty() {
        return Err("no backends".into());
    }
    for b in rows {
        if b["health"] != "up" {
            return Err(format!(
                "{} of {} is {}",
                b["backend"], b["vip"], b["health"]
            ));
        }
    }
    Ok(())
}

fn announced_by_both(lab: &Lab) -> bool {
    [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
        .iter()
        .all(|v| lab.router_paths(*v).unwrap().len() == 2)
}

/// `lb status` against lb `i`, timed.
fn timed_status(lab: &Lab, i: usize) -> Duration {
    let t = Instant::now();
    let out = lab.lb(i, &["status"]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "lb status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn agent_pid(lab: &Lab, node: &str) -> u32 {
    lab.processes()
        .into_iter()
        .find(|(k, n, _)| k == "agent" && n == node)
        .map(|(_, _, p)| p)
        .expect("the agent's PID")
}

#[test]
fn listener_floods_leave_forwarding_health_bgp_and_the_api_alone() {
    let lab = lab("fl", FAST_HEALTH);
    wait_until(
        "both load balancers announcing, every backend up",
        Duration::from_secs(30),
        || announced_by_both(&lab) && health_all_up(&lab, 1).is_ok(),
    );
    let sessions = Sessions::open(&lab, echo_targets(), 8, Duration::from_millis(200));

    // An attacker on the sync network, and a local process on lb1 for /metrics.
    let sw = lab.ns("sw");
    add_attacker_on_sync_net(&lab);
    let stop = Arc::new(AtomicBool::new(false));
    let sync_cap = DEFAULT_SYNC_MAX_CONNECTIONS;
    let metrics_cap = DEFAULT_METRICS_MAX_CONNECTIONS;
    let sync_flood = flood(
        sw,
        SocketAddr::new(IpAddr::V6(lab::lb_sync6(1)), SYNC_PORT),
        2 * sync_cap,
        slow_hello(),
        stop.clone(),
    );
    let metrics_flood = flood(
        lab.ns("lb1"),
        "127.0.0.1:9450".parse().unwrap(),
        2 * metrics_cap,
        b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        stop.clone(),
    );
    // Past one whole deadline, so the first connections have been ended and replaced.
    std::thread::sleep(DEADLINE + Duration::from_secs(2));

    // Under the flood: the API answers within a second ...
    let took: Vec<Duration> = (0..5).map(|_| timed_status(&lab, 1)).collect();
    eprintln!("lb status under the flood: {took:?}");
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");
    // ... new connections through the VIPs are served by every backend ...
    let http = vec![
        SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT),
        SocketAddr::new(IpAddr::V6(VIP6), HTTP_PORT),
    ];
    let results = http_requests(&lab, http, 200);
    let seen: std::collections::BTreeSet<&str> = results.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(seen.len(), 3, "every backend serves: {seen:?}");
    // ... health, BGP and the peer links are as before.
    for i in 1..=2 {
        health_all_up(&lab, i).unwrap();
    }
    assert!(
        announced_by_both(&lab),
        "both load balancers still announce"
    );
    let peers = lab.lb_json(1, &["peer", "list"]).unwrap();
    let lb2 = &peers["peers"][0];
    assert!(
        lb2["inbound"] == true && lb2["outbound"] == true,
        "the links with lb2 stay up: {lb2}"
    );

    stop.store(true, Ordering::Relaxed);
    let sync = sync_flood.join().unwrap();
    let metrics = metrics_flood.join().unwrap();
    eprintln!("sync flood: {sync:?}; metrics flood: {metrics:?}");
    let sessions = sessions.finish();
    for s in &sessions {
        assert!(
            s.error.is_none() && s.exchanges > 0,
            "a long-lived session broke during the flood: {s:?}"
        );
    }
    // The agent held at most its caps, and no connection past its deadline.
    assert!(
        sync.max_held <= sync_cap && metrics.max_held <= metrics_cap,
        "held more than the caps ({sync_cap}, {metrics_cap}): sync {sync:?}, metrics {metrics:?}"
    );
    assert!(
        sync.max_age <= DEADLINE + SLACK && metrics.max_age <= DEADLINE + SLACK,
        "a connection outlived its deadline: sync {sync:?}, metrics {metrics:?}"
    );
    // And counted what it refused.
    let text = wait_for_metrics(&lab);
    for l in ["sync", "metrics"] {
        let cap = metric(
            &text,
            &format!("lb_listener_refused_total{{listener=\"{l}\",reason=\"cap\"}}"),
        );
        let late = metric(
            &text,
            &format!("lb_listener_refused_total{{listener=\"{l}\",reason=\"deadline\"}}"),
        );
        eprintln!("{l}: {cap} refused over the cap, {late} ended at the deadline");
        assert!(cap > 0 && late > 0, "{l}: cap {cap}, deadline {late}");
    }
    finish(lab);
}

/// Scrapes lb1 once its flood's connections are gone (bounded).
fn wait_for_metrics(lab: &Lab) -> String {
    let mut last = None;
    for _ in 0..20 {
        match tests::netns::metrics_in(&lab.ns("lb1")) {
            Ok(t) if t.contains("lb_listener_refused_total") => return t,
            r => last = Some(r),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no /metrics from lb1: {last:?}");
}

/// Sets process `pid`'s soft RLIMIT_NOFILE (the hard one stays); returns the old soft one.
fn set_nofile(pid: u32, limit: u64) -> u64 {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let none = std::ptr::null();
    // SAFETY: prlimit writes one rlimit that outlives the call (no new limit given).
    let rc = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, none, &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: limit,
        rlim_max: old.rlim_max,
    };
    // SAFETY: prlimit reads `new`, which outlives the call.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}

/// The lowest descriptor number process `pid` does not use.
fn lowest_free_fd(pid: u32) -> u64 {
    let open: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap()
}

#[test]
fn out_of_descriptors_health_is_unknown_not_down_and_withdrawal_still_works() {
    let lab = lab("fd", FAST_HEALTH);
    wait_until(
        "both load balancers announcing, every backend up",
        Duration::from_secs(30),
        || announced_by_both(&lab) && health_all_up(&lab, 1).is_ok(),
    );
    let pid = agent_pid(&lab, "lb1");
    // A new descriptor takes the lowest free number, and fails (EMFILE) if that is not below
    // the limit: lowering the limit to the lowest free number when no check is in flight (the
    // lowest seen over a second) leaves nothing to open.
    let held = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            lowest_free_fd(pid)
        })
        .min()
        .unwrap();
    let was = set_nofile(pid, held);
    eprintln!(
        "lb1's agent holds descriptors 0 to {}; RLIMIT_NOFILE lowered to {held} (was {was})",
        held - 1
    );

    // Many check intervals (fall = 3 at 500 ms): every check fails locally, none marks down.
    std::thread::sleep(Duration::from_secs(4));
    let mut tries = 0;
    let health = loop {
        tries += 1;
        match health_all_up(&lab, 1) {
            Err(e) if tries < 5 && !e.contains(" is ") => {
                std::thread::sleep(Duration::from_millis(300))
            }
            r => break r,
        }
    };
    health.unwrap();
    let took = timed_status(&lab, 1);
    eprintln!("lb status with no descriptor left: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(announced_by_both(&lab), "still announced");

    // Withdrawal: the drain cannot write the routes file nor reach BIRD's socket, and still
    // withdraws lb1's routes.
    let out = lab.lb(1, &["node", "drain"]);
    assert!(
        out.status.success(),
        "lb node drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Through the liveness interface this takes milliseconds; the routes-file path could only
    // succeed on a retry (every 2 s) if some descriptor happened to be free by then.
    let gone = wait_until(
        "the router to lose lb1's paths",
        Duration::from_millis(1500),
        || {
            [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
                .iter()
                .all(|v| lab.router_paths(*v).unwrap().len() == 1)
        },
    );
    eprintln!("drained with no descriptor left: lb1 withdrawn after {gone:?}");
    // Traffic goes on through lb2.
    let results = http_requests(&lab, vec![SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT)], 30);
    assert_eq!(results.len(), 30);

    // Descriptors back: the agent counted the checks it could not run, and announces again.
    set_nofile(pid, was);
    let text = wait_for_metrics(&lab);
    let local = metric(&text, "lb_health_checks_local_errors_total");
    eprintln!("{local} health checks could not run for lack of descriptors");
    assert!(local > 0);
    let out = lab.lb(1, &["node", "undrain"]);
    assert!(out.status.success());
    wait_until(
        "both paths back on the router",
        Duration::from_secs(20),
        || announced_by_both(&lab),
    );
    health_all_up(&lab, 1).unwrap();
    finish(lab);
}
