//! `lb peer list`: the fleet as this agent sees it.

use anyhow::Result;

use super::args::PeerCmd;
use super::client::Client;
use super::print_json;
use crate::api::SyncStatus;
use lb_host::table::table;

pub async fn run(client: &Client, cmd: PeerCmd, json: bool) -> Result<()> {
    let PeerCmd::List = cmd;
    let s: SyncStatus = client.get("/v1/peers").await?;
    if json {
        return print_json(&s);
    }
    println!(
        "this node    {}: state version {}, state {}, tables {}, flows {}",
        s.node,
        s.version,
        s.state_digest,
        s.table_digest,
        flows_shared(&s)
    );
    println!();
    print!("{}", peer_table(&s));
    for p in &s.peers {
        if let (false, Some(e)) = (p.outbound, &p.outbound_error) {
            println!("{}: {e}", p.name);
        }
    }
    let refused: Vec<String> = s
        .refused
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "\nflows exported {}, imported {}, dropped (queue full) {}, dropped (import queue) {}, unknown VIP/backend {}, unknown backend id {}",
        s.flows_exported,
        s.flows_imported,
        s.flows_dropped_queue,
        s.flows_dropped_import,
        s.flows_untranslated,
        s.flows_unknown_id
    );
    if s.flow_mode == "changes" {
        println!(
            "flows sent because a change moved them {}, left out past changes_max {}",
            s.flows_moved, s.flows_moved_over
        );
    }
    println!(
        "links refused: {}",
        if refused.is_empty() {
            "none".into()
        } else {
            refused.join(", ")
        }
    );
    Ok(())
}

/// One row per peer: links, last heard, its version and digests (and whether they match ours),
/// flows each way.
pub(super) fn peer_table(s: &SyncStatus) -> String {
    let yes = |b: bool| if b { "yes" } else { "NO" }.to_string();
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            let link = match (p.outbound, p.inbound) {
                (true, true) => "up".to_string(),
                (true, false) => "out only".to_string(),
                (false, true) => "in only".to_string(),
                (false, false) => "down".to_string(),
            };
            let (version, state, tables) = match &p.summary {
                Some(x) => (
                    x.version.to_string(),
                    format!("{} {}", x.state_digest, yes(p.state_match)),
                    format!("{} {}", x.table_digest, yes(p.table_match)),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            vec![
                p.name.clone(),
                p.address.clone(),
                link,
                p.last_heard_ms
                    .map_or("never".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                version,
                state,
                tables,
                p.flows_sent.to_string(),
                p.flows_received.to_string(),
                p.flows_dropped.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "PEER",
            "ADDRESS",
            "LINK",
            "HEARD",
            "VERSION",
            "STATE (MATCH)",
            "TABLES (MATCH)",
            "FLOWS OUT",
            "FLOWS IN",
            "DROPPED",
        ],
        &rows,
    )
}

/// How `lb peer list` and `lb status` name the flow sync mode.
pub(super) fn flows_shared(s: &crate::api::SyncStatus) -> &'static str {
    match (s.flow_mode.as_str(), s.flows) {
        ("changes", _) => "shared when a change moves them",
        (_, true) => "shared",
        (_, false) => "not shared",
    }
}
