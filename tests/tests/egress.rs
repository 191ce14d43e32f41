//! Real edge NICs (issue 16), in namespaces with real TCP through the VIP: two-arm forwarding
//! (clients on eth0, the backend behind eth1, direct server return), a next hop whose MAC
//! changes and one that cannot be resolved, and two uplinks with an ECMP route. The agent takes
//! every next hop from the kernel's routes and neighbours (no next hop in its config). Root.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::edge::{BACKEND, Edge, GW1, round_trip};
use tests::netns::{lb_json, lb_ok, metrics_in, raw_http};

/// The status's paths for the backend: (interface, next hop, MAC).
fn paths(socket: &std::path::Path) -> Vec<(String, String, String)> {
    paths_of(socket, BACKEND)
}

fn paths_of(socket: &std::path::Path, backend: &str) -> Vec<(String, String, String)> {
    let s = lb_json(socket, &["status"]);
    let e = s["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["backend"] == backend)
        .cloned()
        .expect("the backend is in lb status");
    assert_eq!(e["source"], "route");
    e["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let f = |k: &str| p[k].as_str().unwrap().to_string();
            (f("interface"), f("next_hop"), f("mac"))
        })
        .collect()
}

/// Waits (at most `limit`) until `ok` holds for the backend's paths; returns how long it took.
fn until_paths(
    socket: &std::path::Path,
    limit: Duration,
    ok: impl Fn(&[(String, String, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let p = paths(socket);
        if ok(&p) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "paths still {p:?} after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent's counters (`GET /v1/stats`), now.
fn read_stats(socket: &std::path::Path) -> Value {
    let (status, body) = raw_http(socket, b"GET /v1/stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map_or(0, |c| c["packets"].as_u64().unwrap())
}

/// Packets the egress step sent through `nic`: (XDP_TX, XDP_REDIRECT).
fn egress(stats: &Value, nic: &str) -> (u64, u64) {
    let e = stats["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[0] == nic)
        .unwrap_or_else(|| panic!("{nic} in the egress counters"));
    (
        e[1]["packets"].as_u64().unwrap(),
        e[2]["packets"].as_u64().unwrap(),
    )
}

fn mac_of(edge: &Edge, nic: &str) -> String {
    lb_userspace::config::format_mac(&edge.router.mac(nic).unwrap())
}

#[test]
fn two_arm_tcp_enters_on_eth0_and_leaves_for_the_backend_by_eth1() {
    let edge = Edge::new("eg2arm", 1).unwrap();
    edge.echo_server().unwrap();
    let (_files, agent) = edge.start_agent("eg2arm", 1, "").unwrap();
    // The route and the router's MAC came from the kernel.
    assert_eq!(
        paths(&agent.socket),
        vec![("eth1".into(), GW1.into(), mac_of(&edge, "rl1"))]
    );
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut s = edge.connect(Duration::from_secs(3)).unwrap();
        round_trip(&mut s, format!("hello {i}").as_bytes()).unwrap();
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        round_trip(s, format!("again {i}").as_bytes()).unwrap();
    }
    let stats = read_stats(&agent.socket);
    let (tx1, redirect1) = egress(&stats, "eth1");
    let (tx0, redirect0) = egress(&stats, "eth0");
    // Every client packet came in on eth0 and went out by eth1: each connection's handshake
    // ACK and two data segments at least.
    assert_eq!((tx0, redirect0, tx1), (0, 0, 0));
    assert!(redirect1 >= 60, "redirected {redirect1}");
    assert_eq!(counter(&stats, "tx_redirect"), redirect1);
    assert_eq!(counter(&stats, "drop_no_next_hop"), 0);
    let m = metrics_in(&edge.lb.name).unwrap();
    assert!(
        m.contains(&format!(
            "lb_egress_packets_total{{interface=\"eth1\",action=\"redirect\"}} {redirect1}"
        )),
        "{m}"
    );
    assert!(m.contains("lb_drops_total{reason=\"no_next_hop\"} 0"));
    // A backend added at runtime has its way out before its first packet: resolved while
    // being installed, not only by the follower afterwards.
    lb_ok(
        &agent.socket,
        &["backend", "add", "192.0.2.10:80/tcp", "2001:db8:be::2"],
    );
    assert_eq!(
        paths_of(&agent.socket, "2001:db8:be::2"),
        vec![("eth1".into(), GW1.into(), mac_of(&edge, "rl1"))]
    );
    agent.stop().unwrap();
}

#[test]
fn a_new_router_mac_is_followed_and_an_unresolved_next_hop_drops() {
    let edge = Edge::new("egmac", 1).unwrap();
    edge.echo_server().unwrap();
    let (_files, agent) = edge.start_agent("egmac", 1, "").unwrap();
    let mut s = edge.connect(Duration::from_secs(3)).unwrap();
    round_trip(&mut s, b"before").unwrap();

    // The router is replaced: its MAC changes, and it says so (unsolicited advertisement).
    let new_mac = "02:00:00:00:f1:99";
    edge.router
        .ip(&["link", "set", "rl1", "address", new_mac])
        .unwrap();
    let took = until_paths(&agent.socket, Duration::from_secs(3), |p| {
        p.iter().all(|(_, _, m)| m == new_mac)
    });
    eprintln!("new router MAC followed after {took:?}");
    assert!(took < Duration::from_secs(1), "followed after {took:?}");
    // The router takes only frames to its new MAC: the connection works, so they are.
    round_trip(&mut s, b"after the new MAC").unwrap();
    let mut s2 = edge.connect(Duration::from_secs(3)).unwrap();
    round_trip(&mut s2, b"new connection").unwrap();

    // The route now points at a next hop nobody answers for: unresolved within a second.
    edge.lb
        .ip(&[
            "-6",
            "route",
            "replace",
            "2001:db8:be::/64",
            "via",
            "2001:db8:f::77",
            "dev",
            "eth1",
        ])
        .unwrap();
    let took = until_paths(&agent.socket, Duration::from_secs(3), |p| {
        p.len() == 1 && p[0].1 == "2001:db8:f::77" && p[0].2 == "unresolved"
    });
    eprintln!("unresolved after {took:?}");
    assert!(took < Duration::from_secs(1), "unresolved after {took:?}");
    let before = read_stats(&agent.socket);
    // Its packets are dropped in the program and counted; none leaves by eth1 (no stale MAC).
    assert!(
        s.write_all_and_read(b"lost", Duration::from_millis(1500))
            .is_err()
    );
    assert!(edge.connect(Duration::from_millis(1000)).is_err());
    let after = read_stats(&agent.socket);
    let dropped = counter(&after, "drop_no_next_hop") - counter(&before, "drop_no_next_hop");
    assert!(dropped >= 2, "dropped {dropped}");
    assert_eq!(egress(&after, "eth1"), egress(&before, "eth1"));

    // The route back to the real router: resolved again, and the old connection resumes.
    edge.lb
        .ip(&[
            "-6",
            "route",
            "replace",
            "2001:db8:be::/64",
            "via",
            GW1,
            "dev",
            "eth1",
        ])
        .unwrap();
    let took = until_paths(&agent.socket, Duration::from_secs(3), |p| {
        p.len() == 1 && p[0].2 == new_mac
    });
    assert!(took < Duration::from_secs(1), "resolved after {took:?}");
    let mut s3 = edge.connect(Duration::from_secs(3)).unwrap();
    round_trip(&mut s3, b"resolved again").unwrap();
    agent.stop().unwrap();
}

/// `write_all` then read the echo with a deadline (the lost-packet check above).
trait EchoWithin {
    fn write_all_and_read(&mut self, msg: &[u8], within: Duration) -> std::io::Result<()>;
}

impl EchoWithin for std::net::TcpStream {
    fn write_all_and_read(&mut self, msg: &[u8], within: Duration) -> std::io::Result<()> {
        use std::io::{Read, Write};
        self.set_read_timeout(Some(within))?;
        self.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        let r = self.read_exact(&mut got);
        self.set_read_timeout(Some(Duration::from_secs(5)))?;
        r
    }
}

#[test]
fn two_uplinks_share_flows_and_one_going_down_moves_them_within_a_second() {
    let edge = Edge::new("egecmp", 2).unwrap();
    edge.echo_server().unwrap();
    let (_files, agent) = edge.start_agent("egecmp", 2, "").unwrap();
    let p = paths(&agent.socket);
    assert_eq!(
        p.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["eth1", "eth2"],
        "both ECMP paths: {p:?}"
    );
    let mut conns = Vec::new();
    for i in 0..32 {
        let mut s = edge.connect(Duration::from_secs(3)).unwrap();
        round_trip(&mut s, format!("hello {i}").as_bytes()).unwrap();
        conns.push(s);
    }
    let stats = read_stats(&agent.socket);
    let (e1, e2) = (egress(&stats, "eth1").1, egress(&stats, "eth2").1);
    assert!(e1 > 0 && e2 > 0, "flows use both uplinks: {e1} / {e2}");

    // eth2's link goes down (the router's end): its path leaves the route at once.
    let t0 = Instant::now();
    edge.router.ip(&["link", "set", "rl2", "down"]).unwrap();
    until_paths(&agent.socket, Duration::from_secs(3), |p| {
        p.len() == 1 && p[0].0 == "eth1"
    });
    let took = t0.elapsed();
    eprintln!("uplink down: flows moved after {took:?}");
    assert!(took < Duration::from_secs(1), "moved after {took:?}");
    // Every established connection survives (those on eth2 now go by eth1).
    for (i, s) in conns.iter_mut().enumerate() {
        round_trip(s, format!("after {i}").as_bytes()).unwrap();
    }
    let after = read_stats(&agent.socket);
    assert_eq!(egress(&after, "eth2").1, e2, "nothing more by eth2");
    assert!(egress(&after, "eth1").1 >= e1 + 32);
    agent.stop().unwrap();
}

#[test]
fn health_checks_take_the_tunnel_by_the_backends_route_not_the_vips() {
    let edge = Edge::new("eghc", 1).unwrap();
    edge.echo_server().unwrap();
    // The client side has no way to the backends: IPv6 arriving from the load balancer's eth0
    // is refused by the router, so a check can only pass through eth1.
    edge.router
        .ip(&["-6", "rule", "add", "iif", "rl0", "prohibit"])
        .unwrap();
    let health =
        "\n[health]\nenabled = true\ninterval_ms = 200\ntimeout_ms = 150\nrise = 1\nfall = 1\n";
    let (_files, agent) = edge.start_agent("eghc", 1, health).unwrap();
    let start = Instant::now();
    loop {
        let list = lb_json(&agent.socket, &["backend", "list"]);
        if list[0]["health"] == "up" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the check never passed: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = lb_json(&agent.socket, &["status"]);
    let redirected = status["health_encap"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "redirected")
        .map_or(0, |c| c["packets"].as_u64().unwrap());
    assert!(redirected > 0, "{status}");
    agent.stop().unwrap();
}
