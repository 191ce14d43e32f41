//! The peer link: a TCP connection from one agent (the dialer) to another (the listener) that
//! carries messages one way, dialer -> listener. Each agent dials every peer, so a pair of
//! agents has two links, one per direction.
//!
//! Authentication is a pre-shared fleet key K (32+ bytes). The handshake proves both ends hold
//! K without sending it, and derives a per-link session key from fresh nonces of both ends:
//!
//! ```text
//! dialer   -> listener  HELLO     "LBSYNC/1" | nonce_d[32] | len | dialer name
//! listener -> dialer    CHALLENGE nonce_l[32] | len | listener name | HMAC(K, "L" | transcript)
//! dialer   -> listener  PROOF     HMAC(K, "D" | transcript)
//! session key = HMAC(K, "S" | transcript); transcript = nonce_d | nonce_l | names
//! ```
//!
//! Then frames: `len u32 | seq u64 | kind u8 | body | HMAC(session, seq | kind | body)`. `seq`
//! starts at 1 and must grow by exactly one, so a replayed, dropped or reordered frame ends the
//! link; a frame from an earlier link fails its MAC, since that link had another session key.
//! Messages are integrity-protected and authenticated, not encrypted (see docs/sync.md).

use std::time::Duration;

use anyhow::{Result, anyhow, bail, ensure};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::config::{MAX_NAME, valid_name};

type HmacSha256 = Hmac<Sha256>;

pub const MAGIC: &[u8; 8] = b"LBSYNC/1";
pub const NONCE_LEN: usize = 32;
pub const TAG_LEN: usize = 32;
/// The largest frame accepted (a full desired state of a large fleet fits many times over; a
/// flow batch is far smaller). Anything longer is refused before it is read.
pub const MAX_FRAME: usize = 4 << 20;
/// A peer must finish the handshake, and every started frame, within this time.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
pub const MIN_KEY_LEN: usize = 32;

/// Why a link was refused; the label of `lb_sync_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Not our protocol (bad magic, garbage).
    Handshake,
    /// The peer could not prove it holds the fleet key.
    Auth,
    /// A name that is not one of our configured peers (or is our own).
    UnknownPeer,
    /// A frame whose MAC does not verify.
    FrameMac,
    /// A frame out of sequence: replayed, dropped or reordered.
    Sequence,
    /// A frame longer than MAX_FRAME.
    Oversized,
    /// The connection ended or stalled in the middle of a frame or of the handshake.
    Truncated,
    /// An authenticated frame whose contents do not parse or make no sense.
    Malformed,
    /// A state with a clock more than `[sync] max_clock_jump` above ours.
    ClockJump,
    /// A state with a stamp whose node name is not a valid node name.
    Stamp,
    /// A state over the caps (entries, tombstones), or a state message over its byte limit.
    TooLarge,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
        Refusal::Handshake,
        Refusal::Auth,
        Refusal::UnknownPeer,
        Refusal::FrameMac,
        Refusal::Sequence,
        Refusal::Oversized,
        Refusal::Truncated,
        Refusal::Malformed,
        Refusal::ClockJump,
        Refusal::Stamp,
        Refusal::TooLarge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Handshake => "handshake",
            Refusal::Auth => "auth",
            Refusal::UnknownPeer => "unknown_peer",
            Refusal::FrameMac => "frame_mac",
            Refusal::Sequence => "sequence",
            Refusal::Oversized => "oversized",
            Refusal::Truncated => "truncated",
            Refusal::Malformed => "malformed",
            Refusal::ClockJump => "clock_jump",
            Refusal::Stamp => "stamp",
            Refusal::TooLarge => "too_large",
        }
    }
}

/// A refused link: the reason and what happened.
#[derive(Debug)]
pub struct Refused {
    pub why: Refusal,
    pub detail: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}: {}", self.why.name(), self.detail)
    }
}

impl std::error::Error for Refused {}

/// The key file must belong to root or to the user the agent runs as.
fn check_key_owner(path: &std::path::Path, owner: u32, euid: u32) -> Result<()> {
    ensure!(
        owner == 0 || owner == euid,
        "fleet key file {} is owned by uid {owner}, neither root nor this agent's user \
         (uid {euid}); chown it",
        path.display()
    );
    Ok(())
}

pub fn refused(why: Refusal, detail: impl Into<String>) -> anyhow::Error {
    Refused {
        why,
        detail: detail.into(),
    }
    .into()
}

