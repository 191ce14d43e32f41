//! What the tests and the bench share: the load-balancer program loaded with small maps and run
//! through BPF_PROG_TEST_RUN ([`harness`]), client and ICMP frames ([`frames`], [`icmp`]), the
//! decoder that checks an encapsulated output frame field by field ([`encap`]), a packet socket
//! on an interface ([`af_packet`]), and the fixed addresses and MACs they use ([`fixture`]).

pub mod af_packet;
pub mod encap;
pub mod fixture;
pub mod frames;
pub mod harness;
pub mod icmp;

pub use encap::*;
pub use fixture::*;
pub use frames::*;
pub use harness::*;
pub use icmp::*;
