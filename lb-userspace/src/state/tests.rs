use super::*;

const CAP: Capacity = Capacity {
    vips: 2,
    backends: 3,
    backends_per_vip: 100,
};

fn vip(s: &str) -> Vip {
    s.parse().unwrap()
}

fn b(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, i)
}

#[test]
fn vip_text_round_trips() {
    for s in [
        "192.0.2.10:80/tcp",
        "[2001:db8::10]:443/tcp",
        "192.0.2.10:*/udp",
    ] {
        assert_eq!(vip(s).to_string(), s);
    }
    assert_eq!(vip("192.0.2.10:0/udp").port, 0);
}

#[test]
fn refuses_malformed_vips_and_backends() {
    for (bad, why) in [
        ("192.0.2.10:80", "expected ADDR:PORT/tcp"),
        ("192.0.2.10:80/sctp", "use tcp or udp"),
        ("192.0.2.300:80/tcp", "is not ADDR:PORT"),
        ("2001:db8::1:80/tcp", "is not ADDR:PORT"),
        ("0.0.0.0:80/tcp", "cannot be a VIP"),
        ("192.0.2.10:70000/tcp", "is not ADDR:PORT"),
    ] {
        let e = bad.parse::<Vip>().unwrap_err().to_string();
        assert!(e.contains(why), "`{bad}`: `{e}` should say `{why}`");
    }
    assert!(
        parse_backend("192.0.2.1")
            .unwrap_err()
            .to_string()
            .contains("not an IPv6")
    );
    assert!(
        parse_backend("::")
            .unwrap_err()
            .to_string()
            .contains("cannot be a tunnel")
    );
}

