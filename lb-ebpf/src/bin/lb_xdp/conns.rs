//! The connection tables by family: IPv4 flows in `CONNS4` under their 16-byte `FlowKey4`,
//! IPv6 flows in `CONNS` under the whole `FlowKey`. The kernel hashes and compares the whole key
//! on every lookup; the short key makes an IPv4 lookup about 10 ns cheaper here.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use lb_common::{ConnEntry, FAMILY_V4, FlowKey};

use crate::maps::{CONNS, CONNS4, Table};

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
    /// The flow's entry replaced one (live or not) that a flow cache may hold.
    Replaced,
    /// The kernel refused the entry.
    Refused,
}

/// Writes the flow's entry (a full table evicts its least recently used one). With
/// `tell_replaced`, the entry is first added only if none exists (BPF_NOEXIST, the same cost as
/// BPF_ANY when it is new), and replaces one otherwise, so the caller learns of it.
#[inline(always)]
pub fn insert(key: &FlowKey, entry: &ConnEntry, tell_replaced: bool) -> Written {
    if key.family == FAMILY_V4 {
        write(&CONNS4, &key.v4(), entry, tell_replaced)
    } else {
        write(&CONNS, key, entry, tell_replaced)
    }
}

#[inline(always)]
fn write<K>(table: &Table<K>, key: &K, entry: &ConnEntry, tell_replaced: bool) -> Written {
    if tell_replaced {
        if table.insert(key, entry, BPF_NOEXIST as u64).is_ok() {
            return Written::New;
        }
        return match table.insert(key, entry, BPF_ANY as u64) {
            Ok(()) => Written::Replaced,
            Err(_) => Written::Refused,
        };
    }
    match table.insert(key, entry, BPF_ANY as u64) {
        Ok(()) => Written::New,
        Err(_) => Written::Refused,
    }
}
