//! `lb decap`: the backend's XDP decapsulation program (`lb_decap`): load, configure, attach and
//! pin it so it runs without a process, read its counters, detach it.
//!
//! Every run loads a new program with new maps, fills them, and only then makes it live: a first
//! run attaches it (driver mode, else generic) and pins the link; a re-run switches the pinned
//! link to the new program with `bpf_link_update`, so the address set and GUE port change in one
//! atomic step. The maps are pinned next to the link so `--stats` can read them.

use std::ffi::CString;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::{
    CounterValue, DEFAULT_GUE_PORT,
    decap::{DECAP_MAX_ADDRS, DecapConfig, DecapCounter, PROGRAM_NAME, names},
    v6_words, words_v6,
};
use serde_json::json;

/// Where `lb decap` pins an interface's link and maps unless told otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";
/// The pinned link's file name in the pin directory.
const LINK_PIN: &str = "link";

#[derive(clap::Args, Debug, Clone)]
pub struct DecapArgs {
    /// The NIC the tunnelled packets arrive on.
    #[arg(long)]
    pub iface: String,
    /// A tunnel address of this backend: the IPv6 address the load balancers send to (repeat
    /// for several, up to 16). Packets to other addresses pass untouched.
    #[arg(long = "address", value_name = "IPV6", conflicts_with_all = ["stats", "detach"])]
    pub addresses: Vec<String>,
    /// UDP destination port of GUE (variant 1) tunnel packets; the load balancers' `gue_port`.
    #[arg(long, default_value_t = DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// XDP mode; driver mode falls back to generic (with a warning) where the driver lacks XDP.
    #[arg(long, value_enum, default_value_t = Mode::Driver)]
    pub mode: Mode,
    /// bpffs directory for the pinned link and maps [default: /sys/fs/bpf/lb-decap/<iface>].
    #[arg(long)]
    pub pin_dir: Option<PathBuf>,
    /// Print the attached program's counters and settings instead of attaching.
    #[arg(long, conflicts_with = "detach")]
    pub stats: bool,
    /// Detach the program from the NIC and remove its pins.
    #[arg(long)]
    pub detach: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Driver,
    Generic,
}

/// `lb decap ...`.
pub fn run(args: DecapArgs, json: bool) -> Result<()> {
    check_iface_name(&args.iface)?;
    let pin_dir = args
        .pin_dir
        .clone()
        .unwrap_or_else(|| default_pin_dir(&args.iface));
    if args.stats {
        let st = status(&args.iface, &pin_dir)?;
        return print(json, &st.to_json(), || st.render());
    }
    if args.detach {
        let removed = detach(&args.iface, &pin_dir)?;
        let text = if removed {
            format!(
                "lb-decap detached from {} and {} removed\n",
                args.iface,
                pin_dir.display()
            )
        } else {
            format!(
                "lb-decap is not attached to {} (nothing pinned at {})\n",
                args.iface,
                pin_dir.display()
            )
        };
        let j = json!({"iface": args.iface, "pin_dir": pin_dir, "detached": removed});
        return print(json, &j, || text.clone());
    }
    // Everything is checked before anything changes.
    let addresses = parse_addresses(&args.addresses)?;
    ensure!(
        args.gue_port != 0,
        "--gue-port 0: GUE needs a UDP port from 1 to 65535 (the load balancers' gue_port)"
    );
    crate::neighbour::ifindex(&args.iface)?;
    let mode = match args.mode {
        Mode::Driver => XdpMode::Driver,
        Mode::Generic => XdpMode::Skb,
    };
    let report = attach(&args.iface, &addresses, args.gue_port, mode, &pin_dir)?;
    print(json, &report.to_json(), || report.render())
}

fn print(json: bool, j: &serde_json::Value, text: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(j)?);
    } else {
        print!("{}", text());
    }
    Ok(())
}

pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(DEFAULT_PIN_ROOT).join(iface)
}

/// The name becomes a path component of the pin directory: keep it to what Linux allows.
fn check_iface_name(iface: &str) -> Result<()> {
    ensure!(
        !iface.is_empty()
            && iface.len() < libc::IFNAMSIZ
            && !iface.contains(['/', '\0'])
            && iface != "."
            && iface != "..",
        "`{iface}` is not an interface name"
    );
    Ok(())
}

