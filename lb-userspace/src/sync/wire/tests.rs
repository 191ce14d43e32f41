use anyhow::Result;

use super::key::check_key_owner;
use super::noise::*;
use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn key(b: u8) -> FleetKey {
    FleetKey(vec![b; 32])
}

type Pair = (
    Result<Sender<DuplexStream>>,
    Result<(String, Receiver<DuplexStream>)>,
);

/// lb1 dials lb2; lb2 knows lb1 if `known`.
async fn pair(dial_key: u8, listen_key: u8, known: bool) -> Pair {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (dk, lk) = (key(dial_key), key(listen_key));
    tokio::join!(
        dial(a, &dk, "lb1", "lb2"),
        accept(b, &lk, "lb2", |n| known && n == "lb1")
    )
}

fn why(e: &anyhow::Error) -> Refusal {
    e.downcast_ref::<Refused>().expect("a refusal").why
}

#[tokio::test]
async fn frames_flow_after_a_handshake_with_the_same_key() {
    let (s, r) = pair(1, 1, true).await;
    let (mut s, (name, mut r)) = (s.unwrap(), r.unwrap());
    assert_eq!(name, "lb1");
    // A frame over several Noise messages (each at most 65535 bytes) comes out whole.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = tokio::join!(
        async {
            s.send(7, b"hello").await.unwrap();
            s.send(8, b"").await.unwrap();
            s.send(9, &big).await.unwrap();
            s
        },
        async {
            let a = r.recv().await.unwrap();
            let b = r.recv().await.unwrap();
            let c = r.recv().await.unwrap();
            (a, b, c, r)
        }
    );
    let (a, b, c, mut r) = rx;
    assert_eq!(a, Some((7, b"hello".to_vec())));
    assert_eq!(b, Some((8, vec![])));
    assert_eq!(c, Some((9, big.clone())));
    // Hello (magic, length, ephemeral key, "lb1", tag), confirmation, then the frames.
    let handshake = (8 + 2 + 32 + 3 + TAG_LEN + RECORD_HEADER + TAG_LEN) as u64;
    assert_eq!(
        tx.bytes,
        handshake + wire_len(5) + wire_len(0) + wire_len(big.len())
    );
    drop(tx);
    assert_eq!(r.recv().await.unwrap(), None);
    assert!(wire_len(big.len()) > big.len() as u64 + 5 * (RECORD_HEADER + TAG_LEN) as u64);
}

#[tokio::test]
async fn a_different_key_is_refused_on_both_ends() {
    let (s, r) = pair(1, 2, true).await;
    // The listener cannot open the dialer's first message, and hangs up.
    assert_eq!(why(&r.err().unwrap()), Refusal::Auth);
    let e = s.err().unwrap();
    assert!(matches!(why(&e), Refusal::Truncated | Refusal::Auth), "{e}");
    // A dialer refuses an answer it cannot open: not sealed with the fleet key.
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    let listener = tokio::spawn(async move {
        let mut hello = vec![0u8; 8];
        b.read_exact(&mut hello).await.unwrap();
        let msg = read_handshake(&mut b).await.unwrap();
        let mut hs = noise(&key(1), false);
        let mut p = [0u8; MAX_HANDSHAKE_MSG];
        hs.read_message(&msg, &mut p).unwrap();
        let n = hs.write_message(b"lb2", &mut p).unwrap();
        p[n - 1] ^= 1;
        b.write_all(&with_len(&p[..n])).await.unwrap();
        b
    });
    let e = dial(&mut a, &key(1), "lb1", "lb2").await.err().unwrap();
    assert_eq!(why(&e), Refusal::Auth, "{e}");
    listener.await.unwrap();
}

/// Speaks the dialer's side by hand over `io`: the hello, the confirmation and the keys.
async fn by_hand(io: &mut DuplexStream, k: &FleetKey, me: &str) -> (Vec<u8>, Vec<u8>, SendKeys) {
    let h = hello(k, me);
    let sent = h.bytes.clone();
    io.write_all(&h.bytes).await.unwrap();
    let answer = read_handshake(io).await.unwrap();
    let (_, confirm, keys) = h.answer(&answer).unwrap();
    io.write_all(&confirm).await.unwrap();
    (sent, confirm, keys)
}

type Accepting = tokio::task::JoinHandle<Result<(String, Receiver<DuplexStream>)>>;

/// A listener for lb1 on a fresh link, and the dialer's end.
fn listen() -> (DuplexStream, Accepting) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move { accept(b, &key(1), "lb2", |n| n == "lb1").await });
    (a, task)
}

