//! The tests' helpers: lb-testkit's (the XDP program under BPF_PROG_TEST_RUN with small maps,
//! frame builders and decoders, a packet socket; re-exported here), the lab's (`lab`,
//! `capture`, and its namespaces in `netns`), a topology and an agent for the agent tests
//! (`netns`), a lab per end-to-end test (`e2e`), and what the shipped monitoring files query
//! (`deploy`).
//!
//! Every test needing BPF must run as root: `require_root` fails the test loudly otherwise.

pub use lb_lab as lab;
pub use lb_lab::capture;
pub use lb_testkit::*;

pub mod deploy;
pub mod e2e;
pub mod edge;
pub mod netns;
