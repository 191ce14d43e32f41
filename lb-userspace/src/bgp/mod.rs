//! Announcing and withdrawing VIPs through BIRD (docs/bgp.md).
//!
//! The agent never speaks BGP itself. The operator's `bird.conf` includes a routes file that the
//! agent owns (`include "/etc/bird/lb-vips.conf";`) and exports the two static protocols that
//! file always declares, `lb_vips4` and `lb_vips6`, to its BGP sessions. To change what is
//! announced, [`Bird::announce`] rewrites the file atomically and sends `configure` on BIRD's
//! control socket; BIRD parses the whole config again, refuses it as a whole if anything is
//! wrong (and keeps running the old one), and otherwise updates only the static routes, so BGP
//! sessions stay up and the peers see one UPDATE per changed VIP.
//!
//! The control socket speaks BIRD's CLI protocol (`doc/reply_codes` in BIRD's source): after a
//! greeting (`0001 BIRD 2.0.12 ready.`), every command gets a reply of lines `DDDD-text`
//! (more follows), ` text` (continues the previous line's code) and a last line `DDDD text`.
//! Codes 0xxx report success, 1xxx/2xxx carry table rows and headings, 8xxx are run-time
//! errors and 9xxx parse errors; lines starting with `+` are spontaneous messages.
//!
//! Every exchange opens its own connection and is bounded: a deadline for the whole exchange
//! (connect, greeting, command, reply) and a size limit for a reply.
//!
//! Files: `alive` (the liveness interface every route goes through, so no announcement
//! outlives the agent), `routes` (the routes file), `reply` (the CLI protocol's replies), `client` (one
//! bounded exchange per command, [`Bird`]), `driver` (the BGP task: keeps BIRD announcing what
//! the agent wants and reports each [`Outcome`]). With the `test-bird` feature (the tests
//! crate enables it), `inspect` adds the calls only tests and tools need: `show protocols`,
//! `show route`, `configure check`, arbitrary commands.

mod alive;
mod client;
mod driver;
#[cfg(any(test, feature = "test-bird"))]
mod inspect;
mod reply;
mod routes;
#[cfg(test)]
mod tests;

pub use alive::{AliveIface, DEFAULT_ALIVE_IFACE};
pub use client::{Bird, BirdError, DEFAULT_MAX_REPLY, DEFAULT_SOCKET, DEFAULT_TIMEOUT};
pub use driver::{Outcome, drive};
#[cfg(any(test, feature = "test-bird"))]
pub use inspect::{ProtocolStatus, parse_host_routes, parse_protocol_row, parse_protocols};
#[cfg(any(test, feature = "test-bird"))]
pub use reply::parse_reply;
pub use reply::{BirdReply, ReplyLine, ReplyParser, configure_succeeded};
pub use routes::{
    DEFAULT_ROUTES_FILE, PROTO_V4, PROTO_V6, ROUTES_HEADER, initial_routes, render_routes,
    render_routes_via, write_initial_routes, write_routes_file,
};
