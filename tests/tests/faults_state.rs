//! Fault model, issue 15 §4: crashes, reboots and disks. Real `lb agent` processes on a veth
//! (tests/src/netns.rs), with `[sync]` (the replicated state and its file) and, for the last
//! test, a real BIRD in the load balancer's namespace.
//!
//! - a corrupt state file (truncated, empty, garbage) is moved aside, counted, and the agent
//!   starts from its config and serves;
//! - a read-only state directory: the agent starts, forwards, counts each failed write and
//!   writes again once it can;
//! - the file is fsynced before its rename and the directory after (strace of the agent);
//! - kill -9 in the middle of changes: the restarted agent finds the old or the new state;
//! - no announcement survives its agent: BIRD withdraws on kill -9, and a BIRD (re)started
//!   with no agent announces nothing.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::netns::*;
use tests::*;

const VIP: &str = "192.0.2.10";
const SVC: &str = "192.0.2.10:80/tcp";
const BACKEND: &str = "2001:db8:be::1";

/// `[agent]` metrics, one VIP with one backend, `[sync]` with no peers (this node alone) and
/// the state file under `<dir>/state/`, plus `extra`.
fn config(topo: &Topology, dir: &Path, extra: &str) -> String {
    let mac = lb_userspace::config::format_mac(&topo.client_mac);
    format!(
        "metrics = \"127.0.0.1:9450\"\n\n\
         [dataplane]\ntunnel_source = \"2001:db8:1b::1\"\nseed = 7\nring_size = 4099\n\
         max_vips = 8\nmax_backends = 64\nmax_flows = 10000\n\n\
         [[interface]]\nname = \"l0\"\nnext_hop_mac = \"{mac}\"\n\n\
         [[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"{BACKEND}\"\n\n\
         [sync]\nnode = \"lb1\"\nlisten = \"[2001:db8:1b::1]:7946\"\nkey_file = \"{}\"\n\
         state_file = \"{}\"\nstartup_wait_secs = 0\n{extra}",
        dir.join("fleet.key").display(),
        state_file(dir).display()
    )
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state").join("state.json")
}

/// A topology and an agent's files (fleet key written, state directory created).
fn setup(tag: &str, extra: &str) -> (Topology, AgentFiles) {
    let topo = Topology::new(tag).unwrap();
    let files = AgentFiles::new(tag, "").unwrap();
    files
        .write_config(&config(&topo, &files.dir, extra))
        .unwrap();
    lab::write_fleet_key(&files.dir.join("fleet.key")).unwrap();
    std::fs::create_dir_all(files.dir.join("state")).unwrap();
    (topo, files)
}

/// A SYN to the VIP comes back tunnelled to the backend: the agent forwards.
fn forwards(topo: &Topology, sport: u16) {
    let wire = topo.wire().unwrap();
    let syn = Flow::new("198.51.100.1", sport, VIP, 80)
        .macs(topo.client_mac, topo.lb_mac)
        .tcp(Tcp::Syn, &[]);
    wire.send(&syn).unwrap();
    let got = Wire::tunnelled(wire.recv_until_quiet(Duration::from_millis(300), 4));
    assert_eq!(got.len(), 1, "one tunnelled copy of the SYN");
    let e = decode(&got[0]).unwrap();
    assert_eq!(e.backend(), BACKEND.parse::<Ipv6Addr>().unwrap());
    assert_eq!(e.inner, ip_packet(&syn));
}

fn weight(socket: &Path) -> u64 {
    let list = lb_json(socket, &["backend", "list", SVC]);
    list[0]["weight"].as_u64().unwrap()
}

fn state_status(socket: &Path) -> Value {
    lb_json(socket, &["status"])["sync"]["state_file"].clone()
}

