//! Does this host take a second-chance packet? Yes for a TCP SYN (a new connection is the
//! current backend's), for a flow the host has a socket for, and for an ACK a listener accepts
//! as a valid SYN cookie; also for anything that is not TCP. Otherwise the packet belongs to
//! the previous backend.
//!
//! `bpf_skc_lookup_tcp` searches the network namespace of the device the packet arrived on
//! (`BPF_F_CURRENT_NETNS`): established, request (SYN received) and TIME_WAIT sockets first,
//! then listeners. A listener alone does not make the flow ours: only a valid SYN cookie does
//! (`bpf_tcp_check_syncookie`, which needs `net.ipv4.tcp_syncookies` on and a recent SYN queue
//! overflow, or `tcp_syncookies=2`).

use aya_ebpf::{
    bindings::{
        BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as TupleV4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as TupleV6, tcphdr,
    },
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie},
    programs::XdpContext,
};
use core::ffi::c_void;
use lb_common::TcpEvent;
use lb_common::decap::DecapCounter;
use lb_common::headers::{IPV4_FRAG_MASK, IPV4_HLEN, IPV6_HLEN, PROTO_TCP, TCP_HLEN};
use lb_ebpf::load;

/// The verdict on the inner packet.
pub(crate) enum Take {
    /// This host takes it; the counter says why.
    Yes(DecapCounter),
    /// Not this host's flow: hand it on.
    No,
    /// The inner TCP header is cut short: nothing to decide on.
    Malformed,
}

/// The inner IP packet at `ip` (a whole minimal header of its version is in the frame and in
/// the outer payload, checked by the caller; `v4`: its version).
#[inline(always)]
pub(crate) fn take(ctx: &XdpContext, ip: usize, end: usize, v4: bool) -> Take {
    if v4 {
        take_v4(ctx, ip, end)
    } else {
        take_v6(ctx, ip, end)
    }
}

#[inline(always)]
fn take_v4(ctx: &XdpContext, ip: usize, end: usize) -> Take {
    // Explicit bound for the verifier (checked by the caller).
    if ip + IPV4_HLEN > end {
        return Take::Malformed;
    }
    // SAFETY: the IPv4 header is in the frame (checked above).
    let (first, frag, proto) = unsafe { (load::<u8>(ip), load::<u16>(ip + 6), load::<u8>(ip + 9)) };
    // Fragments have no TCP header to decide on (and the load balancer never sends them).
    if proto != PROTO_TCP || frag & IPV4_FRAG_MASK != 0 {
        return Take::Yes(DecapCounter::SrhPassNotTcp);
    }
    let tcp = ip + ((first & 0x0F) as usize) * 4;
    if tcp + TCP_HLEN > end {
        return Take::Malformed;
    }
    // SAFETY: the TCP header is in the frame (checked above).
    if is_syn(unsafe { load(tcp + 13) }) {
        return Take::Yes(DecapCounter::SrhPassSyn);
    }
    // SAFETY: both headers are in the frame (checked above).
    let mut tuple = unsafe {
        TupleV4 {
            saddr: load(ip + 12),
            daddr: load(ip + 16),
            sport: load(tcp),
            dport: load(tcp + 2),
        }
    };
    let tuple = (&mut tuple as *mut TupleV4).cast::<bpf_sock_tuple>();
    lookup(ctx, tuple, size_of::<TupleV4>(), ip, IPV4_HLEN, tcp)
}

#[inline(always)]
fn take_v6(ctx: &XdpContext, ip: usize, end: usize) -> Take {
    // Explicit bound for the verifier (checked by the caller).
    if ip + IPV6_HLEN > end {
        return Take::Malformed;
    }
    // SAFETY: the IPv6 header is in the frame (checked above).
    let next_header: u8 = unsafe { load(ip + 6) };
    // Extension headers before TCP: the load balancer never sends them.
    if next_header != PROTO_TCP {
        return Take::Yes(DecapCounter::SrhPassNotTcp);
    }
    let tcp = ip + IPV6_HLEN;
    if tcp + TCP_HLEN > end {
        return Take::Malformed;
    }
    // SAFETY: the TCP header is in the frame (checked above).
    if is_syn(unsafe { load(tcp + 13) }) {
        return Take::Yes(DecapCounter::SrhPassSyn);
    }
    // SAFETY: both headers are in the frame (checked above).
    let mut tuple = unsafe {
        TupleV6 {
            saddr: load(ip + 8),
            daddr: load(ip + 24),
            sport: load(tcp),
            dport: load(tcp + 2),
        }
    };
    let tuple = (&mut tuple as *mut TupleV6).cast::<bpf_sock_tuple>();
    lookup(ctx, tuple, size_of::<TupleV6>(), ip, IPV6_HLEN, tcp)
}

/// A connection start: new connections belong to the current backend.
#[inline(always)]
fn is_syn(tcp_flags: u8) -> bool {
    TcpEvent::of(true, tcp_flags).syn
}

/// The socket lookup and, for a listener, the SYN cookie check. `tuple` (of `tuple_size`
/// bytes, on the stack) is the inner packet's addresses and ports; `ip` and `tcp` its headers
/// in the frame (checked by the caller).
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    tuple: *mut bpf_sock_tuple,
    tuple_size: usize,
    ip: usize,
    ip_len: usize,
    tcp: usize,
) -> Take {
    // SAFETY: the tuple lives on the caller's stack for the call and its size is stated; the
    // helper returns a referenced socket or null.
    let sk: *mut bpf_sock = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            tuple,
            tuple_size as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return Take::No;
    }
    // SAFETY: a non-null socket from the lookup; `state` is readable on any socket kind.
    let state = unsafe { core::ptr::read_volatile(&raw const (*sk).state) };
    let verdict = if state != BPF_TCP_LISTEN {
        Take::Yes(DecapCounter::SrhPassSocket)
    } else {
        // SAFETY: the listener from the lookup; both headers are in the frame (checked by the
        // caller) and their lengths stated.
        let cookie = unsafe {
            bpf_tcp_check_syncookie(
                sk.cast::<c_void>(),
                ip as *mut c_void,
                ip_len as u32,
                tcp as *mut tcphdr,
                TCP_HLEN as u32,
            )
        };
        if cookie == 0 {
            Take::Yes(DecapCounter::SrhPassSyncookie)
        } else {
            Take::No
        }
    };
    // SAFETY: releases the reference the lookup took, exactly once, on every path.
    unsafe { bpf_sk_release(sk.cast::<c_void>()) };
    verdict
}
