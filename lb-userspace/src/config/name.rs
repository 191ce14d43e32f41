//! Fleet node names: what the config accepts and peer sync checks on every stamp.

/// The longest node name (peer sync's handshake carries it in one length byte).
pub const MAX_NAME: usize = 64;

/// A fleet node name: 1-64 of `A-Za-z0-9._-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}