/// The value of the `/metrics` line `name` in the load balancer's namespace.
fn metric(topo: &Topology, name: &str) -> u64 {
    let text = metrics_in(&topo.lb.name).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
    let line = line.unwrap_or_else(|| panic!("{name} missing from:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Starts an agent on a state file holding `bad`; it must start from the config, serve, and
/// have moved the file aside (kept byte for byte) and counted it.
fn recovers_from(tag: &str, bad: Option<Vec<u8>>) {
    let (topo, files) = setup(tag, "");
    let bad = bad.unwrap_or_else(|| {
        // A real state file, cut in the middle (what a crash mid-write without fsync leaves).
        let agent = files.start(&topo.lb, 1).unwrap();
        lb_ok(&files.socket, &["backend", "weight", SVC, BACKEND, "300"]);
        agent.stop().unwrap();
        let whole = std::fs::read(state_file(&files.dir)).unwrap();
        assert!(serde_json::from_slice::<Value>(&whole).is_ok());
        whole[..whole.len() / 2].to_vec()
    });
    std::fs::write(state_file(&files.dir), &bad).unwrap();

    let agent = files.start(&topo.lb, 2).unwrap();
    let st = state_status(&files.socket);
    assert_eq!(st["recovered"], 1, "{st}");
    let moved = PathBuf::from(st["moved_to"].as_str().expect("moved aside"));
    assert!(
        moved
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.json.corrupt-"),
        "{moved:?}"
    );
    assert_eq!(
        std::fs::read(&moved).unwrap(),
        bad,
        "kept for a post-mortem"
    );
    assert!(agent.log_text().contains("the state file is unusable"));
    assert_eq!(metric(&topo, "lb_state_file_recovered_total"), 1);
    assert_eq!(metric(&topo, "lb_state_persist_errors_total"), 0);
    // Started from the config (weight 100, not the lost 300), serving, and a fresh file.
    assert_eq!(weight(&files.socket), 100);
    forwards(&topo, 40000);
    let fresh = std::fs::read(state_file(&files.dir)).unwrap();
    assert!(serde_json::from_slice::<Value>(&fresh).is_ok());
    lb_ok(&files.socket, &["backend", "weight", SVC, BACKEND, "150"]);
    agent.stop().unwrap();
    // The next start resumes from the new file, with nothing to recover.
    let agent = files.start(&topo.lb, 3).unwrap();
    assert_eq!(weight(&files.socket), 150);
    assert_eq!(state_status(&files.socket)["recovered"], 0);
    agent.stop().unwrap();
}

#[test]
fn a_truncated_state_file_is_moved_aside_and_the_agent_serves() {
    recovers_from("sttr", None);
}

#[test]
fn an_empty_state_file_is_moved_aside_and_the_agent_serves() {
    recovers_from("stem", Some(Vec::new()));
}

#[test]
fn a_garbage_state_file_is_moved_aside_and_the_agent_serves() {
    recovers_from("stga", Some(b"\x00\x13garbage{[\xff not json".to_vec()));
}

/// A tmpfs mounted on a directory (root ignores file modes: a read-only mount is the way to
/// make a directory unwritable for it); unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Self {
        let d = dir.to_str().unwrap();
        sh("mount", &["-t", "tmpfs", "-o", "size=1m", "tmpfs", d]).unwrap();
        Self(dir.to_path_buf())
    }

    fn read_only(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        sh("mount", &["-o", opt, self.0.to_str().unwrap()]).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sh("umount", &["-l", self.0.to_str().unwrap()]);
    }
}

#[test]
fn a_read_only_state_directory_never_stops_the_agent() {
    let (topo, files) = setup("stro", "");
    let mount = Tmpfs::mount(&files.dir.join("state"));
    let agent = files.start(&topo.lb, 1).unwrap();
    lb_ok(&files.socket, &["backend", "weight", SVC, BACKEND, "300"]);
    agent.stop().unwrap();

    mount.read_only(true);
    let agent = files.start(&topo.lb, 2).unwrap();
    assert_eq!(
        weight(&files.socket),
        300,
        "resumed from the (readable) file"
    );
    let st = state_status(&files.socket);
    assert_eq!(st["persist_errors"], 1, "the write at start failed: {st}");
    assert!(
        st["last_error"].as_str().unwrap().contains("Read-only"),
        "{st}"
    );
    assert_eq!(st["recovered"], 0);
    forwards(&topo, 40001);
    // A change applies and forwards; its write fails, is counted, and says so.
    lb_ok(&files.socket, &["backend", "weight", SVC, BACKEND, "200"]);
    assert_eq!(weight(&files.socket), 200);
    assert_eq!(metric(&topo, "lb_state_persist_errors_total"), 2);
    assert!(lb_ok(&files.socket, &["status"]).contains("2 failed writes"));
    forwards(&topo, 40002);
    // Writable again: the next change is written, and the error clears.
    mount.read_only(false);
    lb_ok(&files.socket, &["backend", "weight", SVC, BACKEND, "250"]);
    let st = state_status(&files.socket);
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(st["persist_errors"], 2);
    agent.stop().unwrap();
    let agent = files.start(&topo.lb, 3).unwrap();
    assert_eq!(weight(&files.socket), 250);
    agent.stop().unwrap();
    drop(mount);
}

/// The agent under strace: the temporary file is fsynced before it is renamed over the state
/// file, and the directory is fsynced after the rename (else a power cut can leave an empty
/// file, or the old one, after the agent said a change was done).
#[test]
fn the_state_file_and_its_directory_are_fsynced() {
    assert!(
        Command::new("strace").arg("-V").output().is_ok(),
        "strace is missing: apt-get install -y strace"
    );
    let (topo, files) = setup("stfs", "");
    let trace = files.dir.join("strace.txt");
    let log = files.dir.join("agent.log");
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "--seccomp-bpf",
        "-e",
        "trace=openat,fsync,fdatasync,rename,renameat,renameat2",
        "-o",
    ])
    .arg(&trace)
    .arg(lb_bin())
    .args(["agent", "--config"])
    .arg(&files.config)
    .env("RUST_LOG", "info")
    .stdout(std::fs::File::create(&log).unwrap())
    .stderr(std::fs::File::create(&log).unwrap());
    let mut child = topo.lb.spawn(&mut cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !lb(&files.socket, &["status"]).status.success() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(Instant::now() < deadline, "the agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    lb_ok(&files.socket, &["backend", "weight", SVC, BACKEND, "300"]);
    // The agent is strace's child: stop it by its own PID (strace then exits with it).
    let pid = lb_json(&files.socket, &["status"])["pid"].as_u64().unwrap();
    // SAFETY: signals the agent this test started, by its PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    child.wait().unwrap();

    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let fd_of = |l: &str| {
        l.rsplit("= ")
            .next()
            .and_then(|n| n.trim().parse::<i32>().ok())
    };
    let state = state_file(&files.dir);
    let (tmp, dir) = (
        state.with_extension("tmp"),
        state.parent().unwrap().to_path_buf(),
    );
    let mut writes = 0;
    for (i, l) in lines.iter().enumerate() {
        if !(l.contains("openat(") && l.contains(&format!("\"{}\"", tmp.display()))) {
            continue;
        }
        let fd = fd_of(l).expect("opened");
        let rest = &lines[i + 1..];
        let renamed = rest
            .iter()
            .position(|l| l.contains("rename") && l.contains(&format!("\"{}\"", state.display())))
            .expect("renamed over the state file");
        assert!(
            rest[..renamed]
                .iter()
                .any(|l| l.contains(&format!("fsync({fd})"))),
            "the temporary file is fsynced before its rename:\n{}",
            rest[..renamed].join("\n")
        );
        let after = &rest[renamed..];
        let dir_open = after
            .iter()
            .position(|l| l.contains("openat(") && l.contains(&format!("\"{}\"", dir.display())))
            .expect("the directory is opened after the rename");
        let dfd = fd_of(after[dir_open]).unwrap();
        assert!(
            after[dir_open..]
                .iter()
                .any(|l| l.contains(&format!("fsync({dfd})"))),
            "the directory is fsynced after the rename"
        );
        writes += 1;
    }
    assert!(
        writes >= 2,
        "the write at start and the change's: {writes}\n{text}"
    );
}

#[test]
fn kill_9_during_changes_leaves_the_old_or_the_new_state() {
    let (topo, files) = setup("stk9", "");
    let mut n = 0;
    for round in 0..4u64 {
        n += 1;
        let mut agent = files.start(&topo.lb, n).unwrap();
        let st = state_status(&files.socket);
        assert_eq!(st["recovered"], 0, "never corrupt: {st}");
        let start = weight(&files.socket);
        // Changes back to back from another thread; SIGKILL lands in the middle of one.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(start));
        let worker = {
            let (stop, acked, socket) = (stop.clone(), acked.clone(), files.socket.clone());
            std::thread::spawn(move || {
                let mut w = start;
                while !stop.load(Ordering::Relaxed) {
                    w = w % 900 + 1;
                    let ws = w.to_string();
                    if lb(&socket, &["backend", "weight", SVC, BACKEND, &ws])
                        .status
                        .success()
                    {
                        acked.store(w, Ordering::Relaxed);
                    } else {
                        return w;
                    }
                }
                w
            })
        };
        std::thread::sleep(Duration::from_millis(400 + round * 170));
        agent.child.kill().unwrap();
        agent.child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        let in_flight = worker.join().unwrap();
        let acked = acked.load(Ordering::Relaxed);
        assert!(acked != start, "changes were made before the kill");
        let bytes = std::fs::read(state_file(&files.dir)).unwrap();
        assert!(
            serde_json::from_slice::<Value>(&bytes).is_ok(),
            "a whole file"
        );

        n += 1;
        let agent = files.start(&topo.lb, n).unwrap();
        let w = weight(&files.socket);
        assert!(
            w == acked || w == in_flight,
            "round {round}: weight {w}: neither the last acknowledged change ({acked}) nor the one in flight ({in_flight})"
        );
        assert_eq!(state_status(&files.socket)["recovered"], 0);
        forwards(&topo, 41000 + round as u16);
        agent.stop().unwrap();
    }
}

/// A BIRD in the foreground in `ns` on `conf`; SIGKILL by its PID on drop.
struct Bird {
    child: std::process::Child,
    socket: PathBuf,
}

impl Bird {
    fn start(ns: &Netns, dir: &Path, conf: &Path) -> Self {
        let socket = dir.join("bird.ctl");
        let mut cmd = Command::new("/usr/sbin/bird");
        cmd.arg("-f").arg("-c").arg(conf).arg("-s").arg(&socket);
        cmd.arg("-P").arg(dir.join("bird.pid"));
        cmd.stdout(std::fs::File::create(dir.join("bird.log")).unwrap());
        cmd.stderr(std::fs::File::create(dir.join("bird.err")).unwrap());
        let child = ns.spawn(&mut cmd).unwrap();
        let bird = Self { child, socket };
        wait(10, "BIRD to answer", || bird.routes().is_ok());
        bird
    }

    /// `show route protocol lb_vips4`.
    fn routes(&self) -> anyhow::Result<String> {
        let s = self.socket.to_str().unwrap();
        sh(
            "/usr/sbin/birdc",
            &["-s", s, "show", "route", "protocol", "lb_vips4"],
        )
    }

    fn announces(&self) -> bool {
        self.routes().unwrap().contains(&format!("{VIP}/32"))
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// No announcement survives its agent: the agent's routes go through its liveness interface,
/// which the kernel removes with the agent, so BIRD withdraws on kill -9, and a BIRD started
/// (after a reboot, a restart) while no agent runs announces nothing, though the routes file
/// still lists the VIP.
#[test]
fn no_announcement_survives_its_agent() {
    assert!(
        Path::new("/usr/sbin/bird").exists(),
        "apt-get install -y bird2"
    );
    let topo = Topology::new("stbg").unwrap();
    let files = AgentFiles::new("stbg", "").unwrap();
    let routes = files.dir.join("vips.conf");
    let socket = files.dir.join("bird.ctl");
    let bgp = format!(
        "[bgp]\nbird_socket = \"{}\"\nroutes_file = \"{}\"\n",
        socket.display(),
        routes.display()
    );
    let mac = lb_userspace::config::format_mac(&topo.client_mac);
    let body = format!(
        "[dataplane]\ntunnel_source = \"2001:db8:1b::1\"\nseed = 7\n\n\
         [[interface]]\nname = \"l0\"\nnext_hop_mac = \"{mac}\"\n\n\
         [[vip]]\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\n\
         [[vip.backend]]\naddress = \"{BACKEND}\"\n\n{bgp}"
    );
    files.write_config(&body).unwrap();
    lb_userspace::bgp::write_initial_routes(&routes).unwrap();
    let conf = files.dir.join("bird.conf");
    std::fs::write(
        &conf,
        format!(
            "router id 198.51.100.2;\nprotocol device {{}}\ninclude \"{}\";\n",
            routes.display()
        ),
    )
    .unwrap();
    let bird = Bird::start(&topo.lb, &files.dir, &conf);
    assert!(!bird.announces());

    let mut agent = files.start(&topo.lb, 1).unwrap();
    wait(10, "the agent's VIP announced", || bird.announces());
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    wait(5, "BIRD to withdraw the dead agent's VIP", || {
        !bird.announces()
    });
    forwards(&topo, 42000); // the pinned dataplane forwards on; routers just stop sending

    // A BIRD restarted with no agent (as after a reboot): the file still names the VIP, and
    // nothing is announced.
    drop(bird);
    let text = std::fs::read_to_string(&routes).unwrap();
    assert!(text.contains(&format!("route {VIP}/32")), "{text}");
    let bird = Bird::start(&topo.lb, &files.dir, &conf);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!bird.announces(), "{}", bird.routes().unwrap());

    // An agent again: announced again.
    let agent = files.start(&topo.lb, 2).unwrap();
    wait(10, "the new agent's VIP announced", || bird.announces());
    agent.stop().unwrap();
    wait(5, "withdrawn at SIGTERM", || !bird.announces());
}
