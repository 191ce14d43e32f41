//! Peer sync end to end (issue 5), in the anycast lab: both load balancers' agents are peers
//! over the lab's sync network (a bridge in `<prefix>-sw`). Each test builds its own lab and
//! checks afterwards that nothing of it is left.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lb_userspace::sync::wire::{self, FleetKey};
use serde_json::Value;
use tests::e2e::*;
use tests::lab::{self, ECHO_PORT, HTTP_PORT, Lab, SYNC_PORT, VIP4, VIP6, backend_link6};

fn peers(lab: &Lab, i: usize) -> Value {
    lab.lb_json(i, &["peer", "list"]).unwrap()
}

/// Both agents report the same state and table digests, and each sees the other agree.
fn agree(lab: &Lab) -> bool {
    let (a, b) = (peers(lab, 1), peers(lab, 2));
    a["state_digest"] == b["state_digest"]
        && a["table_digest"] == b["table_digest"]
        && a["version"] == b["version"]
        && [&a, &b]
            .iter()
            .all(|p| p["peers"][0]["state_match"] == true && p["peers"][0]["table_match"] == true)
}

fn backend(j: usize) -> String {
    backend_link6(j).1.to_string()
}

fn weight_of(lab: &Lab, i: usize, vip: &str, j: usize) -> Option<u64> {
    let list = lab.lb_json(i, &["backend", "list", vip]).unwrap();
    list.as_array()?
        .iter()
        .find(|b| b["backend"] == backend(j).as_str())
        .and_then(|b| b["weight"].as_u64())
}

fn echo_vips() -> [String; 2] {
    [
        format!("{VIP4}:{ECHO_PORT}/tcp"),
        format!("[{VIP6}]:{ECHO_PORT}/tcp"),
    ]
}

