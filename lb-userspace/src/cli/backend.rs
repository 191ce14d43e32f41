//! `lb backend add|remove|drain|undrain|weight|list`.

use anyhow::Result;

use super::args::BackendCmd;
use super::client::Client;
use super::{print_change, print_json};
use crate::api::BackendInfo;
use crate::http;
use crate::state::{BackendState, Change, Vip};
use lb_host::table::table;

pub async fn run(client: &Client, cmd: BackendCmd, json: bool) -> Result<()> {
    let change = match cmd {
        BackendCmd::Add {
            vip,
            backend,
            weight,
            draining,
        } => Change::AddBackend {
            vip,
            backend,
            weight,
            state: if draining {
                BackendState::Draining
            } else {
                BackendState::Active
            },
        },
        BackendCmd::Remove { vip, backend } => Change::RemoveBackend { vip, backend },
        BackendCmd::Drain { vip, backend } => Change::SetState {
            vip,
            backend,
            state: BackendState::Draining,
        },
        BackendCmd::Undrain { vip, backend } => Change::SetState {
            vip,
            backend,
            state: BackendState::Active,
        },
        BackendCmd::Weight {
            vip,
            backend,
            weight,
        } => Change::SetWeight {
            vip,
            backend,
            weight,
        },
        BackendCmd::List { vip } => return list(client, vip, json).await,
    };
    print_change(&client.change(&change).await?, json)
}

async fn list(client: &Client, vip: Option<Vip>, json: bool) -> Result<()> {
    let target = match vip {
        Some(v) => format!("/v1/backends?vip={}", http::percent_encode(&v.to_string())),
        None => "/v1/backends".into(),
    };
    let list: Vec<BackendInfo> = client.get(&target).await?;
    if json {
        return print_json(&list);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| {
            vec![
                b.vip.to_string(),
                b.backend.clone(),
                b.state.to_string(),
                if b.health_detail.is_empty() {
                    b.health.clone()
                } else {
                    format!("{} ({})", b.health, b.health_detail)
                },
                b.weight.to_string(),
                b.slots.to_string(),
                b.flows.to_string(),
                b.packets.to_string(),
                b.bytes.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "VIP", "BACKEND", "STATE", "HEALTH", "WEIGHT", "SLOTS", "FLOWS", "PACKETS", "BYTES"
            ],
            &rows
        )
    );
    if list.iter().any(|b| b.state == BackendState::Draining) {
        println!("(a draining backend is safe to remove once its FLOWS reach 0)");
    }
    if list.iter().any(|b| b.health == "down") {
        println!("(a down backend takes no new flows; it rejoins after `rise` good checks)");
    }
    Ok(())
}
