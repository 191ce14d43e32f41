//! Section "scale" (VIPs and backends at size) and `lb-bench compare` (builds side by side).

use std::net::IpAddr;

use anyhow::Result;
use lb_common::PROTO_TCP;
use lb_testkit::*;

use crate::report::{Figure, Row};

use super::harness::*;
use super::{FLOOR, basic_scenarios, lb_with_one_vip};

/// An established IPv6 flow (its own VIP), for `compare`: counted as a table or a cache hit,
/// so builds with and without an IPv6 flow cache both pass.
fn established_ipv6(lb: &mut Lb) -> (Scenario, Prep<'static>) {
    let vip: IpAddr = "2001:db8:10::10".parse().unwrap();
    let installed = lb.add_vip(vip, 80, PROTO_TCP, 1, false, &[(4, 1), (5, 1), (6, 1)]);
    let flow = Flow::new("2001:db8:c::7", 40000, "2001:db8:10::10", 80);
    let ack = flow.tcp(Tcp::Ack, PAYLOAD);
    let scenario = Scenario {
        name: "established, IPv6",
        prog: Prog::Lb,
        harness: true,
        frame: ack.clone(),
        flows: 0,
        verdict: XDP_TX,
        counters: vec![lb_common::Counter::LruHit, lb_common::Counter::Tx],
        expected: encap_of(&ack, &flow.key(PROTO_TCP), &installed, false),
        fresh_table: None,
    };
    (scenario, Box::new(move |lb, _| prime(lb, &ack)))
}

