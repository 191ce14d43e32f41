//! The link's Noise handshake, records and frames (the protocol is described in `wire`'s
//! documentation and in docs/sync.md).

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use snow::{HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::key::FleetKey;
use super::refusal::{Refusal, Refused, refused};
use crate::config::{MAX_NAME, valid_name};

pub const MAGIC: &[u8; 8] = b"LBSYNC/2";
/// The Noise protocol of every link: both ends share a key and nothing else.
pub const NOISE: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// ChaChaPoly's tag on every Noise message.
pub const TAG_LEN: usize = 16;
/// A record's clear header: ciphertext length (u16) and sequence (u64).
pub const RECORD_HEADER: usize = 10;
/// Noise's limit on one message, so on one record's ciphertext.
pub const MAX_RECORD: usize = 65535;
pub(super) const MAX_RECORD_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// A frame's plaintext header: its length (kind + body, u32) and kind.
pub(super) const FRAME_HEADER: usize = 5;
/// Handshake messages hold an ephemeral key and an encrypted name.
pub(super) const MAX_HANDSHAKE_MSG: usize = 32 + MAX_NAME + TAG_LEN;
/// The largest frame (kind + body) accepted (a full desired state of a large fleet fits many
/// times over; a flow batch is far smaller). A longer one is refused from its first record.
pub const MAX_FRAME: usize = 4 << 20;
/// A peer must finish the handshake, and every started frame, within this time.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn timed<T>(
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(refused(Refusal::Truncated, e.to_string())),
        Err(_) => Err(refused(
            Refusal::Truncated,
            format!("nothing for {IO_TIMEOUT:?}"),
        )),
    }
}

pub(super) fn noise(key: &FleetKey, initiator: bool) -> HandshakeState {
    let psk = key.psk();
    let b = snow::Builder::new(NOISE.parse().expect("a valid Noise name"))
        .psk(0, &psk)
        .and_then(|b| b.prologue(MAGIC));
    let b = b.expect("a 32-byte PSK and a prologue");
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .expect("every primitive is compiled in")
}

/// A node name from a handshake payload (authenticated, so only key holders get this far).
pub(super) fn name_from(payload: &[u8]) -> Result<String> {
    match std::str::from_utf8(payload) {
        Ok(n) if valid_name(n) => Ok(n.to_string()),
        _ => Err(refused(
            Refusal::Handshake,
            format!("bad name {:?}", String::from_utf8_lossy(payload)),
        )),
    }
}

/// A handshake message: its u16 length, bounded before the message is read.
pub(super) async fn read_handshake<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>> {
    let len = timed(r.read_u16()).await? as usize;
    if !(32 + TAG_LEN..=MAX_HANDSHAKE_MSG).contains(&len) {
        return Err(refused(
            Refusal::Handshake,
            format!("a {len} byte handshake message"),
        ));
    }
    let mut m = vec![0u8; len];
    timed(r.read_exact(&mut m)).await?;
    Ok(m)
}

pub(super) fn with_len(msg: &[u8]) -> Vec<u8> {
    let mut out = (msg.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

/// The keys a dialer sends with. Public, with [`Hello`], so tests can speak the protocol by
/// hand (forge, replay and reorder records).
pub struct SendKeys(StatelessTransportState);

impl SendKeys {
    /// One record: `plain` (at most 65519 bytes) sealed under nonce `seq`.
    pub fn record(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + plain.len() + TAG_LEN);
        self.seal(seq, plain, &mut out);
        out
    }

    fn seal(&self, seq: u64, plain: &[u8], out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&((plain.len() + TAG_LEN) as u16).to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.resize(at + RECORD_HEADER + plain.len() + TAG_LEN, 0);
        let n = self
            .0
            .write_message(seq, plain, &mut out[at + RECORD_HEADER..])
            .expect("a record fits a Noise message");
        debug_assert_eq!(n, plain.len() + TAG_LEN);
    }

    /// A whole frame's records, the first with sequence `seq`; also the next free sequence.
    pub fn frame(&self, seq: u64, kind: u8, body: &[u8]) -> (Vec<u8>, u64) {
        let mut plain = Vec::with_capacity(FRAME_HEADER + body.len());
        plain.extend_from_slice(&((1 + body.len()) as u32).to_be_bytes());
        plain.push(kind);
        plain.extend_from_slice(body);
        let mut out = Vec::with_capacity(wire_len(body.len()) as usize);
        let mut seq = seq;
        for chunk in plain.chunks(MAX_RECORD_PLAIN) {
            self.seal(seq, chunk, &mut out);
            seq += 1;
        }
        (out, seq)
    }
}

/// The bytes a frame with a `body_len` byte body takes on the wire.
pub fn wire_len(body_len: usize) -> u64 {
    let plain = FRAME_HEADER + body_len;
    (plain + plain.div_ceil(MAX_RECORD_PLAIN) * (RECORD_HEADER + TAG_LEN)) as u64
}

/// The dialer's handshake without I/O: [`dial`] drives it; tests use it to speak by hand.
pub struct Hello {
    hs: HandshakeState,
    /// What the dialer sends first: magic, length, Noise message 1.
    pub bytes: Vec<u8>,
}

/// Starts a dialer's handshake as `me`.
pub fn hello(key: &FleetKey, me: &str) -> Hello {
    let mut hs = noise(key, true);
    let mut m = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs
        .write_message(me.as_bytes(), &mut m)
        .expect("a name fits");
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&with_len(&m[..n]));
    Hello { hs, bytes }
}

