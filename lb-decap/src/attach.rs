//! Attaching (or atomically replacing) the program on an interface, and detaching it.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{
    XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use serde_json::json;

use crate::addr_list::join;
use crate::kernel::{iface_xdp, xdp_link_info};
use crate::pins::{LINK_PIN, remove_if_present};
use crate::program::Decap;
use lb_host::{ensure_bpffs, ifindex};

/// What `lb decap` did.
#[derive(Debug)]
pub struct AttachReport {
    pub iface: String,
    /// True when a running lb-decap was switched to the new program (link update).
    pub replaced: bool,
    /// "driver" or "generic" for a new attachment; a replaced one keeps its mode.
    pub mode: Option<&'static str>,
    pub program_id: u32,
    pub addresses: Vec<Ipv6Addr>,
    pub gue_port: u16,
    pub pin_dir: PathBuf,
}

impl AttachReport {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        json!({
            "iface": self.iface,
            "action": if self.replaced { "replaced" } else { "attached" },
            "mode": self.mode,
            "program_id": self.program_id,
            "addresses": self.addresses,
            "gue_port": self.gue_port,
            "pin_dir": self.pin_dir,
        })
    }

    pub(crate) fn render(&self) -> String {
        let how = match (self.replaced, self.mode) {
            (true, _) => "replaced the running program".to_string(),
            (false, Some(m)) => format!("attached in {m} mode"),
            (false, None) => "attached".to_string(),
        };
        format!(
            "lb-decap on {}: {how} (program id {}), tunnel addresses {}, GUE port {}, pinned at {}\n",
            self.iface,
            self.program_id,
            join(&self.addresses),
            self.gue_port,
            self.pin_dir.display()
        )
    }
}

/// Loads, configures and attaches (or atomically replaces) the program on `iface`.
pub fn attach(
    iface: &str,
    addresses: &[Ipv6Addr],
    gue_port: u16,
    mode: XdpMode,
    pin_dir: &Path,
) -> Result<AttachReport> {
    ensure_bpffs(pin_dir)?;
    let link_pin = pin_dir.join(LINK_PIN);
    let existing = pinned_link(iface, &link_pin)?;
    if existing == PinnedState::Stale {
        tracing::warn!(
            "{} is left from an interface that no longer exists; replacing it",
            link_pin.display()
        );
        clear_pins(pin_dir)?;
    }
    if existing != PinnedState::Ours
        && let Some((prog, _)) = iface_xdp(iface)?
    {
        bail!(
            "{iface} already runs XDP program {prog}, not one lb decap pinned at {}: detach it \
             first (`ip link set {iface} xdp off`, or `lb detach` for the load balancer's)",
            pin_dir.display()
        );
    }

    let mut decap = Decap::load()?;
    decap.configure(addresses, gue_port)?;
    std::fs::create_dir_all(pin_dir)
        .with_context(|| format!("creating the pin directory {}", pin_dir.display()))?;
    let attached_mode = if existing == PinnedState::Ours {
        let link = PinnedLink::from_pin(&link_pin)
            .with_context(|| format!("opening the pinned link {}", link_pin.display()))?;
        let link =
            XdpLink::try_from(FdLink::from(link)).context("the pinned link is not an XDP link")?;
        // bpf_link_update: packets see either the old program and maps or the new ones.
        decap
            .program_mut()
            .attach_to_link(link)
            .with_context(|| format!("switching {iface}'s XDP link to the new program"))?;
        None
    } else {
        Some(attach_new(&mut decap, iface, mode, &link_pin)?)
    };
    // The link now holds the new maps; repoint the map pins at them for --stats.
    decap.pin_maps(pin_dir)?;
    let program_id = decap
        .program()
        .info()
        .context("reading the program's id")?
        .id();
    Ok(AttachReport {
        iface: iface.to_string(),
        replaced: existing == PinnedState::Ours,
        mode: attached_mode,
        program_id,
        addresses: addresses.to_vec(),
        gue_port,
        pin_dir: pin_dir.to_path_buf(),
    })
}

