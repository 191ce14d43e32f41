//! The connection tables by family: IPv4 flows in `CONNS4` under their 16-byte `FlowKey4`,
//! IPv6 flows in `CONNS` under the whole `FlowKey`. The kernel hashes and compares the whole key
//! on every lookup; the short key makes an IPv4 lookup about 10 ns cheaper here.

use lb_common::{ConnEntry, FAMILY_V4, FlowKey};

use crate::maps::{CONNS, CONNS4};

/// The flow's entry, writable (see `conntrack::established` for why the pointer stays valid).
#[inline(always)]
pub fn get_mut(key: &FlowKey) -> Option<*mut ConnEntry> {
    if key.family == FAMILY_V4 {
        CONNS4.get_ptr_mut(&key.v4())
    } else {
        CONNS.get_ptr_mut(key)
    }
}

/// The flow's entry, read-only.
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<*const ConnEntry> {
    if key.family == FAMILY_V4 {
        CONNS4.get_ptr(&key.v4())
    } else {
        CONNS.get_ptr(key)
    }
}

/// Writes the flow's entry (a full table evicts its least recently used one); false if the
/// kernel refused it.
#[inline(always)]
pub fn insert(key: &FlowKey, entry: &ConnEntry) -> bool {
    if key.family == FAMILY_V4 {
        CONNS4.insert(&key.v4(), entry, 0).is_ok()
    } else {
        CONNS.insert(key, entry, 0).is_ok()
    }
}
