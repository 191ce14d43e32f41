//! What xtask tells the person running it, on stderr.

/// Announces the next step of a long command.
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}
