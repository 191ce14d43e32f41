use super::*;

const CAP: Capacity = Capacity {
    vips: 8,
    backends: 64,
    backends_per_vip: 32,
};

fn vip(s: &str) -> Vip {
    s.parse().unwrap()
}

fn b(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, i)
}

fn stamp(clock: u64, node: &str) -> Stamp {
    Stamp {
        clock,
        node: node.into(),
    }
}

fn add(v: Vip, i: u16, weight: u32) -> Change {
    Change::AddBackend {
        vip: v,
        backend: b(i),
        weight,
        state: BackendState::Active,
    }
}

#[test]
fn merge_is_order_independent_and_concurrent_writes_resolve_the_same_everywhere() {
    let v = vip("192.0.2.10:80/tcp");
    let mut base = ReplicatedState::default();
    base.record(&Change::AddVip { vip: v, gue: false }, &stamp(1, "lb1"));
    base.record(&add(v, 1, 1), &stamp(2, "lb1"));
    // Concurrent: lb1 weights b1 to 5, lb2 drains it and sets weight 7, lb3 adds b2.
    let mut s1 = base.clone();
    s1.record(
        &Change::SetWeight {
            vip: v,
            backend: b(1),
            weight: 5,
        },
        &stamp(3, "lb1"),
    );
    let mut s2 = base.clone();
    s2.record(
        &Change::SetState {
            vip: v,
            backend: b(1),
            state: BackendState::Draining,
        },
        &stamp(3, "lb2"),
    );
    s2.record(
        &Change::SetWeight {
            vip: v,
            backend: b(1),
            weight: 7,
        },
        &stamp(3, "lb2"),
    );
    let mut s3 = base.clone();
    s3.record(&add(v, 2, 1), &stamp(3, "lb3"));
    let states = [s1, s2, s3];
    let mut results = Vec::new();
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [1, 2, 0]] {
        let mut m = base.clone();
        for i in order {
            m.merge(&states[i]);
            m.merge(&states[i]); // idempotent
        }
        results.push(m);
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let d = results[0].materialize(&CAP).desired;
    let spec = &d.vips[&v];
    // Same clock: the higher node name (lb2) wins the weight; the drain stays.
    assert_eq!(spec.backends[&b(1)].weight, 7);
    assert_eq!(spec.backends[&b(1)].state, BackendState::Draining);
    assert!(spec.backends.contains_key(&b(2)));
    assert_eq!(results[0].version(), 3);
}

#[test]
fn removals_win_over_older_copies_and_a_recreated_vip_starts_empty() {
    let v = vip("[2001:db8::10]:443/tcp");
    let mut a = ReplicatedState::default();
    a.record(&Change::AddVip { vip: v, gue: true }, &stamp(1, "lb1"));
    a.record(&add(v, 1, 1), &stamp(2, "lb1"));
    let old = a.clone();
    a.record(&Change::RemoveVip { vip: v }, &stamp(3, "lb1"));
    // A peer that still has the old copy cannot bring it back.
    let mut peer = old.clone();
    peer.merge(&a);
    assert!(peer.materialize(&CAP).desired.vips.is_empty());
    let mut a2 = a.clone();
    a2.merge(&old);
    assert_eq!(a2, a);
    // Re-created: the old backend does not reappear.
    a.record(&Change::AddVip { vip: v, gue: false }, &stamp(4, "lb2"));
    let d = a.materialize(&CAP).desired;
    assert!(d.vips[&v].backends.is_empty());
    assert!(!d.vips[&v].gue);
}

#[test]
fn materialized_state_matches_applying_the_changes_and_seeds_lose_to_changes() {
    let cfg: DesiredState = {
        let mut s = DesiredState::default();
        let v = vip("192.0.2.10:80/tcp");
        s.apply(&Change::AddVip { vip: v, gue: false }, &CAP)
            .unwrap();
        s.apply(&add(v, 1, 1), &CAP).unwrap();
        s.apply(&add(v, 2, 3), &CAP).unwrap();
        s
    };
    let r1 = ReplicatedState::seed(&cfg, "lb1");
    let r2 = ReplicatedState::seed(&cfg, "lb2");
    assert_eq!(r1.materialize(&CAP).desired, cfg);
    assert_eq!(
        state_digest(&r1.materialize(&CAP).desired),
        state_digest(&r2.materialize(&CAP).desired)
    );
    let mut m = r1.clone();
    let v = vip("192.0.2.10:80/tcp");
    let ch = Change::RemoveBackend {
        vip: v,
        backend: b(1),
    };
    m.record(&ch, &m.next_stamp("lb1").unwrap());
    let mut expect = cfg.clone();
    expect.apply(&ch, &CAP).unwrap();
    // lb2 still seeds b1 from its config; the removal wins.
    let mut two = r2.clone();
    two.merge(&m);
    assert_eq!(two.materialize(&CAP).desired, expect);
    assert_eq!(m.version(), 1);
}

