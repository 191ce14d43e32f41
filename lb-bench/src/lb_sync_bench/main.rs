//! `lb-sync-bench`, run by `cargo xtask bench --sync` (root): what peer flow sync costs, per
//! 10,000 new flows per second.
//!
//! It brings up the anycast lab (prefix `lbsb`, release agents), then for each rate sends raw
//! TCP SYNs, each a new flow, from the router's `lb1` veth straight to lb1's eth0 (no ECMP),
//! at a paced rate for a fixed time. lb1's XDP program creates an entry for each and exports it
//! on its ring buffer; lb1's agent sends the flows to lb2, whose agent installs them. Per rate it
//! measures, from quiet to quiet: the frames sent, the SYNs lb1 counted, flow events (and lost
//! ones), flows exported by lb1 and imported by lb2 (and drops), the bytes on lb1's link to lb2
//! (as lb2 counts each message, framing included; lb1's lb_sync_bytes_sent_total as a
//! cross-check; and the sync interfaces' bytes on the wire), and both agents' CPU time
//! (utime + stime), with the idle agents' CPU and link bytes subtracted.
//!
//! The agents also re-send their recent flows every `refresh_secs` (set to 30 s here), scanning their whole
//! connection table. So the new-flow path is measured alone, each rate's window is placed
//! between two refreshes (their phase is found first with a few marker flows), and the
//! refreshes themselves are measured between windows and reported apart.
//!
//! Sources are 203.0.113.192/26 (documentation, unused by the lab) with varying ports; the
//! backends' SYN-ACKs towards them die in a blackhole route the bench adds in the router, so no
//! packet leaves the lab's namespaces. The lab is torn down at the end, on error and on Ctrl-C.
//!
//! usage: lb-sync-bench [--rates 2000,5000,10000,20000] [--secs 10] [--json] | --down

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lb_lab::netns::sh;
use lb_lab::{self as lab, HTTP_PORT, Lab, LabOptions, VIP4, in_ns};
use lb_userspace::api::{Stats, SyncStatus};
use serde_json::{Value, json};
use tests::{Flow, Tcp, check_inner_checksums, ip_packet};

const PREFIX: &str = "lbsb";
const RUN_DIR: &str = "/tmp/lbsb-run";
const PIN_ROOT: &str = "/sys/fs/bpf/lbsb";
/// Where the SYNs come from: 64 addresses the lab does not use, blackholed in the router.
const SRC_NET: &str = "203.0.113.192/26";
const SRC_BASE: u8 = 192;
const SRC_HOSTS: u64 = 64;
const PORT_BASE: u16 = 1024;
const PORTS: u64 = 64_000;
const DEFAULT_RATES: [u32; 4] = [2_000, 5_000, 10_000, 20_000];
const DEFAULT_SECS: f64 = 10.0;
/// Marker flows sent to each load balancer to find the phase of its refreshes.
const MARKERS: u64 = 16;
/// Quiet time measured before the first rate (idle CPU and link bytes).
const IDLE_SECS: f64 = 6.0;
/// Time a window needs besides sending: snapshots and settling (typically ~1 s).
const WINDOW_OVERHEAD: f64 = 4.0;
/// Distance kept between a window and a refresh.
const TICK_MARGIN: f64 = 1.5;
/// Below this share of the SYNs sent, exported or imported flows make a row LOSSY.
const LOSSY_BELOW: f64 = 0.9;
/// Frames sent back to back at most, before the pacing loop looks at the clock again.
const MAX_BURST: usize = 256;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn check_stop() -> Result<()> {
    ensure!(
        !STOP.load(Ordering::Relaxed),
        "interrupted (the lab is being torn down)"
    );
    Ok(())
}

/// Sleeps up to `d`, in short steps so Ctrl-C is heard.
fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

fn sleep_until(t: Instant) -> Result<()> {
    nap(t.saturating_duration_since(Instant::now()))
}

struct Args {
    rates: Vec<u32>,
    secs: f64,
    json: bool,
    down: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: lb-sync-bench [--rates R1,R2,..] [--secs S] [--json] | --down\n\
         \x20 --rates  new flows per second, one window each (default 2000,5000,10000,20000)\n\
         \x20 --secs   seconds of sending per rate (default 10)\n\
         \x20 --json   print the results as JSON instead of tables (progress stays on stderr)\n\
         \x20 --down   remove the lab an interrupted run left behind"
    );
    std::process::exit(2)
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        rates: DEFAULT_RATES.to_vec(),
        secs: DEFAULT_SECS,
        json: false,
        down: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rates" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.rates = v
                    .split(',')
                    .map(|r| r.trim().parse::<u32>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--rates {v}"))?;
            }
            "--secs" | "--duration" => {
                let v = it.next().unwrap_or_else(|| usage());
                a.secs = v.parse().with_context(|| format!("--secs {v}"))?;
            }
            "--json" => a.json = true,
            "--down" => a.down = true,
            "-h" | "--help" => usage(),
            other => bail!("unknown argument {other} (--help lists them)"),
        }
    }
    ensure!(
        !a.rates.is_empty() && a.rates.iter().all(|&r| (1..=1_000_000).contains(&r)),
        "--rates: 1 to 1000000 flows per second each"
    );
    ensure!(
        (1.0..=600.0).contains(&a.secs),
        "--secs {}: use 1 to 600",
        a.secs
    );
    let flows: f64 = a.rates.iter().map(|&r| r as f64 * a.secs).sum();
    ensure!(
        flows + 4.0 * MARKERS as f64 <= (SRC_HOSTS * PORTS) as f64,
        "{flows} flows in all: more than the {} distinct sources of {SRC_NET}",
        SRC_HOSTS * PORTS
    );
    Ok(a)
}