#[tokio::test]
async fn replayed_reordered_forged_truncated_and_oversized_records_are_refused() {
    // Replayed within its link: the record authenticates, its sequence is stale.
    let (mut io, l) = listen();
    let (hello1, confirm1, keys) = by_hand(&mut io, &key(1), "lb1").await;
    let (_, mut r) = l.await.unwrap().unwrap();
    let (f1, next) = keys.frame(1, 1, b"x");
    io.write_all(&f1).await.unwrap();
    assert_eq!(r.recv().await.unwrap(), Some((1, b"x".to_vec())));
    io.write_all(&f1).await.unwrap();
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::Sequence);

    // Reordered: the second frame first.
    let (mut io, l) = listen();
    let (.., k2) = by_hand(&mut io, &key(1), "lb1").await;
    let (_, mut r) = l.await.unwrap().unwrap();
    let (a, n) = k2.frame(1, 1, b"first");
    let (b, _) = k2.frame(n, 1, b"second");
    io.write_all(&b).await.unwrap();
    io.write_all(&a).await.unwrap();
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::Sequence);

    // A record of an earlier link (other keys), and a tampered one: they do not open.
    let (mut io, l) = listen();
    let (.., k3) = by_hand(&mut io, &key(1), "lb1").await;
    let (_, mut r) = l.await.unwrap().unwrap();
    io.write_all(&keys.frame(next, 1, b"x").0).await.unwrap();
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::FrameMac);
    let (mut io, l) = listen();
    let (.., k4) = by_hand(&mut io, &key(1), "lb1").await;
    let (_, mut r) = l.await.unwrap().unwrap();
    let mut tampered = k4.frame(1, 1, b"x").0;
    tampered[RECORD_HEADER + 2] ^= 1;
    io.write_all(&tampered).await.unwrap();
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::FrameMac);

    // Truncated: the first record of a three-record frame, then the end.
    let (mut io, l) = listen();
    let (.., k5) = by_hand(&mut io, &key(1), "lb1").await;
    let (_, mut r) = l.await.unwrap().unwrap();
    let (big, _) = k5.frame(1, 1, &vec![7u8; 150_000]);
    io.write_all(&big[..RECORD_HEADER + MAX_RECORD])
        .await
        .unwrap();
    drop(io);
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::Truncated);

    // Oversized: a first record announcing more than MAX_FRAME, refused before any more is read.
    let (mut io, l) = listen();
    let (.., k6) = by_hand(&mut io, &key(1), "lb1").await;
    let (_, mut r) = l.await.unwrap().unwrap();
    let mut head = (MAX_FRAME as u32 + 1).to_be_bytes().to_vec();
    head.push(1);
    io.write_all(&k6.record(1, &head)).await.unwrap();
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::Oversized);
    drop(k3);

    // The first link's hello and confirmation replayed on a new link: the listener answers
    // with a new ephemeral key, so the old confirmation does not open.
    let (mut io, l) = listen();
    io.write_all(&hello1).await.unwrap();
    read_handshake(&mut io).await.unwrap();
    io.write_all(&confirm1).await.unwrap();
    assert_eq!(why(&l.await.unwrap().err().unwrap()), Refusal::Auth);
}

#[tokio::test]
async fn unknown_names_and_garbage_are_refused() {
    let (_, r) = pair(1, 1, false).await;
    assert_eq!(why(&r.err().unwrap()), Refusal::UnknownPeer);
    let (mut a, b) = tokio::io::duplex(1 << 16);
    a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let e = accept(b, &key(1), "lb2", |_| true).await.err().unwrap();
    assert_eq!(why(&e), Refusal::Handshake);
    // The dialer refuses a listener that proves another name.
    let (a, b) = tokio::io::duplex(1 << 16);
    let k = key(1);
    let (s, _) = tokio::join!(dial(a, &k, "lb1", "lb3"), accept(b, &k, "lb2", |_| true));
    assert_eq!(why(&s.err().unwrap()), Refusal::UnknownPeer);
}

#[test]
fn key_files_other_users_can_read_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("lb-key-test-{}", std::process::id()));
    std::fs::write(&path, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = FleetKey::load(&path).unwrap_err().to_string();
    assert!(e.contains("readable by other users"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(FleetKey::load(&path).is_ok());
    std::fs::remove_file(&path).unwrap();
    let e = FleetKey::load(&path).unwrap_err().to_string();
    assert!(e.contains("fleet key file"), "{e}");
}

#[test]
fn key_files_owned_by_another_user_are_refused() {
    let p = std::path::Path::new("/etc/lb/fleet.key");
    assert!(check_key_owner(p, 0, 1000).is_ok());
    assert!(check_key_owner(p, 1000, 1000).is_ok());
    let e = check_key_owner(p, 1001, 1000).unwrap_err().to_string();
    assert!(
        e.contains("owned by uid 1001") && e.contains("chown"),
        "{e}"
    );
    assert!(check_key_owner(p, 1001, 0).is_err());
    // The real file, when the test can give it away (it runs as root in the lab).
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("lb-key-owner-{}", std::process::id()));
    std::fs::write(&path, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(12345), None).unwrap();
    let e = FleetKey::load(&path).unwrap_err().to_string();
    assert!(e.contains("owned by uid 12345"), "{e}");
    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    assert!(FleetKey::load(&path).is_ok());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn keys_must_be_long_hex() {
    assert!(FleetKey::parse(&"ab".repeat(32)).is_ok());
    let short = FleetKey::parse(&"ab".repeat(31)).unwrap_err().to_string();
    assert!(short.contains("at least 32"), "{short}");
    assert!(
        FleetKey::parse("zz")
            .unwrap_err()
            .to_string()
            .contains("hex")
    );
}
