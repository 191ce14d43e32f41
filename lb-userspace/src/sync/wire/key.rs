//! The fleet's pre-shared key: its file, its checks, and the Noise PSK derived from it.

use anyhow::{Result, anyhow, ensure};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The PSK is HMAC-SHA256(fleet key, this): the key file's bytes never key anything directly.
const PSK_CONTEXT: &[u8] = b"LBSYNC/2 Noise PSK from the fleet key";
pub const NONCE_LEN: usize = 32;
pub const MIN_KEY_LEN: usize = 32;

/// The key file must belong to root or to the user the agent runs as.
pub(super) fn check_key_owner(path: &std::path::Path, owner: u32, euid: u32) -> Result<()> {
    ensure!(
        owner == 0 || owner == euid,
        "fleet key file {} is owned by uid {owner}, neither root nor this agent's user \
         (uid {euid}); chown it",
        path.display()
    );
    Ok(())
}

/// The fleet's pre-shared key.
#[derive(Clone)]
pub struct FleetKey(pub(super) Vec<u8>);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// Hex text (whitespace ignored), at least 32 bytes.
    pub fn parse(text: &str) -> Result<Self> {
        let hex: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        ensure!(
            hex.len().is_multiple_of(2) && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "the fleet key must be hex digits (e.g. `openssl rand -hex 32`)"
        );
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked"))
            .collect();
        ensure!(
            bytes.len() >= MIN_KEY_LEN,
            "the fleet key has {} bytes; use at least {MIN_KEY_LEN} (64 hex digits)",
            bytes.len()
        );
        Ok(Self(bytes))
    }

    /// Reads the key file, refusing one that other users can read or that another user owns
    /// (its owner could make it readable, or replace the key, at any time).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| anyhow!("fleet key file {}: {e}", path.display()))?;
        ensure!(
            meta.permissions().mode() & 0o077 == 0,
            "fleet key file {} is readable by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        check_key_owner(path, std::os::unix::fs::MetadataExt::uid(&meta), euid)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow!("fleet key file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow!("fleet key file {}: {e}", path.display()))
    }

    /// The Noise PSK: a PRF of the key under a context of its own (HKDF-Expand's one block).
    pub(super) fn psk(&self) -> [u8; 32] {
        let mut m = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(PSK_CONTEXT);
        m.update(&[1]);
        m.finalize().into_bytes().into()
    }
}

/// Fresh random bytes from the kernel.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // SAFETY: getrandom writes at most `len` bytes into the buffer we own.
    let r = unsafe { libc::getrandom(n.as_mut_ptr().cast(), n.len(), 0) };
    assert_eq!(r, NONCE_LEN as isize, "getrandom");
    n
}
