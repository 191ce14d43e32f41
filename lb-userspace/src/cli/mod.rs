//! The operator CLI: one file per verb (`lb vip`, `lb backend`, `lb status`, `lb stats`,
//! `lb node`, `lb peer`, `lb reload`, `lb detach`, `lb check`), their arguments in `args`,
//! parsed once into typed values. The verbs that talk to the agent build `state::Change` and
//! the other API messages themselves and send them through `client`. Tables for people,
//! `--json` for machines.

pub mod args;
pub mod backend;
pub mod check;
pub mod client;
pub mod detach;
pub mod node;
pub mod peer;
pub mod reload;
pub mod stats;
pub mod status;
pub mod vip;

use anyhow::Result;

pub use client::{Client, ClientError};
pub use lb_host::table::{si, table};

use crate::api::ChangeReply;

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// What `lb vip` and `lb backend` print after the agent applied their change.
fn print_change(r: &ChangeReply, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    println!(
        "ok: {} ({} Maglev slots rewritten, table version {})",
        r.change, r.report.slot_writes, r.table_version
    );
    Ok(())
}
