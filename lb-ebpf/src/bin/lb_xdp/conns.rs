//! The connection tables by family: IPv4 flows in `CONNS4` under their 16-byte `FlowKey4`,
//! IPv6 flows in `CONNS` under the whole `FlowKey`. The kernel hashes and compares the whole key
//! on every lookup; the short key makes an IPv4 lookup about 10 ns cheaper here.

use core::{mem::MaybeUninit, ptr::write_volatile};

use lb_common::{ConnEntry, FAMILY_V4, FlowKey, FlowKey4};

use crate::maps::{CONNS, CONNS4};

/// The flow's entry, writable (see `conntrack::established` for why the pointer stays valid).
#[inline(always)]
pub fn get_mut(key: &FlowKey) -> Option<*mut ConnEntry> {
    if key.family == FAMILY_V4 {
        CONNS4.get_ptr_mut(&key4(key))
    } else {
        CONNS.get_ptr_mut(key)
    }
}

/// The flow's entry, read-only.
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<*const ConnEntry> {
    if key.family == FAMILY_V4 {
        CONNS4.get_ptr(&key4(key))
    } else {
        CONNS.get_ptr(key)
    }
}

/// Writes the flow's entry (a full table evicts its least recently used one); false if the
/// kernel refused it.
#[inline(always)]
pub fn insert(key: &FlowKey, entry: &ConnEntry) -> bool {
    if key.family == FAMILY_V4 {
        CONNS4.insert(&key4(key), entry, 0).is_ok()
    } else {
        CONNS.insert(key, entry, 0).is_ok()
    }
}

/// An IPv4 flow's `CONNS4` key (`FlowKey::v4`), written as four volatile words: built field by
/// field, LLVM merges the padding's zero stores into a memset, which the BPF backend emits as
/// a byte-by-byte loop that cost more than the short key saves.
#[inline(always)]
fn key4(key: &FlowKey) -> FlowKey4 {
    let mut k = MaybeUninit::<FlowKey4>::uninit();
    let words = k.as_mut_ptr() as *mut u32;
    let [s0, s1] = key.src_port.to_ne_bytes();
    let [d0, d1] = key.dst_port.to_ne_bytes();
    // SAFETY: the four word stores cover all 16 bytes of the repr(C) FlowKey4 (4-byte aligned),
    // in its field order, before it is read.
    unsafe {
        write_volatile(words, key.src[0]);
        write_volatile(words.add(1), key.dst[0]);
        write_volatile(words.add(2), u32::from_ne_bytes([s0, s1, d0, d1]));
        write_volatile(words.add(3), u32::from_ne_bytes([key.proto, 0, 0, 0]));
        k.assume_init()
    }
}
