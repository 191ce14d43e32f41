//! Section "egress": what the way out costs per packet, through the dataplane harness
//! (BENCHMARKS.md). Three ways for the same established and SYN packets of an IPv4 flow:
//! - the static next hop (`EGRESS_INGRESS`: the NIC's configured MAC, XDP_TX), the base;
//! - the per-backend cache of the kernel's route (`EGRESS_ROUTED`), leaving by another NIC
//!   (XDP_REDIRECT) and by the NIC it came in on (XDP_TX: the lookup alone);
//! - `bpf_fib_lookup` per packet (the `egress-fib` build of lb_xdp, `--fib-object`).
//!
//! They run in a namespace of their own (`lbbe-<pid>`) with IPv6 forwarding on (the helper
//! refuses to work without it), a veth `eg0` with the MAC `NIC_MAC`, a route to the backends via
//! 2001:db8:f::1 and that neighbour permanently at `NEXT_HOP_MAC`: so all three write the same
//! frame, which each must produce exactly.

use anyhow::{Context, Result};
use lb_common::{Counter, Egress, EgressPath, IfaceConfig, PROTO_TCP};
use lb_lab::netns::{Netns, in_ns};
use lb_testkit::*;

use crate::dataplane::{
    Harness, Prep, Scenario, encap_of, lb_with_one_vip, measure_all, no_prep, ratios,
};
use crate::report::Row;

const SECTION: &str = "egress";
const XDP_REDIRECT: u32 = 4;
const PAYLOAD: &[u8] = b"bench-egress";
const EST_STATIC: &str = "egress: static next hop, established (XDP_TX)";
const SYN_STATIC: &str = "egress: static next hop, SYN (XDP_TX)";
const EST_CACHE: &str = "egress: route cached per backend, established (XDP_REDIRECT)";
const SYN_CACHE: &str = "egress: route cached per backend, SYN (XDP_REDIRECT)";
const EST_SAME: &str = "egress: route cached per backend, same NIC, established (XDP_TX)";
const SYN_SAME: &str = "egress: route cached per backend, same NIC, SYN (XDP_TX)";
const EST_FIB: &str = "egress: bpf_fib_lookup per packet, established (XDP_REDIRECT)";
const SYN_FIB: &str = "egress: bpf_fib_lookup per packet, SYN (XDP_REDIRECT)";

/// Runs the section in its namespace (removed afterwards).
pub fn run(lb_object: &'static [u8], fib_object: Option<&'static [u8]>) -> Result<Vec<Row>> {
    let ns = Netns::new(&format!("lbbe-{}", std::process::id()))?;
    let nic = |a: &[&str]| ns.ip(a).map(drop);
    nic(&["link", "add", "eg0", "type", "veth", "peer", "name", "eg1"])?;
    nic(&["link", "set", "eg0", "address", &mac(NIC_MAC)])?;
    nic(&["link", "set", "eg0", "up"])?;
    nic(&["link", "set", "eg1", "up"])?;
    ns.sysctl(&[("net.ipv6.conf.all.forwarding", "1")])?;
    nic(&[
        "-6",
        "addr",
        "add",
        "2001:db8:f::2/64",
        "dev",
        "eg0",
        "nodad",
    ])?;
    nic(&[
        "-6",
        "route",
        "add",
        "2001:db8:be::/64",
        "via",
        "2001:db8:f::1",
        "dev",
        "eg0",
    ])?;
    nic(&[
        "-6",
        "neigh",
        "add",
        "2001:db8:f::1",
        "lladdr",
        &mac(NEXT_HOP_MAC),
        "dev",
        "eg0",
        "nud",
        "permanent",
    ])?;
    let rows = in_ns(&ns.name, move || measure(lb_object, fib_object))??;
    drop(ns);
    Ok(rows)
}

fn mac(m: [u8; 6]) -> String {
    lb_userspace::config::format_mac(&m)
}

/// The route's path through `nic` (EGRESS_DEVS slot 0), with the same MACs as the static hop.
fn routed(nic: u32) -> Egress {
    let mut e = Egress {
        state: lb_common::EGRESS_ROUTED,
        paths_len: 1,
        ..Egress::UNRESOLVED
    };
    e.paths[0] = EgressPath {
        link: IfaceConfig {
            src_mac: NIC_MAC,
            dst_mac: NEXT_HOP_MAC,
            mtu: 0,
            _pad: 0,
        },
        ifindex: nic,
        dev: 0,
    };
    e
}

