//! Shared test support: a loaded XDP program with small maps, frame builders (etherparse),
//! and a decoder that checks an encapsulated output frame field by field.
//!
//! Every test needing BPF must run as root: `require_root` fails the test loudly otherwise.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Result, bail, ensure};
use aya::programs::{TestRun, TestRunOptions};
use etherparse::{Ipv6Header, PacketBuilder, SingleVlanHeader, UdpHeader};
use lb_common::{
    BACKEND_F_VALID, Backend, Counter, CounterValue, FlowKey, IfaceConfig, LbConfig, VIP_F_GUE,
    VipKey, VipMeta,
    maglev::{MaglevMember, MaglevTable},
    v6_words,
};
use lb_userspace::dataplane::{Dataplane, DataplaneLimits};

pub use lb_lab as lab;
pub use lb_lab::capture;
pub mod e2e;
pub mod netns;

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

pub const NIC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0x01];
pub const NEXT_HOP_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0b, 0xfe];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xc1, 0x01];
pub const SEED: u64 = 0x0123_4567_89ab_cdef;
pub const GUE_PORT: u16 = 6080;

pub fn lb_tunnel_addr() -> Ipv6Addr {
    "2001:db8:1b::1".parse().unwrap()
}

/// Backend `i`'s tunnel address: 2001:db8:be::i.
pub fn backend_addr(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xbe, 0, 0, 0, (i >> 16) as u16, i as u16)
}

/// The IP source and destination of a parsed frame (the outer header, for a tunnelled one).
pub fn ip_endpoints(p: &etherparse::SlicedPacket) -> Option<(IpAddr, IpAddr)> {
    use etherparse::NetSlice;
    match p.net.as_ref()? {
        NetSlice::Ipv4(ip) => Some((
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        )),
        NetSlice::Ipv6(ip) => Some((
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        )),
        _ => None,
    }
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads XDP programs and needs root (CAP_BPF, CAP_NET_ADMIN); run it as root"
    );
}

/// The verdict and output frame of one BPF_PROG_TEST_RUN.
pub struct Run {
    pub verdict: u32,
    pub out: Vec<u8>,
}

/// A loaded (not attached) load-balancer program with test-sized maps.
pub struct Lb {
    pub dp: Dataplane,
    pub ring_size: u32,
    pub cfg: LbConfig,
    /// Backend id -> the VIP (ring) it was installed for by `fill_ring`.
    owners: std::collections::HashMap<u32, u32>,
}

impl Lb {
    pub fn new(ring_size: u32) -> Self {
        Self::with_object(lb_objects::EBPF_OBJECT, ring_size, 200_000)
            .expect("loading the XDP program")
    }

    /// A load balancer from a given build of the XDP object.
    pub fn with_object(object: &[u8], ring_size: u32, max_conns: u32) -> Result<Self> {
        Self::with_limits(
            object,
            DataplaneLimits {
                ring_size,
                max_vips: 16,
                max_rings: 8,
                max_backends: 256,
                max_conns,
            },
        )
    }

    /// A load balancer with the given map sizes (the bench's scale runs).
    pub fn with_limits(object: &[u8], limits: DataplaneLimits) -> Result<Self> {
        require_root();
        let ring_size = limits.ring_size;
        let mut dp = Dataplane::load_object(object, limits)?;
        let cfg = LbConfig {
            src_ip6: v6_words(lb_tunnel_addr()),
            hash_seed: SEED,
            udp_timeout_ns: lb_common::DEFAULT_UDP_TIMEOUT_NS,
            tcp_idle_timeout_ns: lb_common::DEFAULT_TCP_IDLE_TIMEOUT_NS,
            tcp_closing_timeout_ns: lb_common::DEFAULT_TCP_CLOSING_TIMEOUT_NS,
            gue_port: GUE_PORT.to_be(),
            flags: 0,
            _pad: [0; 2],
        };
        dp.set_config(&cfg)?;
        // BPF_PROG_TEST_RUN delivers on the loopback device of the caller's namespace.
        dp.set_iface(
            lb_userspace::neighbour::ifindex("lo")?,
            IfaceConfig {
                src_mac: NIC_MAC,
                dst_mac: NEXT_HOP_MAC,
                mtu: 0,
                _pad: 0,
            },
        )?;
        Ok(Self {
            dp,
            ring_size,
            cfg,
            owners: Default::default(),
        })
    }

