//! What lb decap asks the kernel about interfaces, XDP links and bpffs: small, local versions
//! of the agent's helpers, so this crate does not depend on the agent.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use aya::programs::links::{FdLink, LinkType, PinnedLink};

/// The interface's index in this network namespace.
pub(crate) fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: if_nametoindex only reads the NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface `{name}` in this network namespace");
    }
    Ok(i)
}

/// `statfs(2)`'s f_type of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads the NUL-terminated path and writes only into `st`.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs on /sys/fs/bpf if the pin directory is under it and nothing is mounted there
/// yet (as the agent does), then requires the directory to be on a bpffs.
pub(crate) fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        tracing::info!("mounting bpffs on /sys/fs/bpf");
        let (src, target, fstype, opts) = (c"bpf", c"/sys/fs/bpf", c"bpf", c"mode=0700");
        // SAFETY: constant NUL-terminated strings, read only by the kernel.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    ensure!(
        is_bpffs(&probe),
        "the pin directory {} is not on a bpffs (mount one, or use a directory under /sys/fs/bpf)",
        pin_dir.display()
    );
    Ok(())
}

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
