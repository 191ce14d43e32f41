//! `lb_xdp`, the load balancer's XDP program, as one pipeline read top-down:
//! parse -> ICMP -> flow cache -> connection table -> VIP lookup -> backend choice -> too big?
//! -> encap.
//!
//! `parse` reads and checks the headers. ICMP to a VIP address goes to `icmp`, which answers
//! echo requests itself and hands an error back as the flow it quotes. Every packet that is
//! forwarded then takes the one tail below, `forward`: `flowcache` may know an established
//! flow's backend; otherwise `vip` finds the service and `conntrack` and `maglev` pick the
//! backend; `egress` picks its way out (this NIC or another, and the MACs),
//! `toobig` answers a client packet that would not fit once encapsulated, `encap` rewrites the
//! frame into IPv6 (or IPv6 + UDP for GUE) and `egress` sends it (XDP_TX or XDP_REDIRECT).
//! `stats` counts every outcome.
//!
//! Modules import only downward: this file uses the steps; the steps use `packet` (the types
//! they pass each other), `stats`, `maps` and the helpers below them; none imports a step
//! above it. Nothing here allocates or loops over packet data, and the forwarding path logs
//! one thing only: the bug alarm of a ring slot naming an uninstalled backend (`conntrack`).
#![no_std]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values stay borrowed: passed by value, LLVM emits different code"
)]

mod clock;
mod conns;
mod conntrack;
mod egress;
mod encap;
mod flowcache;
mod flowsync;
mod icmp;
mod maglev;
mod maps;
mod packet;
mod parse;
mod ratelimit;
mod stats;
mod toobig;
mod vip;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Counter, LbConfig, PROTO_TCP, VipMeta};

use conntrack::{Cached, FlowPacket, Found};
use icmp::Handled;
use packet::{Kind, NotBalanced, Parsed, Target};

// `inline(always)` reaches the function the macro wraps: the whole pipeline stays in the
// program's own section, with no BPF-to-BPF call in front of it (LLVM would otherwise keep a
// function this large out of line).
#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    match parse::parse(&ctx) {
        Ok(pkt) => forward(&ctx, &pkt, Kind::Client),
        Err(NotBalanced::Verdict(verdict)) => verdict.apply(),
        // ICMP to a VIP address: an echo is answered there, an error comes back as its flow.
        Err(NotBalanced::IcmpToVip(addr_flags)) => match icmp::handle(ctx.ctx, addr_flags) {
            Handled::Action(action) => action,
            Handled::Error(pkt) => forward(&ctx, &pkt, Kind::IcmpError),
        },
    }
}

/// The forwarding tail, the same for a client packet and an ICMP error about a flow (`Kind`
/// says what differs): VIP lookup, connection table and backend choice, the NIC, the way out,
/// the too-big check, the counters, the encapsulation and the send.
///
/// Each call above passes its `Kind` as a constant, so LLVM compiles one copy per kind with
/// the `Kind` tests folded away: the client path pays nothing for ICMP errors (joining both
/// into one copy with a runtime `Kind` cost established flows 2-5 ns in
/// `cargo xtask bench dataplane`).
#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Parsed, kind: Kind) -> u32 {
    let Some(cfg) = maps::config() else {
        return stats::drop(Counter::DropEncap);
    };
    let client = kind == Kind::Client;
    // This CPU's flow cache first (established client packets); the table and Maglev if it
    // does not know the flow.
    let cached = if client {
        conntrack::cached(&pkt.key, pkt.tcp_flags, cfg)
    } else {
        Cached::Miss(None)
    };
    let (vip, target) = match cached {
        Cached::Hit(vip, target) => (vip, target),
        Cached::Miss(cache) => match choose_backend(ctx, pkt, cfg, kind, cache) {
            Ok(chosen) => chosen,
            Err(verdict) => return verdict,
        },
    };
    // The agent configures every NIC it attaches to; anything else is a misconfiguration.
    let ingress = ctx.ingress_ifindex() as u32;
    let Some(iface) = maps::iface(ingress) else {
        return stats::drop(Counter::DropNoIface);
    };
    // The way out: the backend's route (another NIC: XDP_REDIRECT) or this NIC's next hop;
    // an unresolved next hop drops here, before anything is counted as sent.
    let out = match egress::choose(ctx, target.id, target.hash, ingress, iface) {
        Ok(out) => out,
        Err(verdict) => return verdict,
    };
    // Second chance: the slot's previous backend, for a flow a table change moved.
    let prev = conntrack::second_chance(&target);
    // Too big once encapsulated: answered with ICMP (or dropped), never forwarded. One compare
    // when it fits. The backend choice above already ran (see docs/dataplane.md).
    if client && let Some(verdict) = toobig::check(ctx, pkt, vip, iface, prev.is_some()) {
        return verdict;
    }
    let len = pkt.frame_len as u64;
    stats::add_backend(target.id, len);
    let action = encap::encapsulate(ctx, pkt, vip, cfg, out.link, &target, prev);
    if action != xdp_action::XDP_TX {
        return action;
    }
    let action = egress::send(&out, len);
    if !client && action != xdp_action::XDP_DROP {
        stats::count(Counter::IcmpErrorForwarded);
    }
    action
}

/// The backend when the flow cache did not answer: the connection table (refreshed, or read
/// only for an ICMP error), else the VIP by address and Maglev (pinning a client's new flow).
/// `cache`: the flow cache's slot for a live IPv4 entry. Err: the verdict (counted).
#[inline(always)]
fn choose_backend(
    ctx: &XdpContext,
    pkt: &Parsed,
    cfg: &LbConfig,
    kind: Kind,
    cache: Option<flowcache::Slot>,
) -> Result<(&'static VipMeta, Target), u32> {
    let client = kind == Kind::Client;
    let flow = FlowPacket::new(pkt.key.proto == PROTO_TCP, pkt.tcp_flags);
    let found = if client {
        conntrack::established(&pkt.key, &flow, cfg, cache)
    } else {
        conntrack::peek(&pkt.key, &flow, cfg)
    };
    // An established flow knows its VIP from its entry; the rest look it up by address.
    let target = match found {
        Found::Hit(vip, target) => return Ok((vip, target)),
        Found::Pinned(target) => Some(target),
        Found::Miss => None,
    };
    let Some(vip) = vip::lookup(&pkt.key) else {
        if !client {
            return Err(stats::drop(Counter::DropIcmpNoFlow));
        }
        stats::count(Counter::PassVipOtherService);
        return Err(xdp_action::XDP_PASS);
    };
    let target = match target {
        Some(target) => target,
        None => match conntrack::new_flow(ctx, &pkt.key, &flow, vip, cfg, kind) {
            Some(target) => target,
            None if client => return Err(stats::drop(Counter::DropNoBackend)),
            None => return Err(stats::drop(Counter::DropIcmpNoFlow)),
        },
    };
    Ok((vip, target))
}
