use super::*;
use tokio::io::{AsyncWriteExt, DuplexStream};

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
    s.send(7, b"hello").await.unwrap();
    s.send(8, b"").await.unwrap();
    assert_eq!(r.recv().await.unwrap(), Some((7, b"hello".to_vec())));
    assert_eq!(r.recv().await.unwrap(), Some((8, vec![])));
    drop(s);
    assert_eq!(r.recv().await.unwrap(), None);
}

#[tokio::test]
async fn a_different_key_is_refused_on_both_ends() {
    let (s, r) = pair(1, 2, true).await;
    assert_eq!(why(&s.err().unwrap()), Refusal::Auth);
    // The dialer hangs up without a proof: the listener sees the handshake cut short.
    let e = r.err().unwrap();
    assert!(matches!(why(&e), Refusal::Truncated | Refusal::Auth), "{e}");
}

#[tokio::test]
async fn replayed_tampered_and_oversized_frames_are_refused() {
    let (s, r) = pair(1, 1, true).await;
    let (mut s, (_, mut r)) = (s.unwrap(), r.unwrap());
    // Forged with the link's own key: only the sequence is wrong.
    let replay = frame(&s.key, 1, 1, b"x");
    s.send(1, b"x").await.unwrap();
    assert!(r.recv().await.unwrap().is_some());
    let mut io = s.into_inner();
    io.write_all(&replay).await.unwrap();
    assert_eq!(why(&r.recv().await.unwrap_err()), Refusal::Sequence);

    let mut tampered = frame(&HmacSha256::new_from_slice(&[9; 32]).unwrap(), 1, 1, b"x");
    tampered[14] ^= 1;
    for (bytes, want) in [
        (
            (MAX_FRAME as u32 + 1).to_be_bytes().to_vec(),
            Refusal::Oversized,
        ),
        (tampered, Refusal::FrameMac),
    ] {
        let (s, r) = pair(1, 1, true).await;
        let (s, (_, mut r)) = (s.unwrap(), r.unwrap());
        let mut io = s.into_inner();
        io.write_all(&bytes).await.unwrap();
        assert_eq!(why(&r.recv().await.unwrap_err()), want);
    }
}

#[tokio::test]
async fn unknown_names_and_garbage_are_refused() {
    let (_, r) = pair(1, 1, false).await;
    assert_eq!(why(&r.err().unwrap()), Refusal::UnknownPeer);
    let (mut a, b) = tokio::io::duplex(1 << 16);
    a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let e = accept(b, &key(1), "lb2", |_| true).await.err().unwrap();
    assert_eq!(why(&e), Refusal::Handshake);
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