    pub fn set_config(&mut self, f: impl FnOnce(&mut LbConfig)) {
        f(&mut self.cfg);
        self.dp.set_config(&self.cfg).unwrap();
    }

    pub fn set_udp_timeout_ns(&mut self, ns: u64) {
        self.set_config(|c| c.udp_timeout_ns = ns);
    }

    /// Installs backend `id` at `backend_addr(id)` with generation 1 (serving VIP 0).
    pub fn install_backend(&mut self, id: u32) {
        self.install_backend_generation(id, 1);
    }

    pub fn install_backend_generation(&mut self, id: u32, generation: u32) {
        self.install_backend_of(id, generation, 0);
    }

    /// Installs backend `id` serving the VIP with id `vip` (what an established flow's fast
    /// path reads its VIP from).
    pub fn install_backend_of(&mut self, id: u32, generation: u32, vip: u32) {
        let b = Backend {
            addr: v6_words(backend_addr(id)),
            flags: BACKEND_F_VALID,
            generation,
            vip,
            weight: 1,
        };
        self.dp.set_backend(id, &b).unwrap();
    }

    /// Installs backends `ids` (weight each) for the VIP with id `ring` and fills `ring` with
    /// their Maglev table.
    /// Returns the table and the member-index -> backend-id mapping.
    pub fn fill_ring(&mut self, ring: u32, backends: &[(u32, u32)]) -> Installed {
        let members: Vec<MaglevMember> = backends
            .iter()
            .map(|&(id, weight)| MaglevMember {
                addr: backend_addr(id),
                weight,
            })
            .collect();
        let table = MaglevTable::build(self.ring_size, SEED, &members).unwrap();
        let ids: Vec<u32> = table
            .members()
            .iter()
            .map(|m| {
                backends
                    .iter()
                    .find(|&&(id, _)| backend_addr(id) == m.addr)
                    .unwrap()
                    .0
            })
            .collect();
        // By convention here, VIP `id` uses ring `id` (`add_vip`). As in the agent, a backend
        // id serves one VIP: an established flow finds its VIP through its backend.
        for &id in &ids {
            let owner = *self.owners.entry(id).or_insert(ring);
            assert_eq!(
                owner, ring,
                "backend id {id} already serves VIP {owner}; give each VIP its own backend ids"
            );
            self.install_backend_of(id, 1, ring);
        }
        let slots = table.slots_as_ids(&ids);
        self.dp.write_ring(ring, &slots).unwrap();
        Installed { slots }
    }

    /// Adds a VIP service whose ring holds `backends` as (id, weight).
    pub fn add_vip(
        &mut self,
        addr: IpAddr,
        port: u16,
        proto: u8,
        id: u32,
        gue: bool,
        backends: &[(u32, u32)],
    ) -> Installed {
        let installed = self.fill_ring(id, backends);
        let meta = VipMeta {
            id,
            ring: id,
            flags: if gue { VIP_F_GUE } else { 0 },
            _pad: 0,
        };
        self.dp
            .set_vip(VipKey::new(addr, port, proto), meta)
            .unwrap();
        installed
    }

    pub fn run(&self, frame: &[u8]) -> Run {
        let mut out = vec![0u8; frame.len() + 256];
        let res = self
            .dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        Run {
            verdict: res.return_value,
            out,
        }
    }

    pub fn counter(&mut self, c: Counter) -> u64 {
        self.dp.counter(c).unwrap().packets
    }

    pub fn counters(&mut self) -> Vec<(Counter, CounterValue)> {
        self.dp.counters().unwrap()
    }
}

/// A ring as written to the dataplane: slot -> backend id.
pub struct Installed {
    pub slots: Vec<u32>,
}

impl Installed {
    /// The backend the Maglev table gives this flow (what a SYN must get).
    pub fn backend_for(&self, key: &FlowKey) -> u32 {
        let hash = lb_common::flow_hash(key, SEED);
        self.slots[lb_common::ring_slot(hash, self.slots.len() as u32) as usize]
    }
}

/// TCP flags for the frame builders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tcp {
    Syn,
    Ack,
    Rst,
    Fin,
}

