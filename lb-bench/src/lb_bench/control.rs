//! Section "control plane": how long the control plane takes to change the dataplane.
//!
//! 1. Maglev table build: `MaglevTable::build` (lb-common, the function the agent's reconciler
//!    calls), in process, for M = 65537 and 655373 with 10 to 1000 equal-weight backends. Each
//!    table is checked: every slot filled, every backend holding floor(M/N) or ceil(M/N) slots
//!    (equal weights take turns, so that is exact), and every run building the same table.
//! 2. `lb backend drain` → dataplane: a real `lb agent` (health checks off) in a namespace of its
//!    own with one VIP of 10 backends. Timed from just before the CLI process is spawned until
//!    none of the drained backend's slots in the pinned Maglev ring map (`RINGS`) points at it
//!    any more. Undrained (and waited for) between runs.
//! 3. Peer sync: two agents peered over `[sync]` (a veth between their namespaces). Timed from
//!    just before `lb backend drain` / `undrain` is spawned against agent 1 until agent 2's
//!    pinned ring reflects it.
//!
//! The rings are polled with a cursor over the slots that must change, in ascending order (the
//! order the reconciler writes them): each poll re-reads only the slots not yet seen changed,
//! stopping at the first unchanged one, then sleeps 200 µs. A slot that changed stays changed
//! for the whole run, so "all seen changed" is exact; the time is taken right after the poll
//! that saw the last one (resolution: one poll plus the sleep, well under a millisecond).
//!
//! Namespaces `lbbc-<pid>-*`, pins `/sys/fs/bpf/lbbc-<pid>-*`, files in `$TMPDIR/lbbc-<pid>`:
//! all removed on every path by Drop guards; agents are stopped by their own PID.

use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::maglev::{MaglevMember, MaglevTable};
use lb_common::maps::names;
use lb_common::{BACKEND_F_VALID, Backend, NO_BACKEND, PROTO_TCP, VipKey, VipMeta, v6_words};
use lb_lab::netns::Netns;

use super::report::{Figure, Row};

const SECTION: &str = "control plane";
const RUNS: usize = 5;
const SEED: u64 = 20_261_123;
const RING: u32 = 65_537;
const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PORT: u16 = 80;
const BACKENDS: u32 = 10;
/// The backend drained (1-based, of `BACKENDS`).
const DRAINED: u32 = 4;
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_SLEEP: Duration = Duration::from_micros(200);
const MAGLEV_TARGET_MS: f64 = 20.0;

pub fn run() -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (m, n) in [
        (65_537u32, 10u32),
        (65_537, 100),
        (65_537, 1000),
        (655_373, 100),
        (655_373, 1000),
    ] {
        eprintln!("==> control plane: Maglev build, M = {m}, {n} backends ({RUNS} runs)");
        let r = maglev_build(m, n);
        rows.push(Row::from_result(
            SECTION,
            format!("Maglev table build, M = {m}, {n} backends"),
            r,
        ));
    }

    let lb = lb_bin();
    eprintln!("==> control plane: `lb backend drain` on a lone agent ({RUNS} runs)");
    rows.push(Row::from_result(
        SECTION,
        format!("`lb backend drain` → ring applied ({BACKENDS} backends, M = {RING})"),
        lb.as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|lb| drain_applied(lb)),
    ));
    eprintln!("==> control plane: peer sync, drain/undrain on lb1 → lb2's ring ({RUNS} runs)");
    rows.push(Row::from_result(
        SECTION,
        format!(
            "peer sync: drain/undrain on agent 1 → agent 2's ring applied ({BACKENDS} backends)"
        ),
        lb.as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|lb| sync_applied(lb)),
    ));
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// 1. Maglev build

/// Backend `i` of a realistic fleet: sites 2001:db8:<site>::/48, racks /64, hosts ::10 up.
fn fleet_addr(i: u32) -> Ipv6Addr {
    let site = 0x100 + (i / 400) as u16;
    let rack = ((i % 400) / 40) as u16;
    let host = 0x10 + (i % 40) as u16;
    Ipv6Addr::new(0x2001, 0xdb8, site, rack, 0, 0, 0, host)
}