/// A new attachment (driver mode falls back to generic), its link pinned so it outlives us.
fn attach_new(
    decap: &mut Decap,
    iface: &str,
    mode: XdpMode,
    link_pin: &Path,
) -> Result<&'static str> {
    let prog = decap.program_mut();
    let (id, how) = match prog.attach(iface, mode) {
        Ok(id) if mode == XdpMode::Skb => (id, "generic"),
        Ok(id) => (id, "driver"),
        Err(e) if mode == XdpMode::Driver => {
            tracing::warn!(
                "driver-mode XDP failed on {iface} ({e}); falling back to generic mode, which is \
                 much slower"
            );
            let id = prog
                .attach(iface, XdpMode::Skb)
                .with_context(|| format!("attaching lb-decap to {iface}"))?;
            (id, "generic")
        }
        Err(e) => return Err(e).with_context(|| format!("attaching lb-decap to {iface}")),
    };
    let link = FdLink::try_from(prog.take_link(id)?)
        .context("the kernel attached XDP without a bpf_link (needs Linux 5.9+ to pin it)")?;
    // Dropping the pinned handle only closes our fd: the pin keeps the program attached.
    link.pin(link_pin)
        .with_context(|| format!("pinning the link at {}", link_pin.display()))?;
    Ok(how)
}

/// What the pin directory's link is to `iface` in this network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PinnedState {
    None,
    /// Attached to `iface` here: a re-run updates it.
    Ours,
    /// Its interface is gone (the link is defunct): the pins are leftovers.
    Stale,
}

/// Refuses a link pinned for another interface, which the default pin directory cannot tell
/// apart from ours when two network namespaces both have an `eth0`.
fn pinned_link(iface: &str, link_pin: &Path) -> Result<PinnedState> {
    if !link_pin.exists() {
        return Ok(PinnedState::None);
    }
    let info = xdp_link_info(link_pin)?;
    if info.ifindex == 0 {
        return Ok(PinnedState::Stale);
    }
    let here = ifindex(iface).ok();
    let running = iface_xdp(iface).ok().flatten().map(|(p, _)| p);
    if here == Some(info.ifindex) && running == Some(info.prog_id) {
        return Ok(PinnedState::Ours);
    }
    bail!(
        "{} holds the XDP link of another interface (ifindex {}, program {}), not {iface}'s here \
         (another network namespace's?); give this interface its own --pin-dir",
        link_pin.display(),
        info.ifindex,
        info.prog_id
    )
}

/// Removes the link pin (detaching the program once nothing else holds the link) and the map
/// pins. Returns false when nothing was pinned.
pub fn detach(iface: &str, pin_dir: &Path) -> Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    let link_pin = pin_dir.join(LINK_PIN);
    let prog_id = match pinned_link(iface, &link_pin)? {
        PinnedState::Ours => Some(xdp_link_info(&link_pin)?.prog_id),
        PinnedState::None | PinnedState::Stale => None,
    };
    clear_pins(pin_dir)?;
    // The kernel releases an unpinned link asynchronously: report only once it is off the NIC.
    if let Some(prog_id) = prog_id {
        let deadline = Instant::now() + Duration::from_secs(2);
        while iface_xdp(iface)?.map(|(p, _)| p) == Some(prog_id) {
            ensure!(
                Instant::now() < deadline,
                "{iface} still runs program {prog_id} 2 s after its link was unpinned: is \
                 another process holding the link?"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(true)
}

/// Removes the pin directory: the link pin first, so the program stops before its maps go.
fn clear_pins(pin_dir: &Path) -> Result<()> {
    remove_if_present(&pin_dir.join(LINK_PIN))?;
    for entry in
        std::fs::read_dir(pin_dir).with_context(|| format!("reading {}", pin_dir.display()))?
    {
        let path = entry?.path();
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))
}