/// `lb-bench compare label=object...`: builds of lb_xdp side by side (before/after figures,
/// profiling experiments). Rounds interleave the builds, so machine noise hits them alike.
pub fn compare(objects: &[(String, Vec<u8>)]) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    crate::cpu::pin_to_cpu(cpus - 1)?;
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;
    struct Build {
        label: String,
        lb: Lb,
        scenarios: Vec<(Scenario, Prep<'static>)>,
        ns: Vec<Vec<u64>>,
        failed: Vec<Option<anyhow::Error>>,
    }
    let mut builds = Vec::new();
    for (label, object) in objects {
        let (mut lb, installed) = lb_with_one_vip(object)?;
        let mut scenarios = basic_scenarios(&installed, true);
        scenarios.push(established_ipv6(&mut lb));
        let n = scenarios.len();
        builds.push(Build {
            label: label.clone(),
            lb,
            scenarios,
            ns: vec![Vec::new(); n],
            failed: (0..n).map(|_| None).collect(),
        });
    }
    let ack = Flow::new("198.51.100.7", 40000, "192.0.2.10", 80).tcp(Tcp::Ack, PAYLOAD);
    let floor = Scenario {
        name: FLOOR,
        prog: Prog::Floor,
        harness: true,
        frame: ack.clone(),
        flows: 0,
        verdict: XDP_TX,
        counters: vec![],
        expected: floor_output(&ack),
        fresh_table: None,
    };
    let mut floor_ns = Vec::new();
    let first = &mut builds[0].lb;
    verify(&mut h, first, &floor)?;
    for b in &mut builds {
        for (i, (s, prep)) in b.scenarios.iter().enumerate() {
            if let Err(e) = prep(&mut b.lb, &mut h).and_then(|()| verify(&mut h, &mut b.lb, s)) {
                b.failed[i] = Some(e);
            }
        }
    }
    // More rounds for a small difference on a noisy machine: LB_BENCH_ROUNDS=15.
    let rounds = std::env::var("LB_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| (1..=1000).contains(&n))
        .unwrap_or(RUNS);
    for round in 0..rounds {
        eprintln!("==> compare: round {} of {rounds}", round + 1);
        floor_ns.push(timed(&mut h, &mut builds[0].lb, &floor)?);
        for b in &mut builds {
            for (i, (s, _)) in b.scenarios.iter().enumerate() {
                if b.failed[i].is_some() {
                    continue;
                }
                match timed(&mut h, &mut b.lb, s) {
                    Ok(t) => b.ns[i].push(t),
                    Err(e) => b.failed[i] = Some(e),
                }
            }
        }
    }
    let as_f64 = |v: &[u64]| v.iter().map(|&n| n as f64).collect::<Vec<_>>();
    let mut rows = vec![Row::ok(
        "compare",
        FLOOR,
        Figure::of(&as_f64(&floor_ns), "ns/packet"),
    )];
    for b in builds {
        for (i, (s, _)) in b.scenarios.iter().enumerate() {
            let name = format!("{}: {}", b.label, s.name);
            rows.push(match &b.failed[i] {
                Some(e) => Row::failed("compare", name, e),
                None => Row::ok("compare", name, Figure::of(&as_f64(&b.ns[i]), "ns/packet")),
            });
        }
    }
    ratios(&mut rows, FLOOR, "floor");
    Ok(rows)
}

/// Section "scale": the established and SYN paths with 1, 100 and 10,000 VIPs and with 10 and
/// 1,000 backends; each configuration is a fresh program with its own maps.
pub fn scale(lb_object: &[u8]) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    crate::cpu::pin_to_cpu(cpus - 1)?;
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;
    let mut rows = Vec::new();
    // (label, VIPs, backends of the measured VIP)
    let configs: [(&str, u32, u32); 5] = [
        ("1 VIP, 10 backends", 1, 10),
        ("100 VIPs, 10 backends", 100, 10),
        ("10,000 VIPs, 10 backends", 10_000, 10),
        ("1 VIP, 100 backends", 1, 100),
        ("1 VIP, 1,000 backends", 1, 1_000),
    ];
    for (label, vips, backends) in configs {
        let limits = lb_userspace::dataplane::DataplaneLimits {
            ring_size: 65537,
            max_vips: vips + 1,
            max_rings: 1,
            max_backends: backends + 1,
            max_conns: 1 << 16,
            ..Default::default()
        };
        let mut lb = match Lb::with_limits(lb_object, limits) {
            Ok(lb) => lb,
            Err(e) => {
                rows.push(Row::failed("scale", label, &e));
                continue;
            }
        };
        lb.set_config(|c| c.flags |= super::AGENT_FLAGS);
        eprintln!("==> scale: {label}");
        let ids: Vec<(u32, u32)> = (1..=backends).map(|id| (id, 1)).collect();
        // VIP 0 is measured; the others (198.51.100.0/24 and 203.0.113.0/24 addresses, ports
        // 1.., so 10,000 fit) share its Maglev ring: ring memory is not what is measured.
        let installed = lb.add_vip("192.0.2.10".parse().unwrap(), 80, PROTO_TCP, 0, false, &ids);
        let filled = (1..vips).try_for_each(|i| {
            let addr: IpAddr = format!(
                "{}.{}",
                if i % 2 == 0 {
                    "198.51.100"
                } else {
                    "203.0.113"
                },
                i % 250 + 1
            )
            .parse()
            .unwrap();
            let meta = lb_common::VipMeta {
                id: i,
                ring: 0,
                flags: 0,
                _pad: 0,
            };
            lb.dp.set_vip(
                lb_common::VipKey::new(addr, 1 + (i / 250) as u16, PROTO_TCP),
                meta,
            )
        });
        if let Err(e) = filled {
            rows.push(Row::failed("scale", label, &e.context("adding the VIPs")));
            continue;
        }
        let scenarios = basic_scenarios(&installed, false);
        for (mut row, _) in measure_all("scale", &mut lb, &mut h, &scenarios) {
            row.name = format!("{}, {label}", row.name);
            rows.push(row);
        }
    }
    // Growth: each configuration against the first one of the same path.
    for path in ["SYN", "established"] {
        let base = format!("{path}, {}", configs[0].0);
        let (mine, _): (Vec<&mut Row>, Vec<&mut Row>) = rows
            .iter_mut()
            .partition(|r| r.name.starts_with(&format!("{path}, ")));
        let b = mine
            .iter()
            .find(|r| r.name == base)
            .and_then(|r| r.median());
        if let Some(b) = b {
            for r in mine {
                if let Ok(f) = &mut r.result {
                    f.ratio = format!("{:.2}× 1 VIP, 10 backends", f.median / b);
                }
            }
        }
    }
    Ok(rows)
}
