//! The bpffs that pins live on.

use std::path::Path;

use anyhow::{Context, Result, ensure};

/// `statfs(2)`'s f_type of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: statfs reads the NUL-terminated path and writes only into `st`.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Mounts bpffs on /sys/fs/bpf if the pin directory is under it and nothing is mounted there
/// yet (a fresh boot without systemd's mount), then requires the directory to be on a bpffs:
/// pins anywhere else would fail later, with a less clear error.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        tracing::info!("mounting bpffs on /sys/fs/bpf");
        let (src, target, fstype, opts) = (c"bpf", c"/sys/fs/bpf", c"bpf", c"mode=0700");
        // SAFETY: constant NUL-terminated strings, read only by the kernel.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("mounting bpffs on /sys/fs/bpf");
        }
    }
    let mut probe = pin_dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    ensure!(
        is_bpffs(&probe),
        "the pin directory {} is not on a bpffs (mount one, or use a directory under /sys/fs/bpf)",
        pin_dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_off_bpffs_is_refused_with_its_name() {
        let e = super::ensure_bpffs(std::path::Path::new("/tmp/lb-host-not-bpffs"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/tmp/lb-host-not-bpffs is not on a bpffs"),
            "{e}"
        );
    }
}
