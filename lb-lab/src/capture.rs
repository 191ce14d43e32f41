//! Packet captures over every interface of one namespace (one unbound AF_PACKET socket, read
//! on a thread of its own): `Capture` counts frames by interface and direction with a caller's
//! classifier, `Recording` keeps the frames a filter selects, whole. Drops in the socket are
//! reported, so a test never trusts an incomplete count or recording.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, anyhow, ensure};

use crate::netns::in_ns;

/// (interface index, outgoing?, class) -> frames.
pub type Counts = BTreeMap<(u32, bool, &'static str), u64>;

/// Frame counts by interface, direction and class.
pub struct Capture(Reader<Counts>);

impl Capture {
    /// Starts capturing in namespace `ns`; `classify` names a frame's class or ignores it.
    pub fn start(ns: &str, classify: fn(&[u8]) -> Option<&'static str>) -> Result<Capture> {
        Reader::start(ns, Counts::new(), move |counts, frame, from| {
            if let Some(class) = classify(frame) {
                let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
                *counts
                    .entry((from.sll_ifindex as u32, outgoing, class))
                    .or_default() += 1;
            }
        })
        .map(Capture)
    }

    /// Stops and returns the counts; fails if the kernel dropped frames for this socket.
    pub fn finish(self) -> Result<Counts> {
        self.0.finish()
    }
}

/// A capture that keeps the frames a filter selects, whole (for tests that look inside them,
/// e.g. for what a peer link lets through in the clear).
pub struct Recording(Reader<(Vec<Vec<u8>>, usize)>);

impl Recording {
    /// Starts recording in namespace `ns` the frames `keep` selects (at most 64 MiB of them).
    pub fn start(ns: &str, keep: fn(&[u8]) -> bool) -> Result<Recording> {
        Reader::start(ns, (Vec::new(), 0), move |(frames, bytes), frame, _| {
            if keep(frame) && *bytes < 64 << 20 {
                *bytes += frame.len();
                frames.push(frame.to_vec());
            }
        })
        .map(Recording)
    }

    /// Stops and returns the frames; fails if the kernel dropped any for this socket.
    pub fn finish(self) -> Result<Vec<Vec<u8>>> {
        self.0.finish().map(|(frames, _)| frames)
    }
}

/// One namespace's frames, each handed with its link-layer address to `each`, which keeps what
/// it wants in a `T`, until `finish`.
struct Reader<T> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(T, u32), String>>>,
}

impl<T: Send + 'static> Reader<T> {
    fn start(
        ns: &str,
        kept: T,
        each: impl FnMut(&mut T, &[u8], &libc::sockaddr_ll) + Send + 'static,
    ) -> Result<Self> {
        let fd = in_ns(ns, open_socket)?.map_err(|e| anyhow!("capture socket: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || read(fd, flag, kept, each));
        Ok(Reader {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops and returns what was kept; fails if the kernel dropped frames for this socket.
    fn finish(mut self) -> Result<T> {
        // Frames already queued are read before the thread looks at the flag again.
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, Ordering::Relaxed);
        let (kept, drops) = self
            .thread
            .take()
            .expect("finished once")
            .join()
            .map_err(|_| anyhow!("capture thread panicked"))?
            .map_err(anyhow::Error::msg)?;
        ensure!(
            drops == 0,
            "the capture dropped {drops} frames; what it kept is incomplete"
        );
        Ok(kept)
    }
}

impl<T> Drop for Reader<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn open_socket() -> Result<OwnedFd, String> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd is a fresh, valid descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size: libc::c_int = 64 << 20;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: valid fd and option values of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            4,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

/// Reads frames until `stop` (or 10 minutes: a forgotten capture ends), then the socket's drop
/// count. A frame longer than the buffer is an error, not a silently cut copy.
fn read<T>(
    fd: OwnedFd,
    stop: Arc<AtomicBool>,
    mut kept: T,
    mut each: impl FnMut(&mut T, &[u8], &libc::sockaddr_ll),
) -> Result<(T, u32), String> {
    let mut buf = vec![0u8; 1 << 18];
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
        // SAFETY: sockaddr_ll is plain data filled by recvfrom.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut alen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf and addr are valid for their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut alen,
            )
        };
        if n <= 0 {
            continue;
        }
        if n as usize > buf.len() {
            return Err(format!(
                "a {n} byte frame is larger than the capture buffer"
            ));
        }
        each(&mut kept, &buf[..n as usize], &addr);
    }
    // SAFETY: tpacket_stats is plain data; PACKET_STATISTICS fills it (and resets it).
    let mut st: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: st is valid for len bytes on an open packet socket.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        );
    }
    Ok((kept, st.tp_drops))
}