/// The tunnel addresses, in order and without repeats.
pub fn parse_addresses(args: &[String]) -> Result<Vec<Ipv6Addr>> {
    ensure!(
        !args.is_empty(),
        "give the backend's tunnel address with --address <IPV6> (the address the load \
         balancers send to)"
    );
    let mut out: Vec<Ipv6Addr> = Vec::new();
    for s in args {
        let a = match s.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => a,
            Ok(IpAddr::V4(_)) => bail!(
                "--address {s} is an IPv4 address: the load balancers tunnel to the backend's \
                 IPv6 address"
            ),
            Err(_) if s.contains('/') => {
                bail!("--address {s}: give the address alone, without a prefix length")
            }
            Err(_) => bail!("--address {s} is not an IPv6 address"),
        };
        ensure!(
            !a.is_unspecified() && !a.is_multicast() && !a.is_loopback(),
            "--address {s} cannot be a tunnel destination (unspecified, loopback or multicast)"
        );
        if !out.contains(&a) {
            out.push(a);
        }
    }
    ensure!(
        out.len() <= DECAP_MAX_ADDRS as usize,
        "{} tunnel addresses given; lb decap takes at most {DECAP_MAX_ADDRS}",
        out.len()
    );
    Ok(out)
}

/// A loaded (verified, not attached) decapsulation program with its own, new maps.
pub struct Decap {
    ebpf: Ebpf,
}

impl Decap {
    pub fn load() -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(crate::DECAP_OBJECT)
            .context("loading the lb-decap object")?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| anyhow!("program {PROGRAM_NAME} missing from the object"))?
            .try_into()?;
        prog.load()
            .context("the verifier rejected the decapsulation program")?;
        Ok(Self { ebpf })
    }

    /// Fills the (new, empty) maps: the tunnel addresses and the GUE port.
    pub fn configure(&mut self, addresses: &[Ipv6Addr], gue_port: u16) -> Result<()> {
        let mut addrs: HashMap<&mut MapData, [u32; 4], u32> =
            HashMap::try_from(self.map_mut(names::ADDRS)?)?;
        for (i, a) in addresses.iter().enumerate() {
            addrs
                .insert(v6_words(*a), i as u32, 0)
                .with_context(|| format!("writing {a} to {}", names::ADDRS))?;
        }
        let cfg = DecapConfig {
            gue_port: gue_port.to_be(),
            _pad: [0; 6],
        };
        let mut map: Array<&mut MapData, DecapConfig> =
            Array::try_from(self.map_mut(names::CONFIG)?)?;
        map.set(0, cfg, 0).context("writing DECAP_CONFIG")
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf.program(PROGRAM_NAME).unwrap().try_into().unwrap()
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap()
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Every counter, summed over CPUs.
    pub fn counters(&mut self) -> Result<Vec<(DecapCounter, CounterValue)>> {
        let map: PerCpuArray<&mut MapData, CounterValue> =
            PerCpuArray::try_from(self.map_mut(names::STATS)?)?;
        read_counters(&map)
    }

    pub fn counter(&mut self, c: DecapCounter) -> Result<CounterValue> {
        Ok(self.counters()?[c as usize].1)
    }

    /// Pins every map under `dir`, replacing what a previous run pinned there.
    fn pin_maps(&self, dir: &Path) -> Result<()> {
        for name in names::PINNED {
            let path = dir.join(name);
            remove_if_present(&path)?;
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the object"))?
                .pin(&path)
                .with_context(|| format!("pinning {}", path.display()))?;
        }
        Ok(())
    }
}