/// Describes a client frame to build.
#[derive(Clone, Debug)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub vlan: Option<u16>,
    pub tclass: u8,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Flow {
    /// The same flow framed between other MACs (real links in namespaces).
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn new(src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        Self {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            vlan: None,
            tclass: 0,
            src_mac: CLIENT_MAC,
            dst_mac: NIC_MAC,
        }
    }

    pub fn key(&self, proto: u8) -> FlowKey {
        FlowKey::new(self.src, self.sport, self.dst, self.dport, proto)
    }

    fn builder(&self) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => eth.ipv4(s.octets(), d.octets(), 57),
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => {
                eth.single_vlan(v.try_into().unwrap())
                    .ipv4(s.octets(), d.octets(), 57)
            }
            (IpAddr::V6(s), IpAddr::V6(d), None) => eth.ipv6(s.octets(), d.octets(), 57),
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => {
                eth.single_vlan(v.try_into().unwrap())
                    .ipv6(s.octets(), d.octets(), 57)
            }
            _ => panic!("mixed address families"),
        }
    }

    pub fn tcp(&self, flags: Tcp, payload: &[u8]) -> Vec<u8> {
        let b = self.builder().tcp(self.sport, self.dport, 1000, 64240);
        let b = match flags {
            Tcp::Syn => b.syn(),
            Tcp::Ack => b.ack(2000).psh(),
            Tcp::Rst => b.rst(),
            Tcp::Fin => b.fin().ack(2000),
        };
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        self.set_tclass(&mut v);
        v
    }

    pub fn udp(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        self.builder()
            .udp(self.sport, self.dport)
            .write(&mut v, payload)
            .unwrap();
        self.set_tclass(&mut v);
        v
    }

    fn set_tclass(&self, frame: &mut [u8]) {
        if self.tclass == 0 {
            return;
        }
        let l3 = l3_offset(frame);
        if self.src.is_ipv4() {
            frame[l3 + 1] = self.tclass;
            fix_ipv4_checksum(&mut frame[l3..]);
        } else {
            frame[l3] = (frame[l3] & 0xF0) | (self.tclass >> 4);
            frame[l3 + 1] = (frame[l3 + 1] & 0x0F) | (self.tclass << 4);
        }
    }
}

/// Offset of the IP header in an Ethernet frame (one optional VLAN tag).
pub fn l3_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    }
}

/// The IP packet inside a client frame, as its own header sizes it (without link padding).
pub fn ip_packet(frame: &[u8]) -> &[u8] {
    let l3 = l3_offset(frame);
    let ip = &frame[l3..];
    let len = if ip[0] >> 4 == 4 {
        u16::from_be_bytes([ip[2], ip[3]]) as usize
    } else {
        40 + u16::from_be_bytes([ip[4], ip[5]]) as usize
    };
    &ip[..len]
}

/// One's-complement sum of 16-bit words (RFC 1071), not yet inverted.
pub fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u32) << 8;
    }
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc
}

