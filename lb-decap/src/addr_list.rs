//! Address lists as `lb decap` prints them.

use std::net::Ipv6Addr;

pub(crate) fn join(addrs: &[Ipv6Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