/// The fleet's pre-shared key.
#[derive(Clone)]
pub struct FleetKey(Vec<u8>);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// Hex text (whitespace ignored), at least 32 bytes.
    pub fn parse(text: &str) -> Result<Self> {
        let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        ensure!(
            hex.len().is_multiple_of(2) && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "the fleet key must be hex digits (e.g. `openssl rand -hex 32`)"
        );
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked"))
            .collect();
        ensure!(
            bytes.len() >= MIN_KEY_LEN,
            "the fleet key has {} bytes; use at least {MIN_KEY_LEN} (64 hex digits)",
            bytes.len()
        );
        Ok(Self(bytes))
    }

    /// Reads the key file, refusing one that other users can read or that another user owns
    /// (its owner could make it readable, or replace the key, at any time).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow!("fleet key file {}: {e}", path.display()))?;
        ensure!(
            meta.permissions().mode() & 0o077 == 0,
            "fleet key file {} is readable by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        check_key_owner(path, std::os::unix::fs::MetadataExt::uid(&meta), euid)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("fleet key file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow!("fleet key file {}: {e}", path.display()))
    }

    fn mac(&self, label: &[u8], transcript: &[u8]) -> [u8; TAG_LEN] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(label);
        m.update(transcript);
        m.finalize().into_bytes().into()
    }
}

/// Fresh random bytes from the kernel.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
    let r = unsafe { libc::getrandom(n.as_mut_ptr().cast(), n.len(), 0) };
    assert_eq!(r, NONCE_LEN as isize, "getrandom");
    n
}

fn transcript(nonce_d: &[u8], nonce_l: &[u8], dialer: &str, listener: &str) -> Vec<u8> {
    let mut t = Vec::with_capacity(2 * NONCE_LEN + dialer.len() + listener.len() + 2);
    t.extend_from_slice(nonce_d);
    t.extend_from_slice(nonce_l);
    t.push(dialer.len() as u8);
    t.extend_from_slice(dialer.as_bytes());
    t.push(listener.len() as u8);
    t.extend_from_slice(listener.as_bytes());
    t
}

/// Constant-time tag comparison.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn timed<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(refused(Refusal::Truncated, e.to_string())),
        Err(_) => Err(refused(
            Refusal::Truncated,
            format!("nothing for {IO_TIMEOUT:?}"),
        )),
    }
}

async fn read_name<R: AsyncRead + Unpin>(r: &mut R) -> Result<String> {
    let len = timed(r.read_u8()).await? as usize;
    if len == 0 || len > MAX_NAME {
        return Err(refused(Refusal::Handshake, format!("name of {len} bytes")));
    }
    let mut b = vec![0u8; len];
    timed(r.read_exact(&mut b)).await?;
    let name = String::from_utf8(b).map_err(|_| refused(Refusal::Handshake, "name not UTF-8"))?;
    if !valid_name(&name) {
        return Err(refused(Refusal::Handshake, format!("bad name {name:?}")));
    }
    Ok(name)
}

fn put_name(buf: &mut Vec<u8>, name: &str) {
    buf.push(name.len() as u8);
    buf.extend_from_slice(name.as_bytes());
}

/// The sending half of an authenticated link.
pub struct Sender<W> {
    io: W,
    key: HmacSha256,
    seq: u64,
    /// Bytes written, framing included (for `lb_sync_bytes_sent_total`).
    pub bytes: u64,
}

/// The receiving half.
pub struct Receiver<R> {
    io: R,
    key: HmacSha256,
    seq: u64,
}

fn session(key: &FleetKey, t: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(&key.mac(b"S", t)).expect("any key length")
}

/// Dials: runs the handshake as the dialer and returns the sending half. `expect` is the name
/// the listener must prove.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    key: &FleetKey,
    me: &str,
    expect: &str,
) -> Result<Sender<S>> {
    let nonce_d = nonce();
    let mut hello = Vec::with_capacity(8 + NONCE_LEN + 1 + me.len());
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&nonce_d);
    put_name(&mut hello, me);
    timed(io.write_all(&hello)).await?;
    let mut nonce_l = [0u8; NONCE_LEN];
    timed(io.read_exact(&mut nonce_l)).await?;
    let name = read_name(&mut io).await?;
    let mut tag = [0u8; TAG_LEN];
    timed(io.read_exact(&mut tag)).await?;
    let t = transcript(&nonce_d, &nonce_l, me, &name);
    if !tags_equal(&tag, &key.mac(b"L", &t)) {
        return Err(refused(
            Refusal::Auth,
            format!("listener `{name}` does not hold the fleet key"),
        ));
    }
    if name != expect {
        return Err(refused(
            Refusal::UnknownPeer,
            format!("expected `{expect}`, the listener is `{name}`"),
        ));
    }
    timed(io.write_all(&key.mac(b"D", &t))).await?;
    Ok(Sender {
        io,
        key: session(key, &t),
        seq: 0,
        bytes: (hello.len() + TAG_LEN) as u64,
    })
}

