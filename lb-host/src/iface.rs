//! Interfaces by name.

use anyhow::{Context, Result, bail};

/// The interface's index in this network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("interface name")?;
    // SAFETY: if_nametoindex only reads the NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        bail!("no interface `{name}` in this network namespace");
    }
    Ok(i)
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_has_an_index_and_a_missing_name_says_so() {
        assert!(super::ifindex("lo").unwrap() > 0);
        let e = super::ifindex("no-such-if0").unwrap_err().to_string();
        assert!(e.contains("no interface `no-such-if0`"), "{e}");
    }
}
