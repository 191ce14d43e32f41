//! The routes file the agent owns: both static protocols, one host route per announced VIP.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The static protocol holding the IPv4 VIPs (`export where proto = "lb_vips4";`).
pub const PROTO_V4: &str = "lb_vips4";
/// The static protocol holding the IPv6 VIPs (`export where proto = "lb_vips6";`).
pub const PROTO_V6: &str = "lb_vips6";
/// Where the routes file lives unless configured otherwise.
pub const DEFAULT_ROUTES_FILE: &str = "/etc/bird/lb-vips.conf";
/// The first line of every routes file the agent writes.
pub const ROUTES_HEADER: &str = "# written by the lb agent; do not edit";

/// The routes file for a set of VIPs: both static protocols, always, each with one host
/// blackhole route per VIP of its family (none is fine: BIRD accepts an empty static protocol).
/// The blackhole destination only gives BIRD a valid route to export; the dataplane, not the
/// kernel, handles VIP traffic, so the load balancer's own kernel protocol must not export
/// these routes (docs/bgp.md).
pub fn render_routes(vips: &BTreeSet<IpAddr>) -> String {
    render_routes_via(vips, None)
}

/// Like [`render_routes`], but with `alive` each route goes through that interface instead of
/// to a blackhole: BIRD keeps such a route only while the interface is up, and the agent's
/// liveness interface lives exactly as long as the agent (`alive`).
pub fn render_routes_via(vips: &BTreeSet<IpAddr>, alive: Option<&str>) -> String {
    let mut out = String::new();
    out.push_str(ROUTES_HEADER);
    out.push('\n');
    out.push_str(
        "# BIRD includes this file from bird.conf; the agent rewrites it and runs `configure`\n\
         # whenever the set of announced VIPs changes. Export these protocols to BGP with\n\
         # `export where proto = \"lb_vips4\";` and `export where proto = \"lb_vips6\";`.\n",
    );
    for (proto, channel, v4) in [(PROTO_V4, "ipv4", true), (PROTO_V6, "ipv6", false)] {
        out.push('\n');
        out.push_str(&format!("protocol static {proto} {{\n\t{channel};\n"));
        for vip in vips.iter().filter(|v| v.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            match alive {
                Some(iface) => out.push_str(&format!("\troute {vip}/{len} via \"{iface}\";\n")),
                None => out.push_str(&format!("\troute {vip}/{len} blackhole;\n")),
            }
        }
        out.push_str("}\n");
    }
    out
}

/// The routes file before the agent's first run: both protocols, no routes.
pub fn initial_routes() -> String {
    render_routes(&BTreeSet::new())
}

/// First deployment: creates the routes file with no routes if it does not exist yet (so
/// `bird.conf` can include it before the agent ever ran). True if it was created.
pub fn write_initial_routes(path: &Path) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    write_routes_file(path, &initial_routes())
}

/// Writes `content` to `path` atomically (a temporary file in the same directory, synced,
/// then renamed over it), unless the file already holds exactly `content`. True if written.
pub fn write_routes_file(path: &Path, content: &str) -> Result<bool> {
    match std::fs::read(path) {
        Ok(old) if old == content.as_bytes() => return Ok(false),
        Ok(old) if !old.is_empty() && !old.starts_with(ROUTES_HEADER.as_bytes()) => {
            tracing::warn!(
                "replacing {}, which the agent did not write (the agent owns this file)",
                path.display()
            );
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let name = path
        .file_name()
        .with_context(|| format!("routes file {} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        // Readable by BIRD, which often runs as its own user.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "writing the routes file {} (through {})",
                path.display(),
                tmp.display()
            )
        });
    }
    // Make the rename itself durable; a failure here changes nothing for BIRD.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn routes_through_the_liveness_interface() {
        let text = render_routes_via(&set(&["192.0.2.10", "2001:db8:100::10"]), Some("lb-alive"));
        assert!(
            text.contains("\troute 192.0.2.10/32 via \"lb-alive\";\n"),
            "{text}"
        );
        assert!(
            text.contains("\troute 2001:db8:100::10/128 via \"lb-alive\";\n"),
            "{text}"
        );
        assert!(!text.contains("blackhole"), "{text}");
    }
}
