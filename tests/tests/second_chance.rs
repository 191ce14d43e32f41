//! Second chance end to end (issue 14, tests 1 to 3), in the anycast lab: real TCP
//! connections from the client through the VIPs, real BIRD and ECMP, `lb decap` on the
//! backends. Long-lived echo connections are open while backends change (made on one load
//! balancer, replicated to the others) and then one load balancer's routes are withdrawn, so
//! its clients reach other load balancers with no connection entry. A packet whose slot moved
//! carries the slot's previous backend in a Segment Routing Header; the new backend, with no
//! socket for it, hands it on to the previous one (`srh_forwarded` in `lb decap --stats`).
//! Each test builds its own lab and checks afterwards that nothing of it is left.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tests::e2e::*;
use tests::lab::{ECHO_PORT, Lab, VIP4, VIP6, backend_link6};

/// Connections held open through each run (the issue asks for at least 200).
const CONNECTIONS: usize = 240;
/// One echo exchange per connection every this long.
const PERIOD: Duration = Duration::from_millis(100);
/// The backends' counter of packets handed on to the previous backend.
const FORWARDED: &str = "srh_forwarded";

/// One lab at a time in this file: each holds up to 4 load balancers and 4 backends, and the
/// runs measure connections that a starved machine would break by timeouts alone.
static ONE_LAB: Mutex<()> = Mutex::new(());

struct Case {
    tag: &'static str,
    lbs: usize,
    /// `[sync] flows`: "all", "changes" or "off".
    flows: &'static str,
    /// `[dataplane] second_chance_secs` (None: the default, the TCP idle timeout).
    second_chance_secs: Option<u64>,
    /// The add and the drain as two changes, each applied by the whole fleet before the next
    /// (otherwise the drain follows the add at once).
    two_steps: bool,
}

struct Outcome {
    sessions: Vec<Session>,
    /// Backend name -> its decap counters with packets > 0 (name -> packets).
    decap: BTreeMap<String, BTreeMap<String, u64>>,
    forwarded: u64,
    /// Load balancer i's (tx_second_chance, second_chance_paired) is `sent[i - 1]`.
    sent: Vec<(u64, u64)>,
    /// Which load balancer's routes were withdrawn.
    withdrawn: usize,
}

impl Outcome {
    fn broken(&self) -> Vec<&Session> {
        self.sessions.iter().filter(|s| s.error.is_some()).collect()
    }

    fn report(&self, case: &Case) {
        let broken = self.broken();
        let exchanges: u64 = self.sessions.iter().map(|s| s.exchanges).sum();
        let max_gap = self.sessions.iter().map(|s| s.max_gap).max().unwrap();
        let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.sessions {
            *per_backend.entry(s.backend.as_str()).or_default() += 1;
        }
        eprintln!(
            "[{}] {} load balancers, flows {}, second_chance_secs {:?}, {}: {} connections {per_backend:?}, \
             lb{} withdrawn; {} broken, {exchanges} exchanges, longest gap {max_gap:?}; \
             load balancers' (tx_second_chance, second_chance_paired) {:?}; \
             {FORWARDED} {} (per backend: {:?})",
            case.tag,
            case.lbs,
            case.flows,
            case.second_chance_secs,
            if case.two_steps {
                "add, then drain"
            } else {
                "add and drain"
            },
            self.sessions.len(),
            self.withdrawn,
            broken.len(),
            self.sent,
            self.forwarded,
            self.decap,
        );
        for s in broken.iter().take(3) {
            eprintln!("[{}] e.g. broken: {s:?}", case.tag);
        }
    }
}

fn backend(j: usize) -> String {
    backend_link6(j).1.to_string()
}

fn echo_vips() -> [String; 2] {
    [
        format!("{VIP4}:{ECHO_PORT}/tcp"),
        format!("[{VIP6}]:{ECHO_PORT}/tcp"),
    ]
}

/// Whether every load balancer lists backend `j` on both echo VIPs with a state and slots
/// that satisfy `ok(state, slots)`.
fn everywhere(lab: &Lab, j: usize, ok: impl Fn(&str, u64) -> bool) -> bool {
    (1..=lab.opts.lbs).all(|i| {
        echo_vips().iter().all(|vip| {
            let list = lab.lb_json(i, &["backend", "list", vip]).unwrap();
            list.as_array().unwrap().iter().any(|b| {
                b["backend"] == backend(j).as_str()
                    && ok(
                        b["state"].as_str().unwrap_or(""),
                        b["slots"].as_u64().unwrap_or(0),
                    )
            })
        })
    })
}