fn equal_members(n: u32, weight: u32) -> Vec<MaglevMember> {
    (0..n)
        .map(|i| MaglevMember {
            addr: fleet_addr(i),
            weight,
        })
        .collect()
}

/// At the config's default weight, 100 (equal weights build the same table whatever the
/// weight: it is divided by the weights' gcd).
fn maglev_build(m: u32, n: u32) -> Result<Figure> {
    let members = equal_members(n, 100);
    let mut ms = Vec::with_capacity(RUNS);
    let mut first: Option<MaglevTable> = None;
    for run in 0..RUNS {
        let t = Instant::now();
        let table = black_box(MaglevTable::build(black_box(m), SEED, black_box(&members)));
        let took = t.elapsed();
        let table = table.map_err(|e| anyhow::anyhow!("{e}"))?;
        ms.push(took.as_secs_f64() * 1e3);
        match &first {
            None => {
                check_table(&table, m, n)?;
                first = Some(table);
            }
            Some(f) => ensure!(
                f == &table,
                "run {run} built a different table from the same input"
            ),
        }
    }
    let mut fig = Figure::of(&ms, "ms");
    let (lo, hi) = (m / n, m.div_ceil(n));
    fig.ratio = if m == 65_537 && n == 100 {
        let verdict = if fig.median < MAGLEV_TARGET_MS {
            "met"
        } else {
            "MISSED"
        };
        format!("target < {MAGLEV_TARGET_MS} ms: {verdict}")
    } else {
        format!("{lo}–{hi} slots each")
    };
    Ok(fig)
}

/// Equal weights: backends take turns claiming one slot each until the table is full, so every
/// slot is filled and each backend holds floor(M/N) or ceil(M/N) slots.
fn check_table(t: &MaglevTable, m: u32, n: u32) -> Result<()> {
    ensure!(t.size() == m, "table has {} slots, want {m}", t.size());
    ensure!(
        t.members().len() == n as usize,
        "{} members",
        t.members().len()
    );
    let empty = t.slots().iter().filter(|&&s| s == NO_BACKEND).count();
    ensure!(empty == 0, "{empty} slots empty");
    let counts = t.slot_counts();
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    ensure!(
        min >= m / n && max <= m.div_ceil(n),
        "slots per backend {min}–{max}, want {}–{} (equal weights)",
        m / n,
        m.div_ceil(n)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Agents in namespaces

/// `lb`, built next to this bench (`cargo build --release -p lb-userspace -p tests --bins`).
fn lb_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.parent().context("the bench's directory")?.join("lb");
    ensure!(
        bin.exists(),
        "{} is missing: `cargo build --release -p lb-userspace -p tests --bins`",
        bin.display()
    );
    Ok(bin)
}

fn backend(j: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xb, j as u16, 0, 0, 0, 2)
}

fn vip_svc() -> String {
    format!("{VIP}:{PORT}/tcp")
}