pub fn fix_ipv4_checksum(ip: &mut [u8]) {
    let ihl = ((ip[0] & 0x0F) as usize) * 4;
    ip[10] = 0;
    ip[11] = 0;
    let sum = !(ones_sum(0, &ip[..ihl]) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Checks an IP packet's own checksums: the IPv4 header's, and TCP's or UDP's with the pseudo-header.
pub fn check_inner_checksums(ip: &[u8]) -> Result<()> {
    let (l4, proto, pseudo) = if ip[0] >> 4 == 4 {
        let ihl = ((ip[0] & 0x0F) as usize) * 4;
        ensure!(
            ones_sum(0, &ip[..ihl]) == 0xFFFF,
            "bad IPv4 header checksum"
        );
        let l4 = &ip[ihl..];
        let mut p = ones_sum(0, &ip[12..20]);
        p = ones_sum(p, &[0, ip[9]]);
        p = ones_sum(p, &(l4.len() as u16).to_be_bytes());
        (l4, ip[9], p)
    } else {
        let l4 = &ip[40..];
        let mut p = ones_sum(0, &ip[8..40]);
        p = ones_sum(p, &(l4.len() as u32).to_be_bytes());
        p = ones_sum(p, &[0, 0, 0, ip[6]]);
        (l4, ip[6], p)
    };
    ensure!(
        proto == 6 || proto == 17,
        "unexpected inner protocol {proto}"
    );
    ensure!(
        ones_sum(pseudo, l4) == 0xFFFF,
        "bad {} checksum",
        if proto == 6 { "TCP" } else { "UDP" }
    );
    Ok(())
}

/// An output frame taken apart: outer Ethernet, VLAN, IPv6, optional UDP, and the inner packet.
#[derive(Debug)]
pub struct Encapsulated {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub vlan: Option<SingleVlanHeader>,
    pub ip6: Ipv6Header,
    pub udp: Option<UdpHeader>,
    pub inner: Vec<u8>,
}

/// Decodes an encapsulated frame and checks the structural invariants every output must hold:
/// ethertype IPv6, version 6, payload length equal to the bytes that follow, hop limit 64, the
/// UDP length for GUE. Field values specific to a flow are checked by the caller.
pub fn decode(out: &[u8]) -> Result<Encapsulated> {
    ensure!(
        out.len() >= 14 + 40,
        "output of {} bytes is too short for Ethernet + IPv6",
        out.len()
    );
    let eth_dst: [u8; 6] = out[0..6].try_into()?;
    let eth_src: [u8; 6] = out[6..12].try_into()?;
    let (vlan, mut rest) = if out[12..14] == [0x81, 0x00] {
        let (v, rest) = SingleVlanHeader::from_slice(&out[14..])?;
        ensure!(
            v.ether_type.0 == 0x86DD,
            "VLAN ethertype {:#x}",
            v.ether_type.0
        );
        (Some(v), rest)
    } else {
        ensure!(
            out[12..14] == [0x86, 0xDD],
            "outer ethertype {:02x?} is not IPv6",
            &out[12..14]
        );
        (None, &out[14..])
    };
    let (ip6, after) = Ipv6Header::from_slice(rest)?;
    rest = after;
    ensure!(
        ip6.payload_length as usize == rest.len(),
        "IPv6 payload length {} but {} bytes follow",
        ip6.payload_length,
        rest.len()
    );
    ensure!(ip6.hop_limit == 64, "hop limit {}", ip6.hop_limit);
    let udp = if ip6.next_header.0 == 17 {
        let (u, after) = UdpHeader::from_slice(rest)?;
        ensure!(
            u.length as usize == rest.len(),
            "UDP length {} but {} bytes",
            u.length,
            rest.len()
        );
        rest = after;
        Some(u)
    } else {
        None
    };
    let inner = rest.to_vec();
    let expect_nh = match inner.first().map(|b| b >> 4) {
        Some(4) => 4,
        Some(6) => 41,
        _ => bail!("inner packet is not IP"),
    };
    if udp.is_none() {
        ensure!(
            ip6.next_header.0 == expect_nh,
            "next header {} for an IPv{} inner packet",
            ip6.next_header.0,
            inner[0] >> 4
        );
    }
    Ok(Encapsulated {
        eth_dst,
        eth_src,
        vlan,
        ip6,
        udp,
        inner,
    })
}

impl Encapsulated {
    pub fn backend(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.ip6.destination)
    }
}

/// Full check of an encapsulated output against the input frame and what the flow should get.
pub fn check_encap(
    input: &[u8],
    out: &[u8],
    backend: Ipv6Addr,
    key: &FlowKey,
    gue: bool,
) -> Result<Encapsulated> {
    let e = decode(out)?;
    ensure!(
        e.eth_dst == NEXT_HOP_MAC,
        "Ethernet destination {:02x?}",
        e.eth_dst
    );
    ensure!(e.eth_src == NIC_MAC, "Ethernet source {:02x?}", e.eth_src);
    let l3 = l3_offset(input);
    match (l3, &e.vlan) {
        (14, None) => {}
        (18, Some(v)) => ensure!(
            out[14..16] == input[14..16],
            "VLAN TCI changed: {:02x?} -> {:02x?} ({v:?})",
            &input[14..16],
            &out[14..16]
        ),
        _ => bail!("VLAN tag presence changed"),
    }
    ensure!(
        Ipv6Addr::from(e.ip6.source) == lb_tunnel_addr(),
        "outer source {:?}",
        e.ip6.source
    );
    ensure!(
        e.backend() == backend,
        "outer destination {} but the flow belongs to {backend}",
        e.backend()
    );
    let inner = ip_packet(input);
    ensure!(
        e.inner == inner,
        "inner packet differs from the input's IP packet"
    );
    check_inner_checksums(&e.inner)?;
    let tclass = if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    };
    ensure!(
        e.ip6.traffic_class == tclass,
        "traffic class {:#x}, inner has {tclass:#x}",
        e.ip6.traffic_class
    );
    let hash = lb_common::flow_hash(key, SEED);
    let label = (hash & 0xF_FFFF).max(1);
    ensure!(
        e.ip6.flow_label.value() == label,
        "flow label {:#x}, want {label:#x}",
        e.ip6.flow_label.value()
    );
    match (&e.udp, gue) {
        (Some(u), true) => {
            ensure!(
                u.destination_port == GUE_PORT,
                "GUE port {}",
                u.destination_port
            );
            ensure!(
                u.source_port == 0xC000 | ((hash >> 20) as u16 & 0x3FFF),
                "GUE source port {}",
                u.source_port
            );
            ensure!(
                u.checksum == 0,
                "GUE UDP checksum {:#x}, want 0",
                u.checksum
            );
        }
        (None, false) => {}
        _ => bail!(
            "GUE expected: {gue}, UDP header present: {}",
            e.udp.is_some()
        ),
    }
    Ok(e)
}

