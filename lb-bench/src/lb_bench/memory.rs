//! Kernel map memory of the load balancer, from the kernel's own accounting: the `memlock:`
//! line of `/proc/self/fdinfo/<map fd>` (on 6.x kernels each map type's `map_mem_usage`, the
//! figure `bpftool map show` prints as "memlock"). Per-CPU maps count once per possible CPU.
//!
//! The sizes are the agent's defaults, as the agent derives them from a config file that sets
//! none (`Config::limits`): 65537-slot Maglev rings, 64 VIPs and rings, 4096 backends, 1M flows.
//! The connection table is an LRU hash, which the kernel always preallocates: its memory is
//! fixed at load time, whatever the number of flows. To show it, 1,000,000 flows are written
//! into the table and the figure is read again. A second load with a 100,000-flow table shows
//! how much of the total the flow table is.

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::maps::{Map, MapData};
use lb_common::{ConnEntry, FlowKey, PROTO_TCP, names};
use lb_userspace::dataplane::{Dataplane, DataplaneLimits};

use crate::report::{Figure, Row};

const SECTION: &str = "memory";
const MIB: f64 = 1024.0 * 1024.0;
const FLOWS: u32 = 1_000_000;
const SMALL_FLOWS: u32 = 100_000;
/// Bound on writing (and then counting) the 1M flows.
const FILL_BUDGET: Duration = Duration::from_secs(60);

/// A map as the kernel accounts for it.
struct MapMem {
    name: String,
    max_entries: u64,
    /// Bytes.
    memlock: u64,
}

fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

/// Every map of the loaded object (the global-data ones included), largest first.
fn map_memory(dp: &mut Dataplane) -> Result<Vec<MapMem>> {
    let mut out = Vec::new();
    for (name, map) in dp.ebpf_mut().maps() {
        let fd = map_data(map).fd().as_fd().as_raw_fd();
        let path = format!("/proc/self/fdinfo/{fd}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |key: &str| -> Result<u64> {
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .with_context(|| format!("no `{key}` line in {path} (map {name})"))?;
            v.trim()
                .parse()
                .with_context(|| format!("`{key}` of map {name}: {v:?}"))
        };
        out.push(MapMem {
            name: name.to_string(),
            max_entries: field("max_entries:")?,
            memlock: field("memlock:")?,
        });
    }
    ensure!(!out.is_empty(), "the object has no maps");
    out.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    Ok(out)
}

fn total(maps: &[MapMem]) -> u64 {
    maps.iter().map(|m| m.memlock).sum()
}

