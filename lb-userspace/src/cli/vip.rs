//! `lb vip add|remove|list`.

use anyhow::Result;

use super::args::VipCmd;
use super::client::Client;
use super::{print_change, print_json};
use crate::api::VipInfo;
use crate::state::Change;
use lb_host::table::table;

pub async fn run(client: &Client, cmd: VipCmd, json: bool) -> Result<()> {
    let change = match cmd {
        VipCmd::Add { vip, gue } => Change::AddVip { vip, gue },
        VipCmd::Remove { vip } => Change::RemoveVip { vip },
        VipCmd::List => return list(client, json).await,
    };
    print_change(&client.change(&change).await?, json)
}

async fn list(client: &Client, json: bool) -> Result<()> {
    let vips: Vec<VipInfo> = client.get("/v1/vips").await?;
    if json {
        return print_json(&vips);
    }
    let rows: Vec<Vec<String>> = vips
        .iter()
        .map(|v| {
            vec![
                v.vip.to_string(),
                if v.gue { "gue" } else { "ip6" }.into(),
                v.active.to_string(),
                v.draining.to_string(),
                v.packets.to_string(),
                v.bytes.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["VIP", "ENCAP", "ACTIVE", "DRAINING", "PACKETS", "BYTES"],
            &rows
        )
    );
    Ok(())
}
