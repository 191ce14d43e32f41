//! Loading the program (or adopting a previous agent's pinned maps), attaching it to NICs and
//! pinning its links, and taking all of that down again (`lb detach`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use aya::{
    EbpfLoader,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{globals, names};

use super::handle::{Attachment, Dataplane, PROGRAM_NAME};
use super::limits::{DataplaneLimits, check_pinned_layout, map_layout};

impl Dataplane {
    /// Loads and verifies the XDP program with these limits (it is not attached).
    pub fn load(limits: DataplaneLimits) -> Result<Self> {
        Self::load_object(crate::EBPF_OBJECT, limits)
    }

    /// Like `load`, from another build of the object (the bench compares variants).
    pub fn load_object(object: &[u8], limits: DataplaneLimits) -> Result<Self> {
        Self::load_inner(object, limits, None)
    }

    /// Loads the program with its maps pinned under `pin_dir`. Maps a previous agent pinned
    /// there are reused as they are, state and all, after checking that their layout matches
    /// this build and these limits.
    pub fn load_pinned(limits: DataplaneLimits, pin_dir: &Path) -> Result<Self> {
        Self::load_inner(crate::EBPF_OBJECT, limits, Some(pin_dir))
    }

    fn load_inner(object: &[u8], limits: DataplaneLimits, pin_dir: Option<&Path>) -> Result<Self> {
        limits.validate()?;
        let mut adopted = false;
        if let Some(dir) = pin_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the pin directory {}", dir.display()))?;
            adopted = check_pinned_layout(dir, &limits)?;
        }
        let layout = map_layout(&limits);
        let pin_paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => names::PINNED.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let mut loader = EbpfLoader::new();
        loader.override_global(globals::RING_SIZE, &limits.ring_size, true);
        let vip_index_size = lb_common::vip_index_size(limits.max_vips);
        loader.override_global(globals::VIP_INDEX_SIZE, &vip_index_size, true);
        // Required only for a size other than the default: an older build of the object
        // (`lb-bench --object`, before and after figures) has no such global and its own size.
        let cache_bits = lb_common::flow_cache_bits(limits.flow_cache_slots);
        let required = limits.flow_cache_slots != lb_common::DEFAULT_FLOW_CACHE_SLOTS;
        loader.override_global(globals::FLOW_CACHE_BITS, &cache_bits, required);
        for (name, _, _, entries) in &layout {
            loader.map_max_entries(name, *entries);
        }
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the XDP object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("the verifier rejected the XDP program")?;
        let mut dp = Self {
            ebpf,
            limits,
            pin_dir: pin_dir.map(Path::to_path_buf),
            adopted,
            addresses: BTreeMap::new(),
            backend_addrs: BTreeMap::new(),
            egress_by_addr: Default::default(),
            // The static next hops' way out until the agent says otherwise: what every build
            // before the egress cache did.
            egress_default: lb_common::Egress::INGRESS,
        };
        if adopted {
            for (key, _) in dp.read_vips()? {
                *dp.addresses.entry((key.family, key.addr)).or_default() += 1;
            }
            // EGRESS is not pinned: the new program's starts empty (every packet dropped as
            // unresolved) until written here, before the link is switched to this program.
            for (id, b) in dp.read_backends()? {
                dp.backend_addrs.insert(id, b.addr);
                let e = dp.egress_for(&b.addr);
                dp.write_egress(id, &e)?;
            }
        }
        Ok(dp)
    }

    fn link_pin(&self, iface: &str) -> Option<PathBuf> {
        self.pin_dir.as_ref().map(|d| link_pin_path(d, iface))
    }

    /// Attaches the program to `iface`. A link a previous agent pinned for this NIC is kept and
    /// atomically switched to this program, so forwarding never stops; otherwise a new link is
    /// made (driver mode, falling back to generic) and pinned.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attachment> {
        let pin = self.link_pin(iface);
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(pin)
                .with_context(|| format!("opening the pinned link {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(link))
                .context("the pinned link is not an XDP link")?;
            self.program_mut()
                .attach_to_link(link)
                .with_context(|| format!("switching {iface}'s XDP link to the new program"))?;
            return Ok(Attachment::Adopted);
        }
        let (id, how) = match self.program_mut().attach(iface, mode) {
            Ok(id) => (
                id,
                if mode == XdpMode::Skb {
                    Attachment::Generic
                } else {
                    Attachment::Driver
                },
            ),
            Err(e) if mode == XdpMode::Driver => {
                tracing::warn!(
                    "driver-mode XDP failed on {iface} ({e}); falling back to generic mode, which is much slower"
                );
                let id = self
                    .program_mut()
                    .attach(iface, XdpMode::Skb)
                    .with_context(|| format!("attaching to {iface}"))?;
                (id, Attachment::Generic)
            }
            Err(e) => return Err(e).with_context(|| format!("attaching to {iface}")),
        };
        if let Some(pin) = pin {
            let link = self.program_mut().take_link(id)?;
            let link = FdLink::try_from(link).context(
                "the kernel attached XDP without a bpf_link (needs Linux 5.9+ to pin it)",
            )?;
            let pinned = link
                .pin(&pin)
                .with_context(|| format!("pinning the link at {}", pin.display()))?;
            // The pin keeps the program attached after this agent exits.
            drop(pinned);
        }
        Ok(how)
    }
}

pub fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_{iface}"))
}

/// Detaches the NICs pinned under `pin_dir` and removes every pin: forwarding stops and the
/// maps are freed once no program holds them.
pub fn detach_pinned(pin_dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        std::fs::remove_file(entry.path())
            .with_context(|| format!("removing {}", entry.path().display()))?;
        removed.push(name);
    }
    std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    removed.sort();
    Ok(removed)
}

/// Removes one NIC's pinned link (detaching it once no agent holds it).
pub fn unpin_link(pin_dir: &Path, iface: &str) -> Result<bool> {
    let path = link_pin_path(pin_dir, iface);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
