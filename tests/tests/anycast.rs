//! End to end, in the anycast lab (the lb-lab crate): client, BGP router with ECMP, two load
//! balancers with agents and BIRD, three backends with `lb decap`, nginx and lb-echo. Each test
//! builds its own lab and checks afterwards that nothing of it is left (issue 4, test 6).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use etherparse::SlicedPacket;
use tests::capture::Capture;
use tests::e2e::*;
use tests::lab::{self, ECHO_PORT, HTTP_PORT, HealthTiming, Server, VIP4, VIP6, in_ns};
use tests::netns::sh;

/// Issue 4, tests 1 and 2: requests to both VIPs spread evenly over all backends, and the
/// replies never cross a load balancer.
#[test]
fn requests_spread_over_backends_and_replies_bypass_the_load_balancers() {
    let lab = lab("sp", HealthTiming::default());
    let v4 = SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT);
    let v6 = SocketAddr::new(IpAddr::V6(VIP6), HTTP_PORT);

    // 1. 3,000 connections, half to each VIP.
    let results = http_requests(&lab, vec![v4, v6], 3000);
    let mut per: BTreeMap<(SocketAddr, String), usize> = BTreeMap::new();
    let mut total: BTreeMap<String, usize> = BTreeMap::new();
    for (t, b) in &results {
        *per.entry((*t, b.clone())).or_default() += 1;
        *total.entry(b.clone()).or_default() += 1;
    }
    eprintln!("spread over 3000 connections: {total:?}; per VIP: {per:?}");
    assert_eq!(total.len(), 3, "every backend answers: {total:?}");
    for (b, n) in &total {
        let dev = (*n as f64 - 1000.0).abs() / 1000.0;
        assert!(
            dev <= 0.15,
            "{b} got {n} of 3000 connections ({:.1}% off even)",
            dev * 100.0
        );
    }
    for ((t, b), n) in &per {
        let dev = (*n as f64 - 500.0).abs() / 500.0;
        assert!(dev <= 0.15, "{b} got {n} of 1500 connections to {t}");
    }
    // Both load balancers carried some of them (the router spreads with ECMP). Wait for the
    // last closing segments to pass, so the counts below only hold the captured requests.
    let mut before: Vec<u64> = (1..=2).map(|i| vip_packets(&lab, i)).collect();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let now: Vec<u64> = (1..=2).map(|i| vip_packets(&lab, i)).collect();
        if now == before {
            break;
        }
        before = now;
    }
    assert!(
        before.iter().all(|&p| p > 0),
        "both load balancers forward: {before:?}"
    );

    // 2. Direct server return, checked on the router: every frame it sees with the VIP as
    // source comes from a backend link, none from or to a load balancer link.
    fn classify(frame: &[u8]) -> Option<&'static str> {
        let (src, dst) = tests::ip_endpoints(&SlicedPacket::from_ethernet(frame).ok()?)?;
        let vip = |a: IpAddr| a == IpAddr::V4(VIP4) || a == IpAddr::V6(VIP6);
        let client = |a: IpAddr| a == IpAddr::V4(lab::CLIENT4) || a == IpAddr::V6(lab::CLIENT6);
        // The load balancers' own health checks also talk to the VIP (their replies come
        // back to the load balancer, which is their client): counted apart.
        match (vip(src), vip(dst)) {
            (true, _) if client(dst) => Some("vip_to_client"),
            (_, true) if client(src) => Some("client_to_vip"),
            (true, _) => Some("vip_to_other"),
            (_, true) => Some("other_to_vip"),
            _ => None,
        }
    }
    let ifindex = |name: &str| -> u32 {
        let out = sh("ip", &["-n", &lab.ns("router"), "-j", "link", "show", name]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["ifindex"].as_u64().unwrap() as u32
    };
    let cap = Capture::start(&lab.ns("router"), classify).unwrap();
    let n = 300;
    let results = http_requests(&lab, vec![v4, v6], n);
    assert_eq!(results.len(), n);
    let counts = cap.finish().unwrap();
    let after: Vec<u64> = (1..=2).map(|i| vip_packets(&lab, i)).collect();
    let count = |ifname: &str, outgoing: bool, class: &str| -> u64 {
        let idx = ifindex(ifname);
        counts
            .iter()
            .filter(|((i, o, c), _)| *i == idx && *o == outgoing && *c == class)
            .map(|(_, n)| n)
            .sum()
    };
    let client_to_vip = count("c0", false, "client_to_vip");
    let replies_to_client = count("c0", true, "vip_to_client");
    let from_backends: u64 = (1..=3)
        .map(|j| count(&format!("b{j}"), false, "vip_to_client"))
        .sum();
    let lb_links: u64 = (1..=2)
        .flat_map(|i| {
            let l = format!("lb{i}");
            [
                count(&l, true, "vip_to_client"),
                count(&l, false, "vip_to_client"),
            ]
        })
        .sum();
    let forwarded_to_lbs: u64 = (1..=2)
        .map(|i| count(&format!("lb{i}"), true, "client_to_vip"))
        .sum();
    let other_to_lbs: u64 = (1..=2)
        .map(|i| count(&format!("lb{i}"), true, "other_to_vip"))
        .sum();
    let lb_seen: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    eprintln!(
        "DSR over {n} connections: client->VIP {client_to_vip} frames, routed to the load balancers {forwarded_to_lbs}, \
         seen by their XDP {lb_seen} (+{other_to_lbs} not from the client); VIP->client from backends {from_backends}, \
         to the client {replies_to_client}, on load-balancer links {lb_links}"
    );
    assert!(
        client_to_vip >= 3 * n as u64,
        "the capture saw the requests"
    );
    assert!(
        replies_to_client >= 2 * n as u64,
        "the capture saw the replies"
    );
    assert_eq!(
        lb_links, 0,
        "a reply to the client crossed a load-balancer link"
    );
    assert_eq!(
        from_backends, replies_to_client,
        "every reply came straight from a backend"
    );
    assert_eq!(
        forwarded_to_lbs, client_to_vip,
        "every request went to a load balancer"
    );
    // Health checks travel the tunnel both ways and never reach the VIP untunnelled.
    assert_eq!(
        other_to_lbs, 0,
        "untunnelled packets to the VIP from elsewhere"
    );
    assert_eq!(
        lb_seen, client_to_vip,
        "the load balancers saw exactly the inbound direction"
    );
    // And the backends' own routing says so.
    for j in 1..=3 {
        let route = sh(
            "ip",
            &[
                "-n",
                &lab.ns(&format!("b{j}")),
                "route",
                "get",
                "198.51.100.10",
                "from",
                "192.0.2.10",
            ],
        )
        .unwrap();
        let hop = lab::backend_link4(j).0.to_string();
        assert!(
            route.contains(&format!("via {hop}")),
            "b{j} replies via the router: {route}"
        );
    }
    finish(lab);
}