fn get<'a>(maps: &'a [MapMem], name: &str) -> Result<&'a MapMem> {
    maps.iter()
        .find(|m| m.name == name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// The limits the agent uses when its config file sets none.
fn agent_limits() -> Result<DataplaneLimits> {
    let cfg = lb_userspace::config::Config::parse(
        "[dataplane]\ntunnel_source = \"2001:db8:1b::1\"\nseed = 1\n\n\
         [[interface]]\nname = \"eth1\"\nnext_hop_mac = \"02:00:00:00:0b:fe\"\n",
    )
    .context("parsing a minimal agent config")?;
    Ok(cfg.limits())
}

/// Flow `i` of the fill: 198.51.100.(i / 4096):(1024 + i % 4096) -> 192.0.2.10:80.
fn flow_key(i: u32) -> FlowKey {
    let src = std::net::Ipv4Addr::new(198, 51, 100, (i >> 12) as u8);
    FlowKey::new(
        src.into(),
        1024 + (i & 0xFFF) as u16,
        std::net::Ipv4Addr::new(192, 0, 2, 10).into(),
        80,
        PROTO_TCP,
    )
}

/// Writes `FLOWS` distinct flows into the connection table from userspace; returns how many
/// entries the table then holds (an LRU table may evict some before it is full).
fn fill(dp: &mut Dataplane) -> Result<u64> {
    ensure!(FLOWS >> 12 < 256, "the fill's addresses would wrap");
    let deadline = Instant::now() + FILL_BUDGET;
    let mut table = dp.flow_table()?;
    let now = lb_userspace::dataplane::monotonic_ns();
    for i in 0..FLOWS {
        if i.is_multiple_of(65536) && Instant::now() > deadline {
            bail!(
                "writing the flows took longer than {} s ({i} written)",
                FILL_BUDGET.as_secs()
            );
        }
        let entry = ConnEntry {
            backend: 1 + i % 3,
            hash: i,
            atime_ns: now,
            generation: 1,
            flags: 0,
            prev: 0,
        };
        table.insert(&flow_key(i), &entry)?;
    }
    // Counted through the same handle, in batches: how many entries the tables now hold.
    let n = table.walk(|_, _| {})? as u64;
    ensure!(
        Instant::now() <= deadline + FILL_BUDGET,
        "counting the flows took too long"
    );
    ensure!(
        n <= 2 * FLOWS as u64,
        "the tables list more entries than they hold"
    );
    Ok(n)
}

/// 1000000 -> "1,000,000".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

fn pct(part: u64, whole: u64) -> String {
    format!("{:.0}% of total", 100.0 * part as f64 / whole.max(1) as f64)
}

/// Section "memory": rows in MiB.
pub fn run(lb_object: &[u8]) -> Result<Vec<Row>> {
    let limits = match agent_limits() {
        Ok(l) => l,
        Err(e) => return Ok(vec![Row::failed(SECTION, "maps, agent defaults", &e)]),
    };
    let mut rows = Vec::new();
    let default_name = format!(
        "maps, agent defaults ({} flows, {} rings of {}): total",
        thousands(limits.max_conns as u64),
        limits.max_rings,
        limits.ring_size
    );
    eprintln!("==> memory: {default_name}");
    let loaded = Dataplane::load_object(lb_object, limits)
        .and_then(|mut dp| map_memory(&mut dp).map(|maps| (dp, maps)));
    let (mut dp, maps) = match loaded {
        Ok(v) => v,
        Err(e) => {
            rows.push(Row::failed(SECTION, default_name, &e));
            return Ok(rows);
        }
    };
    for m in &maps {
        eprintln!(
            "    {:<16} {:>10} entries {:>10.3} MiB",
            m.name,
            m.max_entries,
            mib(m.memlock)
        );
    }
    let sum = total(&maps);
    let mut f = Figure::single(mib(sum), "MiB");
    f.ratio = format!("{} maps", maps.len());
    rows.push(Row::ok(SECTION, default_name, f));

    for (name, what) in [
        (names::CONNS4, "IPv4 connection table"),
        (names::CONNS, "IPv6 connection table"),
    ] {
        let conns = get(&maps, name).map(|m| (m.memlock, m.max_entries));
        rows.push(Row::from_result(
            SECTION,
            format!("{name}: {what} (LRU hash, preallocated)"),
            conns.map(|(bytes, entries)| {
                let mut f = Figure::single(mib(bytes), "MiB");
                f.ratio = format!(
                    "{}; {:.0} B/flow",
                    pct(bytes, sum),
                    bytes as f64 / entries.max(1) as f64
                );
                f
            }),
        ));
    }
    let rings = get(&maps, names::RINGS).map(|m| (m.memlock, m.max_entries));
    rows.push(Row::from_result(
        SECTION,
        format!(
            "{}: {} Maglev rings of {} slots",
            names::RINGS,
            limits.max_rings,
            limits.ring_size
        ),
        rings.map(|(bytes, entries)| {
            let mut f = Figure::single(mib(bytes), "MiB");
            // Array maps round each value up to 8 bytes: a u32 slot costs 8.
            f.ratio = format!(
                "{}; {:.1} B/slot",
                pct(bytes, sum),
                bytes as f64 / entries.max(1) as f64
            );
            f
        }),
    ));
    let others: Vec<&MapMem> = maps
        .iter()
        .filter(|m| ![names::CONNS, names::CONNS4, names::RINGS].contains(&m.name.as_str()))
        .collect();
    let other_bytes: u64 = others.iter().map(|m| m.memlock).sum();
    let biggest = others
        .iter()
        .take(3)
        .map(|m| m.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut f = Figure::single(mib(other_bytes), "MiB");
    f.ratio = format!("{}; largest: {biggest}", pct(other_bytes, sum));
    rows.push(Row::ok(
        SECTION,
        format!("the other {} maps together", others.len()),
        f,
    ));

    let fill_name = format!("maps, {} flows written: total", thousands(FLOWS as u64));
    eprintln!("==> memory: {fill_name}");
    let started = Instant::now();
    let filled = fill(&mut dp).and_then(|n| Ok((n, total(&map_memory(&mut dp)?))));
    rows.push(Row::from_result(
        SECTION,
        fill_name,
        filled.map(|(n, after)| {
            eprintln!(
                "    {n} entries in the table after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let mut f = Figure::single(mib(after), "MiB");
            let change = after as i64 - sum as i64;
            let kept = if n < FLOWS as u64 {
                format!("{} kept, LRU evicted {}", thousands(n), FLOWS as u64 - n)
            } else {
                format!("{} entries", thousands(n))
            };
            f.ratio = format!(
                "{:+.2} MiB vs empty{}; {kept}",
                change as f64 / MIB,
                if change == 0 { " (preallocated)" } else { "" }
            );
            f
        }),
    ));
    drop(dp);

    let small = DataplaneLimits {
        max_conns: SMALL_FLOWS,
        ..limits
    };
    let small_name = format!(
        "maps, agent defaults but {} flows: total",
        thousands(SMALL_FLOWS as u64)
    );
    eprintln!("==> memory: {small_name}");
    let small_maps =
        Dataplane::load_object(lb_object, small).and_then(|mut dp| map_memory(&mut dp));
    rows.push(Row::from_result(
        SECTION,
        small_name,
        small_maps.map(|maps| {
            let t = total(&maps);
            let mut f = Figure::single(mib(t), "MiB");
            f.ratio = format!("{:.2}× the default total", t as f64 / sum.max(1) as f64);
            f
        }),
    ));
    Ok(rows)
}