impl Hello {
    /// Takes the listener's Noise message 2 (without its length). Returns the name the
    /// listener proved, the confirmation record to send, and the link's sending keys.
    pub fn answer(mut self, msg: &[u8]) -> Result<(String, Vec<u8>, SendKeys)> {
        let mut payload = [0u8; MAX_HANDSHAKE_MSG];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| refused(Refusal::Auth, "the listener does not hold the fleet key"))?;
        let name = name_from(&payload[..n])?;
        let keys = SendKeys(
            self.hs
                .into_stateless_transport_mode()
                .expect("NN is done after two messages"),
        );
        let confirm = keys.record(0, &[]);
        Ok((name, confirm, keys))
    }
}

/// The sending half of an authenticated link.
pub struct Sender<W> {
    io: W,
    keys: SendKeys,
    /// The next record's sequence.
    seq: u64,
    /// Bytes written, framing included (for `lb_sync_bytes_sent_total`).
    pub bytes: u64,
}

/// The receiving half.
pub struct Receiver<R> {
    io: R,
    keys: StatelessTransportState,
    /// The next record's sequence.
    seq: u64,
}

/// Dials: runs the handshake as the dialer and returns the sending half. `expect` is the name
/// the listener must prove.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    key: &FleetKey,
    me: &str,
    expect: &str,
) -> Result<Sender<S>> {
    let h = hello(key, me);
    timed(io.write_all(&h.bytes)).await?;
    let sent = h.bytes.len();
    // A listener without our key hangs up here, having failed to read message 1.
    let answer = read_handshake(&mut io).await?;
    let (name, confirm, keys) = h.answer(&answer)?;
    if name != expect {
        return Err(refused(
            Refusal::UnknownPeer,
            format!("expected `{expect}`, the listener is `{name}`"),
        ));
    }
    timed(io.write_all(&confirm)).await?;
    Ok(Sender {
        io,
        keys,
        seq: 1,
        bytes: (sent + confirm.len()) as u64,
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
        return Err(refused(Refusal::Handshake, "not an LBSYNC/2 peer"));
    }
    let msg = read_handshake(&mut io).await?;
    let mut hs = noise(key, false);
    let mut payload = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs.read_message(&msg, &mut payload).map_err(|_| {
        refused(
            Refusal::Auth,
            "the dialer does not hold the fleet key".to_string(),
        )
    })?;
    let name = name_from(&payload[..n])?;
    let mut m = [0u8; MAX_HANDSHAKE_MSG];
    let n = hs
        .write_message(me.as_bytes(), &mut m)
        .expect("a name fits");
    timed(io.write_all(&with_len(&m[..n]))).await?;
    let mut rx = Receiver {
        io,
        keys: hs
            .into_stateless_transport_mode()
            .expect("NN is done after two messages"),
        seq: 0,
    };
    // Message 1 may be a recording: only a live dialer with the key can seal record 0.
    // Bounded like the rest of the handshake: an empty record, before anyone is proven.
    match rx.record(false, TAG_LEN).await {
        Ok(Some(p)) if p.is_empty() => {}
        Ok(_) => return Err(refused(Refusal::Handshake, "a confirmation with data")),
        Err(e) => {
            return Err(match e.downcast_ref::<Refused>() {
                Some(r) if matches!(r.why, Refusal::FrameMac | Refusal::Sequence) => refused(
                    Refusal::Auth,
                    format!("`{name}` did not confirm the handshake (a replayed hello?)"),
                ),
                Some(r) if r.why == Refusal::Malformed => {
                    refused(Refusal::Handshake, format!("confirmation: {}", r.detail))
                }
                _ => e,
            });
        }
    }
    if !known(&name) {
        return Err(refused(
            Refusal::UnknownPeer,
            format!("`{name}` holds the key but is not a configured peer"),
        ));
    }
    Ok((name, rx))
}

impl<W: AsyncWrite + Unpin> Sender<W> {
    pub async fn send(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        ensure!(
            body.len() < MAX_FRAME,
            "a {} byte message is larger than a frame",
            body.len()
        );
        let (f, next) = self.keys.frame(self.seq, kind, body);
        self.seq = next;
        timed(self.io.write_all(&f)).await?;
        self.bytes += f.len() as u64;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.io
    }
}

impl<R: AsyncRead + Unpin> Receiver<R> {
    /// The next record's plaintext. `between`: a frame boundary, where the link may idle
    /// (heartbeats come every second; the caller times out) and may end (`Ok(None)`).
    /// `max`: the longest ciphertext accepted (longer is `malformed`, before it is read).
    async fn record(&mut self, between: bool, max: usize) -> Result<Option<Vec<u8>>> {
        let mut len = [0u8; 2];
        if between {
            match self.io.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => bail!(refused(Refusal::Truncated, e.to_string())),
            }
        } else {
            timed(self.io.read_exact(&mut len)).await?;
        }
        let len = u16::from_be_bytes(len) as usize;
        if len < TAG_LEN || len > max {
            return Err(refused(
                Refusal::Malformed,
                format!("a record of {len} bytes (from {TAG_LEN} to {max})"),
            ));
        }
        let mut seq = [0u8; 8];
        timed(self.io.read_exact(&mut seq)).await?;
        let seq = u64::from_be_bytes(seq);
        let mut sealed = vec![0u8; len];
        timed(self.io.read_exact(&mut sealed)).await?;
        let mut plain = vec![0u8; len - TAG_LEN];
        if self.keys.read_message(seq, &sealed, &mut plain).is_err() {
            return Err(refused(Refusal::FrameMac, format!("record {seq}")));
        }
        if seq != self.seq {
            return Err(refused(
                Refusal::Sequence,
                format!("record {seq} where {} was due (replayed?)", self.seq),
            ));
        }
        self.seq += 1;
        Ok(Some(plain))
    }

    /// The next frame's kind and body, or why the link must end. `Ok(None)`: the peer closed
    /// the link between frames.
    pub async fn recv(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        let Some(first) = self.record(true, MAX_RECORD).await? else {
            return Ok(None);
        };
        if first.len() < FRAME_HEADER {
            return Err(refused(
                Refusal::Malformed,
                "a record without a frame header",
            ));
        }
        let len = u32::from_be_bytes(first[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(refused(
                Refusal::Oversized,
                format!("a {len} byte frame (at most {MAX_FRAME})"),
            ));
        }
        let kind = first[4];
        let want = len.saturating_sub(1);
        let mut body = first[FRAME_HEADER..].to_vec();
        // The rest of a started frame comes within IO_TIMEOUT, as a whole.
        let rest = async {
            while body.len() < want {
                match self.record(false, MAX_RECORD).await? {
                    Some(more) if !more.is_empty() => body.extend_from_slice(&more),
                    _ => return Err(refused(Refusal::Malformed, "an empty record in a frame")),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(IO_TIMEOUT, rest).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(refused(
                    Refusal::Truncated,
                    format!("a frame unfinished after {IO_TIMEOUT:?}"),
                ));
            }
        }
        if len == 0 || body.len() != want {
            return Err(refused(
                Refusal::Malformed,
                format!("records of {} bytes for a {len} byte frame", body.len() + 1),
            ));
        }
        Ok(Some((kind, body)))
    }
}
