//! `lb agent` on a veth in a namespace, driven by the `lb` CLI, with real frames on the wire.
//!
//! The client namespace injects frames through a packet socket; the agent's XDP program
//! encapsulates them and sends them back out of the same NIC to its next hop, the client's NIC,
//! where the test captures and decodes them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_common::{
    FlowKey, PROTO_TCP, flow_hash,
    maglev::{MaglevMember, MaglevTable},
    ring_slot,
};
use serde_json::Value;
use tests::netns::*;
use tests::*;

const RING: u32 = 4099;
const FLEET_SEED: u64 = 7;
const VIP: &str = "192.0.2.10";
const VIP_SVC: &str = "192.0.2.10:80/tcp";

fn be(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, i)
}

fn config(next_hop: &str, extra_dataplane: &str) -> String {
    format!(
        r#"
[dataplane]
tunnel_source = "2001:db8:1b::1"
seed = {FLEET_SEED}
ring_size = {RING}
max_vips = 8
max_backends = 64
max_flows = 10000
tcp_closing_timeout_secs = 1
{extra_dataplane}

[[interface]]
name = "l0"
{next_hop}

[[vip]]
address = "{VIP}"
port = 80
protocol = "tcp"
  [[vip.backend]]
  address = "2001:db8:be::1"
  [[vip.backend]]
  address = "2001:db8:be::2"
  [[vip.backend]]
  address = "2001:db8:be::3"

[[vip]]
address = "192.0.2.53"
port = 53
protocol = "udp"
  [[vip.backend]]
  address = "2001:db8:be::1"
"#
    )
}

/// The backend Maglev gives `key` among `members` (what a SYN must reach).
fn maglev(members: &[(Ipv6Addr, u32)], key: &FlowKey) -> Ipv6Addr {
    let m: Vec<MaglevMember> = members
        .iter()
        .map(|&(addr, weight)| MaglevMember { addr, weight })
        .collect();
    let t = MaglevTable::build(RING, FLEET_SEED, &m).unwrap();
    let slot = ring_slot(flow_hash(key, FLEET_SEED), RING);
    t.member_at(slot).unwrap().addr
}

struct Lab {
    topo: Topology,
    wire: Wire,
}

impl Lab {
    fn flow(&self, sport: u16) -> Flow {
        Flow::new("198.51.100.1", sport, VIP, 80).macs(self.topo.client_mac, self.topo.lb_mac)
    }

    /// Sends `frames`, returns the backend each tunnelled copy went to, in order.
    fn exchange(&self, frames: &[Vec<u8>]) -> Vec<Ipv6Addr> {
        for f in frames {
            self.wire.send(f).unwrap();
        }
        let got = Wire::tunnelled(
            self.wire
                .recv_until_quiet(Duration::from_millis(300), frames.len() * 2),
        );
        assert_eq!(
            got.len(),
            frames.len(),
            "every frame comes back tunnelled exactly once"
        );
        got.iter()
            .zip(frames)
            .map(|(out, input)| {
                let e = decode(out).unwrap();
                assert_eq!(
                    e.inner,
                    ip_packet(input),
                    "the inner packet is the client's, unchanged"
                );
                assert_eq!(
                    e.eth_dst, self.topo.client_mac,
                    "to the configured next hop"
                );
                assert_eq!(e.eth_src, self.topo.lb_mac, "from the NIC's own MAC");
                e.backend()
            })
            .collect()
    }
}

fn backends(socket: &std::path::Path, vip: &str) -> BTreeMap<String, Value> {
    let list = lb_json(socket, &["backend", "list", vip]);
    list.as_array()
        .unwrap()
        .iter()
        .map(|b| (b["backend"].as_str().unwrap().to_string(), b.clone()))
        .collect()
}

/// A dataplane counter's packets in an `lb stats --json` report.
fn counter(stats: &Value, name: &str) -> u64 {
    let counters = stats["now"]["counters"].as_array().unwrap();
    let c = counters.iter().find(|c| c["name"] == name).unwrap();
    c["packets"].as_u64().unwrap()
}

