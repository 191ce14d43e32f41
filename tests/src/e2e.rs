//! Shared by the end-to-end tests: a lab per test with cleanup checks, long-lived echo
//! sessions through the VIPs, and small waits.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lab::{self, ECHO_PORT, HealthTiming, Lab, LabOptions, VIP4, VIP6, in_ns};
use crate::netns::{lb_bin, sh};

/// Faster checks than the GLB defaults the lab uses for people, so the suite stays short.
pub const FAST_HEALTH: HealthTiming = HealthTiming {
    interval_ms: 500,
    timeout_ms: 300,
    rise: 2,
    fall: 3,
};

pub fn lab(tag: &str, health: HealthTiming) -> Lab {
    lab_with(tag, |o| o.health = health)
}

/// A lab of its own for one test (2 load balancers, 3 backends), adjusted by `adjust`.
pub fn lab_with(tag: &str, adjust: impl FnOnce(&mut LabOptions)) -> Lab {
    crate::require_root();
    let pid = std::process::id();
    let lb = lb_bin();
    // lb-echo is built next to lb (`cargo xtask test` builds both).
    let echo = lb.with_file_name("lb-echo");
    assert!(
        echo.exists(),
        "{} is missing: run the suite with `cargo xtask test`",
        echo.display()
    );
    let mut opts = LabOptions::new(
        format!("lbe{tag}{pid}"),
        std::env::temp_dir().join(format!("lbe-{tag}-{pid}")),
        PathBuf::from(format!("/sys/fs/bpf/lbe-{tag}-{pid}")),
        lb,
        echo,
    );
    adjust(&mut opts);
    let started = Instant::now();
    let lab = Lab::up(opts, &mut |s| eprintln!("[{tag}] {s}")).expect("lab up");
    eprintln!("[{tag}] lab up in {:.1} s", started.elapsed().as_secs_f64());
    lab
}

/// Tears the lab down and checks that no namespace, process, pin or file of it is left.
pub fn finish(lab: Lab) {
    let procs = lab.processes();
    let opts = lab.opts.clone();
    assert!(
        procs.iter().any(|(k, _, _)| k == "bird") && procs.iter().any(|(k, _, _)| k == "agent"),
        "the lab recorded its processes: {procs:?}"
    );
    drop(lab);
    let namespaces = sh("ip", &["netns", "list"]).unwrap();
    let left: Vec<&str> = namespaces
        .lines()
        .filter(|l| l.starts_with(&format!("{}-", opts.prefix)))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    for (kind, node, pid) in procs {
        assert!(
            !lab::alive(pid),
            "{kind} on {node} (pid {pid}) is still running"
        );
    }
    assert!(
        !opts.pin_root.exists(),
        "pins left at {}",
        opts.pin_root.display()
    );
    assert!(
        !opts.run_dir.exists(),
        "files left at {}",
        opts.run_dir.display()
    );
}

