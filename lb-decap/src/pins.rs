//! The pin directory's files: the link pin's name, and removing a pin that may be absent.

use std::path::Path;

use anyhow::{Context, Result};

/// The pinned link's file name in the pin directory.
pub(crate) const LINK_PIN: &str = "link";

pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}
