//! Second chance across a fleet (docs/second-chance.md): a change made on one load balancer
//! gives every load balancer the same previous backend in every Maglev slot, from the
//! replicated state alone. Real agents with peer sync in the anycast lab; the rings are read
//! from their pinned maps.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{BACKEND_F_VALID, Backend, PROTO_TCP, RingSlot, VipKey, VipMeta, names, words_v6};
use lb_userspace::dataplane::monotonic_ns;
use lb_userspace::reconcile::second_chance::previous_owners;
use lb_userspace::state::history::{Member, Step};
use tests::e2e::*;
use tests::lab::{self, ECHO_PORT, Lab, backend_link6};

const RING: u32 = lb_common::DEFAULT_RING_SIZE;
const SEED: u64 = lab::SEED;

fn backend(j: usize) -> Ipv6Addr {
    backend_link6(j).1
}

/// Per slot of the VIP's ring on load balancer `i`: its backend's address and, if it still
/// counts, its previous backend's.
fn ring_of(lab: &Lab, i: usize, vip: VipKey) -> Vec<(Option<Ipv6Addr>, Option<Ipv6Addr>)> {
    let dir = lab.opts.pin_root.join(lab::lb_name(i));
    let open = |name: &str| MapData::from_pin(dir.join(name)).unwrap();
    let vips: HashMap<_, VipKey, VipMeta> =
        HashMap::try_from(Map::HashMap(open(names::VIPS))).unwrap();
    let rings: Array<_, RingSlot> = Array::try_from(Map::Array(open(names::RINGS))).unwrap();
    let backends: Array<_, Backend> = Array::try_from(Map::Array(open(names::BACKENDS))).unwrap();
    let meta = vips.get(&vip, 0).unwrap();
    let addr = |id: u32| {
        let b = backends.get(&id, 0).ok()?;
        (b.flags & BACKEND_F_VALID != 0).then(|| words_v6(&b.addr))
    };
    let now = (monotonic_ns() >> lb_common::RING_TICK_SHIFT) as u32;
    (0..RING)
        .map(|s| {
            let slot = rings.get(&(meta.ring * RING + s), 0).unwrap();
            let prev = slot.live_prev(now).and_then(addr);
            (addr(slot.backend_id()), prev)
        })
        .collect()
}

#[test]
fn a_change_on_one_load_balancer_gives_every_one_the_same_previous_backends() {
    let lab = lab_with("scf", |o| {
        o.backends = 4;
        o.configured_backends = 3;
    });
    let agree = |lab: &Lab| {
        let (a, b) = (
            lab.lb_json(1, &["peer", "list"]).unwrap(),
            lab.lb_json(2, &["peer", "list"]).unwrap(),
        );
        a["table_digest"] == b["table_digest"] && a["version"] == b["version"]
    };
    wait_until("the peers to agree", Duration::from_secs(15), || {
        agree(&lab)
    });
    let vip = format!("{}:{ECHO_PORT}/tcp", lab::VIP4);
    let key = VipKey::new(IpAddr::V4(lab::VIP4), ECHO_PORT, PROTO_TCP);
    let before = ring_of(&lab, 1, key);
    assert!(
        before.iter().all(|(_, p)| p.is_none()),
        "no change yet: no previous backends"
    );

    // Two changes on lb1 only: b4 joins, then b1 drains. lb2 learns both through sync.
    lb_succeeds(&lab, 1, &["backend", "add", &vip, &backend(4).to_string()]);
    lb_succeeds(
        &lab,
        1,
        &["backend", "drain", &vip, &backend(1).to_string()],
    );
    wait_until("the peers to agree", Duration::from_secs(10), || {
        agree(&lab)
    });
    // The agents write their rings right after applying: give lb2 a moment past the digest.
    let mut rings = BTreeMap::new();
    wait_until(
        "both rings to hold the change",
        Duration::from_secs(5),
        || {
            for i in [1, 2] {
                rings.insert(i, ring_of(&lab, i, key));
            }
            rings[&1] == rings[&2] && rings[&1].iter().any(|(_, p)| p.is_some())
        },
    );
    let ring = &rings[&1];

    // What the replicated steps say, computed here from the same tables.
    let m = |j: usize| Member {
        addr: backend(j),
        weight: 100,
    };
    let input = (
        vec![m(2), m(3), m(4)],
        vec![
            Step {
                at_ms: 1,
                before: vec![m(1), m(2), m(3)],
            },
            Step {
                at_ms: 2,
                before: vec![m(1), m(2), m(3), m(4)],
            },
        ],
    );
    let owners = previous_owners(RING, SEED, &input);
    let mut moved = 0;
    for (s, (cur, prev)) in ring.iter().enumerate() {
        let want = owners[s].map(|(a, _)| a).filter(|a| Some(*a) != *cur);
        assert_eq!(*prev, want, "slot {s}");
        if before[s].0 != *cur {
            moved += 1;
            assert!(
                prev.is_some(),
                "slot {s} moved and names no previous backend"
            );
        }
    }
    let with_prev = ring.iter().filter(|(_, p)| p.is_some()).count();
    let by = |j| ring.iter().filter(|(_, p)| *p == Some(backend(j))).count();
    eprintln!(
        "{moved} of {RING} slots moved; {with_prev} name a previous backend on both load balancers \
         (b1 {}, b2 {}, b3 {})",
        by(1),
        by(2),
        by(3)
    );
    assert!(
        by(1) > 0 && by(2) + by(3) > 0,
        "both changes left previous backends"
    );
    for i in [1, 2] {
        let st = lab.lb_json(i, &["status"]).unwrap();
        assert_eq!(
            st["second_chance_slots"].as_u64(),
            Some(with_prev as u64),
            "lb{i}"
        );
    }
    finish(lab);
}
