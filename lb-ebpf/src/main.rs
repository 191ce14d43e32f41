//! The load balancer's XDP program: parse -> decide -> rewrite.
//!
//! `parse` reads and checks the headers, `vip` finds the service, `conntrack` and `maglev` pick
//! the backend, `encap` rewrites the frame into IPv6 (or IPv6 + UDP for GUE) and `stats` counts
//! every outcome. ICMP to a VIP address takes its own path (`icmp`). Nothing here allocates,
//! loops over packet data, or logs on the forwarding path.
#![no_std]
#![no_main]

mod clock;
mod conntrack;
mod encap;
mod flowsync;
mod icmp;
mod maglev;
mod maps;
mod parse;
mod stats;
mod toobig;
mod vip;
mod wire;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Counter, PROTO_TCP};

use conntrack::{FlowPacket, Found};
use parse::{Parsed, Verdict};

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let pkt = match parse::parse(&ctx) {
        Ok(pkt) => pkt,
        // ICMP to a VIP address: echo answered, errors sent to their flow's backend.
        Err(Verdict::Icmp(addr_flags)) => return icmp::handle(ctx.ctx, addr_flags),
        Err(verdict) => return verdict.apply(),
    };
    forward(&ctx, &pkt)
}

#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Parsed) -> u32 {
    let Some(cfg) = maps::config() else {
        return stats::drop(Counter::DropEncap);
    };
    let flow = FlowPacket::new(pkt.key.proto == PROTO_TCP, pkt.tcp_flags);
    // An established flow knows its VIP from its entry; the rest look it up by address.
    let (vip, target) = match conntrack::established(&pkt.key, &flow, cfg) {
        Found::Hit(vip, target) => (vip, target),
        found => {
            let Some(vip) = vip::lookup(&pkt.key) else {
                stats::count(Counter::PassVipOtherService);
                return xdp_action::XDP_PASS;
            };
            let target = match found {
                Found::Pinned(target) => target,
                _ => match conntrack::new_flow(ctx, &pkt.key, &flow, vip, cfg) {
                    Some(target) => target,
                    None => return stats::drop(Counter::DropNoBackend),
                },
            };
            (vip, target)
        }
    };
    // The agent configures every NIC it attaches to; anything else is a misconfiguration.
    let Some(iface) = maps::iface(ctx.ingress_ifindex() as u32) else {
        return stats::drop(Counter::DropNoIface);
    };
    // Too big once encapsulated: answered with ICMP (or dropped), never forwarded. One compare
    // when it fits. The backend choice above already ran (see docs/dataplane.md).
    if let Some(verdict) = toobig::check(ctx, pkt, vip, iface) {
        return verdict;
    }
    let len = pkt.frame_len as u64;
    stats::add_vip(vip.id, len);
    stats::add_backend(target.id, len);
    encap::encapsulate(ctx, pkt, vip, cfg, iface, &target)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach this; it is never linked in.
    unsafe { core::hint::unreachable_unchecked() }
}
