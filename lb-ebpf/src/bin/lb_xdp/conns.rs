//! The connection tables by family: IPv4 flows in `CONNS4` under their 16-byte `FlowKey4`,
//! IPv6 flows in `CONNS` under the whole `FlowKey`. The kernel hashes and compares the whole key
//! on every lookup; the short key makes an IPv4 lookup about 10 ns cheaper here.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
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

/// What `insert` did.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The flow had no entry, or (without `tell_replaced`) had one and it was overwritten.
    New,
    /// An IPv4 flow's entry replaced one (live or not) that a flow cache may hold.
    Replaced,
    /// The kernel refused the entry.
    Refused,
}

/// Writes the flow's entry (a full table evicts its least recently used one). With
/// `tell_replaced`, an IPv4 entry is first added only if none exists (BPF_NOEXIST, the same cost
/// as BPF_ANY when it is new), and replaces one otherwise, so the caller learns of it.
#[inline(always)]
pub fn insert(key: &FlowKey, entry: &ConnEntry, tell_replaced: bool) -> Written {
    let written = if key.family == FAMILY_V4 {
        let k = key.v4();
        if tell_replaced {
            if CONNS4.insert(&k, entry, BPF_NOEXIST as u64).is_ok() {
                return Written::New;
            }
            return match CONNS4.insert(&k, entry, BPF_ANY as u64) {
                Ok(()) => Written::Replaced,
                Err(_) => Written::Refused,
            };
        }
        CONNS4.insert(&k, entry, BPF_ANY as u64).is_ok()
    } else {
        CONNS.insert(key, entry, BPF_ANY as u64).is_ok()
    };
    if written {
        Written::New
    } else {
        Written::Refused
    }
}