/// A running `lb agent`. Drop: SIGTERM (SIGKILL after 10 s) to its PID, then its pins go.
struct Agent {
    name: String,
    child: Child,
    socket: PathBuf,
    pin_dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(lb: &Path, ns: &Netns, name: &str, config: &Path, dir: &Path) -> Result<Agent> {
        let pin_dir = pin_dir(name);
        let socket = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let mut cmd = Command::new(lb);
        cmd.args(["agent", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = ns.spawn(&mut cmd)?;
        let mut agent = Agent {
            name: name.to_string(),
            child,
            socket,
            pin_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = agent.child.try_wait()? {
                bail!("agent {name} exited ({st}):\n{}", agent.log_tail());
            }
            if lb_cmd(lb, &agent.socket, &["status"])?.status.success() {
                return Ok(agent);
            }
            ensure!(
                Instant::now() < deadline,
                "agent {name} not ready in 20 s:\n{}",
                agent.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn ring(&self) -> Result<Ring> {
        Ring::open(&self.pin_dir)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signals our own child, by its PID.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(None) = self.child.try_wait() {
                eprintln!("    agent {} ignored SIGTERM: killing it", self.name);
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        // The agent is gone: unpinning the link detaches the program; the maps go with it.
        if let Err(e) = lb_userspace::dataplane::detach_pinned(&self.pin_dir) {
            eprintln!("    removing {}: {e:#}", self.pin_dir.display());
        }
    }
}

fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/lbbc-{}-{name}", std::process::id()))
}

/// The bench's files; removed on drop.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> Result<Self> {
        let p = std::env::temp_dir().join(format!("lbbc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(Self(p))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ns_name(node: &str) -> String {
    format!("lbbc-{}-{node}", std::process::id())
}

/// A namespace with the agent's dataplane NIC: veth `l0` (XDP) with its peer `l1` beside it.
fn agent_ns(node: &str) -> Result<Netns> {
    let ns = Netns::new(&ns_name(node))?;
    ns.ip(&["link", "add", "l0", "type", "veth", "peer", "name", "l1"])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1b::1/64",
        "dev",
        "l0",
        "nodad",
    ])?;
    ns.ip(&["link", "set", "l0", "up"])?;
    ns.ip(&["link", "set", "l1", "up"])?;
    Ok(ns)
}

fn agent_config(socket: &Path, pin_dir: &Path, sync: &str) -> String {
    let mut c = format!(
        "[agent]\napi_socket = \"{}\"\npin_dir = \"{}\"\n\n\
         [dataplane]\ntunnel_source = \"2001:db8:1b::1\"\nseed = {SEED}\nring_size = {RING}\n\
         max_vips = 4\nmax_backends = 64\nmax_flows = 4096\n\n\
         [[interface]]\nname = \"l0\"\nnext_hop_mac = \"02:00:00:00:0b:fe\"\n\n\
         # Backends are addresses, not servers: no checks, every backend counts as up.\n\
         [health]\nenabled = false\n\n{sync}\n\
         [[vip]]\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\n",
        socket.display(),
        pin_dir.display(),
    );
    for j in 1..=BACKENDS {
        let _ = writeln!(c, "  [[vip.backend]]\n  address = \"{}\"", backend(j));
    }
    c
}

fn lb_cmd(lb: &Path, socket: &Path, args: &[&str]) -> Result<Output> {
    Command::new(lb)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .context("running lb")
}

fn lb_ok(lb: &Path, socket: &Path, args: &[&str]) -> Result<Output> {
    let out = lb_cmd(lb, socket, args)?;
    ensure!(
        out.status.success(),
        "lb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

fn lb_json(lb: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = lb_ok(lb, socket, &a)?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

// ---------------------------------------------------------------------------------------------
// Reading the pinned dataplane

/// An agent's pinned maps: its VIP's ring and the backend ids.
struct Ring {
    rings: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    vips: HashMap<MapData, VipKey, VipMeta>,
}

impl Ring {
    fn open(pin_dir: &Path) -> Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pin_dir.join(name))
                .with_context(|| format!("opening the pinned {name} under {}", pin_dir.display()))
        };
        Ok(Self {
            rings: Array::try_from(Map::Array(open(names::RINGS)?))?,
            backends: Array::try_from(Map::Array(open(names::BACKENDS)?))?,
            vips: HashMap::try_from(Map::HashMap(open(names::VIPS)?))?,
        })
    }

    /// The first slot of the VIP's ring in `RINGS`.
    fn base(&self) -> Result<u32> {
        let meta = self
            .vips
            .get(&VipKey::new(IpAddr::V4(VIP), PORT, PROTO_TCP), 0)
            .context("the VIP is not in the pinned VIPS map")?;
        Ok(meta.ring * RING)
    }

    /// The dataplane id of backend `addr` (installed, valid).
    fn backend_id(&self, addr: Ipv6Addr) -> Result<u32> {
        let words = v6_words(addr);
        for id in 0..self.backends.len() {
            let b = self.backends.get(&id, 0)?;
            if b.flags & BACKEND_F_VALID != 0 && b.addr == words {
                return Ok(id);
            }
        }
        bail!("backend {addr} is not installed in the pinned BACKENDS map")
    }

    fn slot(&self, base: u32, slot: u32) -> Result<u32> {
        self.rings
            .get(&(base + slot), 0)
            .context("reading a ring slot")
    }

    fn read(&self, base: u32) -> Result<Vec<u32>> {
        (0..RING).map(|s| self.slot(base, s)).collect()
    }
}

/// The slots of one ring that must change, and what they must become.
struct Watch<'a> {
    ring: &'a Ring,
    base: u32,
    /// Ascending: the order the reconciler writes them.
    slots: Vec<u32>,
    id: u32,
    /// true: each slot must stop pointing at `id` (drain); false: must point at it (undrain).
    away: bool,
    next: usize,
    done: Option<Duration>,
}

impl<'a> Watch<'a> {
    fn new(ring: &'a Ring, base: u32, slots: Vec<u32>, id: u32, away: bool) -> Self {
        Self {
            ring,
            base,
            slots,
            id,
            away,
            next: 0,
            done: None,
        }
    }

    /// Advances over the slots seen changed; true once all were.
    fn poll(&mut self) -> Result<bool> {
        while self.next < self.slots.len() {
            let v = self.ring.slot(self.base, self.slots[self.next])?;
            if (v == self.id) == self.away {
                return Ok(false);
            }
            self.next += 1;
        }
        Ok(true)
    }
}

/// What one timed change gave: when each watch was complete and when the CLI exited.
struct Timed {
    watches: Vec<Duration>,
    cli: Duration,
}

/// Spawns `lb ARGS` and polls `watches` until all are complete (bounded by `APPLY_TIMEOUT`).
fn timed_change(lb: &Path, socket: &Path, args: &[&str], watches: &mut [Watch]) -> Result<Timed> {
    let mut cmd = Command::new(lb);
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("running lb")?;
    let mut cli: Option<Duration> = None;
    let result = (|| -> Result<()> {
        loop {
            let mut all = true;
            for w in watches.iter_mut() {
                if w.done.is_none() {
                    if w.poll()? {
                        w.done = Some(start.elapsed());
                    } else {
                        all = false;
                    }
                }
            }
            if cli.is_none() && child.try_wait()?.is_some() {
                cli = Some(start.elapsed());
            }
            if all && cli.is_some() {
                return Ok(());
            }
            if start.elapsed() > APPLY_TIMEOUT {
                let left: Vec<String> = watches
                    .iter()
                    .filter(|w| w.done.is_none())
                    .map(|w| format!("{} of {} slots", w.slots.len() - w.next, w.slots.len()))
                    .collect();
                bail!(
                    "not applied within {APPLY_TIMEOUT:?} (still waiting for {}; CLI {})",
                    left.join(", "),
                    if cli.is_some() { "exited" } else { "running" }
                );
            }
            std::thread::sleep(POLL_SLEEP);
        }
    })();
    if result.is_err() && cli.is_none() {
        // Our own child, by PID.
        let _ = child.kill();
    }
    let out = child.wait_with_output().context("waiting for lb")?;
    result?;
    ensure!(
        out.status.success(),
        "lb {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(Timed {
        watches: watches.iter().map(|w| w.done.unwrap()).collect(),
        cli: cli.unwrap(),
    })
}

/// After a drain: no slot points at `id`, none is empty, and the others kept their backend
/// unless Maglev moved them (a drain moves little besides the drained slots).
fn check_drained(after: &[u32], before: &[u32], id: u32) -> Result<()> {
    let left = after.iter().filter(|&&s| s == id).count();
    let empty = after.iter().filter(|&&s| s == NO_BACKEND).count();
    ensure!(
        left == 0 && empty == 0,
        "after the drain: {left} slots still point at it, {empty} empty"
    );
    let others_moved = before
        .iter()
        .zip(after)
        .filter(|(b, a)| **b != id && b != a)
        .count();
    ensure!(
        others_moved < RING as usize / 50,
        "the drain moved {others_moved} slots of other backends"
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    Figure::of(v, "").median
}

// ---------------------------------------------------------------------------------------------
// 2. Drain on a lone agent

fn drain_applied(lb: &Path) -> Result<Figure> {
    let dir = RunDir::new()?;
    let ns = agent_ns("solo")?;
    let socket = dir.0.join("solo.sock");
    let config = dir.0.join("solo.toml");
    std::fs::write(&config, agent_config(&socket, &pin_dir("solo"), ""))?;
    let agent = Agent::start(lb, &ns, "solo", &config, &dir.0)?;
    let r = measure_drain(lb, &agent);
    drop(agent);
    drop(ns);
    drop(dir);
    r
}

fn measure_drain(lb: &Path, agent: &Agent) -> Result<Figure> {
    let ring = agent.ring()?;
    let base = ring.base()?;
    let drained = backend(DRAINED);
    let id = ring.backend_id(drained)?;
    let before = ring.read(base)?;
    let owned: Vec<u32> = (0..RING).filter(|&s| before[s as usize] == id).collect();
    let share = RING / BACKENDS;
    ensure!(
        owned.len() as u32 >= share - 1 && owned.len() as u32 <= share + 1,
        "backend {drained} holds {} slots before the drain, want about {share}",
        owned.len()
    );
    let (svc, addr) = (vip_svc(), drained.to_string());
    let mut applied = Vec::new();
    let mut cli = Vec::new();
    for run in 0..RUNS {
        let mut w = [Watch::new(&ring, base, owned.clone(), id, true)];
        let t = timed_change(
            lb,
            &agent.socket,
            &["backend", "drain", &svc, &addr],
            &mut w,
        )
        .with_context(|| format!("run {}: drain", run + 1))?;
        applied.push(ms(t.watches[0]));
        cli.push(ms(t.cli));
        check_drained(&ring.read(base)?, &before, id)?;
        // Undrain, and wait for the same table to be back (Maglev: same input, same table).
        let mut w = [Watch::new(&ring, base, owned.clone(), id, false)];
        timed_change(
            lb,
            &agent.socket,
            &["backend", "undrain", &svc, &addr],
            &mut w,
        )
        .with_context(|| format!("run {}: undrain", run + 1))?;
        ensure!(
            ring.read(base)? == before,
            "run {}: the undrained ring differs from the original",
            run + 1
        );
    }
    let list = lb_json(lb, &agent.socket, &["backend", "list", &svc])?;
    ensure!(
        list.as_array()
            .is_some_and(|a| a.iter().all(|b| b["state"] == "active")),
        "backends not all active at the end: {list}"
    );
    // The floor of any CLI command: process start, one API round trip, exit.
    let mut floor = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        lb_ok(lb, &agent.socket, &["status"])?;
        floor.push(ms(t.elapsed()));
    }
    let mut fig = Figure::of(&applied, "ms");
    fig.ratio = format!(
        "{} slots rewritten; CLI exits at {:.1} ms (`lb status`: {:.1} ms)",
        owned.len(),
        median(&cli),
        median(&floor)
    );
    Ok(fig)
}

// ---------------------------------------------------------------------------------------------
// 3. Peer sync

const SYNC_PORT: u16 = 7946;

fn sync_addr(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x5, 0, 0, 0, 0, i as u16)
}

fn sync_applied(lb: &Path) -> Result<Figure> {
    let dir = RunDir::new()?;
    let ns1 = agent_ns("lb1")?;
    let ns2 = agent_ns("lb2")?;
    // The peer link: one veth between the two namespaces.
    lb_lab::netns::sh(
        "ip",
        &[
            "link", "add", "sy", "netns", &ns1.name, "type", "veth", "peer", "name", "sy", "netns",
            &ns2.name,
        ],
    )?;
    for (i, ns) in [(1, &ns1), (2, &ns2)] {
        ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", sync_addr(i)),
            "dev",
            "sy",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "sy", "up"])?;
    }
    let key_file = dir.0.join("fleet.key");
    lb_lab::write_fleet_key(&key_file)?;
    let mut agents = Vec::new();
    for (i, ns) in [(1usize, &ns1), (2, &ns2)] {
        let name = format!("lb{i}");
        let socket = dir.0.join(format!("{name}.sock"));
        let peer = 3 - i;
        let sync = format!(
            "[sync]\nnode = \"{name}\"\nlisten = \"[{}]:{SYNC_PORT}\"\nkey_file = \"{}\"\n\
             state_file = \"{}\"\nflows = false\nstartup_wait_secs = 2\n\
             [[sync.peer]]\nname = \"lb{peer}\"\naddress = \"[{}]:{SYNC_PORT}\"\n",
            sync_addr(i),
            key_file.display(),
            dir.0.join(format!("{name}-state.json")).display(),
            sync_addr(peer),
        );
        let config = dir.0.join(format!("{name}.toml"));
        std::fs::write(&config, agent_config(&socket, &pin_dir(&name), &sync))?;
        agents.push(Agent::start(lb, ns, &name, &config, &dir.0)?);
    }
    let r = measure_sync(lb, &agents);
    drop(agents);
    drop(ns1);
    drop(ns2);
    drop(dir);
    r
}

