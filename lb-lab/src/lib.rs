//! The anycast lab: a client, a router running BIRD with ECMP, load balancers each running
//! `lb agent` and BIRD, and backends each running `lb decap`, nginx and `lb-echo` with the
//! VIPs on `lo`. `cargo xtask lab` builds it for people; the end-to-end tests build one each.
//!
//! ```text
//!  client ─── router ─┬─ lb1   (BGP: router AS 64500, load balancers AS 64501)
//!                     ├─ lb2
//!                     ├─ ...   (`LabOptions::lbs`: 1 to 8, each peered with all others)
//!                     ├─ b1    (backends: replies go straight back through the router)
//!                     ├─ b2
//!                     └─ b3
//! ```
//!
//! Everything started is recorded in `<run_dir>/pids` and every namespace is named
//! `<prefix>-<node>`, so `down` (also from another process) removes exactly what `up` made.
//! Documentation addresses only.
//!
//! Modules: [`plan`] (addresses, names, options), [`topology`] (the lab: build, wire, down),
//! [`services`] (backends), [`bgp`] (BIRD), [`agents`] (load balancers), [`cli`] (`lb` against
//! an agent), [`process`] (what runs in the namespaces), [`netns`] (namespaces), [`capture`]
//! (packet capture in a namespace).
//! The binaries are `lb-lab` (`cargo xtask lab`) and `lb-echo` (the backends' echo service).

pub mod agents;
pub mod bgp;
pub mod capture;
pub mod cli;
pub mod netns;
pub mod plan;
pub mod process;
pub mod services;
pub mod topology;
pub mod web;

pub use agents::write_fleet_key;
pub use cli::{lb_cmd, lb_json};
pub use netns::in_ns;
pub use plan::*;
pub use process::alive;
pub use services::{Server, http_get};
pub use topology::{Cleanup, Lab};