#[test]
fn capacity_holds_back_the_newest_the_same_way_everywhere() {
    let cap = Capacity {
        vips: 1,
        backends: 2,
        backends_per_vip: 2,
    };
    let mut s = ReplicatedState::default();
    let (v1, v2) = (vip("192.0.2.1:80/tcp"), vip("192.0.2.2:80/tcp"));
    // v2 is older (same clock, lower node name): it keeps its slot although v1's address is
    // lower.
    s.record(
        &Change::AddVip {
            vip: v2,
            gue: false,
        },
        &stamp(1, "lb1"),
    );
    s.record(
        &Change::AddVip {
            vip: v1,
            gue: false,
        },
        &stamp(1, "lb2"),
    );
    s.record(&add(v2, 3, 1), &stamp(2, "lb1"));
    s.record(&add(v2, 2, 1), &stamp(3, "lb1"));
    s.record(&add(v2, 1, 1), &stamp(4, "lb1"));
    let m = s.materialize(&cap);
    assert_eq!(m.desired.vips.keys().collect::<Vec<_>>(), vec![&v2]);
    assert_eq!(m.held_back, vec![v1]);
    // Backends too: the newest one (b(1), the lowest address) is held back.
    assert_eq!(
        m.desired.vips[&v2]
            .backends
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![b(2), b(3)]
    );
    assert_eq!(m.skipped.len(), 2, "{:?}", m.skipped);
}

fn add_vips(s: &mut ReplicatedState, node: &str, vips: &[Vip]) {
    for v in vips {
        let st = s.next_stamp(node).unwrap();
        s.record(
            &Change::AddVip {
                vip: *v,
                gue: false,
            },
            &st,
        );
        let st = s.next_stamp(node).unwrap();
        s.record(&add(*v, 1, 1), &st);
    }
}

/// Two sides of a partition each add VIPs up to the capacity; once merged, both hold back the
/// same VIPs, the newest, and none of those that served before the partition.
#[test]
fn concurrent_adds_across_a_partition_hold_back_the_newest_and_keep_serving_vips() {
    let cap = Capacity {
        vips: 6,
        backends: 64,
        backends_per_vip: 8,
    };
    // Before the partition: three VIPs with high addresses, served everywhere.
    let serving: Vec<Vip> = (0..3)
        .map(|i| vip(&format!("[2001:db8:ffff::{}]:443/tcp", i + 1)))
        .collect();
    let mut base = ReplicatedState::default();
    add_vips(&mut base, "lb1", &serving);
    let (mut a, mut b_side) = (base.clone(), base.clone());
    // During it: lb1 adds three VIPs, lb2 adds three with lower addresses, at a later clock
    // (it makes more changes first), each side filling the capacity.
    let a_new: Vec<Vip> = (0..3)
        .map(|i| vip(&format!("192.0.2.{}:80/tcp", 100 + i)))
        .collect();
    let b_new: Vec<Vip> = (0..3)
        .map(|i| vip(&format!("192.0.2.{}:80/tcp", 1 + i)))
        .collect();
    add_vips(&mut a, "lb1", &a_new);
    for _ in 0..5 {
        let st = b_side.next_stamp("lb2").unwrap();
        b_side.record(
            &Change::SetWeight {
                vip: serving[0],
                backend: b(1),
                weight: 2,
            },
            &st,
        );
    }
    add_vips(&mut b_side, "lb2", &b_new);
    for side in [&a, &b_side] {
        let m = side.materialize(&cap);
        assert!(m.held_back.is_empty(), "each side fits alone");
        assert_eq!(m.desired.vips.len(), 6);
    }
    // The partition heals: each side merges the other's state.
    let mut on_a = a.clone();
    on_a.merge(&b_side);
    let mut on_b = b_side.clone();
    on_b.merge(&a);
    let (ma, mb) = (on_a.materialize(&cap), on_b.materialize(&cap));
    assert_eq!(ma, mb, "both nodes serve and hold back the same");
    assert_eq!(ma.desired.vips.len(), 6);
    // lb2's adds carry the higher clocks: they are the newest, and held back.
    assert_eq!(ma.held_back, b_new);
    for v in serving.iter().chain(&a_new) {
        assert!(
            ma.desired.vips.contains_key(v),
            "{v} was serving; it must stay"
        );
    }
    // Whatever the clocks, a VIP that served before the partition is never the one dropped.
    let mut later = on_a.clone();
    add_vips(&mut later, "lb3", &[vip("192.0.2.200:80/tcp")]);
    let m = later.materialize(&cap);
    assert!(serving.iter().all(|v| m.desired.vips.contains_key(v)));
    assert_eq!(m.held_back.len(), 4);
    assert_eq!(m.held_back.last(), Some(&vip("192.0.2.200:80/tcp")));
}

#[test]
fn states_round_trip_through_json_and_bad_values_are_refused() {
    let v = vip("192.0.2.10:80/tcp");
    let mut s = ReplicatedState::default();
    s.record(&Change::AddVip { vip: v, gue: false }, &stamp(1, "lb1"));
    s.record(&add(v, 1, 4), &stamp(2, "lb1"));
    let json = serde_json::to_string(&s).unwrap();
    let back: ReplicatedState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    back.validate().unwrap();
    let mut bad = s.clone();
    bad.backends.values_mut().next().unwrap().weight.value = 0;
    assert!(bad.validate().is_err());
}