fn options() -> Result<LabOptions> {
    // The agents the xtask step built in release, next to this binary.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench's directory")?.to_path_buf();
    ensure!(
        dir.file_name().is_some_and(|n| n == "release"),
        "{} is not a release build: run `cargo xtask bench --sync` (it builds the agents in release)",
        exe.display()
    );
    let (lb, echo) = (dir.join("lb"), dir.join("lb-echo"));
    for b in [&lb, &echo] {
        ensure!(
            b.exists(),
            "{} is missing: `cargo build --release -p lb-userspace -p tests --bins`",
            b.display()
        );
    }
    let mut o = LabOptions::new(
        PREFIX.into(),
        PathBuf::from(RUN_DIR),
        PathBuf::from(PIN_ROOT),
        lb,
        echo,
    );
    // Refreshes every 30 s (the default is 300 s), so a run measures them in minutes.
    o.sync_refresh_secs = Some(30);
    Ok(o)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lb-sync-bench: {e:#}");
            std::process::exit(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lb-sync-bench: run as root (it creates namespaces and loads XDP programs)");
        std::process::exit(1);
    }
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let result = if args.down { down() } else { run(&args) };
    if let Err(e) = result {
        eprintln!("lb-sync-bench: {e:#}");
        std::process::exit(1);
    }
}

fn down() -> Result<()> {
    let lab = Lab {
        opts: options()?,
        owned: false,
    };
    let c = lab.down();
    eprintln!(
        "removed: {} processes, {} namespaces{}",
        c.processes,
        c.namespaces,
        if c.leftovers.is_empty() {
            String::new()
        } else {
            format!("; left: {:?}", c.leftovers)
        }
    );
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("[sync-bench] {msg}");
}

// ---------------------------------------------------------------------------------------------
// Raw frames out of one router veth.

/// A packet socket that only sends (protocol 0: it receives nothing, so it adds no tap on the
/// interface), bound to the router's veth towards one load balancer.
struct Port {
    fd: OwnedFd,
    ifindex: i32,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Port {
    /// The router's veth `lbN` (source MAC) towards `lbN`'s eth0 (destination MAC).
    fn open(lab: &Lab, i: usize) -> Result<Port> {
        let name = lab::lb_name(i);
        let src_mac = mac(&lab.ns("router"), &name)?;
        let dst_mac = mac(&lab.ns(&name), "eth0")?;
        let iface = name.clone();
        let (fd, ifindex) = in_ns(&lab.ns("router"), move || -> Result<(OwnedFd, i32)> {
            // SAFETY: plain socket creation; the fd is owned right away.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            ensure!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a fresh, valid descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = lb_userspace::neighbour::ifindex(&iface)? as i32;
            Ok((fd, ifindex))
        })??;
        Ok(Port {
            fd,
            ifindex,
            src_mac,
            dst_mac,
        })
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: a zeroed sockaddr_ll with family, protocol and interface set.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&self.dst_mac);
        // SAFETY: sends from a valid buffer with a valid address of its stated size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n == frame.len() as isize {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SYN number `n` (distinct for every n below 64 x 64000) to VIP4:80, checked.
    fn syn(&self, n: u64) -> Result<Vec<u8>> {
        let src = Ipv4Addr::new(203, 0, 113, SRC_BASE + (n % SRC_HOSTS) as u8);
        let sport = PORT_BASE + ((n / SRC_HOSTS) % PORTS) as u16;
        let mut flow = Flow::new("203.0.113.192", sport, "192.0.2.10", HTTP_PORT)
            .macs(self.src_mac, self.dst_mac);
        flow.src = IpAddr::V4(src);
        let frame = flow.tcp(Tcp::Syn, &[]);
        self.check(&frame, src, sport)?;
        Ok(frame)
    }

    /// A well-formed SYN: our MACs, IPv4 to the VIP, correct IPv4 and TCP checksums.
    fn check(&self, f: &[u8], src: Ipv4Addr, sport: u16) -> Result<()> {
        ensure!(f.len() == 14 + 20 + 20, "a SYN frame of {} bytes", f.len());
        ensure!(
            f[0..6] == self.dst_mac && f[6..12] == self.src_mac,
            "frame MACs"
        );
        ensure!(f[12..14] == [0x08, 0x00], "ethertype {:02x?}", &f[12..14]);
        let ip = ip_packet(f);
        ensure!(
            ip[0] == 0x45
                && ip[9] == 6
                && ip[12..16] == src.octets()
                && ip[16..20] == VIP4.octets(),
            "IPv4 header {:02x?}",
            &ip[..20]
        );
        let tcp = &ip[20..];
        ensure!(
            u16::from_be_bytes([tcp[0], tcp[1]]) == sport
                && u16::from_be_bytes([tcp[2], tcp[3]]) == HTTP_PORT
                && tcp[13] == 0x02,
            "TCP header {:02x?}",
            tcp
        );
        check_inner_checksums(ip)
    }
}

fn mac(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let out = sh("ip", &["-n", ns, "-j", "link", "show", iface])?;
    let v: Value = serde_json::from_str(&out)?;
    lb_userspace::config::parse_mac(v[0]["address"].as_str().context("no MAC address")?)
}

fn thread_cpu_s() -> f64 {
    // SAFETY: clock_gettime fills the timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[derive(Debug)]
struct Sent {
    frames: u64,
    errors: u64,
    secs: f64,
    cpu_s: f64,
}

/// Sends `frames` at `rate` per second: a bounded loop (every frame once, and a deadline).
fn send_paced(port: &Port, frames: &[Vec<u8>], rate: u32, label: &str) -> Result<Sent> {
    let total = frames.len();
    let planned = total as f64 / rate as f64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(planned * 1.5 + 2.0);
    let cpu0 = thread_cpu_s();
    let (mut i, mut errors, mut last_err) = (0usize, 0u64, None);
    let mut next_report = 1.0;
    while i < total {
        let now = Instant::now();
        if now >= deadline {
            progress(&format!(
                "{label}: deadline reached after {i} of {total} frames"
            ));
            break;
        }
        check_stop()?;
        let elapsed = (now - start).as_secs_f64();
        let due = ((elapsed * rate as f64) as usize + 1).min(total);
        let burst_end = due.min(i + MAX_BURST);
        while i < burst_end {
            if let Err(e) = port.send(&frames[i]) {
                errors += 1;
                last_err = Some(e);
            }
            i += 1;
        }
        if elapsed >= next_report {
            progress(&format!(
                "{label}: {:>4.1} s, {i} frames sent ({:.0}/s)",
                elapsed,
                i as f64 / elapsed
            ));
            next_report += if planned > 12.0 { 5.0 } else { 2.0 };
        }
        if i >= due {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = last_err {
        progress(&format!("{label}: {errors} sends failed, the last: {e}"));
    }
    Ok(Sent {
        frames: i as u64 - errors,
        errors,
        secs,
        cpu_s: thread_cpu_s() - cpu0,
    })
}

// ---------------------------------------------------------------------------------------------
// Readings.

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads, live and exited), in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat (did the agent exit?)"))?;
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("/proc stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    ensure!(f.len() > 12, "/proc/{pid}/stat: too few fields");
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Bytes sent and received on an interface of a namespace (Ethernet frames).
fn link_bytes(ns: &str, iface: &str) -> Result<(u64, u64)> {
    let out = sh("ip", &["-n", ns, "-j", "-s", "link", "show", iface])?;
    let v: Value = serde_json::from_str(&out)?;
    let s = &v[0]["stats64"];
    Ok((
        s["tx"]["bytes"].as_u64().context("tx bytes")?,
        s["rx"]["bytes"].as_u64().context("rx bytes")?,
    ))
}

/// One load balancer's agent: its PID and name.
struct Agent {
    i: usize,
    name: String,
    peer: String,
    pid: u32,
}

/// Flow counters of one agent (from `lb peer list`), cheap enough to poll.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Flows {
    exported: u64,
    imported: u64,
    dropped_queue: u64,
    dropped_import: u64,
    untranslated: u64,
    /// To its peer: flows sent (new and refreshed), dropped, and the link's bytes.
    sent: u64,
    dropped: u64,
    received: u64,
    /// The agent's count of the link's bytes to the peer. It advances only when a flow batch
    /// is sent (heartbeats and state since the last batch join the next one).
    bytes_sent: u64,
    /// Bytes the peer's link to us delivered, counted per message as it arrives.
    bytes_received: u64,
    link_up: bool,
}

impl Flows {
    fn of(s: &SyncStatus, peer: &str) -> Flows {
        let p = s.peers.iter().find(|p| p.name == peer);
        Flows {
            exported: s.flows_exported,
            imported: s.flows_imported,
            dropped_queue: s.flows_dropped_queue,
            dropped_import: s.flows_dropped_import,
            untranslated: s.flows_untranslated,
            sent: p.map_or(0, |p| p.flows_sent),
            dropped: p.map_or(0, |p| p.flows_dropped),
            received: p.map_or(0, |p| p.flows_received),
            bytes_sent: p.map_or(0, |p| p.bytes_sent),
            bytes_received: p.map_or(0, |p| p.bytes_received),
            link_up: p.is_some_and(|p| p.outbound && p.inbound),
        }
    }

    /// Flows sent to the peer that were not new-flow exports: refreshes (and a link's initial
    /// pass). Rises by the flows refreshed at each refresh; steady between them.
    fn refreshed(&self) -> i64 {
        (self.sent + self.dropped) as i64 - self.exported as i64
    }

    /// The counters that move while flows are in flight (not the heartbeats' bytes).
    fn moving(&self) -> [u64; 6] {
        [
            self.exported,
            self.imported,
            self.sent,
            self.received,
            self.dropped_import,
            self.untranslated,
        ]
    }
}

fn peer_flows(lab: &Lab, a: &Agent) -> Result<Flows> {
    let v = lab.lb_json(a.i, &["peer", "list"])?;
    let s: SyncStatus = serde_json::from_value(v).context("lb peer list --json")?;
    Ok(Flows::of(&s, &a.peer))
}

/// Everything read of one agent at one moment.
#[derive(Clone, Debug)]
struct Reading {
    at: Instant,
    cpu_ticks: u64,
    syn: u64,
    events: u64,
    events_lost: u64,
    flows: Flows,
    /// sync0: (tx, rx) bytes on the wire.
    wire: (u64, u64),
}

fn read_agent(lab: &Lab, a: &Agent) -> Result<Reading> {
    let v = lab.lb_json(a.i, &["stats", "--interval", "0.1"])?;
    let stats: Stats = serde_json::from_value(v["now"].clone()).context("lb stats --json")?;
    let counter = |name: &str| -> Result<u64> {
        Ok(stats
            .counters
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no counter {name} in lb stats"))?
            .packets)
    };
    let sync = stats.sync.as_ref().context("lb stats: no sync status")?;
    Ok(Reading {
        cpu_ticks: cpu_ticks(a.pid)?,
        at: Instant::now(),
        syn: counter("lru_miss_syn")?,
        events: counter("flow_events")?,
        events_lost: counter("flow_events_lost")?,
        flows: Flows::of(sync, &a.peer),
        wire: link_bytes(&lab.ns(&a.name), "sync0")?,
    })
}

/// Both agents at one moment (lb1, lb2).
#[derive(Clone, Debug)]
struct Snapshot([Reading; 2]);

// ---------------------------------------------------------------------------------------------
// The bench.

/// Idle agents: what to subtract from every window.
#[derive(Clone, Copy, Debug, Default)]
struct Idle {
    cpu_s_per_s: [f64; 2],
    /// lb1's link to lb2, the agent's count (heartbeats).
    app_bytes_per_s: f64,
    /// Both sync interfaces' transmitted bytes.
    wire_bytes_per_s: f64,
}

struct Bench<'a> {
    lab: &'a Lab,
    agents: [Agent; 2],
    ports: [Port; 2],
    /// The next flow number (a distinct source per flow).
    next_flow: u64,
    tck: f64,
    idle: Idle,
    period: f64,
    /// A refresh instant of each agent (its refreshes follow every `period`).
    phase: [Option<Instant>; 2],
    /// When each agent last got a SYN from the bench.
    last_syn: [Option<Instant>; 2],
    started: Instant,
    refreshes: Vec<Value>,
}

#[derive(Debug)]
struct Row {
    rate: u32,
    sent: Sent,
    window_s: f64,
    settle_s: f64,
    syn: u64,
    events: u64,
    events_lost: u64,
    exported: u64,
    imported: u64,
    dropped_queue: u64,
    dropped_import: u64,
    untranslated: u64,
    refreshed_in_window: i64,
    app_bytes: f64,
    wire_bytes: f64,
    /// lb1's lb_sync_bytes_sent_total{peer="lb2"} over the window (lags by the heartbeats).
    lb1_bytes_sent_counter: i64,
    cpu_s: [f64; 2],
    flags: Vec<String>,
}

fn delta(a: u64, b: u64) -> u64 {
    b.saturating_sub(a)
}

impl Row {
    fn secs(&self) -> f64 {
        self.sent.secs.max(1e-9)
    }
    fn flows(&self) -> f64 {
        self.syn.max(1) as f64
    }
    /// New flows per second lb1 actually saw.
    fn syn_rate(&self) -> f64 {
        self.syn as f64 / self.secs()
    }
    fn cpu_pct(&self, k: usize) -> f64 {
        self.cpu_s[k] / self.secs() * 100.0
    }
    /// CPU % of one core per 10,000 new flows/s.
    fn cpu_pct_per_10k(&self, k: usize) -> f64 {
        self.cpu_s[k] / self.flows() * 10_000.0 * 100.0
    }
    fn app_bytes_per_flow(&self) -> f64 {
        self.app_bytes / self.exported.max(1) as f64
    }
    fn wire_bytes_per_flow(&self) -> f64 {
        self.wire_bytes / self.exported.max(1) as f64
    }
    /// Flows per batch, from the bytes beyond the records (58 B/flow; 50 B per batch).
    fn flows_per_batch(&self) -> f64 {
        let overhead = self.app_bytes - 58.0 * self.exported as f64;
        if overhead <= 25.0 {
            return f64::NAN;
        }
        self.exported as f64 / (overhead / 50.0)
    }

    fn json(&self) -> Value {
        let r = |x: f64, d: i32| {
            let m = 10f64.powi(d);
            (x * m).round() / m
        };
        json!({
            "target_rate": self.rate,
            "frames_sent": self.sent.frames,
            "send_errors": self.sent.errors,
            "send_secs": r(self.sent.secs, 3),
            "achieved_rate": r(self.sent.frames as f64 / self.secs(), 1),
            "generator_cpu_pct": r(self.sent.cpu_s / self.secs() * 100.0, 2),
            "window_secs": r(self.window_s, 3),
            "settle_secs": r(self.settle_s, 3),
            "lb1_syn": self.syn,
            "lb1_syn_rate": r(self.syn_rate(), 1),
            "lb1_flow_events": self.events,
            "lb1_flow_events_lost": self.events_lost,
            "lb1_exported": self.exported,
            "lb2_imported": self.imported,
            "lb1_dropped_send_queue": self.dropped_queue,
            "lb2_dropped_import_queue": self.dropped_import,
            "lb2_untranslated": self.untranslated,
            "refreshed_in_window": self.refreshed_in_window,
            "sync_app_bytes": r(self.app_bytes, 0),
            "sync_wire_bytes": r(self.wire_bytes, 0),
            "lb1_bytes_sent_counter_delta": self.lb1_bytes_sent_counter,
            "app_bytes_per_flow": r(self.app_bytes_per_flow(), 2),
            "wire_bytes_per_flow": r(self.wire_bytes_per_flow(), 2),
            "flows_per_batch_est": if self.flows_per_batch().is_finite() { json!(r(self.flows_per_batch(), 1)) } else { Value::Null },
            "app_bytes_per_sec": r(self.app_bytes / self.secs(), 0),
            "lb1_agent_cpu_secs": r(self.cpu_s[0], 3),
            "lb2_agent_cpu_secs": r(self.cpu_s[1], 3),
            "lb1_agent_cpu_pct": r(self.cpu_pct(0), 2),
            "lb2_agent_cpu_pct": r(self.cpu_pct(1), 2),
            "per_10k_flows_per_sec": {
                "lb1_agent_cpu_pct": r(self.cpu_pct_per_10k(0), 2),
                "lb2_agent_cpu_pct": r(self.cpu_pct_per_10k(1), 2),
                "app_bytes_per_sec": r(self.app_bytes_per_flow() * 10_000.0, 0),
                "wire_bytes_per_sec": r(self.wire_bytes_per_flow() * 10_000.0, 0),
            },
            "flags": self.flags,
        })
    }
}

fn run(args: &Args) -> Result<()> {
    let opts = options()?;
    ensure!(
        !Lab::exists(&opts),
        "a lab with prefix {PREFIX} exists (another run, or an interrupted one: `lb-sync-bench --down`)"
    );
    ensure!(
        !Path::new(PIN_ROOT).exists(),
        "{PIN_ROOT} exists (an interrupted run: `lb-sync-bench --down`)"
    );
    let started = Instant::now();
    progress("bringing up the lab (2 load balancers with flow sync, 3 backends, release agents)");
    let lab = Lab::up(opts, &mut |s| progress(&format!("[lab] {s}")))?;
    progress(&format!(
        "lab up in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    // From here on, any error drops `lab`, which tears everything down.
    let result = measure(&lab, args);
    progress("tearing the lab down");
    let report = result?;
    drop(lab);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}

fn measure(lab: &Lab, args: &Args) -> Result<Value> {
    check_stop()?;
    let procs = lab.processes();
    let pid = |node: &str| -> Result<u32> {
        procs
            .iter()
            .find(|(k, n, _)| k == "agent" && n == node)
            .map(|p| p.2)
            .with_context(|| format!("no agent recorded for {node}"))
    };
    let agents = [
        Agent {
            i: 1,
            name: "lb1".into(),
            peer: "lb2".into(),
            pid: pid("lb1")?,
        },
        Agent {
            i: 2,
            name: "lb2".into(),
            peer: "lb1".into(),
            pid: pid("lb2")?,
        },
    ];
    let config = lb_userspace::config::Config::parse(&lab.agent_config(1))?;
    let sync = config
        .sync
        .as_ref()
        .context("the lab's agents have no [sync]")?;
    ensure!(sync.flows, "the lab's agents do not share flows");
    let period = sync.refresh_secs as f64;

    // The backends answer the SYNs towards their sources: those replies end in the router.
    sh(
        "ip",
        &[
            "-n",
            &lab.ns("router"),
            "route",
            "add",
            "blackhole",
            SRC_NET,
        ],
    )?;
    progress(&format!(
        "router: blackhole route for the SYNs' sources {SRC_NET} (the backends' SYN-ACKs end there)"
    ));

    let ports = [Port::open(lab, 1)?, Port::open(lab, 2)?];
    let mut b = Bench {
        lab,
        agents,
        ports,
        next_flow: 0,
        tck: clk_tck(),
        idle: Idle::default(),
        period,
        phase: [None, None],
        last_syn: [None, None],
        started: Instant::now(),
        refreshes: Vec::new(),
    };
    b.wait_links()?;
    b.measure_idle()?;
    b.find_refresh_phase()?;

    let mut rows = Vec::new();
    for &rate in &args.rates {
        check_stop()?;
        b.place_window(args.secs)?;
        let row = b.run_rate(rate, args.secs)?;
        progress(&format!(
            "{rate}/s: lb1 {:.2} % CPU, lb2 {:.2} % CPU, {:.1} B/flow on the link{}",
            row.cpu_pct(0),
            row.cpu_pct(1),
            row.app_bytes_per_flow(),
            if row.flags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", row.flags.join(", "))
            }
        ));
        rows.push(row);
    }
    // The last rate's flows are refreshed once more: measure that too.
    b.measure_next_refresh()?;
    let refresh_cost = refresh_per_10k(&b.refreshes);
    let tables = b.table_entries();
    let metrics_bytes = b.metrics_bytes_sent();

    let host = host_info();
    Ok(json!({
        "machine": host,
        "setup": {
            "lab_prefix": PREFIX,
            "path": "SYN frames from the router's lb1 veth to lb1 eth0 (AF_PACKET), XDP on lb1, flows synced lb1 -> lb2 over TCP on the sw bridge",
            "sources": SRC_NET,
            "destination": format!("{VIP4}:{HTTP_PORT}"),
            "secs_per_rate": args.secs,
            "refresh_secs": period,
            "max_flows": config.dataplane.max_flows,
            "clock_ticks_per_sec": b.tck,
        },
        "idle": {
            "lb1_agent_cpu_pct": b.idle.cpu_s_per_s[0] * 100.0,
            "lb2_agent_cpu_pct": b.idle.cpu_s_per_s[1] * 100.0,
            "sync_app_bytes_per_sec": b.idle.app_bytes_per_s,
            "sync_wire_bytes_per_sec": b.idle.wire_bytes_per_s,
        },
        "rates": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "refreshes": b.refreshes.clone(),
        "refresh_per_10k_flows_per_sec": refresh_cost,
        "tables_at_end": tables,
        "metrics_lb_sync_bytes_sent_total_lb1_to_lb2": metrics_bytes,
        "total_secs": b.started.elapsed().as_secs_f64(),
    }))
}

impl Bench<'_> {
    fn snapshot(&self) -> Result<Snapshot> {
        Ok(Snapshot([
            read_agent(self.lab, &self.agents[0])?,
            read_agent(self.lab, &self.agents[1])?,
        ]))
    }

    /// Polls the flow counters and CPU of both agents.
    fn poll(&self) -> Result<([Flows; 2], [u64; 2], Instant)> {
        let f = [
            peer_flows(self.lab, &self.agents[0])?,
            peer_flows(self.lab, &self.agents[1])?,
        ];
        let c = [
            cpu_ticks(self.agents[0].pid)?,
            cpu_ticks(self.agents[1].pid)?,
        ];
        Ok((f, c, Instant::now()))
    }

    fn wait_links(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (f, _, _) = self.poll()?;
            if f.iter().all(|f| f.link_up) {
                progress("sync links up both ways");
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "the sync links did not come up in 30 s"
            );
            nap(Duration::from_millis(250))?;
        }
    }

    /// Waits until no flow moves and neither agent is busy; returns how long it took.
    fn settle(&self, max: Duration) -> Result<f64> {
        let start = Instant::now();
        let (mut prev, mut prev_cpu, mut prev_at) = self.poll()?;
        let mut quiet = 0;
        loop {
            nap(Duration::from_millis(300))?;
            let (cur, cpu, at) = self.poll()?;
            let dt = (at - prev_at).as_secs_f64();
            let busy = (0..2).any(|k| {
                let used = (cpu[k] - prev_cpu[k]) as f64 / self.tck;
                used / dt - self.idle.cpu_s_per_s[k] > 0.08
            });
            let moved = (0..2).any(|k| cur[k].moving() != prev[k].moving());
            quiet = if busy || moved { 0 } else { quiet + 1 };
            if quiet >= 2 {
                return Ok(start.elapsed().as_secs_f64());
            }
            if start.elapsed() > max {
                progress(&format!(
                    "not quiet after {:.1} s (going on): lb1 {:?}, lb2 {:?}",
                    max.as_secs_f64(),
                    cur[0],
                    cur[1]
                ));
                return Ok(start.elapsed().as_secs_f64());
            }
            (prev, prev_cpu, prev_at) = (cur, cpu, at);
        }
    }

    fn measure_idle(&mut self) -> Result<()> {
        progress(&format!("idle baseline: {IDLE_SECS} s without traffic"));
        self.settle(Duration::from_secs(10))?;
        let a = self.snapshot()?;
        nap(Duration::from_secs_f64(IDLE_SECS))?;
        let z = self.snapshot()?;
        let mut idle = Idle::default();
        for k in 0..2 {
            let dt = (z.0[k].at - a.0[k].at).as_secs_f64();
            idle.cpu_s_per_s[k] = delta(a.0[k].cpu_ticks, z.0[k].cpu_ticks) as f64 / self.tck / dt;
        }
        let dt = (z.0[0].at - a.0[0].at).as_secs_f64();
        // lb2's count of what arrived from lb1 (lb1's own count lags: see `Flows`).
        idle.app_bytes_per_s =
            delta(a.0[1].flows.bytes_received, z.0[1].flows.bytes_received) as f64 / dt;
        idle.wire_bytes_per_s = (0..2)
            .map(|k| delta(a.0[k].wire.0, z.0[k].wire.0) as f64)
            .sum::<f64>()
            / dt;
        self.idle = idle;
        progress(&format!(
            "idle: lb1 agent {:.2} % CPU, lb2 agent {:.2} % CPU; lb1->lb2 link {:.0} B/s (agent's count), sync wire {:.0} B/s",
            idle.cpu_s_per_s[0] * 100.0,
            idle.cpu_s_per_s[1] * 100.0,
            idle.app_bytes_per_s,
            idle.wire_bytes_per_s
        ));
        Ok(())
    }

    /// Sends `n` SYNs to load balancer `k` (0: lb1, 1: lb2) without pacing.
    fn send_markers(&mut self, k: usize, n: u64) -> Result<()> {
        for _ in 0..n {
            let f = self.ports[k].syn(self.next_flow)?;
            self.next_flow += 1;
            self.ports[k]
                .send(&f)
                .context("sending a marker SYN from the router")?;
        }
        self.last_syn[k] = Some(Instant::now());
        Ok(())
    }

    /// Each agent re-sends its recent flows every `period`; a few marker flows show when.
    fn find_refresh_phase(&mut self) -> Result<()> {
        progress(&format!(
            "finding when the agents refresh their peers (every {} s): {MARKERS} marker flows to each load balancer",
            self.period
        ));
        self.send_markers(0, MARKERS)?;
        self.send_markers(1, MARKERS)?;
        // Until both have exported them.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (f, _, _) = self.poll()?;
            if f[0].exported >= MARKERS && f[1].exported >= MARKERS {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the marker flows were not exported (lb1 {:?}, lb2 {:?}): is flow export on?",
                f[0],
                f[1]
            );
            nap(Duration::from_millis(100))?;
        }
        self.settle(Duration::from_secs(5))?;
        let (base, _, mut before) = self.poll()?;
        let deadline = Instant::now() + Duration::from_secs_f64(self.period + 5.0);
        while self.phase.iter().any(Option::is_none) {
            ensure!(
                Instant::now() < deadline,
                "no refresh seen within {} s (lb1 {:?}, lb2 {:?})",
                self.period + 5.0,
                base[0],
                base[1]
            );
            nap(Duration::from_millis(200))?;
            let (f, _, at) = self.poll()?;
            for k in 0..2 {
                if self.phase[k].is_none() && f[k].refreshed() > base[k].refreshed() {
                    // Between the last poll and this one.
                    let t = before + (at - before) / 2;
                    self.phase[k] = Some(t);
                    progress(&format!(
                        "{} refreshed its {} marker flows at +{:.1} s",
                        self.agents[k].name,
                        f[k].refreshed() - base[k].refreshed(),
                        (t - self.started).as_secs_f64()
                    ));
                }
            }
            before = at;
        }
        self.settle(Duration::from_secs(5))?;
        Ok(())
    }

    /// Agent `k`'s first refresh at or after `t`.
    fn next_refresh(&self, k: usize, t: Instant) -> Instant {
        let p = self.phase[k].expect("phase found");
        let period = Duration::from_secs_f64(self.period);
        if t <= p {
            return p;
        }
        let n = ((t - p).as_secs_f64() / self.period).ceil() as u32;
        let mut r = p + period * n;
        if r < t {
            r += period;
        }
        r
    }

    /// Waits, measuring refreshes, until a window of `secs` fits before the next one.
    fn place_window(&mut self, secs: f64) -> Result<()> {
        let need = secs + WINDOW_OVERHEAD + TICK_MARGIN;
        if need + TICK_MARGIN > self.period {
            progress(&format!(
                "a window of {secs} s cannot fit between refreshes {} s apart: it will include one (flagged REFRESH)",
                self.period
            ));
            return Ok(());
        }
        for _ in 0..4 {
            let now = Instant::now();
            let next = (0..2).map(|k| self.next_refresh(k, now)).min().unwrap();
            if (next - now).as_secs_f64() >= need {
                return Ok(());
            }
            self.measure_next_refresh()?;
        }
        bail!("could not place a window between refreshes")
    }

    /// Measures the next refresh (and the other agent's, if it follows closely): from just
    /// before it until both agents are quiet again.
    fn measure_next_refresh(&mut self) -> Result<()> {
        let now = Instant::now() + Duration::from_millis(200);
        let mut ticks: Vec<(Instant, usize)> =
            (0..2).map(|k| (self.next_refresh(k, now), k)).collect();
        ticks.sort();
        let first = ticks[0].0;
        // The other agent's refresh joins this measurement when it comes within 4 s.
        ticks.retain(|(t, _)| (*t - first).as_secs_f64() <= 4.0);
        let last = ticks.last().unwrap().0;
        let names: Vec<&str> = ticks
            .iter()
            .map(|(_, k)| self.agents[*k].name.as_str())
            .collect();
        progress(&format!(
            "waiting {:.1} s for the refresh of {} (measured apart from the windows)",
            (first - Instant::now()).as_secs_f64().max(0.0),
            names.join(" and ")
        ));
        sleep_until(first - Duration::from_secs_f64(TICK_MARGIN))?;
        let a = self.snapshot()?;
        sleep_until(last + Duration::from_secs(1))?;
        // Flows made within the last period are re-sent: wait to see them go.
        for &(t, k) in &ticks {
            let expect = self.last_syn[k]
                .is_some_and(|s| s + Duration::from_secs_f64(self.period - 1.0) > t);
            if expect {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let f = peer_flows(self.lab, &self.agents[k])?;
                    if f.refreshed() > a.0[k].flows.refreshed() || Instant::now() > deadline {
                        break;
                    }
                    nap(Duration::from_millis(100))?;
                }
            }
        }
        self.settle(Duration::from_secs(20))?;
        let z = self.snapshot()?;
        let dt = (z.0[0].at - a.0[0].at).as_secs_f64();
        let cpu = |k: usize| {
            delta(a.0[k].cpu_ticks, z.0[k].cpu_ticks) as f64 / self.tck
                - self.idle.cpu_s_per_s[k] * (z.0[k].at - a.0[k].at).as_secs_f64()
        };
        let refreshed = |k: usize| z.0[k].flows.refreshed() - a.0[k].flows.refreshed();
        let app = delta(a.0[1].flows.bytes_received, z.0[1].flows.bytes_received) as f64
            - self.idle.app_bytes_per_s * dt;
        let ev = json!({
            "at_secs": (first - self.started).as_secs_f64(),
            "refresh_of": names,
            "lb1_flows_refreshed": refreshed(0),
            "lb2_flows_refreshed": refreshed(1),
            "lb2_imported": delta(a.0[1].flows.imported, z.0[1].flows.imported),
            "lb1_to_lb2_app_bytes": app.round(),
            "lb1_agent_cpu_secs": cpu(0),
            "lb2_agent_cpu_secs": cpu(1),
            "measured_secs": dt,
            "links_up": z.0.iter().all(|r| r.flows.link_up),
        });
        progress(&format!(
            "refresh of {}: lb1 re-sent {} flows ({:.0} kB), lb1 agent {:.3} CPU-s, lb2 agent {:.3} CPU-s",
            names.join(" and "),
            refreshed(0),
            app / 1000.0,
            cpu(0),
            cpu(1)
        ));
        self.refreshes.push(ev);
        Ok(())
    }

    fn run_rate(&mut self, rate: u32, secs: f64) -> Result<Row> {
        let label = format!("{rate}/s");
        let count = (rate as f64 * secs).round() as u64;
        let first = self.next_flow;
        let frames = (first..first + count)
            .map(|n| self.ports[0].syn(n))
            .collect::<Result<Vec<_>>>()?;
        self.next_flow += count;
        progress(&format!(
            "{label}: {count} SYNs over {secs} s (frames checked: IPv4 and TCP checksums)"
        ));
        let a = self.snapshot()?;
        let sent = send_paced(&self.ports[0], &frames, rate, &label)?;
        self.last_syn[0] = Some(Instant::now());
        drop(frames);
        let settle_s = self.settle(Duration::from_secs(10))?;
        let z = self.snapshot()?;

        let (x, y) = (&a.0, &z.0);
        let window_s = (y[0].at - x[0].at).as_secs_f64();
        let cpu = |k: usize| {
            delta(x[k].cpu_ticks, y[k].cpu_ticks) as f64 / self.tck
                - self.idle.cpu_s_per_s[k] * (y[k].at - x[k].at).as_secs_f64()
        };
        let (f0, f1) = ((&x[0].flows, &y[0].flows), (&x[1].flows, &y[1].flows));
        // What arrived at lb2 from lb1, counted per message (lb1's own count lags; kept below
        // as a cross-check).
        let app_raw = delta(x[1].flows.bytes_received, y[1].flows.bytes_received);
        let sent_counter = y[0].flows.bytes_sent as i64 - x[0].flows.bytes_sent as i64;
        let wire_raw: u64 = (0..2).map(|k| delta(x[k].wire.0, y[k].wire.0)).sum();
        let mut row = Row {
            rate,
            sent,
            window_s,
            settle_s,
            syn: delta(x[0].syn, y[0].syn),
            events: delta(x[0].events, y[0].events),
            events_lost: delta(x[0].events_lost, y[0].events_lost),
            exported: delta(f0.0.exported, f0.1.exported),
            imported: delta(f1.0.imported, f1.1.imported),
            dropped_queue: delta(f0.0.dropped_queue, f0.1.dropped_queue),
            dropped_import: delta(f1.0.dropped_import, f1.1.dropped_import),
            untranslated: delta(f1.0.untranslated, f1.1.untranslated),
            refreshed_in_window: f0.1.refreshed() - f0.0.refreshed(),
            app_bytes: app_raw as f64 - self.idle.app_bytes_per_s * window_s,
            wire_bytes: wire_raw as f64 - self.idle.wire_bytes_per_s * window_s,
            lb1_bytes_sent_counter: sent_counter,
            cpu_s: [cpu(0), cpu(1)],
            flags: Vec::new(),
        };
        let sent_n = row.sent.frames as f64;
        if (row.exported as f64) < LOSSY_BELOW * sent_n
            || (row.imported as f64) < LOSSY_BELOW * sent_n
        {
            row.flags.push("LOSSY".into());
            progress(&format!(
                "{label}: LOSSY: {} SYNs sent, lb1 saw {}, {} flow events ({} lost), exported {}, lb2 imported {}, dropped: send queue {}, import queue {}, untranslated {}",
                row.sent.frames,
                row.syn,
                row.events,
                row.events_lost,
                row.exported,
                row.imported,
                row.dropped_queue,
                row.dropped_import,
                row.untranslated
            ));
        }
        if row.events_lost + row.dropped_queue + row.dropped_import + row.untranslated > 0 {
            row.flags.push("DROPS".into());
        }
        if row.syn != row.sent.frames {
            row.flags.push(format!(
                "SYN!=SENT({})",
                row.syn as i64 - row.sent.frames as i64
            ));
        }
        if sent_n < 0.95 * count as f64 || row.sent.frames as f64 / row.secs() < 0.95 * rate as f64
        {
            row.flags.push("SLOW-GENERATOR".into());
        }
        if row.sent.errors > 0 {
            row.flags.push("SEND-ERRORS".into());
        }
        if row.refreshed_in_window != 0 {
            row.flags.push("REFRESH".into());
        }
        if sent_counter < 0 || !y.iter().all(|r| r.flows.link_up) {
            row.flags.push("LINK-RESET".into());
        }
        progress(&format!(
            "{label}: sent {} in {:.2} s ({:.0}/s), settled {:.1} s after; lb1 SYNs {}, events {} (lost {}), exported {}, lb2 imported {}",
            row.sent.frames,
            row.sent.secs,
            row.sent.frames as f64 / row.secs(),
            settle_s,
            row.syn,
            row.events,
            row.events_lost,
            row.exported,
            row.imported
        ));
        Ok(row)
    }

    /// Connection-table entries of each load balancer (a table walk: only after measuring).
    fn table_entries(&self) -> Value {
        let mut out = serde_json::Map::new();
        for a in &self.agents {
            let n = self
                .lab
                .lb_json(a.i, &["backend", "list"])
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|bs| bs.iter().filter_map(|b| b["flows"].as_u64()).sum::<u64>())
                });
            out.insert(a.name.clone(), json!(n));
        }
        Value::Object(out)
    }

    /// `lb_sync_bytes_sent_total{peer="lb2"}` from lb1's /metrics (a cross-check).
    fn metrics_bytes_sent(&self) -> Value {
        let r = in_ns(&self.lab.ns("lb1"), || -> Result<u64> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:9450".parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            let line = text
                .lines()
                .find(|l| l.starts_with("lb_sync_bytes_sent_total{peer=\"lb2\"}"))
                .context("no lb_sync_bytes_sent_total{peer=\"lb2\"} in /metrics")?;
            Ok(line.rsplit(' ').next().unwrap_or("").trim().parse()?)
        });
        match r {
            Ok(Ok(n)) => json!(n),
            Ok(Err(e)) => json!(format!("unavailable: {e:#}")),
            Err(e) => json!(format!("unavailable: {e:#}")),
        }
    }
}