/// Backend `j`'s decap counters with packets > 0.
fn decap_counters(lab: &Lab, j: usize) -> BTreeMap<String, u64> {
    let s = lab.decap_stats(j).unwrap();
    s["counters"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(name, v)| Some((name.clone(), v["packets"].as_u64()?)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The hard case: connections open; b4 added and b1 drained through lb1's CLI (the fleet
/// learns it by sync); then the last load balancer's routes are withdrawn.
fn run(case: &Case) -> Outcome {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let lab = lab_with(case.tag, |o| {
        o.lbs = case.lbs;
        o.backends = 4;
        o.configured_backends = 3;
        o.flow_mode = Some(case.flows.into());
        o.second_chance_secs = case.second_chance_secs;
        o.health = FAST_HEALTH;
    });
    wait_until("the fleet to agree", Duration::from_secs(20), || {
        fleet_agrees(&lab)
    });
    let sessions = Sessions::open(&lab, echo_targets(), CONNECTIONS, PERIOD);
    std::thread::sleep(Duration::from_secs(1));

    // On lb1 only: b4 joins, b1 drains; every load balancer applies both.
    for vip in echo_vips() {
        lb_succeeds(&lab, 1, &["backend", "add", &vip, &backend(4)]);
    }
    if case.two_steps {
        wait_until("b4 in every table", Duration::from_secs(20), || {
            everywhere(&lab, 4, |state, slots| state == "active" && slots > 0)
        });
        std::thread::sleep(Duration::from_secs(1));
    }
    for vip in echo_vips() {
        lb_succeeds(&lab, 1, &["backend", "drain", &vip, &backend(1)]);
    }
    wait_until(
        "b4 in and b1 out of every table",
        Duration::from_secs(20),
        || {
            everywhere(&lab, 4, |state, slots| state == "active" && slots > 0)
                && everywhere(&lab, 1, |state, slots| state == "draining" && slots == 0)
                && fleet_agrees(&lab)
        },
    );
    std::thread::sleep(Duration::from_secs(1));

    // The last load balancer's routes withdrawn: ECMP moves its clients to the others.
    let withdrawn = case.lbs;
    let took = lab
        .shift(withdrawn, false, Duration::from_secs(15))
        .unwrap();
    eprintln!(
        "[{}] the router dropped lb{withdrawn} after {took:?}",
        case.tag
    );
    std::thread::sleep(Duration::from_secs(4));
    let sessions = sessions.finish();

    let decap: BTreeMap<String, BTreeMap<String, u64>> = (1..=lab.opts.backends)
        .map(|j| (format!("b{j}"), decap_counters(&lab, j)))
        .collect();
    let forwarded = decap
        .values()
        .map(|c| c.get(FORWARDED).copied().unwrap_or(0))
        .sum();
    let sent = (1..=lab.opts.lbs)
        .map(|i| {
            (
                lb_counter(&lab, i, "tx_second_chance"),
                lb_counter(&lab, i, "second_chance_paired"),
            )
        })
        .collect();
    finish(lab);
    eprintln!("[{}] run took {:?}", case.tag, started.elapsed());
    let outcome = Outcome {
        sessions,
        decap,
        forwarded,
        sent,
        withdrawn,
    };
    outcome.report(case);
    outcome
}

/// The connections survived: none broke, none stalled, each kept exchanging and closed cleanly;
/// and some packets were handed on by a backend (second chance did the work, not luck).
fn assert_survived(o: &Outcome) {
    let broken = o.broken();
    assert!(
        broken.is_empty(),
        "{} of {} connections broke, e.g. {:?}",
        broken.len(),
        o.sessions.len(),
        &broken[..broken.len().min(3)]
    );
    let max_gap = o.sessions.iter().map(|s| s.max_gap).max().unwrap();
    assert!(
        max_gap < Duration::from_secs(2),
        "a connection stalled for {max_gap:?}"
    );
    // A round over every connection takes about 0.3 s here, and a run some 10 s.
    let fewest = o.sessions.iter().map(|s| s.exchanges).min().unwrap();
    assert!(
        o.sessions.iter().all(|s| s.closed_cleanly) && fewest >= 20,
        "every connection kept exchanging (fewest exchanges {fewest}) and closed cleanly"
    );
}

/// The load balancers sent packets with a previous backend, and the backends handed some on.
fn assert_handed_on(o: &Outcome) {
    assert!(
        o.sent.iter().any(|&(tx, _)| tx > 0),
        "load balancers sent packets with a previous backend: {:?}",
        o.sent
    );
    assert!(
        o.forwarded > 0,
        "the backends handed packets on ({FORWARDED}): {:?}",
        o.decap
    );
}

/// Issue 14, test 1: no flow sync at all, second chance at its default. The clients of the
/// withdrawn load balancer whose slots moved survive only because the backend that now holds
/// the slot hands their packets on to the one that held it before.
#[test]
fn with_flows_off_second_chance_keeps_every_connection_through_a_route_shift() {
    let case = Case {
        tag: "sc1",
        lbs: 2,
        flows: "off",
        second_chance_secs: None,
        two_steps: false,
    };
    let o = run(&case);
    assert_survived(&o);
    assert_handed_on(&o);
}

/// Issue 14, test 1, the other half: the same run with second chance off breaks connections,
/// so the test above can fail.
#[test]
fn with_flows_off_and_second_chance_off_the_same_shift_breaks_connections() {
    let case = Case {
        tag: "sc0",
        lbs: 2,
        flows: "off",
        second_chance_secs: Some(0),
        two_steps: false,
    };
    let o = run(&case);
    let broken = o.broken().len();
    assert!(
        broken > 0,
        "without second chance or flow sync the shift breaks connections whose slots moved"
    );
    assert!(
        o.sent.iter().all(|&(tx, _)| tx == 0),
        "no packet carries a previous backend: {:?}",
        o.sent
    );
    assert_eq!(o.forwarded, 0, "so none is handed on");
}

/// Issue 14, test 2: two changes in a row before the shift (b4 added, applied everywhere, then
/// b1 drained), with flow sync for what a change moves.
#[test]
fn two_changes_in_a_row_with_flows_changes_keep_every_connection() {
    let case = Case {
        tag: "sc2",
        lbs: 2,
        flows: "changes",
        second_chance_secs: None,
        two_steps: true,
    };
    let o = run(&case);
    assert_survived(&o);
}

/// Issue 14, test 3: test 1 in a fleet of 4 load balancers (`--lbs 4`): lb4's clients spread
/// over three others, none of which saw them.
#[test]
fn four_load_balancers_with_flows_off_keep_every_connection() {
    let case = Case {
        tag: "sc4",
        lbs: 4,
        flows: "off",
        second_chance_secs: None,
        two_steps: false,
    };
    let o = run(&case);
    assert_survived(&o);
    assert_handed_on(&o);
}
