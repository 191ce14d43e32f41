//! `lb check`: load the XDP program so the kernel verifies it, and print its map limits.

use anyhow::Result;

use super::args::CheckArgs;
use crate::dataplane::{Dataplane, DataplaneLimits};

pub fn run(args: CheckArgs) -> Result<()> {
    let dp = Dataplane::load(DataplaneLimits {
        ring_size: args.ring_size,
        ..Default::default()
    })?;
    println!("XDP program verified and loaded: {:?}", dp.limits());
    Ok(())
}
