//! Batched reads and writes of a hash map: BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH and
//! BPF_MAP_DELETE_BATCH (Linux 5.6), which aya 0.14 does not expose. One syscall moves thousands of entries, where aya's
//! iterator makes two per entry (next key, then lookup): a walk of a million flows takes a
//! fraction of a second instead of seconds.

use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{Result, bail};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's own "operation not supported" (not in libc): a map without batch support.
const ENOTSUPP: i32 = 524;

/// Entries asked for per lookup syscall.
pub const LOOKUP_CHUNK: usize = 8192;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h). The kernel zero-extends a
/// shorter attr, so passing only this member is enough.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid, initialised `batch` attr of the size passed; the buffers it
    // points to are the callers' and sized for `count` elements; the kernel writes back only
    // `count` and the `out_batch` token.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Calls `f` with every entry of the hash map `fd` (keys `K`, values `V`), a chunk at a time.
/// Entries written or evicted meanwhile may be missed or seen twice, as with any walk of a
/// live hash map. Returns how many entries were read.
pub fn lookup_all<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    mut f: impl FnMut(&[K], &[V]),
) -> Result<usize> {
    let mut chunk = LOOKUP_CHUNK;
    // SAFETY: aya::Pod types are plain data for which all-zero bytes are a valid value.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    // SAFETY: as above.
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The hash map's position token is the next bucket's index (a u32); 8 bytes to spare.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    let mut total = 0;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token_in as *mut u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let n = (attr.count as usize).min(chunk);
        match r {
            Ok(()) => {}
            // The end of the map; the last entries may come with it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                f(&keys[..n], &values[..n]);
                return Ok(total + n);
            }
            // One bucket holds more entries than fit: retry the same position with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                chunk *= 2;
                // SAFETY: as above.
                keys.resize(chunk, unsafe { std::mem::zeroed() });
                // SAFETY: as above.
                values.resize(chunk, unsafe { std::mem::zeroed() });
                continue;
            }
            Err(e) => bail!("BPF_MAP_LOOKUP_BATCH: {e}"),
        }
        f(&keys[..n], &values[..n]);
        total += n;
        token_in = token_out;
        first = false;
    }
}

/// Writes `keys[i] -> values[i]` (BPF_ANY) in as few syscalls as possible. An entry the kernel
/// refuses is skipped and the rest still written. Returns how many were written and the first
/// refusal.
pub fn update_all<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> (usize, Option<std::io::Error>) {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let (mut at, mut written, mut first_err) = (0, 0, None);
    while at < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[at..].as_ptr() as u64,
            values: values[at..].as_ptr() as u64,
            count: (keys.len() - at).min(u32::MAX as usize) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        // On an error, `count` is how many were written before the refused one.
        let done = attr.count as usize;
        written += done;
        at += done;
        match r {
            Ok(()) => {}
            Err(e) => {
                // A failure before any element (bad fd, no batch support) refuses them all.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EBADF | libc::EOPNOTSUPP | ENOTSUPP)
                ) && done == 0
                    && written == 0
                {
                    return (0, Some(e));
                }
                first_err.get_or_insert(e);
                at += 1;
            }
        }
    }
    (written, first_err)
}

/// Deletes `keys` from the hash map `fd` in as few syscalls as possible; a key already gone is
/// skipped. Returns how many were deleted.
pub fn delete_all<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<usize> {
    let (mut at, mut deleted) = (0, 0);
    while at < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[at..].as_ptr() as u64,
            count: (keys.len() - at).min(u32::MAX as usize) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let r = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // On an error, `count` is how many were deleted before the failing key.
        let done = attr.count as usize;
        deleted += done;
        at += done;
        match r {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) => bail!("BPF_MAP_DELETE_BATCH: {e}"),
        }
    }
    Ok(deleted)
}
