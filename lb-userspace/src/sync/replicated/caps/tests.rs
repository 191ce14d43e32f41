use super::super::{ReplicatedState, Stamp};
use super::Caps;
use crate::state::{BackendState, Change, Vip};
use crate::sync::wire::{Refusal, Refused};
use std::net::Ipv6Addr;

fn why(e: &anyhow::Error) -> Refusal {
    e.downcast_ref::<Refused>().expect("a refusal").why
}

fn stamp(clock: u64) -> Stamp {
    Stamp {
        clock,
        node: "lb1".into(),
    }
}

/// `vips` VIPs with `per_vip` backends each, of which the first `removed` of each removed.
fn state(vips: u16, per_vip: u16, removed: u16) -> ReplicatedState {
    let mut s = ReplicatedState::default();
    let mut clock = 0;
    for v in 0..vips {
        let vip: Vip = format!("192.0.2.{}:80/tcp", v + 1).parse().unwrap();
        clock += 1;
        s.record(&Change::AddVip { vip, gue: false }, &stamp(clock));
        for i in 0..per_vip {
            let backend = Ipv6Addr::new(0x2001, 0xdb8, v, 0, 0, 0, 0, i + 1);
            clock += 1;
            let add = Change::AddBackend {
                vip,
                backend,
                weight: 1,
                state: BackendState::Active,
            };
            s.record(&add, &stamp(clock));
            if i < removed {
                clock += 1;
                s.record(&Change::RemoveBackend { vip, backend }, &stamp(clock));
            }
        }
    }
    s
}

#[test]
fn states_over_each_cap_are_refused_and_states_at_it_pass() {
    let caps = Caps {
        vips: 3,
        backends: 8,
        backends_per_vip: 4,
        tombstones: 2,
        ..Caps::DEFAULT
    };
    state(3, 2, 0).check_caps(&caps).unwrap();
    state(2, 4, 1).check_caps(&caps).unwrap();
    for (s, what) in [
        (state(4, 1, 0), "4 VIP entries (at most 3)"),
        (state(3, 3, 0), "9 backend entries (at most 8)"),
        (state(1, 5, 0), "5 backend entries of one VIP (at most 4)"),
        (state(3, 1, 1), "3 tombstones (at most 2)"),
    ] {
        let e = s.check_caps(&caps).unwrap_err();
        assert_eq!(why(&e), Refusal::TooLarge, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
    // A removed VIP is a tombstone too, and so are its backends.
    let mut s = state(1, 2, 0);
    let vip: Vip = "192.0.2.1:80/tcp".parse().unwrap();
    s.record(&Change::RemoveVip { vip }, &stamp(99));
    assert_eq!(s.counts().tombstones, 3);
}

/// The fleet's caps, through `validate` (what a peer's state and the state file go through).
#[test]
fn a_state_with_more_tombstones_than_the_default_cap_is_refused() {
    let cap = Caps::DEFAULT.tombstones as u16;
    let s = state(4, cap / 4, cap / 4);
    s.validate().unwrap();
    let over = state(4, cap / 4 + 1, cap / 4 + 1);
    let e = over.validate().unwrap_err();
    assert_eq!(why(&e), Refusal::TooLarge, "{e}");
    assert!(e.to_string().contains("tombstones"), "{e}");
}