#[test]
fn a_change_is_its_own_api_body() {
    let v = vip("192.0.2.10:80/tcp");
    let change: Change = serde_json::from_str(
        r#"{"op":"add_backend","vip":"192.0.2.10:80/tcp","backend":"2001:db8:be::1"}"#,
    )
    .unwrap();
    assert_eq!(
        change,
        Change::AddBackend {
            vip: v,
            backend: b(1),
            weight: DEFAULT_WEIGHT,
            state: BackendState::Active,
        },
        "omitted weight and state take their defaults"
    );
    let json = serde_json::to_string(&change).unwrap();
    assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), change);
    for (body, why) in [
        (r#"{"vip":"192.0.2.10:80/tcp"}"#, "missing field `op`"),
        (r#"{"op":"add_vip"}"#, "missing field `vip`"),
        (
            r#"{"op":"explode","vip":"192.0.2.10:80/tcp"}"#,
            "unknown variant `explode`",
        ),
        (
            r#"{"op":"add_vip","vip":"192.0.2.10:80/tcp","colour":1}"#,
            "unknown field `colour`",
        ),
        (
            r#"{"op":"add_vip","vip":"192.0.2.10:80"}"#,
            "expected ADDR:PORT/tcp",
        ),
        (
            r#"{"op":"remove_backend","vip":"192.0.2.10:80/tcp","backend":"192.0.2.1"}"#,
            "invalid IPv6 address",
        ),
    ] {
        let e = serde_json::from_str::<Change>(body)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{body}: `{e}` should say `{why}`");
    }
}

#[test]
fn apply_refuses_what_a_raw_change_could_carry() {
    let mut s = DesiredState::default();
    let v = vip("192.0.2.10:80/tcp");
    s.apply(&Change::AddVip { vip: v, gue: false }, &CAP)
        .unwrap();
    let before = s.clone();
    for backend in [
        Ipv6Addr::UNSPECIFIED,
        Ipv6Addr::LOCALHOST,
        "ff02::1".parse().unwrap(),
    ] {
        let change = Change::AddBackend {
            vip: v,
            backend,
            weight: DEFAULT_WEIGHT,
            state: BackendState::Active,
        };
        let e = s.apply(&change, &CAP).unwrap_err().to_string();
        assert!(e.contains("cannot be a tunnel endpoint"), "{change}: {e}");
    }
    assert_eq!(s, before);
}

#[test]
fn vips_that_cannot_be_internet_services_are_refused() {
    let mut s = DesiredState::default();
    let before = s.clone();
    for (addr, why) in [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.0.7", "link-local"),
        ("fe80::1", "link-local"),
        ("febf::1", "link-local"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
    ] {
        let vip = Vip {
            addr: addr.parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        };
        let e = s
            .apply(&Change::AddVip { vip, gue: false }, &CAP)
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains(why) && e.contains("cannot be a VIP"),
            "{addr}: {e}"
        );
    }
    assert_eq!(s, before);
    // Their neighbours are fine.
    let cap = Capacity { vips: 8, ..CAP };
    for addr in [
        "126.255.255.255",
        "169.253.0.1",
        "192.0.2.255",
        "fec0::1",
        "2001:db8::1",
    ] {
        let vip = Vip {
            addr: addr.parse().unwrap(),
            port: 80,
            proto: Proto::Tcp,
        };
        s.apply(&Change::AddVip { vip, gue: false }, &cap).unwrap();
    }
}

#[test]
fn refused_changes_leave_the_state_unchanged() {
    let mut s = DesiredState::default();
    let v = vip("192.0.2.10:80/tcp");
    s.apply(&Change::AddVip { vip: v, gue: false }, &CAP)
        .unwrap();
    let add = |backend, weight| Change::AddBackend {
        vip: v,
        backend,
        weight,
        state: BackendState::Active,
    };
    s.apply(&add(b(1), 1), &CAP).unwrap();
    let before = s.clone();
    for (change, why) in [
        (Change::AddVip { vip: v, gue: true }, "already exists"),
        (add(b(1), 5), "already has backend"),
        (add(b(2), 0), "outside 1..=1000"),
        (add(b(2), 1001), "outside 1..=1000"),
        (
            Change::RemoveVip {
                vip: vip("192.0.2.11:80/tcp"),
            },
            "no VIP 192.0.2.11:80/tcp",
        ),
        (
            Change::RemoveBackend {
                vip: v,
                backend: b(9),
            },
            "has no backend",
        ),
        (
            Change::SetWeight {
                vip: v,
                backend: b(1),
                weight: 0,
            },
            "outside",
        ),
        (
            Change::SetState {
                vip: vip("198.51.100.1:80/tcp"),
                backend: b(1),
                state: BackendState::Draining,
            },
            "no VIP",
        ),
    ] {
        let e = s.apply(&change, &CAP).unwrap_err().to_string();
        assert!(e.contains(why), "{change}: `{e}` should say `{why}`");
        assert_eq!(s, before, "{change} was refused but changed the state");
    }
    // Capacity: 2 VIPs, 3 backends in all.
    s.apply(&add(b(2), 1), &CAP).unwrap();
    s.apply(&add(b(3), 1), &CAP).unwrap();
    let e = s.apply(&add(b(4), 1), &CAP).unwrap_err().to_string();
    assert!(e.contains("backend slots are in use"), "{e}");
    s.apply(
        &Change::AddVip {
            vip: vip("192.0.2.11:80/tcp"),
            gue: false,
        },
        &CAP,
    )
    .unwrap();
    let e = s
        .apply(
            &Change::AddVip {
                vip: vip("192.0.2.12:80/tcp"),
                gue: false,
            },
            &CAP,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("VIP slots are in use"), "{e}");
}

#[test]
fn changes_to_turns_one_state_into_another() {
    let cap = Capacity {
        vips: 10,
        backends: 100,
        backends_per_vip: 100,
    };
    let mut a = DesiredState::default();
    let mut c = DesiredState::default();
    let (v1, v2, v3) = (
        vip("192.0.2.1:80/tcp"),
        vip("192.0.2.2:80/tcp"),
        vip("192.0.2.3:53/udp"),
    );
    for (s, changes) in [
        (
            &mut a,
            vec![
                Change::AddVip {
                    vip: v1,
                    gue: false,
                },
                Change::AddVip {
                    vip: v2,
                    gue: false,
                },
            ],
        ),
        (
            &mut c,
            vec![
                Change::AddVip {
                    vip: v1,
                    gue: false,
                },
                Change::AddVip { vip: v2, gue: true },
                Change::AddVip {
                    vip: v3,
                    gue: false,
                },
            ],
        ),
    ] {
        for ch in changes {
            s.apply(&ch, &cap).unwrap();
        }
    }
    for (i, w, st) in [(1, 1, BackendState::Active), (2, 3, BackendState::Active)] {
        a.apply(
            &Change::AddBackend {
                vip: v1,
                backend: b(i),
                weight: w,
                state: st,
            },
            &cap,
        )
        .unwrap();
    }
    for (i, w, st) in [(2, 5, BackendState::Draining), (3, 1, BackendState::Active)] {
        c.apply(
            &Change::AddBackend {
                vip: v1,
                backend: b(i),
                weight: w,
                state: st,
            },
            &cap,
        )
        .unwrap();
    }
    let changes = a.changes_to(&c);
    let mut x = a.clone();
    for ch in &changes {
        x.apply(ch, &cap).unwrap();
    }
    assert_eq!(x, c, "changes: {changes:?}");
    assert!(c.changes_to(&c).is_empty());
    // Removals come first (they free capacity); v2 is re-created for its new encapsulation.
    let is_removal =
        |c: &Change| matches!(c, Change::RemoveVip { .. } | Change::RemoveBackend { .. });
    let removals = changes.iter().take_while(|c| is_removal(c)).count();
    assert_eq!(removals, 2, "{changes:?}");
    assert!(changes.contains(&Change::RemoveVip { vip: v2 }));
    assert!(!changes[removals..].iter().any(is_removal));
}
