//! `lb status`: the agent, its dataplane, interfaces, BGP, sync and runtime drift.

use anyhow::Result;

use super::client::Client;
use super::peer::peer_table;
use super::print_json;
use crate::api::Status;
use lb_host::table::table;

pub async fn run(client: &Client, json: bool) -> Result<()> {
    let s: Status = client.get("/v1/status").await?;
    if json {
        return print_json(&s);
    }
    println!(
        "agent        lb {} (pid {}), up {} s",
        s.version, s.pid, s.uptime_secs
    );
    println!("config       {}", s.config);
    println!(
        "dataplane    pinned at {}{}",
        s.pin_dir,
        if s.adopted {
            " (adopted from a previous agent)"
        } else {
            ""
        }
    );
    println!("tunnel src   {}", s.tunnel_source);
    println!(
        "maglev       {} slots per VIP, table version {}",
        s.ring_size, s.table_version
    );
    println!(
        "services     {} VIPs, {} backends, up to {} flows",
        s.vips, s.backends, s.max_flows
    );
    println!(
        "2nd chance   {}",
        if s.second_chance_secs == 0 {
            "off".to_string()
        } else {
            format!(
                "{} s window, {} slots with a live previous backend",
                s.second_chance_secs, s.second_chance_slots
            )
        }
    );
    println!("metrics      {}", s.metrics.as_deref().unwrap_or("off"));
    if !s.health_encap.is_empty() {
        let counts: Vec<String> = s
            .health_encap
            .iter()
            .map(|c| format!("{} {}", c.name, c.packets))
            .collect();
        println!(
            "checks       tunnelled by lb_health_encap: {}",
            counts.join(", ")
        );
    }
    let rows: Vec<Vec<String>> = s
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.ifindex.to_string(),
                i.attachment.clone(),
                i.next_hop_mac.clone(),
                i.mtu.to_string(),
            ]
        })
        .collect();
    println!();
    print!(
        "{}",
        table(&["INTERFACE", "IFINDEX", "XDP", "NEXT HOP", "MTU"], &rows)
    );
    print_egress(&s.egress);
    println!();
    println!(
        "node         {}",
        match (&s.dataplane_fault, s.node_drained) {
            (Some(f), _) => format!("NOT FORWARDING: {f}; every VIP withdrawn"),
            (None, true) => "drained (`lb node undrain` announces again)".into(),
            (None, false) => "serving".into(),
        }
    );
    let announcing = if s.announcing.is_empty() {
        "nothing".to_string()
    } else {
        s.announcing.join(", ")
    };
    match &s.bgp {
        None => println!(
            "bgp          not driven (no [bgp] in the config); would announce {announcing}"
        ),
        Some(b) => {
            println!("bgp          announcing {announcing}");
            if let Some(e) = &b.error {
                println!("             BIRD refused or is unreachable (retrying): {e}");
            } else if b.announced != s.announcing {
                println!("             BIRD last told: {}", b.announced.join(", "));
            }
        }
    }
    match &s.sync {
        None => println!("sync         off (no [sync] in the config)"),
        Some(y) => {
            let agree = y.peers.iter().filter(|p| p.state_match).count();
            println!(
                "sync         node {}, state version {} ({}), tables {}; {} of {} peers agree; flows {}",
                y.node,
                y.version,
                y.state_digest,
                y.table_digest,
                agree,
                y.peers.len(),
                super::peer::flows_shared(y)
            );
            if !y.peers.is_empty() {
                print!("{}", peer_table(y));
            }
            if !y.waiting_for.is_empty() {
                println!(
                    "             just started: VIPs unannounced until caught up with {}",
                    y.waiting_for.join(", ")
                );
            }
            if !y.held_back.is_empty() {
                println!(
                    "             held back (past dataplane.max_vips, the newest): {}",
                    y.held_back.join(", ")
                );
            }
            let f = &y.state_file;
            if let Some(reason) = &f.recovered_reason {
                println!(
                    "state file   unusable at start, moved to {}; started from the config and peers ({reason})",
                    f.moved_to.as_deref().unwrap_or("(could not be moved)")
                );
            }
            if let Some(e) = &f.last_error {
                println!(
                    "state file   {} failed writes, retried with the next change: {e}",
                    f.persist_errors
                );
            }
        }
    }
    if !s.drift.is_empty() {
        println!("\nruntime changes not in the config file (a reload or restart reverts them):");
        for d in &s.drift {
            println!("  {d}");
        }
    }
    Ok(())
}

/// Each backend's way out: with next hops from the kernel, one row per path of its route.
fn print_egress(egress: &[crate::api::EgressInfo]) {
    if egress.iter().all(|e| e.source != "route") {
        return;
    }
    let mut rows = Vec::new();
    for e in egress {
        if e.paths.is_empty() {
            rows.push(vec![
                e.backend.clone(),
                "-".into(),
                "no route".into(),
                "unresolved".into(),
            ]);
        }
        for p in &e.paths {
            rows.push(vec![
                e.backend.clone(),
                p.interface.clone(),
                p.next_hop.clone(),
                p.mac.clone(),
            ]);
        }
    }
    println!();
    print!(
        "{}",
        table(&["BACKEND", "EGRESS", "NEXT HOP", "MAC"], &rows)
    );
}
