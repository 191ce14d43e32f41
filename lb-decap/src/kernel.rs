//! What lb decap asks the kernel about the XDP program on an interface and its pinned link
//! (bpffs and interface indexes come from lb-host, shared with the agent).

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use aya::programs::links::{FdLink, LinkType, PinnedLink};

/// The XDP program running on `iface` in this network namespace and its mode, from
/// `ip -j link` (as the neighbour lookups do).
pub(crate) fn iface_xdp(iface: &str) -> Result<Option<(u32, &'static str)>> {
    let out = std::process::Command::new("ip")
        .args(["-j", "link", "show", "dev", iface])
        .output()
        .context("running ip link show")?;
    ensure!(
        out.status.success(),
        "ip link show dev {iface}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link output")?;
    let xdp = &v[0]["xdp"];
    // One entry per attached mode; a single program also appears at the top level.
    let entries = match xdp["attached"].as_array() {
        Some(a) if !a.is_empty() => a.clone(),
        _ => vec![xdp.clone()],
    };
    for e in entries {
        if let Some(id) = e["prog"]["id"].as_u64() {
            // XDP_ATTACHED_DRV / _SKB / _HW.
            let mode = match e["mode"].as_u64() {
                Some(1) => "driver",
                Some(2) => "generic",
                Some(3) => "offload",
                _ => "unknown",
            };
            return Ok(Some((id as u32, mode)));
        }
    }
    Ok(None)
}

pub(crate) struct XdpLinkInfo {
    pub prog_id: u32,
    /// 0 once the interface is gone.
    pub ifindex: u32,
}

/// The program and interface of a pinned XDP link. aya opens the pin and reads the link's id,
/// program and type; its `LinkInfo` does not expose the interface, which the kernel also shows
/// in the link's fdinfo (`ifindex:`, 0 once the device is gone; Linux 5.9+).
pub(crate) fn xdp_link_info(pin: &Path) -> Result<XdpLinkInfo> {
    let link = FdLink::from(
        PinnedLink::from_pin(pin)
            .with_context(|| format!("opening the pinned link {}", pin.display()))?,
    );
    let info = link
        .info()
        .with_context(|| format!("reading the link {}", pin.display()))?;
    match info.link_type() {
        Ok(LinkType::Xdp) => {}
        other => bail!("{} is not an XDP link (link type {other:?})", pin.display()),
    }
    // `link` keeps the fd open while its fdinfo is read.
    let ifindex = fdinfo_field("link_id", info.id(), "ifindex")
        .with_context(|| format!("reading the interface of the link {}", pin.display()))?;
    drop(link);
    Ok(XdpLinkInfo {
        prog_id: info.program_id(),
        ifindex,
    })
}

/// Finds this process's fd whose /proc fdinfo has `key: value` and returns its `field`.
fn fdinfo_field(key: &str, value: u32, field: &str) -> Result<u32> {
    let (key, field) = (format!("{key}:"), format!("{field}:"));
    let entries = std::fs::read_dir("/proc/self/fdinfo").context("reading /proc/self/fdinfo")?;
    for entry in entries.flatten() {
        // Fds close under us (the directory's own): skip what cannot be read.
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let get = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<u32>().ok())
            })
        };
        if get(&key) == Some(value) {
            return get(&field).with_context(|| format!("no `{field}` in the link's fdinfo"));
        }
    }
    bail!("no open fd of this process shows {key} {value}")
}
