//! Why a link is refused: the reasons `lb_sync_refused_total` counts.

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

pub fn refused(why: Refusal, detail: impl Into<String>) -> anyhow::Error {
    Refused {
        why,
        detail: detail.into(),
    }
    .into()
}