/// `lb ARGS` against load balancer `i`, which must succeed; its output.
pub fn lb_succeeds(lab: &Lab, i: usize, args: &[&str]) -> String {
    let out = lab.lb(i, args);
    assert!(
        out.status.success(),
        "lb {args:?} on lb{i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An address on the sync network's bridge for a test playing an attacker there.
pub const ATTACKER_ON_SYNC_NET: &str = "2001:db8:5::99";

/// Puts `ATTACKER_ON_SYNC_NET` on the sync network's bridge (in the `sw` namespace).
pub fn add_attacker_on_sync_net(lab: &Lab) {
    let sw = lab.ns("sw");
    let addr = format!("{ATTACKER_ON_SYNC_NET}/64");
    sh(
        "ip",
        &["-n", &sw, "-6", "addr", "add", &addr, "dev", "br0", "nodad"],
    )
    .unwrap();
}

/// Every load balancer of the lab reports the same state version and state and table digests,
/// and sees every peer agree with it.
pub fn fleet_agrees(lab: &Lab) -> bool {
    let all: Vec<serde_json::Value> = (1..=lab.opts.lbs)
        .map(|i| lab.lb_json(i, &["peer", "list"]).unwrap())
        .collect();
    let first = &all[0];
    all.iter().all(|p| {
        p["state_digest"] == first["state_digest"]
            && p["table_digest"] == first["table_digest"]
            && p["version"] == first["version"]
            && p["peers"].as_array().is_some_and(|peers| {
                peers.len() == lab.opts.lbs - 1
                    && peers
                        .iter()
                        .all(|x| x["state_match"] == true && x["table_match"] == true)
            })
    })
}

pub fn backend_of(body: &str) -> String {
    body.trim().to_string()
}

/// `n` HTTP GETs from the client, alternating over `targets`; body (backend) per target.
pub fn http_requests(lab: &Lab, targets: Vec<SocketAddr>, n: usize) -> Vec<(SocketAddr, String)> {
    in_ns(&lab.ns("client"), move || {
        (0..n)
            .map(|i| {
                let t = targets[i % targets.len()];
                let body = lab::http_get(t, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("request {i} to {t}: {e:#}"));
                (t, backend_of(&body))
            })
            .collect()
    })
    .unwrap()
}

pub fn vip_packets(lab: &Lab, i: usize) -> u64 {
    let s = lab.lb_json(i, &["stats", "--interval", "0.1"]).unwrap();
    s["now"]["vips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v[1]["packets"].as_u64().unwrap())
        .sum()
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if ok() {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// How long a session waits for an answer before it counts its connection as broken.
const READ_WAIT: Duration = Duration::from_secs(5);

/// One long-lived echo connection's record.
#[derive(Debug, Default, Clone)]
pub struct Session {
    pub backend: String,
    pub exchanges: u64,
    pub max_gap: Duration,
    pub error: Option<String>,
    pub closed_cleanly: bool,
}

/// Long-lived echo connections from the client: each sends 32 bytes every `period` and waits
/// for them back, until `stop`; then closes and waits for the server's close.
pub struct Sessions {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Session>>>,
    pub opened: Vec<Session>,
}

impl Sessions {
    pub fn open(lab: &Lab, targets: Vec<SocketAddr>, n: usize, period: Duration) -> Sessions {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let file = std::fs::File::open(format!("/run/netns/{}", lab.ns("client"))).unwrap();
        let thread = std::thread::spawn(move || {
            crate::netns::enter(&file).unwrap();
            let mut conns = Vec::new();
            for i in 0..n {
                let t = targets[i % targets.len()];
                let mut s = TcpStream::connect_timeout(&t, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("connection {i} to {t}: {e}"));
                s.set_read_timeout(Some(READ_WAIT)).unwrap();
                s.set_nodelay(true).unwrap();
                let mut greeting = [0u8; 64];
                let mut got = 0;
                while !greeting[..got].contains(&b'\n') {
                    let k = s.read(&mut greeting[got..]).expect("greeting");
                    assert!(k > 0, "closed before the greeting");
                    got += k;
                }
                let backend = String::from_utf8_lossy(&greeting[..got])
                    .trim()
                    .trim_start_matches("hello from ")
                    .to_string();
                conns.push((
                    s,
                    Session {
                        backend,
                        ..Default::default()
                    },
                    Instant::now(),
                ));
            }
            tx.send(conns.iter().map(|c| c.1.clone()).collect::<Vec<_>>())
                .unwrap();
            // Rounds: one exchange per connection each period. Every live connection sends
            // first, then the answers are read against one deadline, so connections that stall
            // cost a round at most READ_WAIT together, not READ_WAIT each.
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut seq = 0u64;
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let round = Instant::now();
                let mut sent = Vec::with_capacity(conns.len());
                for (k, (s, rec, _)) in conns.iter_mut().enumerate() {
                    if rec.error.is_some() {
                        continue;
                    }
                    seq += 1;
                    let msg = format!("{seq:031}\n");
                    match s.write_all(msg.as_bytes()) {
                        Ok(()) => sent.push((k, msg)),
                        Err(e) => rec.error = Some(format!("{e} ({:?})", e.kind())),
                    }
                }
                let read_by = Instant::now() + READ_WAIT;
                for (k, msg) in sent {
                    let (s, rec, last) = &mut conns[k];
                    let wait = read_by
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1));
                    let mut back = [0u8; 32];
                    let r = s
                        .set_read_timeout(Some(wait))
                        .and_then(|_| s.read_exact(&mut back));
                    match r {
                        Ok(()) if back == *msg.as_bytes() => {
                            rec.max_gap = rec.max_gap.max(last.elapsed());
                            *last = Instant::now();
                            rec.exchanges += 1;
                        }
                        Ok(()) => rec.error = Some("echo mismatch".into()),
                        Err(e) => rec.error = Some(format!("{e} ({:?})", e.kind())),
                    }
                }
                if let Some(rest) = period.checked_sub(round.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            for (s, rec, _) in conns.iter_mut() {
                if rec.error.is_some() {
                    continue;
                }
                let _ = s.set_read_timeout(Some(READ_WAIT));
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut rest = Vec::new();
                rec.closed_cleanly = s.read_to_end(&mut rest).is_ok() && rest.is_empty();
            }
            conns.into_iter().map(|c| c.1).collect()
        });
        let opened = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("connections opened");
        Sessions {
            stop,
            thread: Some(thread),
            opened,
        }
    }

    pub fn finish(mut self) -> Vec<Session> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("session thread")
    }
}

pub fn echo_targets() -> Vec<SocketAddr> {
    vec![
        SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT),
        SocketAddr::new(IpAddr::V6(VIP6), ECHO_PORT),
    ]
}

/// A dataplane counter's packets in load balancer `i`'s `lb stats` (0 if it has no such counter).
pub fn lb_counter(lab: &Lab, i: usize, name: &str) -> u64 {
    let stats = lab.lb_json(i, &["stats", "--interval", "0.1"]).unwrap();
    stats["now"]["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["packets"].as_u64())
        .unwrap_or(0)
}

/// The Maglev slots backend `j` (by its tunnel address) holds in VIP `vip`'s table on load
/// balancer `i`.
pub fn backend_slots(lab: &Lab, i: usize, vip: &str, j: usize) -> Option<u64> {
    let addr = lab::backend_link6(j).1.to_string();
    let list = lab.lb_json(i, &["backend", "list", vip]).ok()?;
    list.as_array()?
        .iter()
        .find(|b| b["backend"] == addr.as_str())
        .and_then(|b| b["slots"].as_u64())
}
