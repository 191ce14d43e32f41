//! What a peer link carries besides the states and flows of `wire`: the frame kinds, the
//! summary sent every second, and the socket options every link uses.

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::api::PeerSummary;

pub const KIND_SUMMARY: u8 = 1;
pub const KIND_STATE: u8 = 2;
pub const KIND_FLOWS: u8 = 3;
/// The sender has sent its state and all its live flows: the receiver is caught up.
pub const KIND_SYNCED: u8 = 4;
/// The entries that changed since the state (or delta) sent before on this link.
pub const KIND_STATE_DELTA: u8 = 5;
/// A piece of a state or delta too long for one frame; its last piece comes in the frame of
/// its own kind.
pub const KIND_STATE_PART: u8 = 6;

/// Unacknowledged data for this long ends a link, so a cut-off peer is noticed (and the
/// link re-dialed) in seconds rather than after TCP's full retransmission schedule.
const USER_TIMEOUT_MS: u32 = 3000;

pub(super) fn tune(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = stream.set_nodelay(true);
    let v = USER_TIMEOUT_MS;
    // SAFETY: setsockopt reads `v` for the given length and nothing else.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&v as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        );
    }
}

/// Sent every second: what a peer needs to tell whether we agree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub version: u64,
    pub state_digest: String,
    pub table_digest: String,
    pub flows: bool,
}

impl From<&Summary> for PeerSummary {
    fn from(s: &Summary) -> Self {
        PeerSummary {
            version: s.version,
            state_digest: s.state_digest.clone(),
            table_digest: s.table_digest.clone(),
            flows: s.flows,
        }
    }
}