/// What refreshing costs per 10,000 new flows/s, from the refresh that re-sent the most flows:
/// in a steady state every new flow is re-sent once, by the first refresh after it started.
fn refresh_per_10k(events: &[Value]) -> Value {
    let Some(e) = events
        .iter()
        .filter(|e| e["lb1_flows_refreshed"].as_i64().unwrap_or(0) >= 1000)
        .max_by_key(|e| e["lb1_flows_refreshed"].as_i64().unwrap_or(0))
    else {
        return Value::Null;
    };
    let n = e["lb1_flows_refreshed"].as_i64().unwrap_or(1) as f64;
    let per = |k: &str| e[k].as_f64().unwrap_or(f64::NAN) / n;
    json!({
        "from_refresh_at_secs": e["at_secs"],
        "flows": n,
        "app_bytes_per_flow": per("lb1_to_lb2_app_bytes"),
        "lb1_agent_cpu_pct": per("lb1_agent_cpu_secs") * 10_000.0 * 100.0,
        "lb2_agent_cpu_pct": per("lb2_agent_cpu_secs") * 10_000.0 * 100.0,
        "app_bytes_per_sec": per("lb1_to_lb2_app_bytes") * 10_000.0,
    })
}

fn host_info() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    json!({ "cpus": cpus, "cpu_model": model, "kernel": kernel, "loadavg_at_end": load })
}

