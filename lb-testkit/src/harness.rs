//! The load-balancer program loaded with test-sized maps (`Lb`), and BPF_PROG_TEST_RUN on it
//! or on any program fd.

use std::net::IpAddr;

use anyhow::{Result, bail};
use aya::programs::{TestRun, TestRunOptions};
use lb_common::{
    BACKEND_F_VALID, Backend, Counter, CounterValue, FlowKey, IfaceConfig, LbConfig, VIP_F_GUE,
    VipKey, VipMeta,
    maglev::{MaglevMember, MaglevTable},
    v6_words,
};
use lb_userspace::dataplane::{Dataplane, DataplaneLimits};

use crate::fixture::*;

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
        Self::with_limits(object, Self::limits(ring_size, max_conns))
    }

    /// The packet tests' map sizes: 16 VIPs, 8 rings, 256 backends, `max_conns` flows.
    pub fn limits(ring_size: u32, max_conns: u32) -> DataplaneLimits {
        DataplaneLimits {
            ring_size,
            max_vips: 16,
            max_rings: 8,
            max_backends: 256,
            max_conns,
            ..Default::default()
        }
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
            // No ICMP limit: the packet tests that need one set it.
            icmp_rate: 0,
            icmp_burst: 0,
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

    /// Limits generated ICMP to `rate` per second with bursts of `burst` (per CPU; 0: none).
    /// The buckets are per CPU: a test that counts on one pins itself (`stay_on_this_cpu`).
    /// The new-flow gate: `rate` new connection entries per second per CPU after `burst`
    /// (0: no gate). Per CPU: a test that counts on one bucket pins itself.
    pub fn set_flow_gate(&mut self, rate: u32, burst: u32) {
        self.dp
            .set_flow_gate(lb_common::ratelimit::FlowGate { rate, burst })
            .unwrap();
    }

    pub fn set_icmp_limit(&mut self, rate: u16, burst: u16) {
        self.set_config(|c| {
            c.icmp_rate = rate;
            c.icmp_burst = burst;
        });
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

    /// Rewrites ring `ring` as `slots` (backend ids) with `prev` as every slot's previous
    /// backend until clock tick `until` (second chance; `lb_common::RingSlot`).
    pub fn set_ring_prev(&mut self, ring: u32, slots: &[u32], prev: u32, until: u32) {
        let values = slots.iter().enumerate().map(|(i, &id)| {
            (
                i as u32,
                lb_common::RingSlot {
                    backend: lb_common::encode_id(id),
                    prev: lb_common::encode_id(prev),
                    prev_until: until,
                },
            )
        });
        self.dp.write_ring_slots(ring, values).unwrap();
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

/// Pins the calling thread to the CPU it runs on, so that every BPF_PROG_TEST_RUN it makes
/// uses the same CPU's slot of a per-CPU map (the ICMP token bucket).
pub fn stay_on_this_cpu() {
    // SAFETY: a plain syscall wrapper without arguments.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it, and sched_setaffinity
    // only reads it.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    };
    assert!(
        pinned,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
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

/// Verdict counters: exactly one of these rises per packet.
pub fn is_verdict_counter(c: Counter) -> bool {
    !matches!(
        c,
        Counter::LruHit
            | Counter::FlowCacheHit
            | Counter::LruMissSyn
            | Counter::LruMissNonSyn
            | Counter::LruMissUdp
            | Counter::LruStaleBackend
            | Counter::LruInsertGated
            | Counter::FlowEvents
            | Counter::DropFlowEvent
            // A forwarded ICMP error also counts as tx / tx_gue.
            | Counter::IcmpErrorForwarded
            // Second chance qualifies a tx / tx_gue.
            | Counter::TxSecondChance
            | Counter::SecondChancePaired
            // A SYN that wrote its entry was also forwarded (tx / tx_gue).
            | Counter::SynPinned
            // A redirect qualifies a tx / tx_gue (the packet left by another NIC).
            | Counter::TxRedirect
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