/// Stamps the first backend's weight with `clock`: the state's version becomes at least that.
fn set_weight_clock(s: &mut ReplicatedState, clock: u64) {
    s.backends.values_mut().next().unwrap().weight.stamp.clock = clock;
}

fn why(e: &anyhow::Error) -> Refusal {
    e.downcast_ref::<super::super::wire::Refused>()
        .expect("a refusal")
        .why
}

#[test]
fn clocks_far_above_ours_are_refused_and_ours_never_wrap() {
    let v = vip("192.0.2.10:80/tcp");
    let mut ours = ReplicatedState::default();
    ours.record(&Change::AddVip { vip: v, gue: false }, &stamp(5, "lb1"));
    // A peer's change on any field (here a backend's weight) at the end of the clock.
    let mut theirs = ours.clone();
    theirs.record(&add(v, 1, 4), &stamp(5, "lb2"));
    set_weight_clock(&mut theirs, u64::MAX);
    let e = theirs.check_clock(ours.version(), 1_000_000).unwrap_err();
    assert_eq!(why(&e), Refusal::ClockJump, "{e}");
    assert!(e.to_string().contains("max_clock_jump"), "{e}");
    // Within the margin: taken. Exactly at it too; one above it is not.
    set_weight_clock(&mut theirs, 5 + 1_000_000);
    theirs.check_clock(5, 1_000_000).unwrap();
    set_weight_clock(&mut theirs, 5 + 1_000_001);
    assert!(theirs.check_clock(5, 1_000_000).is_err());
    // Our own bound saturates instead of wrapping.
    theirs.check_clock(u64::MAX - 3, 1_000_000).unwrap();
    // A node with no history takes a fleet far ahead of the margin, but not past MAX_CLOCK.
    theirs.check_clock(0, 1_000).unwrap();
    set_weight_clock(&mut theirs, super::MAX_CLOCK + 1);
    let e = theirs.check_clock(0, 1_000_000).unwrap_err();
    assert_eq!(why(&e), Refusal::ClockJump, "{e}");
    // A state (say, a hand-edited state file) at the end of the clock refuses the next
    // change with an error instead of panicking or wrapping to 0.
    set_weight_clock(&mut theirs, u64::MAX);
    let e = theirs.next_stamp("lb1").unwrap_err().to_string();
    assert!(e.contains("clock is at its end"), "{e}");
    assert_eq!(theirs.next_stamp("lb1").ok(), None);
    assert_eq!(ours.next_stamp("lb1").unwrap(), stamp(6, "lb1"));
}

#[test]
fn every_stamp_must_carry_a_valid_node_name() {
    let v = vip("192.0.2.10:80/tcp");
    let mut s = ReplicatedState::default();
    s.record(&Change::AddVip { vip: v, gue: false }, &stamp(1, "lb1"));
    s.record(&add(v, 1, 4), &stamp(2, "lb-3.example_x"));
    s.validate().unwrap();
    type Field = fn(&mut ReplicatedState) -> &mut Stamp;
    let fields: [(&str, Field); 4] = [
        ("vip", |s| {
            &mut s.vips.values_mut().next().unwrap().exists.stamp
        }),
        ("member", |s| {
            &mut s.backends.values_mut().next().unwrap().member.stamp
        }),
        ("weight", |s| {
            &mut s.backends.values_mut().next().unwrap().weight.stamp
        }),
        ("state", |s| {
            &mut s.backends.values_mut().next().unwrap().state.stamp
        }),
    ];
    for (what, field) in fields {
        for name in [
            "",
            "lb 1",
            "lb1\n[fake log line]",
            &"x".repeat(65),
            "lb\u{e9}",
        ] {
            let mut bad = s.clone();
            field(&mut bad).node = name.to_string();
            let e = bad.validate().unwrap_err();
            assert_eq!(why(&e), Refusal::Stamp, "{what} {name:?}: {e}");
        }
    }
}

#[test]
fn peer_states_with_vips_that_cannot_be_vips_are_refused() {
    for addr in [
        "127.0.0.1",
        "169.254.1.1",
        "255.255.255.255",
        "[::1]",
        "[fe80::1]",
    ] {
        let v = vip(&format!("{addr}:80/tcp"));
        let mut s = ReplicatedState::default();
        s.record(&Change::AddVip { vip: v, gue: false }, &stamp(1, "lb1"));
        let e = s.validate().unwrap_err();
        assert_eq!(why(&e), Refusal::Malformed, "{addr}: {e}");
        assert!(e.to_string().contains("cannot be a VIP"), "{addr}: {e}");
        // Its tombstone is harmless, and stays mergeable.
        s.record(&Change::RemoveVip { vip: v }, &stamp(2, "lb1"));
        s.validate().unwrap();
    }
}
