//! Why the dataplane cannot forward. A map-write fault clears only when a later write succeeds;
//! a NIC fault clears when the watchdog finds the NIC back.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A map write failed: the maps may not hold what the agent would announce.
    MapWrite(String),
    /// A NIC the program is attached to cannot carry traffic.
    Nic(NicFault),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NicFault {
    /// The name now has another ifindex: not the NIC the program is attached to.
    Replaced(String),
    Gone(String),
    Down(String),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::MapWrite(e) => write!(f, "map write failed: {e}"),
            Fault::Nic(NicFault::Replaced(n)) => write!(f, "{n} was replaced (new ifindex)"),
            Fault::Nic(NicFault::Gone(n)) => write!(f, "{n} is gone"),
            Fault::Nic(NicFault::Down(n)) => write!(f, "{n} is down"),
        }
    }
}
