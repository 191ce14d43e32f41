//! One bounded exchange with BIRD's control socket per command.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::reply::{BirdReply, ReplyParser, configure_succeeded};
use super::routes::{render_routes_via, write_routes_file};

/// BIRD's control socket on Debian (`bird -s` changes it).
pub const DEFAULT_SOCKET: &str = "/run/bird/bird.ctl";
/// Default bound on one whole exchange with BIRD (connect, greeting, command, reply).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on the size of one reply.
pub const DEFAULT_MAX_REPLY: usize = 4 << 20;
/// BIRD reads commands into a 512-byte line buffer (`9000 Command too long` beyond).
const MAX_COMMAND: usize = 500;

/// Why talking to BIRD failed. The functions of this module return it inside `anyhow::Error`
/// (`err.downcast_ref::<BirdError>()`), so the caller can tell "BIRD is down" (retry later)
/// from "BIRD refused" (a config problem for the operator).
#[derive(Debug)]
pub enum BirdError {
    /// The control socket cannot be reached: missing, nobody listening, permission.
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// No complete answer within the deadline.
    Timeout {
        socket: PathBuf,
        command: String,
        after: Duration,
    },
    /// The connection broke or BIRD sent something that is not its CLI protocol.
    Protocol {
        socket: PathBuf,
        command: String,
        detail: String,
    },
    /// The reply exceeded the size limit.
    TooLong {
        socket: PathBuf,
        command: String,
        limit: usize,
    },
    /// BIRD answered with an error code (or, for `configure`, a code that is not a success).
    Rejected {
        command: String,
        code: u16,
        message: String,
    },
}

impl fmt::Display for BirdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BirdError::Unreachable { socket, source } => {
                let s = socket.display();
                match source.kind() {
                    std::io::ErrorKind::NotFound => write!(
                        f,
                        "BIRD's control socket {s} does not exist: is BIRD running? \
                         (bird -s sets the socket; Debian uses {DEFAULT_SOCKET})"
                    ),
                    std::io::ErrorKind::ConnectionRefused => write!(
                        f,
                        "nothing listens on BIRD's control socket {s} (a stale socket file): \
                         is BIRD running?"
                    ),
                    std::io::ErrorKind::PermissionDenied => write!(
                        f,
                        "permission denied on BIRD's control socket {s}: run as root or as a \
                         member of the socket's group"
                    ),
                    _ => write!(f, "cannot connect to BIRD's control socket {s}: {source}"),
                }
            }
            BirdError::Timeout {
                socket,
                command,
                after,
            } => write!(
                f,
                "BIRD did not answer `{command}` within {after:?} on {}",
                socket.display()
            ),
            BirdError::Protocol {
                socket,
                command,
                detail,
            } => write!(
                f,
                "talking to BIRD on {} (`{command}`): {detail}",
                socket.display()
            ),
            BirdError::TooLong {
                socket,
                command,
                limit,
            } => write!(
                f,
                "BIRD's reply to `{command}` on {} exceeds {limit} bytes",
                socket.display()
            ),
            BirdError::Rejected {
                command,
                code,
                message,
            } => write!(f, "BIRD refused `{command}` ({code:04}): {message}"),
        }
    }
}

impl std::error::Error for BirdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BirdError::Unreachable { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// One connection to the control socket, with its unread bytes.
struct Conn<'a> {
    stream: UnixStream,
    buf: Vec<u8>,
    bird: &'a Bird,
    command: &'a str,
}

