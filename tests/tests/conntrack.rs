//! Connection-table lifetimes through BPF_PROG_TEST_RUN: TCP idle and closing timeouts, backend
//! id generations, the per-NIC link layer, and the XDP program's log alarm.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_common::{CONN_F_CLOSING, Counter, PROTO_TCP};
use tests::*;

const RING: u32 = 4099;
const VIP4: &str = "192.0.2.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A VIP on backends 1..=3, one flow pinned by its SYN, then a ring without that backend.
/// Returns (lb, flow, pinned backend, backend the new ring gives).
fn pinned_then_moved(src_port: u16) -> (Lb, Flow, u32, u32) {
    let mut lb = Lb::new(RING);
    let t = lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 1), (2, 1), (3, 1)]);
    let flow = Flow::new("198.51.100.7", src_port, VIP4, 80);
    let key = flow.key(PROTO_TCP);
    let pinned = t.backend_for(&key);
    let run = lb.run(&flow.tcp(Tcp::Syn, &[]));
    assert_eq!(decode(&run.out).unwrap().backend(), backend_addr(pinned));
    let others: Vec<(u32, u32)> = [1, 2, 3, 4]
        .iter()
        .filter(|&&b| b != pinned)
        .map(|&b| (b, 1))
        .collect();
    let moved = lb.fill_ring(0, &others).backend_for(&key);
    assert_ne!(moved, pinned);
    (lb, flow, pinned, moved)
}

fn backend_of(lb: &Lb, frame: &[u8]) -> std::net::Ipv6Addr {
    let run = lb.run(frame);
    assert_eq!(run.verdict, XDP_TX);
    decode(&run.out).unwrap().backend()
}

#[test]
fn established_tcp_flows_stay_pinned_until_their_idle_timeout() {
    let (mut lb, flow, pinned, moved) = pinned_then_moved(40001);
    let ack = flow.tcp(Tcp::Ack, b"data");
    assert_eq!(backend_of(&lb, &ack), backend_addr(pinned));
    lb.set_config(|c| c.tcp_idle_timeout_ns = 1_000_000);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(backend_of(&lb, &ack), backend_addr(moved));
    assert_eq!(lb.counter(Counter::LruExpired), 1);
    // Re-pinned to the new backend.
    assert_eq!(
        lb.dp.conn(&flow.key(PROTO_TCP)).unwrap().unwrap().backend,
        moved
    );
}

#[test]
fn a_client_fin_or_rst_switches_to_the_closing_timeout() {
    for (port, close) in [(40002, Tcp::Fin), (40003, Tcp::Rst)] {
        let (mut lb, flow, pinned, moved) = pinned_then_moved(port);
        let key = flow.key(PROTO_TCP);
        // The closing packet itself still reaches the pinned backend and marks the entry.
        assert_eq!(backend_of(&lb, &flow.tcp(close, &[])), backend_addr(pinned));
        let e = lb.dp.conn(&key).unwrap().unwrap();
        assert_eq!(e.flags & CONN_F_CLOSING, CONN_F_CLOSING, "{close:?}");
        // The established timeout is long, the closing one short: the entry expires.
        lb.set_config(|c| c.tcp_closing_timeout_ns = 1_000_000);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            backend_of(&lb, &flow.tcp(Tcp::Ack, &[])),
            backend_addr(moved),
            "{close:?}"
        );
        assert_eq!(lb.counter(Counter::LruExpired), 1);
    }
}

#[test]
fn an_entry_whose_backend_id_changed_owner_is_stale() {
    let (mut lb, flow, pinned, moved) = pinned_then_moved(40004);
    let ack = flow.tcp(Tcp::Ack, &[]);
    assert_eq!(backend_of(&lb, &ack), backend_addr(pinned));
    assert_eq!(lb.counter(Counter::LruStaleBackend), 0);
    // The id is given to a new backend (new generation): the old entry must not follow it.
    lb.install_backend_generation(pinned, 2);
    assert_eq!(backend_of(&lb, &ack), backend_addr(moved));
    assert_eq!(lb.counter(Counter::LruStaleBackend), 1);
    let e = lb.dp.conn(&flow.key(PROTO_TCP)).unwrap().unwrap();
    assert_eq!((e.backend, e.generation), (moved, 1));
}

#[test]
fn vip_traffic_on_a_nic_without_link_layer_config_is_dropped() {
    let mut lb = Lb::new(RING);
    lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 1)]);
    let lo = lb_userspace::neighbour::ifindex("lo").unwrap();
    lb.dp.remove_iface(lo).unwrap();
    let run = lb.run(&Flow::new("198.51.100.8", 1, VIP4, 80).tcp(Tcp::Syn, &[]));
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoIface), 1);
    // Non-VIP traffic is not affected.
    let other = Flow::new("198.51.100.8", 1, "192.0.2.99", 80).tcp(Tcp::Syn, &[]);
    assert_eq!(lb.run(&other).verdict, XDP_PASS);
}

/// Collects aya-log records.
#[derive(Default, Clone)]
struct Capture(Arc<Mutex<Vec<(log::Level, String)>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

#[test]
fn a_slot_naming_an_uninstalled_backend_drops_and_logs_an_alarm() {
    let mut lb = Lb::new(RING);
    lb.add_vip(ip(VIP4), 80, PROTO_TCP, 0, false, &[(1, 1)]);
    let capture = Capture::default();
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(lb.dp.ebpf_mut(), capture.clone()).unwrap();
    // Break the invariant the agent keeps: every slot names an installed backend.
    lb.dp.write_ring(0, &vec![7; RING as usize]).unwrap();
    let run = lb.run(&Flow::new("198.51.100.9", 9, VIP4, 80).tcp(Tcp::Syn, &[]));
    assert_eq!(run.verdict, XDP_DROP);
    assert_eq!(lb.counter(Counter::DropNoBackend), 1);
    logger.flush();
    let records = capture.0.lock().unwrap().clone();
    assert_eq!(
        records,
        vec![(
            log::Level::Warn,
            "ring 0 points at backend id 7, which is not installed".to_string()
        )]
    );
}