fn measure(lb_object: &[u8], fib_object: Option<&[u8]>) -> Result<Vec<Row>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    crate::cpu::pin_to_cpu(cpus - 1)?;
    let eg0 = lb_userspace::neighbour::ifindex("eg0")?;
    // VIP 0 (backends 1-3) keeps the static next hop; VIP 1 (backends 4-6) is routed through
    // the cache: both measured in the same rounds.
    let (mut lb, static_vip) = lb_with_one_vip(lb_object)?;
    let cached_vip = lb.add_vip(
        "192.0.2.20".parse().unwrap(),
        80,
        PROTO_TCP,
        1,
        false,
        &[(4, 1), (5, 1), (6, 1)],
    );
    // VIP 2 (backends 7-9): routed through the NIC the packets arrive on (BPF_PROG_TEST_RUN's
    // loopback): the cache's lookup without a redirect.
    let same_vip = lb.add_vip(
        "192.0.2.30".parse().unwrap(),
        80,
        PROTO_TCP,
        2,
        false,
        &[(7, 1), (8, 1), (9, 1)],
    );
    lb.dp.set_egress_dev(0, eg0)?;
    let lo = lb_userspace::neighbour::ifindex("lo")?;
    for i in 4..=9 {
        let nic = if i <= 6 { eg0 } else { lo };
        lb.dp
            .set_egress(lb_common::v6_words(backend_addr(i)), Some(routed(nic)))?;
    }
    let packets = |vip: &str, installed: &Installed| {
        let flow = Flow::new("198.51.100.7", 40000, vip, 80);
        let (syn, ack) = (flow.tcp(Tcp::Syn, PAYLOAD), flow.tcp(Tcp::Ack, PAYLOAD));
        let key = flow.key(PROTO_TCP);
        let out = (
            encap_of(&syn, &key, installed, false),
            encap_of(&ack, &key, installed, false),
        );
        (syn, ack, out)
    };
    let (s_syn, s_ack, (s_syn_out, s_ack_out)) = packets("192.0.2.10", &static_vip);
    let (c_syn, c_ack, (c_syn_out, c_ack_out)) = packets("192.0.2.20", &cached_vip);
    let (l_syn, l_ack, (l_syn_out, l_ack_out)) = packets("192.0.2.30", &same_vip);
    use Counter::*;
    let scenario = |name, frame: &Vec<u8>, expected: &Vec<u8>, verdict, counters| Scenario {
        name,
        prog: crate::dataplane::Prog::Lb,
        harness: true,
        frame: frame.clone(),
        flows: 0,
        verdict,
        counters,
        expected: expected.clone(),
        fresh_table: None,
    };
    // The flow's entry, made by one ordinary run of its first ACK (sent or redirected; SYNs
    // make none).
    let primed = |first: &Vec<u8>| -> Prep<'static> {
        let first = first.clone();
        Box::new(move |lb: &mut Lb, _: &mut Harness| {
            let v = lb.run(&first).verdict;
            anyhow::ensure!(v == XDP_TX || v == XDP_REDIRECT, "priming run: verdict {v}");
            Ok(())
        })
    };
    let redirect = |c: Counter| vec![c, Tx, TxRedirect];
    let scenarios: Vec<(Scenario, Prep)> = vec![
        (
            scenario(EST_STATIC, &s_ack, &s_ack_out, XDP_TX, vec![LruHit, Tx]),
            primed(&s_ack),
        ),
        (
            scenario(SYN_STATIC, &s_syn, &s_syn_out, XDP_TX, vec![LruMissSyn, Tx]),
            no_prep(),
        ),
        (
            scenario(
                EST_CACHE,
                &c_ack,
                &c_ack_out,
                XDP_REDIRECT,
                redirect(LruHit),
            ),
            primed(&c_ack),
        ),
        (
            scenario(
                SYN_CACHE,
                &c_syn,
                &c_syn_out,
                XDP_REDIRECT,
                redirect(LruMissSyn),
            ),
            no_prep(),
        ),
        (
            scenario(EST_SAME, &l_ack, &l_ack_out, XDP_TX, vec![LruHit, Tx]),
            primed(&l_ack),
        ),
        (
            scenario(SYN_SAME, &l_syn, &l_syn_out, XDP_TX, vec![LruMissSyn, Tx]),
            no_prep(),
        ),
    ];
    let mut h = Harness::load(lb_objects::testing::BENCH_OBJECT)?;
    let mut rows: Vec<Row> = measure_all(SECTION, &mut lb, &mut h, &scenarios)
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    drop(lb);
    // The per-packet lookup: another build, so rounds of its own (same packets as the static
    // rows; its routes and neighbour are the namespace's).
    let fib_rows = match fib_object {
        None => {
            let why = anyhow::anyhow!("no --fib-object given (cargo xtask bench builds it)");
            vec![
                Row::failed(SECTION, EST_FIB, &why),
                Row::failed(SECTION, SYN_FIB, &why),
            ]
        }
        Some(object) => {
            let (mut fib, _) = lb_with_one_vip(object).context("loading the egress-fib build")?;
            fib.dp.set_egress_dev(0, eg0)?;
            let scenarios: Vec<(Scenario, Prep)> = vec![
                (
                    scenario(EST_FIB, &s_ack, &s_ack_out, XDP_REDIRECT, redirect(LruHit)),
                    primed(&s_ack),
                ),
                (
                    scenario(
                        SYN_FIB,
                        &s_syn,
                        &s_syn_out,
                        XDP_REDIRECT,
                        redirect(LruMissSyn),
                    ),
                    no_prep(),
                ),
            ];
            measure_all(SECTION, &mut fib, &mut h, &scenarios)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        }
    };
    rows.extend(fib_rows);
    let (mut est, mut syn): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| r.name.contains("established"));
    ratios(&mut est, EST_STATIC, "static");
    ratios(&mut syn, SYN_STATIC, "static");
    est.extend(syn);
    Ok(est)
}
