//! The load balancer's userspace: the dataplane handle (program and maps), the desired state
//! and its reconciliation into the maps, the agent, its control API and the CLI. The backend's
//! `lb decap` is the lb-decap crate; the eBPF objects are built in lb-objects.

pub mod agent;
pub mod api;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod http;
pub mod ifctl;
pub mod listen;
pub mod neighbour;
pub mod reconcile;
pub mod routes;
pub mod state;
pub mod sync;

/// The agent's eBPF objects, built once in lb-objects.
pub(crate) use lb_objects::{EBPF_OBJECT, HEALTH_ENCAP_OBJECT};