/// Accepts: runs the handshake as the listener. `known` says whether a (proven) dialer name is
/// one of our peers. Returns the dialer's name and the receiving half.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    key: &FleetKey,
    me: &str,
    known: impl Fn(&str) -> bool,
) -> Result<(String, Receiver<S>)> {
    let mut magic = [0u8; 8];
    timed(io.read_exact(&mut magic)).await?;
    if &magic != MAGIC {
        return Err(refused(Refusal::Handshake, "not an LBSYNC/1 peer"));
    }
    let mut nonce_d = [0u8; NONCE_LEN];
    timed(io.read_exact(&mut nonce_d)).await?;
    let name = read_name(&mut io).await?;
    let nonce_l = nonce();
    let t = transcript(&nonce_d, &nonce_l, &name, me);
    let mut challenge = Vec::with_capacity(NONCE_LEN + 1 + me.len() + TAG_LEN);
    challenge.extend_from_slice(&nonce_l);
    put_name(&mut challenge, me);
    challenge.extend_from_slice(&key.mac(b"L", &t));
    timed(io.write_all(&challenge)).await?;
    let mut proof = [0u8; TAG_LEN];
    timed(io.read_exact(&mut proof)).await?;
    if !tags_equal(&proof, &key.mac(b"D", &t)) {
        return Err(refused(
            Refusal::Auth,
            format!("dialer calling itself `{name}` does not hold the fleet key"),
        ));
    }
    if !known(&name) {
        return Err(refused(
            Refusal::UnknownPeer,
            format!("`{name}` holds the key but is not a configured peer"),
        ));
    }
    Ok((
        name,
        Receiver {
            io,
            key: session(key, &t),
            seq: 0,
        },
    ))
}

fn frame_tag(key: &HmacSha256, seq: u64, kind: u8, body: &[u8]) -> [u8; TAG_LEN] {
    let mut m = key.clone();
    m.update(&seq.to_be_bytes());
    m.update(&[kind]);
    m.update(body);
    m.finalize().into_bytes().into()
}

/// A whole frame as bytes (seq and tag included). Public so tests can forge and replay frames.
pub fn encode_frame(session_key: &[u8; TAG_LEN], seq: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    let key = HmacSha256::new_from_slice(session_key).expect("any key length");
    frame(&key, seq, kind, body)
}

fn frame(key: &HmacSha256, seq: u64, kind: u8, body: &[u8]) -> Vec<u8> {
    let len = 8 + 1 + body.len() + TAG_LEN;
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.push(kind);
    f.extend_from_slice(body);
    f.extend_from_slice(&frame_tag(key, seq, kind, body));
    f
}

impl<W: AsyncWrite + Unpin> Sender<W> {
    pub async fn send(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        ensure!(
            body.len() + 8 + 1 + TAG_LEN <= MAX_FRAME,
            "a {} byte message is larger than a frame",
            body.len()
        );
        self.seq += 1;
        let f = frame(&self.key, self.seq, kind, body);
        timed(self.io.write_all(&f)).await?;
        self.bytes += f.len() as u64;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.io
    }
}

impl<R: AsyncRead + Unpin> Receiver<R> {
    /// The next frame's kind and body, or why the link must end. `Ok(None)`: the peer closed
    /// the link between frames.
    pub async fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        // Between frames a link may idle (heartbeats come every second; the caller times out).
        let mut len = [0u8; 4];
        match self.io.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => bail!(refused(Refusal::Truncated, e.to_string())),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(refused(
                Refusal::Oversized,
                format!("a {len} byte frame (at most {MAX_FRAME})"),
            ));
        }
        if len < 8 + 1 + TAG_LEN {
            return Err(refused(
                Refusal::Malformed,
                format!("a {len} byte frame is too short"),
            ));
        }
        let mut buf = vec![0u8; len];
        timed(self.io.read_exact(&mut buf)).await?;
        let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
        let kind = buf[8];
        let (body, tag) = buf[9..].split_at(len - 9 - TAG_LEN);
        if !tags_equal(tag, &frame_tag(&self.key, seq, kind, body)) {
            return Err(refused(Refusal::FrameMac, format!("frame {seq}")));
        }
        if seq != self.seq + 1 {
            return Err(refused(
                Refusal::Sequence,
                format!("frame {seq} where {} was due (replayed?)", self.seq + 1),
            ));
        }
        self.seq = seq;
        Ok(Some((kind, body.to_vec())))
    }
}

/// The session key a dialer and listener derive (tests use it to forge frames).
pub fn session_key(
    key: &FleetKey,
    nonce_d: &[u8],
    nonce_l: &[u8],
    dialer: &str,
    listener: &str,
) -> [u8; TAG_LEN] {
    key.mac(b"S", &transcript(nonce_d, nonce_l, dialer, listener))
}

/// The dialer's proof for a transcript (tests use it to speak the protocol by hand).
pub fn dialer_proof(
    key: &FleetKey,
    nonce_d: &[u8],
    nonce_l: &[u8],
    dialer: &str,
    listener: &str,
) -> [u8; TAG_LEN] {
    key.mac(b"D", &transcript(nonce_d, nonce_l, dialer, listener))
}

#[cfg(test)]
mod tests;
