//! `lb reload`: the agent re-reads its config file and applies the difference.

use anyhow::Result;

use super::client::Client;
use super::print_json;
use crate::api::ReloadReply;

pub async fn run(client: &Client, json: bool) -> Result<()> {
    let r: ReloadReply = client.post("/v1/reload").await?;
    if json {
        return print_json(&r);
    }
    if r.changes.is_empty() {
        println!("reloaded: no changes (table version {})", r.table_version);
    } else {
        println!(
            "reloaded: {} change(s), {} Maglev slots rewritten, table version {}",
            r.changes.len(),
            r.report.slot_writes,
            r.table_version
        );
        for c in &r.changes {
            println!("  {c}");
        }
    }
    Ok(())
}
