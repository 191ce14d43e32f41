//! Deltas rebuild the sender's state exactly; long states cross a link in parts, which the
//! receiver reassembles within its bound.

use super::*;
use crate::state::{BackendState, Change};
use crate::sync::KIND_STATE;
use crate::sync::replicated::Stamp;
use crate::sync::wire::{FleetKey, MAX_FRAME, Receiver, accept, dial};

fn stamp(clock: u64) -> Stamp {
    Stamp {
        clock,
        node: "lb1".into(),
    }
}

/// A state with `n` backends over 4 VIPs (about 250 bytes of JSON each).
fn big(n: u32) -> ReplicatedState {
    let mut s = ReplicatedState::default();
    for v in 0..4u32 {
        let vip: Vip = format!("192.0.2.{}:80/tcp", v + 1).parse().unwrap();
        s.record(&Change::AddVip { vip, gue: false }, &stamp(1));
    }
    for i in 0..n {
        let vip: Vip = format!("192.0.2.{}:80/tcp", i % 4 + 1).parse().unwrap();
        let backend = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, (i >> 16) as u16, i as u16);
        let add = Change::AddBackend {
            vip,
            backend,
            weight: 1,
            state: BackendState::Active,
        };
        s.record(&add, &stamp(2 + u64::from(i)));
    }
    s
}

#[test]
fn a_delta_applied_to_the_state_sent_before_gives_the_new_state() {
    let old = big(40);
    let mut new = old.clone();
    let vip: Vip = "192.0.2.1:80/tcp".parse().unwrap();
    let first = *new.backends.keys().next().unwrap();
    new.record(
        &Change::SetWeight {
            vip,
            backend: first.1,
            weight: 7,
        },
        &stamp(100),
    );
    new.record(&Change::RemoveVip { vip }, &stamp(101));
    new.vips.remove(&"192.0.2.2:80/tcp".parse().unwrap());
    new.backends
        .retain(|(v, _), _| v.to_string() != "192.0.2.2:80/tcp");
    new.horizon = 60;
    let delta = StateDelta::between(&old, &new);
    assert!(!delta.is_empty());
    assert_eq!(delta.gone_vips.len(), 1);
    assert_eq!(delta.gone_backends.len(), 10);
    // Only what changed travels: VIP 1 and its 10 backends.
    assert_eq!((delta.vips.len(), delta.backends.len()), (1, 10));
    let json = serde_json::to_vec(&delta).unwrap();
    let back: StateDelta = serde_json::from_slice(&json).unwrap();
    let mut rebuilt = old.clone();
    back.apply_to(&mut rebuilt);
    assert_eq!(rebuilt, new);
    assert!(StateDelta::between(&new, &new).is_empty());
    assert!(
        serde_json::from_slice::<StateDelta>(br#"{"horizon":1,"extra":[]}"#).is_err(),
        "unknown fields are refused"
    );
}

async fn link() -> (
    wire::Sender<tokio::io::DuplexStream>,
    Receiver<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let key = FleetKey::parse(&"ab".repeat(32)).unwrap();
    let (s, r) = tokio::join!(
        dial(a, &key, "lb1", "lb2"),
        accept(b, &key, "lb2", |_| true)
    );
    (s.unwrap(), r.unwrap().1)
}

/// The receiving side of a state message, as `receive` does it.
async fn receive(rx: &mut Receiver<tokio::io::DuplexStream>) -> Result<(usize, Vec<u8>)> {
    let mut a = Assembly::default();
    let mut frames = 0;
    loop {
        let (kind, body) = rx.recv().await?.expect("a frame");
        frames += 1;
        if kind == KIND_STATE_PART {
            a.part(&body)?;
        } else {
            return Ok((frames, a.finish(body)?));
        }
    }
}

/// The cliff of issue 15 §3: a state past the frame limit does not fit in one frame (so a link
/// that sent it whole failed right after its handshake, forever); sent in parts it arrives
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_past_the_frame_limit_crosses_a_link_in_parts() {
    let state = big(24_000);
    let body = serde_json::to_vec(&state).unwrap();
    assert!(body.len() > MAX_FRAME, "{} bytes", body.len());
    let (mut tx, mut rx) = link().await;
    let e = tx.send(KIND_STATE, &body).await.unwrap_err();
    assert!(e.to_string().contains("larger than a frame"), "{e}");
    let sent = body.clone();
    let send = tokio::spawn(async move { send_body(&mut tx, KIND_STATE, &sent).await });
    let (frames, got) = receive(&mut rx).await.unwrap();
    assert_eq!(send.await.unwrap().unwrap(), frames);
    assert_eq!(frames, body.len().div_ceil(PART_BYTES));
    assert!(frames > 4);
    let back: ReplicatedState = serde_json::from_slice(&got).unwrap();
    assert_eq!(back, state);
    // A small body is one frame of its own kind, as before parts existed.
    let (mut tx, mut rx) = link().await;
    assert_eq!(send_body(&mut tx, KIND_STATE, b"{}").await.unwrap(), 1);
    assert_eq!(rx.recv().await.unwrap(), Some((KIND_STATE, b"{}".to_vec())));
}

#[test]
fn reassembly_stops_at_its_bound() {
    let mut a = Assembly::default();
    let part = vec![b' '; PART_BYTES];
    for _ in 0..MAX_STATE_BYTES / PART_BYTES {
        a.part(&part).unwrap();
    }
    let e = a.part(b"x").unwrap_err();
    let why = e.downcast_ref::<wire::Refused>().expect("a refusal").why;
    assert_eq!(why, Refusal::TooLarge, "{e}");
    assert!(a.buf.len() <= MAX_STATE_BYTES);
    // With no parts, the last piece is the body itself.
    assert_eq!(Assembly::default().finish(b"{}".to_vec()).unwrap(), b"{}");
}
