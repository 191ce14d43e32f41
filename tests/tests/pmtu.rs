//! Path MTU through the load balancers, end to end (issue 6): the lab with 1500-byte links
//! behind the router (a client packet of 1500 bytes no longer fits once tunnelled) and a
//! 1400-byte route from the router to the client (a backend's full-size reply does not fit
//! either). Large transfers both ways must complete, which needs the load balancer's own
//! ICMP "too big" towards the client and the router's ICMP errors forwarded to the flow's
//! backend; and the VIPs answer ping.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use tests::e2e::*;
use tests::lab::{self, ECHO_PORT, Lab, VIP4, VIP6};

fn counter(lab: &Lab, name: &str) -> u64 {
    (1..=lab.opts.lbs)
        .map(|i| {
            let s = lab.lb_json(i, &["stats", "--interval", "0.1"]).unwrap();
            s["now"]["counters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name)
                .map_or(0, |c| c["packets"].as_u64().unwrap())
        })
        .sum()
}

/// Sends `len` bytes through the echo service and reads them back, writing and reading at
/// once (neither side's buffers can hold it all). Returns the backend's name.
fn echo_bulk(to: SocketAddr, len: usize) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut greeting = Vec::new();
    let mut b = [0u8; 1];
    while !greeting.ends_with(b"\n") && greeting.len() < 100 {
        s.read_exact(&mut b).map_err(|e| format!("greeting: {e}"))?;
        greeting.push(b[0]);
    }
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = payload.clone();
    let writer = std::thread::spawn(move || {
        for chunk in sent.chunks(16 * 1024) {
            w.write_all(chunk)?;
        }
        w.shutdown(std::net::Shutdown::Write)
    });
    let mut back = Vec::with_capacity(len);
    let mut buf = vec![0u8; 64 * 1024];
    while back.len() < len {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("after {} bytes back: {e}", back.len()))?;
        if n == 0 {
            return Err(format!("closed after {} bytes back", back.len()));
        }
        back.extend_from_slice(&buf[..n]);
    }
    writer
        .join()
        .unwrap()
        .map_err(|e| format!("sending: {e}"))?;
    if back != payload {
        return Err("the echo differs".into());
    }
    Ok(String::from_utf8_lossy(&greeting)
        .trim()
        .trim_start_matches("hello from ")
        .to_string())
}

/// Three pings of 1000 bytes from the client (iputils ping; `cargo xtask setup` installs it).
fn ping(lab: &Lab, family: &str, vip: IpAddr) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.ns("client")))
        .args([
            "ping", family, "-c", "3", "-i", "0.2", "-W", "2", "-s", "1000",
        ])
        .arg(vip.to_string())
        .output()
        .expect("running ping")
}

#[test]
fn large_transfers_find_the_path_mtu_through_the_load_balancers_and_the_vips_answer_ping() {
    let lab = lab_with("mtu", |o| {
        o.fabric_mtu = 1500;
        o.client_route_mtu = Some(1400);
    });
    // The agents took the NIC's MTU as their egress MTU.
    let st = lab.lb_json(1, &["status"]).unwrap();
    assert_eq!(st["interfaces"][0]["mtu"], 1500);

    // Ping: the load balancer that receives the request answers it itself.
    for (vip, flag) in [(IpAddr::V4(VIP4), "-4"), (IpAddr::V6(VIP6), "-6")] {
        let out = ping(&lab, flag, vip);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("3 received"),
            "ping {vip}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(counter(&lab, "icmp_echo_reply") >= 6);

    // The per-VIP switch: `icmp_echo = false` on the IPv4 VIP's services, reloaded on both
    // load balancers. That address stops answering (counted); the IPv6 one still answers.
    for i in 1..=lab.opts.lbs {
        let path = lab.socket(i).with_file_name("lb.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let off = text.replace(
            &format!("address = \"{VIP4}\"\n"),
            &format!("address = \"{VIP4}\"\nicmp_echo = false\n"),
        );
        assert_ne!(off, text);
        std::fs::write(&path, off).unwrap();
        assert!(lab.lb(i, &["reload"]).status.success());
    }
    let dropped = counter(&lab, "drop_icmp_echo_off");
    for (vip, flag, answers) in [
        (IpAddr::V4(VIP4), "-4", false),
        (IpAddr::V6(VIP6), "-6", true),
    ] {
        let out = ping(&lab, flag, vip);
        assert_eq!(
            out.status.success(),
            answers,
            "ping {vip} with echo {}",
            if answers { "on" } else { "off" }
        );
    }
    assert!(counter(&lab, "drop_icmp_echo_off") >= dropped + 2);

    // 1 MiB up and back down through each VIP, several connections so both load balancers
    // and several backends take part.
    let before_too_big = counter(&lab, "icmp_too_big_sent");
    let before_fwd = counter(&lab, "icmp_error_forwarded");
    let targets: Vec<SocketAddr> = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
        .iter()
        .map(|a| SocketAddr::new(*a, ECHO_PORT))
        .collect();
    let results = lab::in_ns(&lab.ns("client"), move || {
        (0..6)
            .map(|i| {
                let t = targets[i % 2];
                (t, echo_bulk(t, 1 << 20))
            })
            .collect::<Vec<_>>()
    })
    .unwrap();
    for (t, r) in &results {
        assert!(r.is_ok(), "1 MiB through {t}: {r:?}");
    }
    let too_big = counter(&lab, "icmp_too_big_sent") - before_too_big;
    let forwarded = counter(&lab, "icmp_error_forwarded") - before_fwd;
    eprintln!(
        "path MTU: 6 x 1 MiB echoed through the VIPs ({:?}); the load balancers sent {too_big} ICMP too-big and forwarded {forwarded} ICMP errors to backends",
        results
            .iter()
            .map(|(t, r)| format!("{t} via {}", r.as_ref().unwrap()))
            .collect::<Vec<_>>()
    );
    assert!(
        too_big > 0,
        "uploads needed the load balancer's ICMP too-big"
    );
    assert!(
        forwarded > 0,
        "downloads needed the router's ICMP errors at the backends"
    );
    let metrics = tests::netns::metrics_in(&lab.ns("lb1")).unwrap();
    assert!(
        metrics.contains("lb_icmp_total{action=\"echo_reply\"}"),
        "ICMP counters in /metrics"
    );
    assert_eq!(counter(&lab, "drop_icmp_bad_embedded"), 0);
    assert_eq!(counter(&lab, "drop_icmp_no_flow"), 0);
    finish(lab);
}