// ---------------------------------------------------------------------------------------------
// Tables.

fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                l += &format!("{c}{}", " ".repeat(pad));
            } else {
                l += &format!("  {}{c}", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(
        &mut out,
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}

fn render(r: &Value) -> String {
    let f = |v: &Value, d: usize| match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.d$}"),
        _ => "-".into(),
    };
    let mut o = String::new();
    let m = &r["machine"];
    let s = &r["setup"];
    let _ = writeln!(
        o,
        "\nFlow sync cost: new TCP flows on lb1, shared with lb2 ({} s per rate; {} CPUs, {}, Linux {})",
        s["secs_per_rate"],
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    let i = &r["idle"];
    let _ = writeln!(
        o,
        "idle (subtracted below): lb1 agent {} % CPU, lb2 agent {} % CPU, lb1->lb2 link {} B/s, sync wire {} B/s\n",
        f(&i["lb1_agent_cpu_pct"], 2),
        f(&i["lb2_agent_cpu_pct"], 2),
        f(&i["sync_app_bytes_per_sec"], 0),
        f(&i["sync_wire_bytes_per_sec"], 0)
    );
    let rows: Vec<&Value> = r["rates"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let u = |v: &Value| v.as_u64().map_or("-".into(), |n| n.to_string());
    let flags = |x: &Value| {
        let v: Vec<&str> = x["flags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if v.is_empty() {
            "ok".to_string()
        } else {
            v.join(" ")
        }
    };
    o += "Delivery (per rate, all flows of the window):\n";
    o += &table(
        &[
            "TARGET/s",
            "SENT/s",
            "GEN CPU%",
            "SENT",
            "SYN@lb1",
            "EVENTS",
            "LOST",
            "EXPORTED",
            "IMPORTED@lb2",
            "DROPPED",
            "STATUS",
        ],
        &rows
            .iter()
            .map(|x| {
                let dropped = [
                    "lb1_dropped_send_queue",
                    "lb2_dropped_import_queue",
                    "lb2_untranslated",
                ]
                .iter()
                .filter_map(|k| x[*k].as_u64())
                .sum::<u64>();
                vec![
                    u(&x["target_rate"]),
                    f(&x["achieved_rate"], 0),
                    f(&x["generator_cpu_pct"], 1),
                    u(&x["frames_sent"]),
                    u(&x["lb1_syn"]),
                    u(&x["lb1_flow_events"]),
                    u(&x["lb1_flow_events_lost"]),
                    u(&x["lb1_exported"]),
                    u(&x["lb2_imported"]),
                    dropped.to_string(),
                    flags(x),
                ]
            })
            .collect::<Vec<_>>(),
    );
    o += "\nCost (idle subtracted; CPU % of one core; B = the agent's link bytes, framing and HMAC included; wire = both sync interfaces, Ethernet/IPv6/TCP and ACKs included):\n";
    o += &table(
        &[
            "TARGET/s",
            "B/FLOW",
            "WIRE B/FLOW",
            "FLOWS/BATCH",
            "LINK kB/s",
            "lb1 CPU%",
            "lb2 CPU%",
            "| PER 10k/s: lb1 CPU%",
            "lb2 CPU%",
            "LINK kB/s",
            "WIRE kB/s",
        ],
        &rows
            .iter()
            .map(|x| {
                let p = &x["per_10k_flows_per_sec"];
                let kb = |v: &Value| {
                    v.as_f64()
                        .map_or("-".into(), |b| format!("{:.0}", b / 1000.0))
                };
                vec![
                    u(&x["target_rate"]),
                    f(&x["app_bytes_per_flow"], 1),
                    f(&x["wire_bytes_per_flow"], 1),
                    f(&x["flows_per_batch_est"], 0),
                    kb(&x["app_bytes_per_sec"]),
                    f(&x["lb1_agent_cpu_pct"], 2),
                    f(&x["lb2_agent_cpu_pct"], 2),
                    f(&p["lb1_agent_cpu_pct"], 2),
                    f(&p["lb2_agent_cpu_pct"], 2),
                    kb(&p["app_bytes_per_sec"]),
                    kb(&p["wire_bytes_per_sec"]),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let refreshes: Vec<&Value> = r["refreshes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if !refreshes.is_empty() {
        o += &format!(
            "\nRefreshes (every {} s each agent re-sends the flows active since its last one, after walking its whole table; measured between the windows, idle subtracted):\n",
            s["refresh_secs"]
        );
        o += &table(
            &[
                "AT s",
                "OF",
                "lb1 RE-SENT",
                "lb2 IMPORTED",
                "LINK kB",
                "lb1 CPU-s",
                "lb2 CPU-s",
                "MEASURED s",
            ],
            &refreshes
                .iter()
                .map(|x| {
                    let of: Vec<&str> = x["refresh_of"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    vec![
                        f(&x["at_secs"], 1),
                        of.join("+"),
                        x["lb1_flows_refreshed"].to_string(),
                        u(&x["lb2_imported"]),
                        x["lb1_to_lb2_app_bytes"]
                            .as_f64()
                            .map_or("-".into(), |b| format!("{:.0}", b / 1000.0)),
                        f(&x["lb1_agent_cpu_secs"], 3),
                        f(&x["lb2_agent_cpu_secs"], 3),
                        f(&x["measured_secs"], 1),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    let rc = &r["refresh_per_10k_flows_per_sec"];
    if !rc.is_null() {
        let _ = writeln!(
            o,
            "refreshing, per 10k new flows/s (each flow re-sent once; from the refresh of {} flows): lb1 agent {} % CPU, lb2 agent {} % CPU, link {} kB/s ({} B/flow).\n\
             Each refresh also walks the whole table (up to max_flows entries) on both agents, whatever the rate.",
            f(&rc["flows"], 0),
            f(&rc["lb1_agent_cpu_pct"], 2),
            f(&rc["lb2_agent_cpu_pct"], 2),
            rc["app_bytes_per_sec"]
                .as_f64()
                .map_or("-".into(), |b| format!("{:.0}", b / 1000.0)),
            f(&rc["app_bytes_per_flow"], 1)
        );
    }
    let _ = writeln!(
        o,
        "\nconnection-table entries at the end: lb1 {}, lb2 {} (max_flows {}); lb_sync_bytes_sent_total{{peer=\"lb2\"}} on lb1: {}; run took {:.0} s",
        r["tables_at_end"]["lb1"],
        r["tables_at_end"]["lb2"],
        s["max_flows"],
        r["metrics_lb_sync_bytes_sent_total_lb1_to_lb2"],
        r["total_secs"].as_f64().unwrap_or(0.0)
    );
    o
}