impl Conn<'_> {
    fn protocol(&self, detail: impl Into<String>) -> BirdError {
        BirdError::Protocol {
            socket: self.bird.socket.clone(),
            command: self.command.to_string(),
            detail: detail.into(),
        }
    }

    async fn read_reply(&mut self) -> std::result::Result<BirdReply, BirdError> {
        let mut parser = ReplyParser::default();
        let mut size = 0usize;
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let mut start = 0;
            while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[start..start + nl]).into_owned();
                start += nl + 1;
                size += nl + 1;
                if let Some(reply) = parser.push(&line).map_err(|e| self.protocol(e))? {
                    self.buf.drain(..start);
                    return Ok(reply);
                }
            }
            self.buf.drain(..start);
            if size + self.buf.len() > self.bird.max_reply {
                return Err(BirdError::TooLong {
                    socket: self.bird.socket.clone(),
                    command: self.command.to_string(),
                    limit: self.bird.max_reply,
                });
            }
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| self.protocol(format!("reading: {e}")))?;
            if n == 0 {
                return Err(self.protocol(if parser.is_empty() && self.buf.is_empty() {
                    "BIRD closed the connection without answering".to_string()
                } else {
                    "BIRD closed the connection in the middle of a reply".to_string()
                }));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A handle on one BIRD: its control socket and the routes file the agent owns. Clones share
/// one lock and one record of what BIRD took, so announcements from several tasks (the BGP
/// task, the withdrawal at shutdown) never interleave.
#[derive(Clone, Debug)]
pub struct Bird {
    socket: PathBuf,
    pub(super) routes_file: PathBuf,
    timeout: Duration,
    max_reply: usize,
    /// The liveness interface the routes go through (None: blackhole routes, which outlive
    /// the agent; for tests and tools).
    alive: Option<String>,
    /// The routes text BIRD last accepted through this handle (None: unknown). Also
    /// serialises announcements, so the file and BIRD never see two writers interleave.
    pub(super) applied: Arc<tokio::sync::Mutex<Option<String>>>,
}

impl Bird {
    pub fn new(socket: impl Into<PathBuf>, routes_file: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            routes_file: routes_file.into(),
            timeout: DEFAULT_TIMEOUT,
            max_reply: DEFAULT_MAX_REPLY,
            alive: None,
            applied: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// Bounds each whole exchange (connect, greeting, command, reply); default 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Bounds the size of one reply; default 4 MiB.
    pub fn with_max_reply(mut self, bytes: usize) -> Self {
        self.max_reply = bytes;
        self
    }

    /// Routes through the agent's liveness interface (`super::alive`), so that no
    /// announcement outlives the agent.
    pub fn with_alive_iface(mut self, name: impl Into<String>) -> Self {
        self.alive = Some(name.into());
        self
    }

    /// The routes file's content for `vips`.
    pub fn render(&self, vips: &BTreeSet<IpAddr>) -> String {
        render_routes_via(vips, self.alive.as_deref())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn routes_file(&self) -> &Path {
        &self.routes_file
    }

    /// Makes BIRD announce exactly `vips` (an empty set withdraws everything): rewrites the
    /// routes file if its content changes, then always sends `configure`, which also repairs
    /// an earlier attempt that wrote the file but could not reach BIRD. BIRD restarts no
    /// protocol whose config is unchanged, so this is cheap; BGP sessions stay up.
    pub async fn announce(&self, vips: &BTreeSet<IpAddr>) -> Result<BirdReply> {
        let mut applied = self.applied.lock().await;
        let content = self.render(vips);
        self.write_routes(&content).await?;
        *applied = None;
        let reply = self.configure().await?;
        *applied = Some(content);
        Ok(reply)
    }

    pub(super) async fn write_routes(&self, content: &str) -> Result<bool> {
        let path = self.routes_file.clone();
        let content = content.to_string();
        tokio::task::spawn_blocking(move || write_routes_file(&path, &content))
            .await
            .context("the routes file writer panicked")?
    }

    /// `configure`: BIRD reads its whole config again. Fails, with BIRD's message (for a
    /// config error: file, line and reason), unless BIRD took it; BIRD then keeps the old one.
    pub async fn configure(&self) -> Result<BirdReply> {
        self.configure_cmd("configure").await
    }

    pub(super) async fn configure_cmd(&self, cmd: &str) -> Result<BirdReply> {
        let reply = self.exchange(cmd).await?;
        if !configure_succeeded(reply.code()) {
            return Err(BirdError::Rejected {
                command: cmd.to_string(),
                code: reply.code(),
                message: reply.message(),
            }
            .into());
        }
        Ok(reply)
    }

    /// Sends one command on a new connection and reads its reply, all within the deadline.
    pub(super) async fn exchange(&self, cmd: &str) -> Result<BirdReply, BirdError> {
        if cmd.contains(['\n', '\r']) || cmd.len() > MAX_COMMAND {
            return Err(BirdError::Protocol {
                socket: self.socket.clone(),
                command: cmd.chars().take(40).collect(),
                detail: format!("a command must be one line of at most {MAX_COMMAND} bytes"),
            });
        }
        match tokio::time::timeout(self.timeout, self.exchange_inner(cmd)).await {
            Ok(r) => r,
            Err(_) => Err(BirdError::Timeout {
                socket: self.socket.clone(),
                command: cmd.to_string(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange_inner(&self, cmd: &str) -> Result<BirdReply, BirdError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| BirdError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            bird: self,
            command: cmd,
        };
        let greeting = conn.read_reply().await?;
        if greeting.code() != 1 {
            return Err(conn.protocol(format!(
                "expected BIRD's greeting (0001), got {:04} {}",
                greeting.code(),
                greeting.message()
            )));
        }
        let line = format!("{cmd}\n");
        conn.stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| conn.protocol(format!("sending the command: {e}")))?;
        let reply = conn.read_reply().await?;
        tracing::debug!(command = cmd, code = reply.code(), "BIRD replied");
        Ok(reply)
    }
}
