//! Bench-only XDP programs for `cargo xtask bench` (never loaded by the agent).
//!
//! `bench_harness` makes BPF_PROG_TEST_RUN's `repeat` measure the same path every time: the
//! kernel runs the program N times on the SAME buffer without restoring it, so an
//! encapsulating program would see its own output from repetition 2 on. Before every
//! repetition the harness undoes the previous repetition's length change (with
//! `bpf_xdp_adjust_head`, back to the original length), rewrites the original frame from
//! `BENCH_FRAME` (written by userspace) with direct stores and tail-calls the program under test
//! (`BENCH_PROGS[0]`). With `BenchFrame::flows` set, it also varies the flow per repetition
//! (see `vary`), so each repetition is a different connection-table entry.
//!
//! `bench_floor` is the cheapest program that still does the job's shape (bounds-check
//! Ethernet + IPv4 + TCP, prepend an IPv6 header, XDP_TX); `bench_empty` only returns XDP_TX.
#![no_std]
#![no_main]

use core::{
    ffi::c_void,
    ptr::{read_unaligned, write as store},
};

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
// The panic handler.
use lb_ebpf as _;

/// Largest frame the harness restores.
const FRAME_MAX: usize = 256;
/// Size of `BenchFrame::bytes`: room for the verifier's view of the masked length below.
const FRAME_BUF: usize = 272;

/// The frame to restore before each repetition (userspace mirror: lb-bench's harness.rs).
/// 8-byte aligned, so `bytes` (at offset 8) can be read a word at a time.
#[repr(C, align(8))]
pub struct BenchFrame {
    /// Frame length in bytes (14..=FRAME_MAX).
    len: u32,
    /// 0: the same frame every time. N: repetition i carries flow i mod N (IPv4 + TCP only).
    flows: u32,
    bytes: [u8; FRAME_BUF],
}

#[map]
static BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

/// Per-CPU flow index for `vary`.
#[map]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Slot 0: the program under test.
#[map]
static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_harness(ctx: XdpContext) -> u32 {
    let Some(frame) = BENCH_FRAME.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // One load each, so the bounds checked below are the ones the helpers get.
    // SAFETY: a valid pointer to the map's only value (checked above).
    let len = unsafe { core::ptr::read_volatile(&(*frame).len) };
    // SAFETY: as above.
    let flows = unsafe { core::ptr::read_volatile(&(*frame).flows) };
    if !(14..=FRAME_MAX as u32).contains(&len) {
        return xdp_action::XDP_ABORTED;
    }
    // Undo the previous repetition's head move (encapsulation grows the frame at the front).
    let have = (ctx.data_end() - ctx.data()) as i64;
    let delta = have - len as i64;
    // SAFETY: a helper call on this program's own context; it checks the new start.
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta as i32) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a valid pointer to the map's only value (checked above).
    let src = unsafe { (*frame).bytes.as_ptr() };
    if !restore(&ctx, src, len) {
        return xdp_action::XDP_ABORTED;
    }
    if flows != 0 && !vary(&ctx, flows) {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: a tail call with this program's own context; on return it failed (no program).
    unsafe { BENCH_PROGS.tail_call(&ctx, 0) };
    // Empty slot or tail-call limit.
    xdp_action::XDP_ABORTED
}

/// Rewrites the `len`-byte frame (now exactly the packet's length) from `src` with direct,
/// naturally aligned stores: 8 bytes at a time, then 4, 2 and 1 for the rest. A helper call
/// (`bpf_xdp_store_bytes`, a memcpy behind a call) cost more, and unaligned accesses compile
/// to byte-by-byte code in BPF. Both sides start 8-byte aligned: the packet at the test run's
/// headroom, the frame at offset 8 of an 8-byte aligned value.
#[inline(always)]
fn restore(ctx: &XdpContext, src: *const u8, len: u32) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    let mut off = 0;
    for k in 0..FRAME_MAX / 8 {
        off = k * 8;
        if data + off + 8 > end {
            break;
        }
        // SAFETY: 8 bytes at `off` are in the packet (checked above) and in the value
        // (off + 8 <= FRAME_MAX < FRAME_BUF), both 8-byte aligned (see above).
        unsafe { store((data + off) as *mut u64, *(src.add(off) as *const u64)) };
    }
    // The rest (len % 8 bytes, from `off`), at offsets the verifier can bound.
    let mut off = off & (FRAME_MAX - 1);
    let rest = len & 7;
    if rest & 4 != 0 {
        if data + off + 4 > end {
            return false;
        }
        // SAFETY: in the packet (checked above) and the value; 4-byte aligned.
        unsafe { store((data + off) as *mut u32, *(src.add(off) as *const u32)) };
        off += 4;
    }
    if rest & 2 != 0 {
        if data + off + 2 > end {
            return false;
        }
        // SAFETY: as above; 2-byte aligned.
        unsafe { store((data + off) as *mut u16, *(src.add(off) as *const u16)) };
        off += 2;
    }
    // An odd length: the last byte through the helper (LLVM folds a 1-byte bounds check into a
    // form the verifier does not follow).
    // SAFETY: a helper call on this program's own context with 1 byte of the value at `off`
    // (off < FRAME_MAX); the helper checks the packet side.
    if rest & 1 != 0
        && unsafe { bpf_xdp_store_bytes(ctx.ctx, off as u32, src.add(off) as *mut c_void, 1) } != 0
    {
        return false;
    }
    true
}