/// Verdict counters: exactly one of these rises per packet.
pub fn is_verdict_counter(c: Counter) -> bool {
    !matches!(
        c,
        Counter::LruHit
            | Counter::LruMissSyn
            | Counter::LruMissNonSyn
            | Counter::LruMissUdp
            | Counter::LruStaleBackend
            | Counter::FlowEvents
            | Counter::DropFlowEvent
            // A forwarded ICMP error also counts as tx / tx_gue.
            | Counter::IcmpErrorForwarded
    )
}

/// BPF_PROG_TEST_RUN on a program fd, callable from any thread (while another thread owns the
/// `Dataplane` and writes its maps). Returns (verdict, output frame).
pub fn test_run_fd(prog_fd: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
    test_run_ctx(prog_fd, frame, &[])
}

/// BPF_PROG_TEST_RUN with a context (`struct __sk_buff` for TC programs, e.g. to set the mark).
pub fn test_run_ctx(
    prog_fd: std::os::fd::BorrowedFd<'_>,
    frame: &[u8],
    ctx: &[u8],
) -> Result<(u32, Vec<u8>)> {
    use std::os::fd::AsRawFd;
    // The test-run member of `union bpf_attr`, zero-padded to the size the kernel accepts.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: if ctx.is_empty() {
            0
        } else {
            ctx.as_ptr() as u64
        },
        ..Default::default()
    };
    // SAFETY: the attr points at live buffers whose sizes it states.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        bail!("BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

impl Lb {
    /// Sets the MTU of the test NIC (`IfaceConfig.mtu`, the largest IP packet that may leave
    /// it, outer header included; 0 = unchecked), keeping its MACs.
    pub fn set_mtu(&mut self, mtu: u16) {
        let lo = lb_userspace::neighbour::ifindex("lo").unwrap();
        let mut iface = self
            .dp
            .ifaces()
            .unwrap()
            .into_iter()
            .find(|&(ifindex, _)| ifindex == lo)
            .map(|(_, iface)| iface)
            .expect("the harness configures the loopback NIC");
        iface.mtu = mtu;
        self.dp.set_iface(lo, iface).unwrap();
    }
}

/// MAC of a router that sends ICMP errors towards a VIP (tests/tests/icmp.rs).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x0e, 0x01];

/// Describes an ICMP (IPv4) or ICMPv6 frame to build: type, code, the header's last 4 bytes
/// (echo identifier and sequence, the MTU of "too big", ...); the body is given to `build`.
#[derive(Clone, Debug)]
pub struct IcmpFrame {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL / hop limit.
    pub ttl: u8,
    pub ty: u8,
    pub code: u8,
    pub rest: [u8; 4],
}

impl IcmpFrame {
    /// `src -> dst`, from CLIENT_MAC to NIC_MAC, TTL 57, the last 4 header bytes zero.
    pub fn new(src: &str, dst: &str, ty: u8, code: u8) -> Self {
        Self {
            src_mac: CLIENT_MAC,
            dst_mac: NIC_MAC,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ttl: 57,
            ty,
            code,
            rest: [0; 4],
        }
    }

