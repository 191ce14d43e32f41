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

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use lb_common::NO_BACKEND;
use lb_common::maglev::{MaglevMember, MaglevTable};

use crate::report::{Figure, Row};

mod agent;
mod ring;
mod setup;

use agent::*;
use ring::*;
use setup::*;

const SECTION: &str = "control plane";
const RUNS: usize = 5;
/// The backend drained (1-based, of `BACKENDS`).
const DRAINED: u32 = 4;
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