/// Both agents report the same state digest and see each other agree.
fn agree(lb: &Path, agents: &[Agent]) -> Result<bool> {
    let a = lb_json(lb, &agents[0].socket, &["peer", "list"])?;
    let b = lb_json(lb, &agents[1].socket, &["peer", "list"])?;
    Ok(a["state_digest"] == b["state_digest"]
        && a["table_digest"] == b["table_digest"]
        && [&a, &b]
            .iter()
            .all(|p| p["peers"][0]["state_match"] == true && p["peers"][0]["table_match"] == true))
}

fn measure_sync(lb: &Path, agents: &[Agent]) -> Result<Figure> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agree(lb, agents)? {
        ensure!(
            Instant::now() < deadline,
            "the two agents did not agree within 20 s:\n{}\n{}",
            agents[0].log_tail(),
            agents[1].log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let drained = backend(DRAINED);
    let (svc, addr) = (vip_svc(), drained.to_string());
    let (r1, r2) = (agents[0].ring()?, agents[1].ring()?);
    let (b1, b2) = (r1.base()?, r2.base()?);
    let (id1, id2) = (r1.backend_id(drained)?, r2.backend_id(drained)?);
    let (before1, before2) = (r1.read(b1)?, r2.read(b2)?);
    let owned = |ring: &[u32], id: u32| -> Vec<u32> {
        (0..RING).filter(|&s| ring[s as usize] == id).collect()
    };
    let (o1, o2) = (owned(&before1, id1), owned(&before2, id2));
    ensure!(
        o1 == o2 && !o1.is_empty(),
        "the two agents' rings give backend {drained} different slots ({} and {})",
        o1.len(),
        o2.len()
    );
    let mut peer = Vec::new();
    let mut local = Vec::new();
    for run in 0..RUNS {
        let drain = run % 2 == 0;
        let verb = if drain { "drain" } else { "undrain" };
        let mut w = [
            Watch::new(&r2, b2, o2.clone(), id2, drain),
            Watch::new(&r1, b1, o1.clone(), id1, drain),
        ];
        let t = timed_change(
            lb,
            &agents[0].socket,
            &["backend", verb, &svc, &addr],
            &mut w,
        )
        .with_context(|| format!("run {}: {verb} on agent 1", run + 1))?;
        peer.push(ms(t.watches[0]));
        local.push(ms(t.watches[1]));
        let after2 = r2.read(b2)?;
        if drain {
            check_drained(&after2, &before2, id2).context("agent 2")?;
        } else {
            ensure!(
                after2 == before2,
                "agent 2's undrained ring differs from the original"
            );
        }
        ensure!(
            r1.read(b1)? == after2 || id1 != id2,
            "the agents' rings differ after run {}",
            run + 1
        );
    }
    // Leave the fleet as it started (untimed).
    let mut w = [Watch::new(&r2, b2, o2.clone(), id2, false)];
    timed_change(
        lb,
        &agents[0].socket,
        &["backend", "undrain", &svc, &addr],
        &mut w,
    )
    .context("final undrain")?;
    let mut fig = Figure::of(&peer, "ms");
    fig.ratio = format!(
        "drain,undrain alternating; agent 1's own ring at {:.1} ms",
        median(&local)
    );
    Ok(fig)
}