fn read_counters<T: std::borrow::Borrow<MapData>>(
    map: &PerCpuArray<T, CounterValue>,
) -> Result<Vec<(DecapCounter, CounterValue)>> {
    DecapCounter::ALL
        .iter()
        .map(|&c| {
            let v = map
                .get(&(c as u32), 0)
                .with_context(|| format!("reading counter {}", c.name()))?;
            let sum = v.iter().fold(CounterValue::default(), |a, v| CounterValue {
                packets: a.packets + v.packets,
                bytes: a.bytes + v.bytes,
            });
            Ok((c, sum))
        })
        .collect()
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

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
    fn to_json(&self) -> serde_json::Value {
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

    fn render(&self) -> String {
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

fn join(addrs: &[Ipv6Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Loads, configures and attaches (or atomically replaces) the program on `iface`.
pub fn attach(
    iface: &str,
    addresses: &[Ipv6Addr],
    gue_port: u16,
    mode: XdpMode,
    pin_dir: &Path,
) -> Result<AttachReport> {
    crate::dataplane::ensure_bpffs(pin_dir)?;
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
    let here = crate::neighbour::ifindex(iface).ok();
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

/// The pinned program's state: settings from its maps, whether it runs on `iface`, counters.
#[derive(Debug)]
pub struct DecapStatus {
    pub iface: String,
    pub pin_dir: PathBuf,
    pub program_id: u32,
    /// "driver" or "generic" while attached to `iface`; None when it is not (interface gone).
    pub mode: Option<&'static str>,
    pub addresses: Vec<Ipv6Addr>,
    pub gue_port: u16,
    pub counters: Vec<(DecapCounter, CounterValue)>,
}

pub fn status(iface: &str, pin_dir: &Path) -> Result<DecapStatus> {
    let link_pin = pin_dir.join(LINK_PIN);
    ensure!(
        link_pin.exists(),
        "lb-decap is not attached to {iface} (nothing pinned at {})",
        pin_dir.display()
    );
    let info = xdp_link_info(&link_pin)?;
    let mode = match iface_xdp(iface) {
        Ok(Some((prog, mode))) if prog == info.prog_id => Some(mode),
        _ => None,
    };
    let open = |name: &str| {
        let path = pin_dir.join(name);
        MapData::from_pin(&path).with_context(|| format!("opening the pinned {}", path.display()))
    };
    let addrs: HashMap<MapData, [u32; 4], u32> =
        HashMap::try_from(Map::HashMap(open(names::ADDRS)?))?;
    let mut addresses: Vec<(u32, Ipv6Addr)> = addrs
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, i)| (i, words_v6(&k)))
        .collect();
    addresses.sort();
    let cfg: Array<MapData, DecapConfig> = Array::try_from(Map::Array(open(names::CONFIG)?))?;
    let stats: PerCpuArray<MapData, CounterValue> =
        PerCpuArray::try_from(Map::PerCpuArray(open(names::STATS)?))?;
    Ok(DecapStatus {
        iface: iface.to_string(),
        pin_dir: pin_dir.to_path_buf(),
        program_id: info.prog_id,
        mode,
        addresses: addresses.into_iter().map(|(_, a)| a).collect(),
        gue_port: u16::from_be(cfg.get(&0, 0)?.gue_port),
        counters: read_counters(&stats)?,
    })
}

impl DecapStatus {
    fn to_json(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> = self
            .counters
            .iter()
            .map(|(c, v)| {
                (
                    c.name().to_string(),
                    json!({"packets": v.packets, "bytes": v.bytes}),
                )
            })
            .collect();
        json!({
            "iface": self.iface,
            "pin_dir": self.pin_dir,
            "program_id": self.program_id,
            "attached": self.mode.is_some(),
            "mode": self.mode,
            "addresses": self.addresses,
            "gue_port": self.gue_port,
            "counters": counters,
        })
    }

    fn render(&self) -> String {
        let state = match self.mode {
            Some(m) => format!("attached in {m} mode"),
            None => "pinned but NOT attached to this interface".to_string(),
        };
        let rows: Vec<Vec<String>> = self
            .counters
            .iter()
            .map(|(c, v)| {
                vec![
                    c.name().to_string(),
                    v.packets.to_string(),
                    v.bytes.to_string(),
                ]
            })
            .collect();
        format!(
            "lb-decap on {}: {state} (program id {}), pinned at {}\ntunnel addresses: {}\nGUE \
             port: {}\n\n{}",
            self.iface,
            self.program_id,
            self.pin_dir.display(),
            join(&self.addresses),
            self.gue_port,
            crate::cli::table(&["COUNTER", "PACKETS", "BYTES"], &rows)
        )
    }
}

/// The XDP program running on `iface` in this network namespace and its mode, from
/// `ip -j link` (as the neighbour lookups do).
fn iface_xdp(iface: &str) -> Result<Option<(u32, &'static str)>> {
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

struct XdpLinkInfo {
    prog_id: u32,
    /// 0 once the interface is gone.
    ifindex: u32,
}

/// The program and interface of a pinned XDP link: BPF_OBJ_GET, then BPF_OBJ_GET_INFO_BY_FD
/// (aya's `LinkInfo` does not expose the interface).
fn xdp_link_info(pin: &Path) -> Result<XdpLinkInfo> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// The head of `struct bpf_link_info`; its union (8-byte aligned) starts with `xdp.ifindex`.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        type_: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        xdp_ifindex: u32,
        _pad2: u32,
    }
    let path = CString::new(pin.as_os_str().as_bytes()).context("pin path")?;
    let get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    // SAFETY: BPF_OBJ_GET reads the attr and the NUL-terminated path it points at.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &get as *const ObjGetAttr,
            std::mem::size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening the pinned link {}", pin.display()));
    }
    // SAFETY: the kernel just returned this fd to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo::default();
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading the link {}", pin.display()));
    }
    ensure!(
        info.type_ == BPF_LINK_TYPE_XDP,
        "{} is not an XDP link (link type {})",
        pin.display(),
        info.type_
    );
    Ok(XdpLinkInfo {
        prog_id: info.prog_id,
        ifindex: info.xdp_ifindex,
    })
}
