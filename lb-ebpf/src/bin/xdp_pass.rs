//! `xdp_pass`: passes every frame to the kernel. Labs and tests attach it to the far end of a
//! veth pair, because veth delivers XDP_TX frames only to a peer that runs an XDP program.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
// The panic handler.
use lb_ebpf as _;

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
