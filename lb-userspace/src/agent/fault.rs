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

#[cfg(test)]
mod tests {
    use super::*;

    /// `lb status` shows these texts as `dataplane_fault`, as before faults were typed.
    #[test]
    fn faults_read_as_before() {
        let cases = [
            (Fault::MapWrite("EINVAL".into()), "map write failed: EINVAL"),
            (
                Fault::Nic(NicFault::Replaced("eth1".into())),
                "eth1 was replaced (new ifindex)",
            ),
            (Fault::Nic(NicFault::Gone("eth1".into())), "eth1 is gone"),
            (Fault::Nic(NicFault::Down("eth1".into())), "eth1 is down"),
        ];
        for (fault, text) in cases {
            assert_eq!(fault.to_string(), text);
        }
    }
}
