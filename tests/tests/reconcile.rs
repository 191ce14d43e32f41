//! Table changes under traffic: a thread runs packets through the program with
//! BPF_PROG_TEST_RUN while the reconciler applies a long series of backend changes. Every packet
//! must leave tunnelled to a backend that is installed and belongs to the VIP at that moment.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use lb_common::{Counter, PROTO_TCP};
use lb_userspace::reconcile::{Reconciler, SecondChance};
use lb_userspace::state::{BackendState, Capacity, Change, DesiredState, Vip};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tests::*;

const RING: u32 = 4099;

fn be(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, 0, i)
}

/// Backends that may receive a packet in state `s`: all installed ones (active and draining).
fn serving(s: &DesiredState, vip: &Vip) -> BTreeSet<Ipv6Addr> {
    s.vips[vip].backends.keys().copied().collect()
}

#[test]
fn changes_under_traffic_only_ever_reach_current_backends() {
    let mut lb = Lb::with_object(lb_objects::EBPF_OBJECT, RING, 50_000).unwrap();
    let vip: Vip = "192.0.2.10:80/tcp".parse().unwrap();
    let cap = Capacity {
        vips: 8,
        backends: 64,
        backends_per_vip: 64,
    };
    let mut state = DesiredState::default();
    state
        .apply(&Change::AddVip { vip, gue: false }, &cap)
        .unwrap();
    for i in 1..=4 {
        let c = Change::AddBackend {
            vip,
            backend: be(i),
            weight: 1,
            state: BackendState::Active,
        };
        state.apply(&c, &cap).unwrap();
    }
    let mut rec = Reconciler::new(RING, SEED, 8, 64);
    rec.apply(&mut lb.dp, &state, &SecondChance::default())
        .unwrap();

    // states[g] is the state after change g; `generation` is the last one fully applied.
    let states = Arc::new(std::sync::Mutex::new(vec![state.clone()]));
    let generation = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let prog = lb
        .dp
        .program()
        .fd()
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap();
    let traffic = {
        let (states, generation, done) = (states.clone(), generation.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(1);
            let flows: Vec<Flow> = (0..256)
                .map(|i| Flow::new("198.51.100.9", 10000 + i, "192.0.2.10", 80))
                .collect();
            let mut sent = 0u64;
            while !done.load(Ordering::SeqCst) || sent < 20_000 {
                let f = &flows[rng.random_range(0..flows.len())];
                let frame = if rng.random_bool(0.3) {
                    f.tcp(Tcp::Syn, &[])
                } else {
                    f.tcp(Tcp::Ack, b"x")
                };
                let g0 = generation.load(Ordering::SeqCst) as usize;
                let (verdict, out) = test_run_fd(prog.as_fd(), &frame).unwrap();
                let g1 = generation.load(Ordering::SeqCst) as usize;
                assert_eq!(
                    verdict, XDP_TX,
                    "packet {sent} was not forwarded (generation {g0}..{g1})"
                );
                let backend = check_encap(
                    &frame,
                    &out,
                    decode(&out).unwrap().backend(),
                    &f.key(PROTO_TCP),
                    false,
                )
                .unwrap()
                .backend();
                // Maps may be anywhere between state g0 and the one after g1 (being applied).
                let states = states.lock().unwrap();
                let allowed: BTreeSet<Ipv6Addr> = (g0..=(g1 + 1).min(states.len() - 1))
                    .flat_map(|g| serving(&states[g], &vip))
                    .collect();
                assert!(
                    allowed.contains(&backend),
                    "packet {sent} went to {backend}, not one of {allowed:?} (generations {g0}..={g1})"
                );
                sent += 1;
                if sent > 2_000_000 {
                    break;
                }
            }
            sent
        })
    };

    // 60 random changes: add, remove, drain, undrain, reweight; removed backends come back
    // later under new ids (and new generations).
    let mut rng = StdRng::seed_from_u64(2);
    let mut writes = 0u64;
    for _ in 0..60 {
        let present: Vec<Ipv6Addr> = state.vips[&vip].backends.keys().copied().collect();
        let pick = present[rng.random_range(0..present.len())];
        let change = match rng.random_range(0..5) {
            0 if present.len() < 12 => {
                let new = (1..40).map(be).find(|b| !present.contains(b)).unwrap();
                Change::AddBackend {
                    vip,
                    backend: new,
                    weight: rng.random_range(1..=5),
                    state: BackendState::Active,
                }
            }
            1 if present.len() > 2 => Change::RemoveBackend { vip, backend: pick },
            2 => Change::SetState {
                vip,
                backend: pick,
                state: BackendState::Draining,
            },
            3 => Change::SetState {
                vip,
                backend: pick,
                state: BackendState::Active,
            },
            _ => Change::SetWeight {
                vip,
                backend: pick,
                weight: rng.random_range(1..=5),
            },
        };
        let mut next = state.clone();
        next.apply(&change, &cap).unwrap();
        if next.vips[&vip]
            .backends
            .values()
            .all(|b| b.state == BackendState::Draining)
        {
            continue; // keep at least one backend taking new flows, so every SYN can go somewhere
        }
        states.lock().unwrap().push(next.clone());
        let report = rec
            .apply(&mut lb.dp, &next, &SecondChance::default())
            .unwrap();
        writes += report.slot_writes;
        generation.fetch_add(1, Ordering::SeqCst);
        state = next;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    done.store(true, Ordering::SeqCst);
    let sent = traffic
        .join()
        .expect("the traffic thread found a bad packet");
    assert!(sent >= 20_000);
    assert_eq!(lb.counter(Counter::DropNoBackend), 0);
    // The whole series rewrote far fewer slots than rebuilding the ring each time would.
    let changes = states.lock().unwrap().len() as u64 - 1;
    assert!(
        writes < changes * RING as u64 / 3,
        "{writes} slot writes for {changes} changes"
    );
    // And the final ring is exactly the Maglev table of the final state.
    let installed = &rec.vips()[&vip];
    let ring = lb.dp.read_ring(installed.id).unwrap();
    assert_eq!(Some(&ring), installed.slots.as_ref());
}