/// The agent config with the client's NIC as the static next hop.
fn static_next_hop_config(topo: &Topology) -> String {
    let mac = lb_userspace::config::format_mac(&topo.client_mac);
    config(&format!("next_hop_mac = \"{mac}\""), "")
}

fn table_version(socket: &std::path::Path) -> u64 {
    lb_json(socket, &["status"])["table_version"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_cli_drives_a_running_agent() {
    let topo = Topology::new("cli").unwrap();
    let files = AgentFiles::new("cli", &config("gateway = \"2001:db8:1b::fe\"", "")).unwrap();
    let agent = files.start(&topo.lb, 1).unwrap();
    let s = &files.socket;
    let lab = Lab {
        wire: topo.wire().unwrap(),
        topo,
    };

    // status: attached in driver mode, next hop resolved from the neighbour table.
    let st = lb_json(s, &["status"]);
    assert_eq!(st["interfaces"][0]["attachment"], "driver");
    assert_eq!(
        st["interfaces"][0]["next_hop_mac"],
        lb_userspace::config::format_mac(&lab.topo.client_mac)
    );
    assert_eq!(st["adopted"], false);
    assert_eq!(st["table_version"], 1);
    let text = lb_ok(s, &["status"]);
    assert!(
        text.contains("INTERFACE") && text.contains("l0") && text.contains("driver"),
        "{text}"
    );

    // vip list.
    let text = lb_ok(s, &["vip", "list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with(VIP_SVC) && l.contains(" 3 ")),
        "{text}"
    );

    // 120 handshakes (a SYN, then the first ACK, which makes the entry): each to its Maglev
    // backend; the flow counts match.
    let all = [(be(1), 100), (be(2), 100), (be(3), 100)];
    let syns: Vec<Vec<u8>> = (0..120)
        .map(|i| lab.flow(20000 + i).tcp(Tcp::Syn, &[]))
        .collect();
    let got = lab.exchange(&syns);
    let firsts: Vec<Vec<u8>> = (0..120)
        .map(|i| lab.flow(20000 + i).tcp(Tcp::Ack, &[]))
        .collect();
    assert_eq!(
        lab.exchange(&firsts),
        got,
        "the first ACKs follow their SYNs"
    );
    let mut per_backend: BTreeMap<Ipv6Addr, u64> = BTreeMap::new();
    for (i, b) in got.iter().enumerate() {
        let key = lab.flow(20000 + i as u16).key(PROTO_TCP);
        assert_eq!(*b, maglev(&all, &key));
        *per_backend.entry(*b).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    let list = backends(s, VIP_SVC);
    for (addr, n) in &per_backend {
        let row = &list[&addr.to_string()];
        assert_eq!(row["flows"].as_u64(), Some(*n), "{row}");
        assert_eq!(row["packets"].as_u64(), Some(2 * *n), "{row}");
        assert_eq!(row["state"], "active");
    }

    // Drain be::2: no slots, its flows still counted; their packets still reach it; new
    // flows never do.
    let out = lb_ok(s, &["backend", "drain", VIP_SVC, "2001:db8:be::2"]);
    assert!(out.contains("draining"), "{out}");
    let list = backends(s, VIP_SVC);
    let drained = &list["2001:db8:be::2"];
    assert_eq!(drained["state"], "draining");
    assert_eq!(drained["slots"], 0);
    assert_eq!(drained["flows"].as_u64(), Some(per_backend[&be(2)]));
    let text = lb_ok(s, &["backend", "list"]);
    assert!(
        text.contains("safe to remove once its FLOWS reach 0"),
        "{text}"
    );
    let acks: Vec<Vec<u8>> = (0..120)
        .map(|i| lab.flow(20000 + i).tcp(Tcp::Ack, b"more"))
        .collect();
    assert_eq!(
        lab.exchange(&acks),
        got,
        "established flows keep their backend, drained or not"
    );
    let active = [(be(1), 100), (be(3), 100)];
    let new: Vec<Vec<u8>> = (0..60)
        .map(|i| lab.flow(30000 + i).tcp(Tcp::Syn, &[]))
        .collect();
    for (i, b) in lab.exchange(&new).iter().enumerate() {
        assert_ne!(*b, be(2), "a new flow reached the drained backend");
        assert_eq!(
            *b,
            maglev(&active, &lab.flow(30000 + i as u16).key(PROTO_TCP))
        );
    }
    // The drained backend's flows end (FIN; closing timeout 1 s): its count reaches 0.
    let fins: Vec<Vec<u8>> = got
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == be(2))
        .map(|(i, _)| lab.flow(20000 + i as u16).tcp(Tcp::Fin, &[]))
        .collect();
    assert!(lab.exchange(&fins).iter().all(|b| *b == be(2)));
    let fin_count = fins.len() as u64;
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(backends(s, VIP_SVC)["2001:db8:be::2"]["flows"], 0);

    // undrain, weight, add, remove.
    lb_ok(s, &["backend", "undrain", VIP_SVC, "2001:db8:be::2"]);
    let list = backends(s, VIP_SVC);
    assert_eq!(list["2001:db8:be::2"]["state"], "active");
    assert!(list["2001:db8:be::2"]["slots"].as_u64().unwrap() > 1000);
    lb_ok(s, &["backend", "weight", VIP_SVC, "2001:db8:be::1", "300"]);
    let list = backends(s, VIP_SVC);
    let slots = |b: &str| list[b]["slots"].as_f64().unwrap();
    let ratio = slots("2001:db8:be::1") / slots("2001:db8:be::3");
    assert!(
        (ratio - 3.0).abs() < 0.05,
        "weight 300 vs 100 gives slot ratio {ratio}"
    );
    assert_eq!(list["2001:db8:be::1"]["weight"], 300);
    let out = lb_json(
        s,
        &[
            "backend",
            "add",
            VIP_SVC,
            "2001:db8:be::4",
            "--weight",
            "50",
        ],
    );
    let writes = out["report"]["slot_writes"].as_u64().unwrap();
    assert!(
        writes > 0 && writes < RING as u64 / 4,
        "adding one backend rewrote {writes} slots"
    );
    assert_eq!(backends(s, VIP_SVC)["2001:db8:be::4"]["weight"], 50);
    lb_ok(s, &["backend", "remove", VIP_SVC, "2001:db8:be::4"]);
    assert!(!backends(s, VIP_SVC).contains_key("2001:db8:be::4"));
    let weighted = [(be(1), 300), (be(2), 100), (be(3), 100)];
    let syns: Vec<Vec<u8>> = (0..40)
        .map(|i| lab.flow(40000 + i).tcp(Tcp::Syn, &[]))
        .collect();
    for (i, b) in lab.exchange(&syns).iter().enumerate() {
        assert_eq!(
            *b,
            maglev(&weighted, &lab.flow(40000 + i as u16).key(PROTO_TCP))
        );
    }

    // A GUE VIP added and removed at runtime.
    lb_ok(s, &["vip", "add", "192.0.2.20:443/tcp", "--gue"]);
    lb_ok(
        s,
        &["backend", "add", "192.0.2.20:443/tcp", "2001:db8:be::7"],
    );
    let vips = lb_json(s, &["vip", "list"]);
    assert!(
        vips.as_array()
            .unwrap()
            .iter()
            .any(|v| v["vip"] == "192.0.2.20:443/tcp" && v["gue"] == true)
    );
    let gue_flow = Flow::new("198.51.100.1", 5555, "192.0.2.20", 443)
        .macs(lab.topo.client_mac, lab.topo.lb_mac);
    let syn = gue_flow.tcp(Tcp::Syn, &[]);
    lab.wire.send(&syn).unwrap();
    let got = Wire::tunnelled(lab.wire.recv_until_quiet(Duration::from_millis(300), 4));
    assert_eq!(got.len(), 1);
    let e = decode(&got[0]).unwrap();
    assert_eq!(e.backend(), be(7));
    assert_eq!(e.udp.as_ref().unwrap().destination_port, 6080);
    lb_ok(s, &["vip", "remove", "192.0.2.20:443/tcp"]);
    lab.wire.send(&syn).unwrap();
    assert!(Wire::tunnelled(lab.wire.recv_until_quiet(Duration::from_millis(300), 4)).is_empty());

    // stats: one report, a watched series, JSON.
    let text = lb_ok(s, &["stats", "--interval", "0.2"]);
    assert!(
        text.contains("PPS") && text.contains(VIP_SVC) && text.contains("lru_hit"),
        "{text}"
    );
    let text = lb_ok(
        s,
        &["stats", "--watch", "--count", "2", "--interval", "0.2"],
    );
    assert_eq!(text.matches("COUNTER").count(), 2, "{text}");
    let j = lb_json(s, &["stats", "--interval", "0.2"]);
    let counter = |name: &str| counter(&j, name);
    // SYNs, first ACKs, ACKs, new SYNs, FINs, weighted SYNs; the GUE SYN (the one after
    // removal passed).
    assert_eq!(counter("tx"), 120 + 120 + 120 + 60 + fin_count + 40);
    assert_eq!(counter("tx_gue"), 1);

    // Runtime changes show as drift; a reload returns to the file.
    let st = lb_json(s, &["status"]);
    let drift: Vec<String> = st["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().into())
        .collect();
    assert_eq!(
        drift,
        vec!["set backend 2001:db8:be::1 of 192.0.2.10:80/tcp to weight 300".to_string()]
    );
    // A dry run says what the reload will change, and changes nothing.
    let out = lb_ok(s, &["reload", "--dry-run"]);
    assert!(
        out.contains("dry run, nothing changed") && out.contains("weight 100"),
        "{out}"
    );
    assert_eq!(
        lb_json(s, &["status"])["drift"].as_array().unwrap().len(),
        1
    );
    let out = lb_ok(s, &["reload"]);
    assert!(out.contains("weight 100"), "{out}");
    assert!(
        lb_json(s, &["status"])["drift"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    drop(agent);
}

#[test]
fn an_agent_restart_loses_no_packets() {
    let topo = Topology::new("rst").unwrap();
    let files = AgentFiles::new("rst", &static_next_hop_config(&topo)).unwrap();
    let first = files.start(&topo.lb, 1).unwrap();
    let prog_before = topo.lb.xdp_prog_id("l0").unwrap().expect("XDP attached");
    let wire = Arc::new(topo.wire().unwrap());
    let (cmac, lmac) = (topo.client_mac, topo.lb_mac);

    // Steady traffic: 8 UDP flows, one datagram per millisecond, each numbered.
    const N: u32 = 3000;
    let done = Arc::new(AtomicBool::new(false));
    let rx = {
        let (wire, done) = (wire.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let batch =
                    Wire::tunnelled(wire.recv_until_quiet(Duration::from_millis(200), 4096));
                let quiet = batch.is_empty();
                for f in batch {
                    let e = decode(&f).unwrap();
                    let n = u32::from_be_bytes(e.inner[28..32].try_into().unwrap());
                    seen.push(n);
                }
                if (quiet && done.load(Ordering::SeqCst)) || Instant::now() > deadline {
                    return seen;
                }
            }
        })
    };
    let tx = {
        let (wire, done) = (wire.clone(), done.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for n in 0..N {
                let f = Flow::new("198.51.100.1", 5000 + (n % 8) as u16, "192.0.2.53", 53)
                    .macs(cmac, lmac);
                wire.send(&f.udp(&n.to_be_bytes())).unwrap();
                let next = start + Duration::from_millis(n as u64 + 1);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(800));
    first.stop().unwrap();
    let second = files.start(&topo.lb, 2).unwrap();
    tx.join().unwrap();
    let seen = rx.join().unwrap();

    let unique: BTreeSet<u32> = seen.iter().copied().collect();
    let missing: Vec<u32> = (0..N).filter(|n| !unique.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "{} datagrams lost across the restart: {:?}...",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(seen.len(), N as usize, "no duplicates");
    // The new agent adopted the maps (connection state included) and swapped its program in.
    let st = lb_json(&files.socket, &["status"]);
    assert_eq!(st["adopted"], true);
    assert_eq!(st["interfaces"][0]["attachment"], "adopted");
    let prog_after = topo.lb.xdp_prog_id("l0").unwrap().unwrap();
    assert_ne!(prog_before, prog_after, "the new agent's program runs now");
    let stats = lb_json(&files.socket, &["stats", "--interval", "0.1"]);
    let counter = |name: &str| counter(&stats, name);
    assert_eq!(
        counter("lru_miss_udp"),
        8,
        "each flow was looked up in Maglev once, before the restart"
    );
    // Each of the other packets found its flow: in the table, or in its CPU's flow cache.
    assert_eq!(counter("lru_hit") + counter("flow_cache_hit"), N as u64 - 8);
    assert_eq!(counter("tx"), N as u64, "counters survive the restart");
    let udp_flows = backends(&files.socket, "192.0.2.53:53/udp");
    assert_eq!(udp_flows["2001:db8:be::1"]["flows"], 8);

    // Detach refuses while an agent runs, then removes everything once it stopped.
    let e = lb_err(
        &files.socket,
        &["detach", "--config", files.config.to_str().unwrap()],
    );
    assert!(e.contains("stop it first"), "{e}");
    second.stop().unwrap();
    assert!(
        topo.lb.xdp_prog_id("l0").unwrap().is_some(),
        "a stopped agent leaves the dataplane forwarding"
    );
    let out = lb_ok(
        &files.socket,
        &["detach", "--config", files.config.to_str().unwrap()],
    );
    assert!(out.contains("link_l0") && out.contains("CONNS"), "{out}");
    assert_eq!(topo.lb.xdp_prog_id("l0").unwrap(), None, "detached");
    assert!(!files.pin_dir.exists());
}

/// A raw HTTP exchange on the control socket: (status, body).

#[test]
fn bad_input_is_refused_with_the_reason_and_changes_nothing() {
    let topo = Topology::new("bad").unwrap();
    let good_config = static_next_hop_config(&topo);
    let files = AgentFiles::new("bad", &good_config).unwrap();
    let _agent = files.start(&topo.lb, 1).unwrap();
    let s = &files.socket;
    let snapshot = || {
        (
            lb_json(s, &["vip", "list"]),
            backends(s, VIP_SVC),
            table_version(s),
        )
    };
    let before = snapshot();

    for (args, why) in [
        (vec!["vip", "add", "192.0.2.300:80/tcp"], "is not ADDR:PORT"),
        (
            vec!["vip", "add", "192.0.2.10:80"],
            "expected ADDR:PORT/tcp",
        ),
        (vec!["vip", "add", VIP_SVC], "already exists"),
        (
            vec!["vip", "remove", "192.0.2.99:80/tcp"],
            "no VIP 192.0.2.99:80/tcp",
        ),
        (
            vec!["backend", "add", VIP_SVC, "192.0.2.1"],
            "not an IPv6 address",
        ),
        (
            vec!["backend", "add", VIP_SVC, "2001:db8:be::1"],
            "already has backend 2001:db8:be::1",
        ),
        (
            vec!["backend", "add", "192.0.2.99:80/tcp", "2001:db8:be::1"],
            "no VIP",
        ),
        (
            vec!["backend", "add", VIP_SVC, "2001:db8:be::9", "--weight", "0"],
            "outside 1..=1000",
        ),
        (
            vec!["backend", "weight", VIP_SVC, "2001:db8:be::1", "1001"],
            "outside 1..=1000",
        ),
        (
            vec!["backend", "weight", VIP_SVC, "2001:db8:be::1", "-3"],
            "unexpected argument",
        ),
        (
            vec!["backend", "drain", VIP_SVC, "2001:db8:be::9"],
            "has no backend 2001:db8:be::9",
        ),
        (
            vec!["backend", "remove", VIP_SVC, "::"],
            "cannot be a tunnel endpoint",
        ),
        (vec!["backend", "list", "192.0.2.99:80/tcp"], "no VIP"),
        (vec!["stats", "--interval", "0"], "use 0.1 to 3600"),
        (vec!["vip", "frobnicate"], "unrecognized subcommand"),
    ] {
        let e = lb_err(s, &args);
        assert!(
            e.contains(why),
            "lb {}: `{e}` should say `{why}`",
            args.join(" ")
        );
    }
    assert_eq!(snapshot(), before, "refused CLI requests changed the state");

    // The API itself, without the CLI's own checks: a change's body is `state::Change`.
    let vip = format!("\"vip\":\"{VIP_SVC}\"");
    let be1 = "\"backend\":\"2001:db8:be::1\"";
    let change = |fields: &str| post("/v1/change", &format!("{{{fields}}}"));
    for (req, status, why) in [
        (post("/v1/change", "{not json"), 400, "request body"),
        (
            change(&format!("\"op\":\"add_vip\",{vip},\"colour\":1")),
            400,
            "unknown field `colour`",
        ),
        (change("\"op\":\"add_vip\""), 400, "missing field `vip`"),
        (change(&vip), 400, "missing field `op`"),
        (
            change(&format!("\"op\":\"add_backend\",{vip}")),
            400,
            "missing field `backend`",
        ),
        (
            change(&format!("\"op\":\"set_weight\",{vip},{be1}")),
            400,
            "missing field `weight`",
        ),
        (
            change(&format!(
                "\"op\":\"set_state\",{vip},{be1},\"state\":\"draining\",\"weight\":5"
            )),
            400,
            "unknown field `weight`",
        ),
        (
            change(&format!("\"op\":\"add_backend\",{vip},{be1}")),
            409,
            "already has backend",
        ),
        (
            change(&format!("\"op\":\"explode\",{vip},{be1}")),
            400,
            "unknown variant `explode`",
        ),
        (
            post(
                "/v1/backend/explode",
                &format!("{{{vip},\"backend\":\"2001:db8:be::1\"}}"),
            ),
            404,
            "no such endpoint",
        ),
        (
            change("\"op\":\"remove_vip\",\"vip\":\"192.0.2.99:1/tcp\""),
            404,
            "no VIP",
        ),
        // What the CLI's value parsers refuse, the agent refuses as well.
        (
            change("\"op\":\"add_vip\",\"vip\":\"192.0.2.10:80\""),
            400,
            "expected ADDR:PORT/tcp",
        ),
        (
            change(&format!(
                "\"op\":\"remove_backend\",{vip},\"backend\":\"::\""
            )),
            400,
            "cannot be a tunnel endpoint",
        ),
        (
            change(&format!(
                "\"op\":\"add_backend\",{vip},\"backend\":\"2001:db8:be::9\",\"weight\":0"
            )),
            400,
            "outside 1..=1000",
        ),
        (
            change(&format!(
                "\"op\":\"set_weight\",{vip},{be1},\"weight\":1001"
            )),
            400,
            "outside 1..=1000",
        ),
        (
            b"GET /v1/change HTTP/1.1\r\n\r\n".to_vec(),
            405,
            "not allowed",
        ),
        (
            b"GET /v1/nothing HTTP/1.1\r\n\r\n".to_vec(),
            404,
            "no such endpoint",
        ),
        (
            b"DELETE /v1/vips HTTP/1.1\r\n\r\n".to_vec(),
            405,
            "not allowed",
        ),
        (
            b"GET /v1/backends?vip=nonsense HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "expected ADDR:PORT",
        ),
        (
            b"GET /v1/backends?colour=1 HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "unknown query parameter",
        ),
        (b"HELLO\r\n\r\n".to_vec(), 400, "malformed request line"),
        (
            b"POST /v1/change HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n".to_vec(),
            413,
            "too large",
        ),
        (
            b"POST /v1/change HTTP/1.1\r\nContent-Length: 50\r\n\r\n{}".to_vec(),
            400,
            "shorter than Content-Length",
        ),
    ] {
        let (got, body) = raw_http(s, &req);
        let first = String::from_utf8_lossy(&req)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(got, status, "{first}: {body}");
        let err: Value = serde_json::from_str(&body)
            .unwrap_or_else(|_| panic!("{first}: body {body} is not JSON"));
        let msg = err["error"].as_str().unwrap();
        assert!(msg.contains(why), "{first}: `{msg}` should say `{why}`");
    }
    assert_eq!(snapshot(), before, "refused API requests changed the state");

    // Only root may use the API: the socket is 0600 and the peer's uid is checked.
    let mode = std::fs::metadata(s)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lb_bin())
        .arg("--socket")
        .arg(s)
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("root-only"), "{e}");

    // A broken config file: the reload is refused and nothing changes.
    for (bad, why) in [
        ("this is [not toml".to_string(), "TOML parse error"),
        (
            good_config.replace("2001:db8:be::3", "2001:db8:be::2"),
            "already has backend 2001:db8:be::2",
        ),
        (
            good_config.replace("ring_size = 4099", "ring_size = 4093"),
            "dataplane.ring_size changed; that needs an agent restart",
        ),
    ] {
        files.write_config(&bad).unwrap();
        let e = lb_err(s, &["reload"]);
        assert!(e.contains(why), "`{e}` should say `{why}`");
        assert_eq!(snapshot(), before, "a refused reload changed the state");
    }
    files.write_config(&good_config).unwrap();
    assert!(lb_ok(s, &["reload"]).contains("no changes"));
    assert_eq!(snapshot(), before);

    // A second agent on the same socket, and an invalid config at start, are refused.
    let out = std::process::Command::new(lb_bin())
        .args(["agent", "--config"])
        .arg(&files.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    let bad = files.dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[dataplane]\ntunnel_source = \"192.0.2.1\"\nseed = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(lb_bin())
        .args(["agent", "--check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid IPv6 address"));
    let out = std::process::Command::new(lb_bin())
        .args(["agent", "--check", "--config"])
        .arg(&files.config)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("valid. 1 interface(s), 2 VIP(s), 4 backend(s)")
    );
}

/// GET /metrics from inside the load balancer's namespace.
fn metrics(topo: &Topology) -> String {
    metrics_in(&topo.lb.name).unwrap()
}

#[test]
fn sighup_reloads_the_difference_metrics_and_xdp_logs_reach_the_operator() {
    let topo = Topology::new("hup").unwrap();
    // Metrics on (an [agent] key, written just before [dataplane]).
    let with_metrics = |body: String| {
        body.replacen(
            "[dataplane]",
            "metrics = \"127.0.0.1:9450\"\n[dataplane]",
            1,
        )
    };
    let files = AgentFiles::new("hup", &with_metrics(static_next_hop_config(&topo))).unwrap();
    let agent = files.start(&topo.lb, 1).unwrap();
    let s = &files.socket;
    let lab = Lab {
        wire: topo.wire().unwrap(),
        topo,
    };

    let syns: Vec<Vec<u8>> = (0..10)
        .map(|i| lab.flow(21000 + i).tcp(Tcp::Syn, &[]))
        .collect();
    let got = lab.exchange(&syns);
    let m = metrics(&lab.topo);
    assert!(
        m.starts_with("HTTP/1.1 200") && m.contains("text/plain; version=0.0.4"),
        "{m}"
    );
    assert!(
        m.contains("lb_vip_packets_total{vip=\"192.0.2.10:80/tcp\"} 10\n"),
        "{m}"
    );
    assert!(
        m.contains("lb_vip_bytes_total{vip=\"192.0.2.10:80/tcp\"} 540\n"),
        "{m}"
    );
    let to_b1 = got.iter().filter(|b| **b == be(1)).count();
    assert!(m.contains(&format!("lb_backend_packets_total{{vip=\"192.0.2.10:80/tcp\",backend=\"2001:db8:be::1\"}} {to_b1}\n")), "{m}");
    assert!(
        m.contains("lb_conntrack_lookups_total{result=\"miss_syn\"} 10\n"),
        "{m}"
    );
    assert!(
        m.contains("lb_drops_total{reason=\"no_backend\"} 0\n"),
        "{m}"
    );
    assert!(m.contains("lb_tx_total{encap=\"ipip6\"} 10\n"), "{m}");
    assert!(m.contains("lb_table_version 1\n"), "{m}");
    // The handshakes' first ACKs make the flows' entries (SYNs make none).
    let firsts: Vec<Vec<u8>> = (0..10)
        .map(|i| lab.flow(21000 + i).tcp(Tcp::Ack, &[]))
        .collect();
    assert_eq!(lab.exchange(&firsts), got);

    // SIGHUP with one more backend and a new weight: applied as a difference.
    let body = with_metrics(static_next_hop_config(&lab.topo).replacen(
        "  address = \"2001:db8:be::3\"",
        "  address = \"2001:db8:be::3\"\n  weight = 200\n  [[vip.backend]]\n  address = \"2001:db8:be::4\"",
        1,
    ));
    files.write_config(&body).unwrap();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !backends(s, VIP_SVC).contains_key("2001:db8:be::4") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP reload not applied:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = backends(s, VIP_SVC);
    assert_eq!(list["2001:db8:be::3"]["weight"], 200);
    assert_eq!(table_version(s), 2, "one reload, one table version");
    let log = agent.log_text();
    assert!(
        log.contains(
            "reload: add backend 2001:db8:be::4 to 192.0.2.10:80/tcp (weight 100, active)"
        ),
        "{log}"
    );
    assert!(
        log.contains("reload: set backend 2001:db8:be::3 of 192.0.2.10:80/tcp to weight 200"),
        "{log}"
    );
    // The existing flows were not moved by the reload: their ACKs keep their backends.
    let acks: Vec<Vec<u8>> = (0..10)
        .map(|i| lab.flow(21000 + i).tcp(Tcp::Ack, &[]))
        .collect();
    assert_eq!(lab.exchange(&acks), got);
    // A reload with nothing new writes nothing.
    let r = lb_json(s, &["reload"]);
    assert_eq!(r["report"]["slot_writes"], 0);
    assert_eq!(r["table_version"], 2);

    // The XDP program's log alarm reaches the agent's log: break the ring behind its back.
    let rings = aya::maps::MapData::from_pin(files.pin_dir.join("RINGS")).unwrap();
    let mut rings: aya::maps::Array<_, lb_common::RingSlot> =
        aya::maps::Array::try_from(aya::maps::Map::Array(rings)).unwrap();
    for slot in 0..RING {
        rings.set(slot, lb_common::RingSlot::new(63), 0).unwrap();
    }
    lab.wire.send(&lab.flow(22000).tcp(Tcp::Syn, &[])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent
        .log_text()
        .contains("ring 0 points at backend id 63, which is not installed")
    {
        assert!(
            Instant::now() < deadline,
            "no XDP log line in the agent's log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let m = metrics(&lab.topo);
    assert!(
        m.contains("lb_drops_total{reason=\"no_backend\"} 1\n"),
        "{m}"
    );
    // Prometheus's own linter accepts the exposition (`cargo xtask setup` installs promtool).
    let (head, body) = m.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    promtool_accepts(body);
}

/// `promtool check metrics` finds nothing to say about `text` (it also lints names and help).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (installed by `cargo xtask setup`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}