    /// The frame with `body` after the 8-byte ICMP header; etherparse computes the checksums.
    pub fn build(&self, body: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let mut v = Vec::new();
        let (ty, code, rest) = (self.ty, self.code, self.rest);
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => eth
                .ipv4(s.octets(), d.octets(), self.ttl)
                .icmpv4_raw(ty, code, rest)
                .write(&mut v, body),
            (IpAddr::V4(s), IpAddr::V4(d), Some(vlan)) => eth
                .single_vlan(vlan.try_into().unwrap())
                .ipv4(s.octets(), d.octets(), self.ttl)
                .icmpv4_raw(ty, code, rest)
                .write(&mut v, body),
            (IpAddr::V6(s), IpAddr::V6(d), None) => eth
                .ipv6(s.octets(), d.octets(), self.ttl)
                .icmpv6_raw(ty, code, rest)
                .write(&mut v, body),
            (IpAddr::V6(s), IpAddr::V6(d), Some(vlan)) => eth
                .single_vlan(vlan.try_into().unwrap())
                .ipv6(s.octets(), d.octets(), self.ttl)
                .icmpv6_raw(ty, code, rest)
                .write(&mut v, body),
            _ => panic!("mixed address families"),
        }
        .unwrap();
        v
    }
}

/// Checks, with etherparse, the IPv4 header checksum and the ICMP / ICMPv6 checksum of a frame.
pub fn check_icmp_checksums(frame: &[u8]) -> Result<()> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let p = SlicedPacket::from_ethernet(frame)?;
    let (src6, dst6) = match p.net.as_ref() {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header().to_header();
            ensure!(
                h.header_checksum == h.calc_header_checksum(),
                "bad IPv4 header checksum"
            );
            (None, None)
        }
        Some(NetSlice::Ipv6(ip)) => (Some(ip.header().source()), Some(ip.header().destination())),
        _ => bail!("not an IP frame"),
    };
    match (p.transport.as_ref(), src6, dst6) {
        (Some(TransportSlice::Icmpv4(icmp)), None, None) => ensure!(
            icmp.checksum() == icmp.icmp_type().calc_checksum(icmp.payload()),
            "bad ICMP checksum"
        ),
        (Some(TransportSlice::Icmpv6(icmp)), Some(s), Some(d)) => {
            ensure!(icmp.is_checksum_valid(s, d), "bad ICMPv6 checksum")
        }
        _ => bail!("not an ICMP frame of its IP version"),
    }
    Ok(())
}

/// The exact frame `lb_xdp` makes of `input` when it sends it to `backend` with flow hash
/// `hash`: outer Ethernet (VLAN kept), IPv6 (+ UDP for GUE), then the input's IP packet.
pub fn expected_encap(input: &[u8], backend: Ipv6Addr, hash: u32, gue: bool) -> Vec<u8> {
    let inner = ip_packet(input);
    let tclass = if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    };
    let payload_len = inner.len() + if gue { 8 } else { 0 };
    let mut v = Vec::new();
    v.extend_from_slice(&NEXT_HOP_MAC);
    v.extend_from_slice(&NIC_MAC);
    if l3_offset(input) == 18 {
        v.extend_from_slice(&input[12..16]);
    }
    v.extend_from_slice(&[0x86, 0xDD]);
    let word0 = (6u32 << 28) | ((tclass as u32) << 20) | (hash & 0xF_FFFF).max(1);
    v.extend_from_slice(&word0.to_be_bytes());
    v.extend_from_slice(&(payload_len as u16).to_be_bytes());
    let next_header = match (gue, inner[0] >> 4) {
        (true, _) => 17,
        (false, 4) => 4,
        _ => 41,
    };
    v.extend_from_slice(&[next_header, 64]);
    v.extend_from_slice(&lb_tunnel_addr().octets());
    v.extend_from_slice(&backend.octets());
    if gue {
        let sport = 0xC000 | ((hash >> 20) as u16 & 0x3FFF);
        v.extend_from_slice(&sport.to_be_bytes());
        v.extend_from_slice(&GUE_PORT.to_be_bytes());
        v.extend_from_slice(&(payload_len as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
    }
    v.extend_from_slice(inner);
    v
}
