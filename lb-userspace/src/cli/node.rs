//! `lb node drain|undrain`: withdraw or announce every VIP of this node.

use anyhow::Result;

use super::args::NodeCmd;
use super::client::Client;
use super::print_json;
use crate::api::NodeReply;

pub async fn run(client: &Client, cmd: NodeCmd, json: bool) -> Result<()> {
    let verb = match cmd {
        NodeCmd::Drain => "drain",
        NodeCmd::Undrain => "undrain",
    };
    let r: NodeReply = client.post(&format!("/v1/node/{verb}")).await?;
    if json {
        return print_json(&r);
    }
    if r.drained {
        println!("node drained: every VIP is withdrawn; existing flows keep their backends");
    } else if r.announcing.is_empty() {
        println!("node undrained; nothing to announce (no VIP has a healthy backend)");
    } else {
        println!("node undrained; announcing {}", r.announcing.join(", "));
    }
    Ok(())
}
