//! What every eBPF program of this crate shares: the packet load and the panic handler.
//!
//! Nothing here owns a map. rustc exports every `#[map]` static of a linked library into the
//! object, and the agent creates every map an object holds, so a map defined here would appear
//! in all five objects. Each program's maps therefore live in its own binary (`src/bin/`), and
//! header constants in `lb_common::headers`, where userspace uses them too.
// no_std in the eBPF objects; on the host (clippy, `--all-targets`) std provides the panic
// handler, so the binaries' test builds do not see two.
#![cfg_attr(target_arch = "bpf", no_std)]

/// Reads a `T` at `addr`.
///
/// A plain (not `read_unaligned`) load: the BPF backend would split an unaligned read into
/// single bytes, while the kernel's JITs handle misaligned packet loads directly.
///
/// # Safety
/// The caller has checked `addr + size_of::<T>() <= data_end` where the verifier can see it.
#[inline(always)]
pub unsafe fn load<T: Copy>(addr: usize) -> T {
    // SAFETY: in bounds by the caller's check; BPF packet loads need no alignment.
    unsafe { core::ptr::read(addr as *const T) }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: never reached: the verifier rejects a program with any path to a panic, so no
    // loaded program calls this.
    unsafe { core::hint::unreachable_unchecked() }
}