/// Makes this repetition's frame flow `i` (a per-CPU counter mod `flows`): source address
/// low octet + i / 4096, source port + i % 4096. The IPv4 identification and the TCP window
/// absorb the same amounts with the opposite sign, so both checksums stay valid without
/// recomputing them (userspace picks base values that cannot wrap).
#[inline(always)]
fn vary(ctx: &XdpContext, flows: u32) -> bool {
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a valid pointer to this CPU's slot, which nothing else writes meanwhile.
    let i = unsafe { *seq };
    let next = i + 1;
    // SAFETY: as above.
    unsafe { *seq = if next >= flows { 0 } else { next } };
    let (octet, port) = ((i >> 12) as u16, (i & 0xFFF) as u16);
    let data = ctx.data();
    if data + 14 + 20 + 20 > ctx.data_end() {
        return false;
    }
    // SAFETY: every offset below + 2 is within the 54 bytes checked above.
    let add = |off: usize, v: i32| unsafe {
        let p = (data + off) as *mut [u8; 2];
        let old = u16::from_be_bytes(*p) as i32;
        *p = ((old + v) as u16).to_be_bytes();
    };
    add(14 + 4, -(octet as i32)); // IPv4 identification
    add(14 + 14, octet as i32); // source address, low 16 bits
    add(34, port as i32); // TCP source port
    add(34 + 14, -((octet + port) as i32)); // TCP window
    true
}

/// The floor: parse Ethernet + IPv4 + TCP, prepend IPv6 (next header 4), XDP_TX.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 + 20 + 20 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: all within the 54 bytes checked above.
    let (ethertype, vihl, proto, ip_len) = unsafe {
        (
            *((data + 12) as *const [u8; 2]),
            *((data + 14) as *const u8),
            *((data + 14 + 9) as *const u8),
            *((data + 14 + 2) as *const [u8; 2]),
        )
    };
    if ethertype != [0x08, 0x00] || vihl != 0x45 || proto != 6 {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: a helper call on this program's own context; it checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -40) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 40 + 14 > end {
        return xdp_action::XDP_DROP;
    }
    // Word stores throughout, as in encap.rs: array stores compile to byte-by-byte memmove
    // calls in BPF and would make the floor slower than it needs to be.
    // SAFETY: all within the 54 bytes checked above.
    unsafe {
        // Ethernet: swap the MACs (the old header is now 40 bytes further); read them all
        // before writing, as the new IPv6 header overlaps the old Ethernet header.
        let old = data + 40;
        let dst_hi = read_unaligned(old as *const u32);
        let dst_lo = read_unaligned((old + 4) as *const u16);
        let src_hi = read_unaligned((old + 6) as *const u16);
        let src_lo = read_unaligned((old + 8) as *const u32);
        store(data as *mut u16, src_hi);
        store((data + 2) as *mut u32, src_lo);
        store((data + 6) as *mut u32, dst_hi);
        store((data + 10) as *mut u16, dst_lo);
        store((data + 12) as *mut u16, 0x86DDu16.to_be());
        // IPv6: version 6, flow label 1, payload = the IPv4 packet, next header 4, hop limit 64,
        // 2001:db8:1b::1 -> 2001:db8:be::1.
        let ip = data + 14;
        store(ip as *mut u32, 0x6000_0001u32.to_be());
        store((ip + 4) as *mut [u8; 2], ip_len);
        store((ip + 6) as *mut u16, u16::from_be_bytes([4, 64]).to_be());
        let addr = |a: usize, site: u32| {
            store(a as *mut u32, 0x2001_0DB8u32.to_be());
            store((a + 4) as *mut u32, site.to_be());
            store((a + 8) as *mut u32, 0);
            store((a + 12) as *mut u32, 1u32.to_be());
        };
        addr(ip + 8, 0x001B_0000);
        addr(ip + 24, 0x00BE_0000);
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
