//! The peer link: a TCP connection from one agent (the dialer) to another (the listener) that
//! carries messages one way, dialer -> listener. Each agent dials each peer, so a pair of
//! agents has two links, one per direction.
//!
//! The link speaks Noise (`Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`, through the `snow` crate)
//! keyed by the pre-shared fleet key K (32+ bytes; the Noise PSK is derived from it). Both ends
//! prove they hold K, fresh ephemeral keys give each link its own keys (and forward secrecy),
//! and everything after the first message is encrypted:
//!
//! ```text
//! dialer   -> listener  "LBSYNC/2" | len u16 | Noise message 1 (psk, e; payload: dialer name)
//! listener -> dialer    len u16 | Noise message 2 (e, ee; payload: listener name)
//! dialer   -> listener  record 0, empty: the dialer's key confirmation
//! ```
//!
//! Then records: `len u16 | seq u64 | ChaChaPoly(seq, plaintext)`, one Noise transport message
//! each (at most 65535 bytes). A frame is `len u32 | kind u8 | body` in plaintext, split over
//! as many records as it needs. `seq` is the AEAD nonce, sent so that a replayed, dropped or
//! reordered record (which authenticates fine under its own nonce) is told apart from a forged
//! one; it must grow by exactly one. A record from an earlier link fails to decrypt, since
//! every link has its own keys.

mod key;
mod noise;
mod refusal;

pub use crate::config::{MAX_NAME, valid_name};
pub use key::{FleetKey, MIN_KEY_LEN, NONCE_LEN, nonce};
pub use noise::{
    Hello, IO_TIMEOUT, MAGIC, MAX_FRAME, MAX_RECORD, NOISE, RECORD_HEADER, Receiver, SendKeys,
    Sender, TAG_LEN, accept, dial, hello, wire_len,
};
pub use refusal::{Refusal, Refused, refused};

#[cfg(test)]
mod tests;