/// The value of the first `/metrics` line of load balancer `i` that starts with `line_prefix`.
fn metric(lab: &Lab, i: usize, line_prefix: &str) -> Option<u64> {
    let text = tests::netns::metrics_in(&lab.ns(&lab::lb_name(i))).unwrap();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Seconds since midnight of the last log line containing `needle` (tracing's RFC 3339 UTC
/// timestamp opens each line).
fn log_time(log: &str, needle: &str) -> Option<f64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let t = line
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Issue 5, test 1: a change made on one agent is applied by every agent, with matching
/// digests; concurrent changes to one field resolve the same way on both.
#[test]
fn a_change_on_one_agent_reaches_every_agent_with_matching_digests() {
    let lab = lab_with("cv", |_| {});
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let v4 = format!("{VIP4}:{HTTP_PORT}/tcp");

    // One change on lb1, timed until lb2 has applied it (same digest).
    let mut times = Vec::new();
    let mut logged = Vec::new();
    for (i, w) in [(1, "300"), (2, "40"), (1, "120")] {
        let before = peers(&lab, 1)["version"].as_u64().unwrap();
        let t = Instant::now();
        lb_succeeds(&lab, i, &["backend", "weight", &v4, &backend(2), w]);
        let other = 3 - i;
        let want = peers(&lab, i)["state_digest"].clone();
        wait_until(
            "the other agent to apply it",
            Duration::from_secs(10),
            || peers(&lab, other)["state_digest"] == want,
        );
        times.push(t.elapsed());
        // The agents' own clocks: applied at the origin, then replicated at the peer.
        let what = format!("set backend {} of {v4} to weight {w}", backend(2));
        let origin = log_time(&lab.agent_log(i), &format!("applied: {what}"));
        let peer = log_time(&lab.agent_log(other), &format!("replicated: {what}"));
        logged.push(
            ((peer.expect("peer logged it") - origin.expect("origin logged it")) * 1000.0).round(),
        );
        assert_eq!(
            weight_of(&lab, other, &v4, 2),
            Some(w.parse().unwrap()),
            "lb{other} applied the weight"
        );
        assert_eq!(peers(&lab, other)["version"].as_u64().unwrap(), before + 1);
    }
    // A VIP added on lb2 appears on lb1, with its backend.
    let t = Instant::now();
    lb_succeeds(&lab, 2, &["vip", "add", "192.0.2.20:443/tcp"]);
    lb_succeeds(
        &lab,
        2,
        &["backend", "add", "192.0.2.20:443/tcp", &backend(3)],
    );
    wait_until("lb1 to get the new VIP", Duration::from_secs(10), || {
        weight_of(&lab, 1, "192.0.2.20:443/tcp", 3).is_some()
    });
    times.push(t.elapsed());
    wait_until("the peers to agree", Duration::from_secs(10), || {
        agree(&lab)
    });

    let ms: Vec<u128> = times.iter().map(|t| t.as_millis()).collect();
    eprintln!(
        "convergence: origin applied -> peer applied (agents' logs) {logged:?} ms; CLI command start -> peer reporting the same digest (polled) {ms:?} ms"
    );
    assert!(
        logged.iter().all(|ms| *ms >= 0.0 && *ms < 1000.0),
        "{logged:?}"
    );
    assert!(times.iter().all(|t| *t < Duration::from_secs(2)));
    // Status, peer list and metrics say so.
    let st = lab.lb_json(1, &["status"]).unwrap();
    assert_eq!(st["sync"]["node"], "lb1");
    assert_eq!(st["sync"]["peers"][0]["name"], "lb2");
    assert_eq!(
        metric(&lab, 1, "lb_sync_peer_state_match{peer=\"lb2\"}"),
        Some(1)
    );
    assert_eq!(
        metric(&lab, 2, "lb_sync_peer_table_match{peer=\"lb1\"}"),
        Some(1)
    );
    assert_eq!(metric(&lab, 1, "lb_sync_peer_up{peer=\"lb2\"}"), Some(1));
    for args in [&["peer", "list"][..], &["status"][..]] {
        let text = String::from_utf8(lab.lb(1, args).stdout).unwrap();
        let row = text.lines().find(|l| l.starts_with("lb2 ")).unwrap_or("");
        assert!(
            text.contains("STATE (MATCH)") && row.matches(" yes").count() == 2,
            "lb {args:?} shows lb2 agreeing: {text}"
        );
    }
    // Last, so the checks above read a settled fleet: after the partition heals, a summary
    // sent before the merge can still be in flight for a moment.
    // Concurrent: both set the same field while neither can hear the other, so both stamp
    // it with the same clock; the higher node name (lb2 > lb1) wins on both.
    let v6 = format!("[{VIP6}]:{HTTP_PORT}/tcp");
    let before = peers(&lab, 1)["version"].as_u64().unwrap();
    lab.set_sync_link(1, false).unwrap();
    lb_succeeds(&lab, 1, &["backend", "weight", &v6, &backend(3), "7"]);
    lb_succeeds(&lab, 2, &["backend", "weight", &v6, &backend(3), "9"]);
    lab.set_sync_link(1, true).unwrap();
    wait_until("the peers to agree", Duration::from_secs(20), || {
        agree(&lab)
    });
    let (w1, w2) = (weight_of(&lab, 1, &v6, 3), weight_of(&lab, 2, &v6, 3));
    assert_eq!(w1, w2, "both resolved the conflict the same way");
    assert_eq!(
        peers(&lab, 1)["version"].as_u64().unwrap(),
        before + 1,
        "both changes carry the same clock"
    );
    assert_eq!(w1, Some(9), "the same clock: lb2's write wins by node name");
    eprintln!("concurrent weights resolved to {w1:?} on both");
    finish(lab);
}

/// Issue 5, test 2: 300 long-lived connections; one backend added and another drained (slots
/// move); then one load balancer's routes are withdrawn. Returns the sessions and what lb2
/// imported.
fn hard_case(tag: &str, flow_sync: bool) -> (Vec<Session>, u64, usize) {
    let lab = lab_with(tag, |o| {
        o.backends = 4;
        o.configured_backends = 3;
        o.flow_sync = flow_sync;
        // Flow sync alone: the backends' second chance would carry the moved connections too.
        o.second_chance_secs = Some(0);
    });
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let n = 300;
    let sessions = Sessions::open(&lab, echo_targets(), n, Duration::from_millis(100));
    let on_b1 = sessions.opened.iter().filter(|s| s.backend == "b1").count();
    std::thread::sleep(Duration::from_secs(1));

    // On lb1 only: b4 joins, b1 drains. lb2 learns it through sync.
    for vip in echo_vips() {
        lb_succeeds(&lab, 1, &["backend", "add", &vip, &backend(4)]);
        lb_succeeds(&lab, 1, &["backend", "drain", &vip, &backend(1)]);
    }
    wait_until("the peers to agree", Duration::from_secs(10), || {
        agree(&lab)
    });
    std::thread::sleep(Duration::from_secs(1));

    // lb1's routes withdrawn: the router moves its flows to lb2.
    lb_succeeds(&lab, 1, &["node", "drain"]);
    wait_until("the router to drop lb1", Duration::from_secs(15), || {
        [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
            .iter()
            .all(|v| lab.router_paths(*v).unwrap().len() == 1)
    });
    std::thread::sleep(Duration::from_secs(4));
    let results = sessions.finish();
    let imported = peers(&lab, 2)["flows_imported"].as_u64().unwrap();
    finish(lab);
    (results, imported, on_b1)
}

#[test]
fn flows_survive_a_route_shift_while_backends_change() {
    let (results, imported, on_b1) = hard_case("hc", true);
    let broken: Vec<&Session> = results.iter().filter(|s| s.error.is_some()).collect();
    let max_gap = results.iter().map(|s| s.max_gap).max().unwrap();
    let exchanges: u64 = results.iter().map(|s| s.exchanges).sum();
    eprintln!(
        "hard case with flow sync: {} connections ({on_b1} on the drained b1), {exchanges} exchanges, {} broken, longest gap {max_gap:?}; lb2 imported {imported} flows",
        results.len(),
        broken.len()
    );
    assert!(on_b1 > 0, "some connections were on the backend drained");
    assert!(imported >= 100, "lb2 imported lb1's flows: {imported}");
    assert!(
        broken.is_empty(),
        "{} of {} connections broke, e.g. {:?}",
        broken.len(),
        results.len(),
        &broken[..broken.len().min(3)]
    );
    assert!(
        max_gap < Duration::from_secs(2),
        "a connection stalled for {max_gap:?}"
    );
    assert!(
        results
            .iter()
            .all(|s| s.closed_cleanly && s.exchanges >= 40)
    );
}

/// The same scenario without flow sync (the state is still replicated): connections break.
/// This is what the test above would see without flow sync, so it can fail.
#[test]
fn without_flow_sync_the_same_shift_breaks_connections() {
    let (results, imported, _) = hard_case("hn", false);
    let broken = results.iter().filter(|s| s.error.is_some()).count();
    eprintln!(
        "hard case without flow sync: {broken} of {} connections broke; lb2 imported {imported} flows",
        results.len()
    );
    assert_eq!(imported, 0);
    assert!(
        broken >= 10,
        "without flow sync the shift should break connections whose slots moved: {broken}"
    );
}

/// Issue 5, test 3: a peer cut off from the sync network misses changes, then converges by
/// itself once its link returns, with concurrent changes from both sides.
#[test]
fn a_cut_off_peer_converges_when_its_link_returns() {
    let lab = lab_with("pt", |_| {});
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    lab.set_sync_link(2, false).unwrap();
    let v4 = format!("{VIP4}:{HTTP_PORT}/tcp");
    let v6 = format!("[{VIP6}]:{HTTP_PORT}/tcp");
    lb_succeeds(&lab, 1, &["backend", "weight", &v4, &backend(2), "200"]);
    lb_succeeds(&lab, 1, &["vip", "add", "192.0.2.30:8080/tcp"]);
    lb_succeeds(&lab, 2, &["backend", "drain", &v6, &backend(3)]);
    let noticed = wait_until(
        "lb1 to see its link to lb2 down",
        Duration::from_secs(15),
        || peers(&lab, 1)["peers"][0]["outbound"] == false,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(
        peers(&lab, 1)["state_digest"],
        peers(&lab, 2)["state_digest"]
    );
    assert_eq!(
        weight_of(&lab, 2, &v4, 2),
        Some(100),
        "lb2 missed the change"
    );
    assert_eq!(
        metric(&lab, 1, "lb_sync_peer_up{peer=\"lb2\"}"),
        Some(0),
        "metrics show the peer down"
    );

    lab.set_sync_link(2, true).unwrap();
    let t = Instant::now();
    wait_until("the peers to agree again", Duration::from_secs(20), || {
        agree(&lab)
    });
    let rejoin = t.elapsed();
    eprintln!(
        "partition: lb1 noticed the cut in {noticed:?}; converged {:?} after the link returned",
        rejoin
    );
    for i in [1, 2] {
        assert_eq!(weight_of(&lab, i, &v4, 2), Some(200), "lb{i}");
        let list = lab.lb_json(i, &["backend", "list", &v6]).unwrap();
        let b3 = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backend"] == backend(3).as_str())
            .unwrap()
            .clone();
        assert_eq!(b3["state"], "draining", "lb{i}");
        let vips = lab.lb_json(i, &["vip", "list"]).unwrap();
        assert!(
            vips.as_array()
                .unwrap()
                .iter()
                .any(|v| v["vip"] == "192.0.2.30:8080/tcp"),
            "lb{i}: {vips}"
        );
    }
    finish(lab);
}

/// The listener's answer (Noise message 2), without its length.
fn read_answer(s: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut answer).unwrap();
    answer
}

/// The dialer's half of the handshake, spoken by hand. Returns the stream, the link's sending
/// keys, and the bytes of the hello and of the confirmation (to replay them).
fn handshake(
    to: SocketAddr,
    key: &FleetKey,
    name: &str,
) -> (TcpStream, wire::SendKeys, Vec<u8>, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let hello = wire::hello(key, name);
    let sent = hello.bytes.clone();
    s.write_all(&hello.bytes).unwrap();
    let (_, confirm, keys) = hello.answer(&read_answer(&mut s)).unwrap();
    s.write_all(&confirm).unwrap();
    (s, keys, sent, confirm)
}

/// The agent ends the link: the next reads see the close (or a reset) within 8 s.
fn closed_by_peer(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut b = [0u8; 256];
    for _ in 0..1000 {
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the agent did not close the link")
            }
            Err(_) => return,
        }
    }
    panic!("{what}: the agent kept talking");
}

fn refused(lab: &Lab, i: usize) -> std::collections::BTreeMap<String, u64> {
    peers(lab, i)["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap()))
        .collect()
}

/// An attacker on the sync network (an address on the bridge): lb1's sync address and the
/// fleet key, for the tests that speak the protocol by hand.
fn attacker_on_sync_net(lab: &Lab) -> (SocketAddr, FleetKey) {
    add_attacker_on_sync_net(lab);
    let target = SocketAddr::new(IpAddr::V6(lab::lb_sync6(1)), SYNC_PORT);
    let key = FleetKey::parse(&std::fs::read_to_string(lab.key_file()).unwrap()).unwrap();
    (target, key)
}

/// Issue 5, test 4: a peer without the fleet key is refused; garbage, truncated, replayed,
/// oversized and malformed messages are refused, and none changes state or stops the agent.
#[test]
fn peers_without_the_key_and_bad_messages_are_refused() {
    let lab = lab_with("sec", |_| {});
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let (target, key) = attacker_on_sync_net(&lab);
    let wrong = FleetKey::parse(&"5a".repeat(32)).unwrap();
    let before_status = peers(&lab, 1);
    let before_vips = lab.lb_json(1, &["vip", "list"]).unwrap();
    let before_backends = lab.lb_json(1, &["backend", "list"]).unwrap();

    let ns = lab.ns("sw");
    let (key2, wrong2) = (key.clone(), wrong.clone());
    lab::in_ns(&ns, move || {
        let key = key2;
        // Garbage instead of a handshake.
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: lb1\r\n\r\n").unwrap();
        closed_by_peer(&mut s, "garbage");
        // A dialer without the fleet key: the listener cannot open its hello.
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
        s.write_all(&wire::hello(&wrong2, "lb2").bytes).unwrap();
        closed_by_peer(&mut s, "wrong key");
        // A handshake cut short.
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
        s.write_all(&wire::MAGIC[..]).unwrap();
        s.write_all(&[0, 60, 1, 2, 3]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        closed_by_peer(&mut s, "truncated");
        // The right key, but not a configured peer.
        let (mut s, ..) = handshake(target, &key, "lb9");
        closed_by_peer(&mut s, "unknown peer");

        // A frame replayed within its link, and two frames swapped.
        let summary = br#"{"version":0,"state_digest":"x","table_digest":"y","flows":true}"#;
        let (mut s, keys, hello, confirm) = handshake(target, &key, "lb2");
        let (frame, next) = keys.frame(1, lb_userspace::sync::KIND_SUMMARY, summary);
        s.write_all(&frame).unwrap();
        s.write_all(&frame).unwrap();
        closed_by_peer(&mut s, "replayed frame");
        let (mut s, keys2, ..) = handshake(target, &key, "lb2");
        let (first, n) = keys2.frame(1, lb_userspace::sync::KIND_SUMMARY, summary);
        s.write_all(&keys2.frame(n, lb_userspace::sync::KIND_SUMMARY, summary).0)
            .unwrap();
        s.write_all(&first).unwrap();
        closed_by_peer(&mut s, "reordered frames");
        // That link's next frame on a new link (other keys), and its hello and confirmation
        // replayed on a new link (the listener's fresh ephemeral key changes the keys).
        let (mut s, ..) = handshake(target, &key, "lb2");
        s.write_all(&keys.frame(next, lb_userspace::sync::KIND_SUMMARY, summary).0)
            .unwrap();
        closed_by_peer(&mut s, "frame from an earlier link");
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        s.write_all(&hello).unwrap();
        read_answer(&mut s);
        s.write_all(&confirm).unwrap();
        closed_by_peer(&mut s, "replayed hello and confirmation");
        // Oversized: the first record announces a 64 MiB frame.
        let (mut s, keys, ..) = handshake(target, &key, "lb2");
        let mut head = (64u32 << 20).to_be_bytes().to_vec();
        head.push(lb_userspace::sync::KIND_STATE);
        s.write_all(&keys.record(1, &head)).unwrap();
        s.write_all(&[0u8; 1024]).unwrap();
        closed_by_peer(&mut s, "oversized");
        // Authenticated but malformed: not JSON, an impossible weight, an unknown kind, a
        // flow batch whose count does not match its length.
        let bad_weight = br#"{"vips":{},"backends":[{"vip":"192.0.2.10:80/tcp","backend":"2001:db8:b:1::2","member":{"stamp":{"clock":99,"node":"lb2"},"value":true},"weight":{"stamp":{"clock":99,"node":"lb2"},"value":0},"state":{"stamp":{"clock":99,"node":"lb2"},"value":"active"}}]}"#;
        for (kind, body) in [
            (lb_userspace::sync::KIND_STATE, &b"{not json"[..]),
            (lb_userspace::sync::KIND_STATE, &bad_weight[..]),
            (99, &b""[..]),
            (lb_userspace::sync::KIND_FLOWS, &[0, 0, 0, 0, 9][..]),
        ] {
            let (mut s, keys, ..) = handshake(target, &key, "lb2");
            s.write_all(&keys.frame(1, kind, body).0).unwrap();
            closed_by_peer(&mut s, "malformed");
        }
    })
    .unwrap();

    // Every refusal counted by reason; nothing changed; both agents still agree.
    let want = [
        ("handshake", 1),
        ("auth", 2),
        ("truncated", 1),
        ("unknown_peer", 1),
        ("sequence", 2),
        ("frame_mac", 1),
        ("oversized", 1),
        ("malformed", 4),
    ];
    let mut got = refused(&lab, 1);
    wait_until("every refusal counted", Duration::from_secs(5), || {
        got = refused(&lab, 1);
        want.iter()
            .all(|(r, n)| got.get(*r).copied().unwrap_or(0) >= *n)
    });
    eprintln!("refused by lb1: {got:?}");
    let after = peers(&lab, 1);
    assert_eq!(after["version"], before_status["version"]);
    assert_eq!(after["state_digest"], before_status["state_digest"]);
    assert_eq!(
        lab.lb_json(1, &["vip", "list"])
            .unwrap()
            .as_array()
            .map(|a| a.len()),
        before_vips.as_array().map(|a| a.len())
    );
    let weights = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["backend"].clone(),
                    b["weight"].clone(),
                    b["state"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        weights(&lab.lb_json(1, &["backend", "list"]).unwrap()),
        weights(&before_backends)
    );
    assert!(
        metric(&lab, 1, "lb_sync_refused_total{reason=\"auth\"}").unwrap() >= 2,
        "metrics count refusals"
    );
    let log = lab.agent_log(1);
    assert!(
        log.contains("sync link refused: auth"),
        "refusals are logged"
    );
    wait_until("the real peers to agree", Duration::from_secs(10), || {
        agree(&lab)
    });
    finish(lab);
}

/// A frame of a peer link: TCP over IPv4 or IPv6 to or from the sync port.
fn sync_tcp(f: &[u8]) -> bool {
    tcp_segment(f).is_some_and(|(src, dst, ..)| src.port() == SYNC_PORT || dst.port() == SYNC_PORT)
}

/// An Ethernet frame's TCP segment: source, destination, sequence and payload.
fn tcp_segment(f: &[u8]) -> Option<(SocketAddr, SocketAddr, u32, &[u8])> {
    let ip = f.get(14..)?;
    let (src, dst, tcp) = match u16::from_be_bytes([f[12], f[13]]) {
        0x86dd if ip.get(6) == Some(&6) => {
            let len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
            let a = |o: usize| IpAddr::from(<[u8; 16]>::try_from(&ip[o..o + 16]).unwrap());
            (a(8), a(24), ip.get(40..40 + len)?)
        }
        0x0800 if ip.get(9) == Some(&6) => {
            let (ihl, len) = (
                (ip[0] & 15) as usize * 4,
                u16::from_be_bytes([ip[2], ip[3]]) as usize,
            );
            let a = |o: usize| IpAddr::from(<[u8; 4]>::try_from(&ip[o..o + 4]).unwrap());
            (a(12), a(16), ip.get(ihl..len)?)
        }
        _ => return None,
    };
    let port = |o: usize| u16::from_be_bytes([tcp[o], tcp[o + 1]]);
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().unwrap());
    let data = tcp.get((tcp.get(12)? >> 4) as usize * 4..)?;
    Some((
        SocketAddr::new(src, port(0)),
        SocketAddr::new(dst, port(2)),
        seq,
        data,
    ))
}

/// Each direction of each captured TCP connection as one byte stream, in sequence order
/// (a frame seen twice, or retransmitted, counts once).
fn tcp_streams(frames: &[Vec<u8>]) -> Vec<((SocketAddr, SocketAddr), Vec<u8>)> {
    let mut segments: std::collections::BTreeMap<_, std::collections::BTreeMap<u32, &[u8]>> =
        Default::default();
    let mut first = std::collections::HashMap::new();
    for f in frames {
        let Some((src, dst, seq, data)) = tcp_segment(f) else {
            continue;
        };
        let base = *first.entry((src, dst)).or_insert(seq);
        let at = seq.wrapping_sub(base);
        if !data.is_empty() && at < 1 << 31 {
            segments
                .entry((src, dst))
                .or_default()
                .entry(at)
                .or_insert(data);
        }
    }
    segments
        .into_iter()
        .map(|(k, segs)| {
            let mut stream = Vec::new();
            for (at, data) in segs {
                let skip = (stream.len() as u64).saturating_sub(at as u64) as usize;
                stream.extend_from_slice(data.get(skip..).unwrap_or_default());
            }
            (k, stream)
        })
        .collect()
}

/// Issue 15 §11: the peer links are encrypted. A capture of both links while the agents sync
/// new flows holds none of the clients' addresses (IPv4 and IPv6, as bytes) and none of the
/// synced flows' port pairs.
#[test]
fn a_captured_peer_link_shows_no_client_address_or_port() {
    use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP};
    let lab = lab_with("cap", |_| {});
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let imported = |lab: &Lab| {
        (1..=2)
            .map(|i| peers(lab, i)["flows_imported"].as_u64().unwrap())
            .sum::<u64>()
    };
    let before = imported(&lab);
    let recording = tests::capture::Recording::start(&lab.ns(&lab::lb_name(1)), sync_tcp).unwrap();
    let n = 40;
    let conns: Vec<TcpStream> = lab::in_ns(&lab.ns("client"), move || {
        let targets = echo_targets();
        (0..n)
            .map(|i| {
                TcpStream::connect_timeout(&targets[i % targets.len()], Duration::from_secs(3))
                    .unwrap()
            })
            .collect()
    })
    .unwrap();
    wait_until(
        "the new flows to reach the peers",
        Duration::from_secs(15),
        || imported(&lab) >= before + n as u64,
    );
    // Summaries, a state and more flows' batches go by too.
    lb_succeeds(
        &lab,
        1,
        &["backend", "weight", &echo_vips()[0], &backend(2), "150"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let frames = recording.finish().unwrap();

    // What each flow looks like in a record: client address, and ports then protocol and
    // family (ports in network order).
    let mut patterns: Vec<(String, Vec<u8>)> = vec![
        ("client IPv4 address".into(), lab::CLIENT4.octets().to_vec()),
        ("client IPv6 address".into(), lab::CLIENT6.octets().to_vec()),
    ];
    for c in &conns {
        let a = c.local_addr().unwrap();
        let family = if a.is_ipv4() { FAMILY_V4 } else { FAMILY_V6 };
        let mut p = a.port().to_be_bytes().to_vec();
        p.extend_from_slice(&ECHO_PORT.to_be_bytes());
        p.extend_from_slice(&[PROTO_TCP, family]);
        patterns.push((format!("the ports of {a}"), p));
    }
    drop(conns);
    let streams = tcp_streams(&frames);
    let bytes: usize = streams.iter().map(|(_, s)| s.len()).sum();
    eprintln!(
        "captured {} frames: {} link directions, {bytes} bytes of payload",
        frames.len(),
        streams.len()
    );
    assert!(
        streams.len() >= 2 && bytes >= n * lb_userspace::sync::flows::RECORD_LEN,
        "the capture saw the links carry the flows ({bytes} bytes)"
    );
    for ((from, to), stream) in &streams {
        for (what, p) in &patterns {
            assert!(
                !stream.windows(p.len()).any(|w| w == &p[..]),
                "{what} in the clear on the link {from} -> {to}"
            );
        }
    }
    finish(lab);
}

/// Issue 5, test 5: an agent restarted mid-traffic rejoins, converges (it missed a change while
/// it was down), announces again only once caught up, and its flows, and the flows its peer
/// took while it was away, survive the routes coming back.
#[test]
fn a_restarted_agent_rejoins_converges_and_keeps_its_flows() {
    let lab = lab_with("rs", |_| {});
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let first = Sessions::open(&lab, echo_targets(), 100, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(1));

    lab.stop_agent(1).unwrap();
    wait_until("the router to drop lb1", Duration::from_secs(15), || {
        [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
            .iter()
            .all(|v| lab.router_paths(*v).unwrap().len() == 1)
    });
    // While lb1's agent is away: a change, and new connections (all through lb2).
    for vip in echo_vips() {
        lb_succeeds(&lab, 2, &["backend", "drain", &vip, &backend(3)]);
    }
    let second = Sessions::open(&lab, echo_targets(), 60, Duration::from_millis(100));
    std::thread::sleep(Duration::from_secs(1));

    let t = Instant::now();
    lab.start_agent(1).unwrap();
    wait_until("lb1 to converge", Duration::from_secs(15), || agree(&lab));
    let converged = t.elapsed();
    let routed = wait_until(
        "the router to use lb1 again",
        Duration::from_secs(20),
        || {
            [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
                .iter()
                .all(|v| lab.router_paths(*v).unwrap().len() == 2)
        },
    );
    std::thread::sleep(Duration::from_secs(4));
    let a = first.finish();
    let b = second.finish();
    let all: Vec<&Session> = a.iter().chain(&b).collect();
    let broken: Vec<&&Session> = all.iter().filter(|s| s.error.is_some()).collect();
    let max_gap = all.iter().map(|s| s.max_gap).max().unwrap();
    eprintln!(
        "restart: lb1 converged {converged:?} after its agent started, routed again {:?} later; {} connections, {} broken, longest gap {max_gap:?}",
        routed,
        all.len(),
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "broken: {:?}",
        &broken[..broken.len().min(3)]
    );
    assert!(
        max_gap < Duration::from_secs(2),
        "a connection stalled for {max_gap:?}"
    );
    let st = peers(&lab, 1);
    assert_eq!(st["waiting_for"], serde_json::json!([]));
    for vip in echo_vips() {
        let list = lab.lb_json(1, &["backend", "list", &vip]).unwrap();
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|x| x["backend"] == backend(3).as_str() && x["state"] == "draining"),
            "lb1 learned the drain it missed: {list}"
        );
    }
    let log = lab.agent_log(1);
    assert!(log.contains("resuming from the replicated state"), "{log}");
    assert!(log.contains("caught up with peer"), "{log}");
    finish(lab);
}

/// Issue 15, 2: an authenticated peer's state whose clock sits at the end of the Lamport clock
/// (or whose stamps carry a node name that is not one) is refused and counted, and changes
/// nothing: the agent's next change still advances its version by one, and both agents agree.
#[test]
fn a_peer_state_with_a_clock_at_its_end_is_refused_and_changes_nothing() {
    use lb_userspace::state::{BackendState, Change, Vip};
    use lb_userspace::sync::replicated::{ReplicatedState, Stamp};
    let lab = lab_with("clk", |_| {});
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let (target, key) = attacker_on_sync_net(&lab);
    let before = peers(&lab, 1);
    let before_refused = refused(&lab, 1);
    let v4 = format!("{VIP4}:{HTTP_PORT}/tcp");

    // A new VIP with a backend, every field stamped as lb2 would: once at the clock's end,
    // once with a node name that is not a node name.
    let state = |clock: u64, node: &str| {
        let vip: Vip = "192.0.2.77:80/tcp".parse().unwrap();
        let stamp = Stamp {
            clock,
            node: node.to_string(),
        };
        let mut s = ReplicatedState::default();
        s.record(&Change::AddVip { vip, gue: false }, &stamp);
        let add = Change::AddBackend {
            vip,
            backend: backend(1).parse().unwrap(),
            weight: 100,
            state: BackendState::Active,
        };
        s.record(&add, &stamp);
        serde_json::to_vec(&s).unwrap()
    };
    let bodies = [state(u64::MAX, "lb2"), state(1, "lb2\nforged log line")];
    lab::in_ns(&lab.ns("sw"), move || {
        for body in bodies {
            let (mut s, keys, ..) = handshake(target, &key, "lb2");
            let (frame, _) = keys.frame(1, lb_userspace::sync::KIND_STATE, &body);
            s.write_all(&frame).unwrap();
            closed_by_peer(&mut s, "poisoned state");
        }
    })
    .unwrap();

    let counted = |r: &str| {
        refused(&lab, 1).get(r).copied().unwrap_or(0) - before_refused.get(r).copied().unwrap_or(0)
    };
    wait_until("both refusals counted", Duration::from_secs(5), || {
        counted("clock_jump") == 1 && counted("stamp") == 1
    });
    assert_eq!(
        metric(&lab, 1, "lb_sync_refused_total{reason=\"clock_jump\"}"),
        Some(1)
    );
    assert_eq!(
        metric(&lab, 1, "lb_sync_refused_total{reason=\"stamp\"}"),
        Some(1)
    );
    let log = lab.agent_log(1);
    assert!(log.contains("sync link refused: clock_jump"), "{log}");
    assert!(
        !log.contains("\nforged log line"),
        "a bad name is not logged raw"
    );
    let after = peers(&lab, 1);
    assert_eq!(after["version"], before["version"], "nothing merged");
    assert_eq!(after["state_digest"], before["state_digest"]);
    let vips = lab.lb_json(1, &["vip", "list"]).unwrap();
    assert!(
        !vips.to_string().contains("192.0.2.77"),
        "the refused VIP is absent: {vips}"
    );

    // The state still takes a normal change, one clock step above the old version.
    let version = before["version"].as_u64().unwrap();
    lb_succeeds(&lab, 1, &["backend", "weight", &v4, &backend(2), "300"]);
    assert_eq!(peers(&lab, 1)["version"].as_u64(), Some(version + 1));
    wait_until("lb2 to apply it", Duration::from_secs(10), || {
        agree(&lab) && weight_of(&lab, 2, &v4, 2) == Some(300)
    });
    finish(lab);
}
