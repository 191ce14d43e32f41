//! The live section's namespace: two veth pairs (the load balancer's NIC and a second NIC it
//! redirects to, each with its receiver), the receivers' XDP_DROP program, packet counts.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, anyhow};
use lb_lab::netns::Netns;
use lb_testkit::*;

/// The load balancer's NIC and the next hop's, a veth pair.
pub(crate) const IF_LB: &str = "lbl0";
pub(crate) const IF_RX: &str = "lbl1";
/// The load balancer's second NIC (a backend route's: XDP_REDIRECT) and its next hop.
pub(crate) const IF_LB2: &str = "lbl2";
pub(crate) const IF_RX2: &str = "lbl3";
/// The second NIC's MAC.
pub(crate) const NIC2_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x02];

/// A two-instruction XDP program returning XDP_DROP, loaded and attached with raw bpf(2)
/// calls (no object file needed): the cheapest receiver for the veth peer. Its bpf_link is
/// detached when this is dropped.
pub(crate) struct DropProg {
    pub(crate) _link: OwnedFd,
    pub(crate) _prog: OwnedFd,
}

impl DropProg {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

    pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<OwnedFd> {
        // SAFETY: `attr` is a zero-padded `union bpf_attr` of the size we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub(crate) fn put(attr: &mut [u64; 16], off: usize, bytes: &[u8]) {
        // SAFETY: a byte view of the attribute buffer; `off + len` is within its 128 bytes.
        let b = unsafe { std::slice::from_raw_parts_mut(attr.as_mut_ptr().cast::<u8>(), 128) };
        b[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// Loads the program and attaches it (driver mode) to `ifindex` in the calling thread's
    /// network namespace.
    pub(crate) fn attach(ifindex: u32) -> Result<Self> {
        // r0 = XDP_DROP (1); exit.
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = b"GPL\0";
        let mut attr = [0u64; 16];
        Self::put(&mut attr, 0, &Self::BPF_PROG_TYPE_XDP.to_ne_bytes());
        Self::put(&mut attr, 4, &2u32.to_ne_bytes());
        Self::put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        Self::put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
        Self::put(&mut attr, 48, b"lbbl_drop");
        let prog =
            Self::bpf(Self::BPF_PROG_LOAD, &mut attr).context("loading the XDP_DROP program")?;
        let mut attr = [0u64; 16];
        Self::put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
        Self::put(&mut attr, 4, &ifindex.to_ne_bytes());
        Self::put(&mut attr, 8, &Self::BPF_XDP.to_ne_bytes());
        Self::put(&mut attr, 12, &Self::XDP_FLAGS_DRV_MODE.to_ne_bytes());
        let link = Self::bpf(Self::BPF_LINK_CREATE, &mut attr)
            .context("attaching the XDP_DROP program (driver mode)")?;
        Ok(Self {
            _link: link,
            _prog: prog,
        })
    }
}

/// The namespace with its veth pair; deleted (with everything in it) on drop.
pub(crate) struct Env {
    /// The receiver's XDP program, while measuring (dropped before the namespace).
    pub(crate) drop_prog: Option<DropProg>,
    /// The second receiver's, likewise.
    pub(crate) drop_prog2: Option<DropProg>,
    pub(crate) file: File,
    pub(crate) lb_ifindex: u32,
    pub(crate) rx_ifindex: u32,
    pub(crate) lb2_ifindex: u32,
    pub(crate) rx2_ifindex: u32,
    pub(crate) cpu: usize,
    pub(crate) ns: Netns,
}

pub(crate) fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Env {
    pub(crate) fn new(cpu: usize) -> Result<Self> {
        let ns = Netns::new(&format!("lbbl-{}", std::process::id()))?;
        // No IPv6 autoconfiguration chatter on the link: only the bench's frames cross it.
        ns.sysctl(&[
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;
        ns.ip(&[
            "link",
            "add",
            IF_LB,
            "address",
            &mac_str(NIC_MAC),
            "type",
            "veth",
            "peer",
            "name",
            IF_RX,
            "address",
            &mac_str(NEXT_HOP_MAC),
        ])?;
        ns.ip(&[
            "link",
            "add",
            IF_LB2,
            "address",
            &mac_str(NIC2_MAC),
            "type",
            "veth",
            "peer",
            "name",
            IF_RX2,
            "address",
            &mac_str(NEXT_HOP_MAC),
        ])?;
        for nic in [IF_LB, IF_RX, IF_LB2, IF_RX2] {
            ns.ip(&["link", "set", nic, "up"])?;
        }
        let ifindex = |name: &str| -> Result<u32> {
            let out = ns.ip(&["-j", "link", "show", name])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            Ok(v[0]["ifindex"].as_u64().context("no ifindex")? as u32)
        };
        let (lb_ifindex, rx_ifindex) = (ifindex(IF_LB)?, ifindex(IF_RX)?);
        Ok(Self {
            drop_prog: None,
            drop_prog2: None,
            file: ns.file()?,
            lb_ifindex,
            rx_ifindex,
            lb2_ifindex: ifindex(IF_LB2)?,
            rx2_ifindex: ifindex(IF_RX2)?,
            cpu,
            ns,
        })
    }

    /// Runs `f` on a thread inside the namespace, pinned to the bench CPU.
    pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let (file, cpu) = (&self.file, self.cpu);
        std::thread::scope(|s| {
            s.spawn(move || {
                lb_lab::netns::enter(file).context("entering the bench namespace")?;
                crate::cpu::pin_to_cpu(cpu)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("the bench thread panicked"))?
        })
    }

    /// Frames the receiving veth `rx` has counted (XDP-dropped ones included).
    pub(crate) fn rx_packets(&self, rx: &str) -> Result<u64> {
        let out = self.ns.ip(&["-s", "-j", "link", "show", rx])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .context("no rx packet count for the receiving veth")
    }
}
