//! `lb reload`: the agent re-reads its config file. Alone, the file's differences apply. With
//! peer sync, the fleet's state rules: a reload applies the node-local settings and lists where
//! the file differs from the fleet; `--fleet` shows those differences, asks, and makes them
//! fleet-wide changes (docs/sync.md, "Reloading a fleet member").

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};

use super::args::ReloadArgs;
use super::client::Client;
use super::print_json;
use crate::api::{ReloadReply, ReloadRequest};

pub async fn run(client: &Client, args: ReloadArgs, json: bool) -> Result<()> {
    if args.dry_run {
        let plan = client
            .reload(&ReloadRequest {
                dry_run: true,
                fleet: args.fleet,
                expect_version: None,
            })
            .await?;
        return show(&plan, json);
    }
    if !args.fleet {
        let r = client.reload(&ReloadRequest::default()).await?;
        return show(&r, json);
    }
    // A fleet-wide reload: the plan first, then the same plan applied, or nothing.
    let plan = client
        .reload(&ReloadRequest {
            dry_run: true,
            fleet: true,
            expect_version: None,
        })
        .await?;
    if !args.yes && !plan.changes.is_empty() {
        if json || !std::io::stdin().is_terminal() {
            bail!(
                "--fleet would make {} change(s) on every load balancer; run `lb reload --fleet \
                 --dry-run` to see them and add --yes to apply them",
                plan.changes.len()
            );
        }
        show(&plan, false)?;
        print!(
            "apply these {} change(s) to the whole fleet? [y/N] ",
            plan.changes.len()
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("nothing changed");
        }
    }
    let r = client
        .reload(&ReloadRequest {
            dry_run: false,
            fleet: true,
            expect_version: Some(plan.table_version),
        })
        .await?;
    show(&r, json)
}

fn show(r: &ReloadReply, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    let (head, verb) = if r.dry_run {
        ("dry run, nothing changed", "would change")
    } else {
        ("reloaded", "changed")
    };
    if r.settings.is_empty() && r.changes.is_empty() {
        println!("{head}: no changes (table version {})", r.table_version);
    } else if r.dry_run {
        println!("{head} (table version {})", r.table_version);
    } else {
        println!(
            "{head}: {} setting(s), {} change(s), {} Maglev slots rewritten, table version {}",
            r.settings.len(),
            r.changes.len(),
            r.report.slot_writes,
            r.table_version
        );
    }
    if !r.settings.is_empty() {
        println!("settings {verb}:");
        for s in &r.settings {
            println!("  {s}");
        }
    }
    if !r.changes.is_empty() {
        println!("state {verb}:");
        for c in &r.changes {
            println!("  {c}");
        }
    }
    if !r.fleet_differences.is_empty() {
        println!(
            "the file differs from the fleet's state; not applied (`lb reload --fleet` would \
             apply these on every load balancer):"
        );
        for c in &r.fleet_differences {
            println!("  {c}");
        }
    }
    Ok(())
}