/// Issue 4, test 3: 200 long-lived connections keep exchanging data while one load balancer's
/// routes are withdrawn (traffic moves to the other) and again when they come back.
#[test]
fn connections_survive_a_route_shift_between_load_balancers() {
    let lab = lab("sh", HealthTiming::default());
    let n = 200;
    let sessions = Sessions::open(&lab, echo_targets(), n, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(2));
    let p1 = vip_packets(&lab, 1);
    let p2 = vip_packets(&lab, 2);

    // Withdraw lb1: the router must move its flows to lb2.
    let t0 = Instant::now();
    assert!(lab.lb(1, &["node", "drain"]).status.success());
    let withdrawn = wait_until("the router to drop lb1", Duration::from_secs(15), || {
        [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
            .iter()
            .all(|v| lab.router_paths(*v).unwrap().len() == 1)
    });
    std::thread::sleep(Duration::from_secs(3));
    let q1 = vip_packets(&lab, 1);
    let q2 = vip_packets(&lab, 2);
    std::thread::sleep(Duration::from_secs(2));
    let r1 = vip_packets(&lab, 1);
    let r2 = vip_packets(&lab, 2);
    // Restore it: flows spread over both again.
    assert!(lab.lb(1, &["node", "undrain"]).status.success());
    let t1 = Instant::now();
    let restored = wait_until(
        "the router to use lb1 again",
        Duration::from_secs(15),
        || {
            [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
                .iter()
                .all(|v| lab.router_paths(*v).unwrap().len() == 2)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let s1 = vip_packets(&lab, 1);
    let results = sessions.finish();

    let resets: Vec<&Session> = results.iter().filter(|s| s.error.is_some()).collect();
    let max_gap = results.iter().map(|s| s.max_gap).max().unwrap();
    let exchanges: u64 = results.iter().map(|s| s.exchanges).sum();
    eprintln!(
        "route shift with {n} connections: withdrawal reached the router in {:?} (drain at +{:?}), \
         restore in {:?}; {exchanges} exchanges, {} broken, longest gap {:?}; \
         lb1 VIP packets {p1} -> {q1} -> {r1} -> {s1}, lb2 {p2} -> {q2} -> {r2}",
        withdrawn,
        t0.elapsed() - withdrawn,
        restored,
        resets.len(),
        max_gap,
    );
    let _ = t1;
    assert!(
        resets.is_empty(),
        "{} of {n} connections broke, e.g. {:?}",
        resets.len(),
        &resets[..resets.len().min(3)]
    );
    assert!(
        max_gap < Duration::from_secs(2),
        "a connection stalled for {max_gap:?}"
    );
    assert!(
        results.iter().all(|s| s.closed_cleanly),
        "every connection closes cleanly"
    );
    assert!(
        results.iter().all(|s| s.exchanges >= 50),
        "every connection kept exchanging"
    );
    // The shift really happened: while withdrawn, lb1 received nothing new and lb2 everything.
    assert_eq!(q1, r1, "lb1 still received VIP traffic while withdrawn");
    assert!(r2 > q2 && q2 > p2, "lb2 carried the traffic");
    assert!(s1 > r1, "lb1 receives again after the restore");
    finish(lab);
}

/// Issue 4, test 4: draining a backend on both load balancers lets its connections finish
/// and sends new ones elsewhere.
#[test]
fn drained_backend_keeps_its_connections_and_gets_no_new_ones() {
    let lab = lab("dr", HealthTiming::default());
    let sessions = Sessions::open(&lab, echo_targets(), 30, Duration::from_millis(100));
    let victim_addr = lab::backend_link6(1).1.to_string();
    let on_victim = sessions.opened.iter().filter(|s| s.backend == "b1").count();
    assert!(
        on_victim > 0,
        "some connections landed on b1: {:?}",
        sessions.opened
    );
    for i in 1..=2 {
        for vip in [
            format!("{VIP4}:{ECHO_PORT}/tcp"),
            format!("[{VIP6}]:{ECHO_PORT}/tcp"),
        ] {
            let out = lab.lb(i, &["backend", "drain", &vip, &victim_addr]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // New connections avoid b1.
    let fresh = Sessions::open(&lab, echo_targets(), 100, Duration::from_millis(100));
    let fresh_backends: BTreeMap<String, usize> =
        fresh.opened.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.backend.clone()).or_default() += 1;
            m
        });
    std::thread::sleep(Duration::from_secs(2));
    let old = sessions.finish();
    let new = fresh.finish();
    eprintln!(
        "drain: {on_victim} connections on b1 before; new connections went to {fresh_backends:?}"
    );
    assert!(
        !fresh_backends.contains_key("b1"),
        "a new connection reached the drained backend"
    );
    assert_eq!(fresh_backends.len(), 2);
    for s in old.iter().chain(&new) {
        assert!(
            s.error.is_none() && s.closed_cleanly,
            "connection did not complete: {s:?}"
        );
    }
    assert!(
        old.iter()
            .filter(|s| s.backend == "b1")
            .all(|s| s.exchanges >= 15)
    );
    // The listing shows it draining, still healthy, with flows only until they end.
    let list = lab
        .lb_json(1, &["backend", "list", &format!("{VIP4}:{ECHO_PORT}/tcp")])
        .unwrap();
    let b1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == victim_addr.as_str())
        .unwrap()
        .clone();
    assert_eq!(b1["state"], "draining");
    assert_eq!(b1["health"], "up");
    assert_eq!(b1["slots"], 0);
    finish(lab);
}

/// Issue 4, test 5: a stopped server is detected within the configured time and its new flows
/// go elsewhere; with every backend down, the VIP is withdrawn and the router stops sending.
#[test]
fn health_checks_take_down_backends_out_and_withdraw_dead_vips() {
    let h = FAST_HEALTH;
    let lab = lab("hc", h);
    let http = vec![
        SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT),
        SocketAddr::new(IpAddr::V6(VIP6), HTTP_PORT),
    ];
    let health_of = |i: usize, vip: &str, j: usize| -> String {
        let list = lab.lb_json(i, &["backend", "list", vip]).unwrap();
        let addr = lab::backend_link6(j).1.to_string();
        list.as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == addr.as_str())
            .map(|b| b["health"].as_str().unwrap().to_string())
            .unwrap()
    };
    let http4 = format!("{VIP4}:{HTTP_PORT}/tcp");
    let http6 = format!("[{VIP6}]:{HTTP_PORT}/tcp");

    // One server stops: detected within fall x interval + timeout, plus one interval (the
    // stop falls anywhere in a check period) and 500 ms for this test's polling of two CLIs.
    let stopped = Instant::now();
    lab.stop_server(2, Server::Http).unwrap();
    let limit = Duration::from_millis(h.interval_ms * (h.fall as u64 + 1) + h.timeout_ms + 500);
    let detected = wait_until(
        "b2 down on both load balancers",
        limit + Duration::from_secs(2),
        || (1..=2).all(|i| health_of(i, &http4, 2) == "down" && health_of(i, &http6, 2) == "down"),
    );
    eprintln!(
        "health: b2's nginx stopped; both load balancers marked it down after {detected:?} \
         (configured: every {} ms, timeout {} ms, fall {})",
        h.interval_ms, h.timeout_ms, h.fall
    );
    assert!(
        detected <= limit,
        "detection took {detected:?}, configured bound {limit:?}"
    );
    let _ = stopped;
    // Its echo service still answers, so only the HTTP services lost it.
    assert_eq!(health_of(1, &format!("{VIP4}:{ECHO_PORT}/tcp"), 2), "up");
    let results = http_requests(&lab, http.clone(), 200);
    assert!(
        results.iter().all(|(_, b)| b != "b2"),
        "a new flow reached the stopped b2"
    );
    let text = String::from_utf8_lossy(&lab.lb(1, &["backend", "list"]).stdout).into_owned();
    assert!(text.contains("down ("), "the table shows why: {text}");
    let metrics = tests::netns::metrics_in(&lab.ns("lb1")).unwrap();
    let gauge = |j: usize| {
        format!(
            "lb_backend_healthy{{vip=\"{http4}\",backend=\"{}\"}}",
            lab::backend_link6(j).1
        )
    };
    assert!(metrics.contains(&format!("{} 0\n", gauge(2))), "{metrics}");
    assert!(metrics.contains(&format!("{} 1\n", gauge(1))), "{metrics}");

    // Every server of every backend stops: the VIPs are withdrawn everywhere.
    for j in [1, 3] {
        lab.stop_server(j, Server::Http).unwrap();
    }
    for j in 1..=3 {
        lab.stop_server(j, Server::Echo).unwrap();
    }
    let gone = wait_until(
        "the router to lose every VIP route",
        Duration::from_secs(20),
        || {
            [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
                .iter()
                .all(|v| lab.router_paths(*v).unwrap().is_empty())
        },
    );
    let status = lab.lb_json(1, &["status"]).unwrap();
    assert_eq!(status["announcing"], serde_json::json!([]));
    eprintln!("health: every backend down; the router had no VIP route {gone:?} later");
    // The router stops sending: a client's SYN finds no route (no load balancer sees it).
    let before: Vec<u64> = (1..=2).map(|i| vip_packets(&lab, i)).collect();
    let err = in_ns(&lab.ns("client"), || {
        TcpStream::connect_timeout(
            &SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT),
            Duration::from_secs(1),
        )
        .err()
    })
    .unwrap();
    assert!(err.is_some(), "nothing answers for a withdrawn VIP");
    let after: Vec<u64> = (1..=2).map(|i| vip_packets(&lab, i)).collect();
    assert_eq!(
        before, after,
        "a load balancer still received traffic for a withdrawn VIP"
    );

    // Servers come back: healthy after `rise` checks, announced again, requests succeed.
    for j in 1..=3 {
        lab.start_server(j, Server::Http).unwrap();
        lab.start_server(j, Server::Echo).unwrap();
    }
    let back = wait_until(
        "both paths back on the router",
        Duration::from_secs(20),
        || {
            [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
                .iter()
                .all(|v| lab.router_paths(*v).unwrap().len() == 2)
        },
    );
    eprintln!("health: servers restarted; both load balancers announced again after {back:?}");
    // A VIP is announced as soon as one backend is healthy; the others may need one more
    // check interval before they are back in the ring.
    wait_until(
        "every HTTP backend healthy on both load balancers",
        Duration::from_secs(20),
        || {
            (1..=2).all(|i| {
                (1..=3).all(|j| health_of(i, &http4, j) == "up" && health_of(i, &http6, j) == "up")
            })
        },
    );
    let results = http_requests(&lab, http, 60);
    let seen: std::collections::BTreeSet<&str> = results.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(seen.len(), 3, "all backends serve again: {seen:?}");
    finish(lab);
}
