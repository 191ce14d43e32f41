//! Announcing and withdrawing VIPs through BIRD (docs/bgp.md).
//!
//! The agent never speaks BGP itself. The operator's `bird.conf` includes a routes file that the
//! agent owns (`include "/etc/bird/lb-vips.conf";`) and exports the two static protocols that
//! file always declares, `lb_vips4` and `lb_vips6`, to its BGP sessions. To change what is
//! announced, [`Bird::announce`] rewrites the file atomically and sends `configure` on BIRD's
//! control socket; BIRD parses the whole config again, refuses it as a whole if anything is
//! wrong (and keeps running the old one), and otherwise updates only the static routes, so BGP
//! sessions stay up and the peers see one UPDATE per changed VIP.
//!
//! The control socket speaks BIRD's CLI protocol (`doc/reply_codes` in BIRD's source): after a
//! greeting (`0001 BIRD 2.0.12 ready.`), every command gets a reply of lines `DDDD-text`
//! (more follows), ` text` (continues the previous line's code) and a last line `DDDD text`.
//! Codes 0xxx report success, 1xxx/2xxx carry table rows and headings, 8xxx are run-time
//! errors and 9xxx parse errors; lines starting with `+` are spontaneous messages.
//!
//! Every exchange opens its own connection and is bounded: a deadline for the whole exchange
//! (connect, greeting, command, reply) and a size limit for a reply.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The static protocol holding the IPv4 VIPs (`export where proto = "lb_vips4";`).
pub const PROTO_V4: &str = "lb_vips4";
/// The static protocol holding the IPv6 VIPs (`export where proto = "lb_vips6";`).
pub const PROTO_V6: &str = "lb_vips6";
/// BIRD's control socket on Debian (`bird -s` changes it).
pub const DEFAULT_SOCKET: &str = "/run/bird/bird.ctl";
/// Where the routes file lives unless configured otherwise.
pub const DEFAULT_ROUTES_FILE: &str = "/etc/bird/lb-vips.conf";
/// The first line of every routes file the agent writes.
pub const ROUTES_HEADER: &str = "# written by the lb agent; do not edit";
/// Default bound on one whole exchange with BIRD (connect, greeting, command, reply).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on the size of one reply.
pub const DEFAULT_MAX_REPLY: usize = 4 << 20;
/// BIRD reads commands into a 512-byte line buffer (`9000 Command too long` beyond).
const MAX_COMMAND: usize = 500;

/// The routes file for a set of VIPs: both static protocols, always, each with one host
/// blackhole route per VIP of its family (none is fine: BIRD accepts an empty static protocol).
/// The blackhole destination only gives BIRD a valid route to export; the dataplane, not the
/// kernel, handles VIP traffic, so the load balancer's own kernel protocol must not export
/// these routes (docs/bgp.md).
pub fn render_routes(vips: &BTreeSet<IpAddr>) -> String {
    let mut out = String::new();
    out.push_str(ROUTES_HEADER);
    out.push('\n');
    out.push_str(
        "# BIRD includes this file from bird.conf; the agent rewrites it and runs `configure`\n\
         # whenever the set of announced VIPs changes. Export these protocols to BGP with\n\
         # `export where proto = \"lb_vips4\";` and `export where proto = \"lb_vips6\";`.\n",
    );
    for (proto, channel, v4) in [(PROTO_V4, "ipv4", true), (PROTO_V6, "ipv6", false)] {
        out.push('\n');
        out.push_str(&format!("protocol static {proto} {{\n\t{channel};\n"));
        for vip in vips.iter().filter(|v| v.is_ipv4() == v4) {
            let len = if v4 { 32 } else { 128 };
            out.push_str(&format!("\troute {vip}/{len} blackhole;\n"));
        }
        out.push_str("}\n");
    }
    out
}

/// The routes file before the agent's first run: both protocols, no routes.
pub fn initial_routes() -> String {
    render_routes(&BTreeSet::new())
}

/// First deployment: creates the routes file with no routes if it does not exist yet (so
/// `bird.conf` can include it before the agent ever ran). True if it was created.
pub fn write_initial_routes(path: &Path) -> Result<bool> {
    if path.exists() {
        return Ok(false);
    }
    write_routes_file(path, &initial_routes())
}

/// Writes `content` to `path` atomically (a temporary file in the same directory, synced,
/// then renamed over it), unless the file already holds exactly `content`. True if written.
pub fn write_routes_file(path: &Path, content: &str) -> Result<bool> {
    match std::fs::read(path) {
        Ok(old) if old == content.as_bytes() => return Ok(false),
        Ok(old) if !old.is_empty() && !old.starts_with(ROUTES_HEADER.as_bytes()) => {
            tracing::warn!(
                "replacing {}, which the agent did not write (the agent owns this file)",
                path.display()
            );
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let name = path
        .file_name()
        .with_context(|| format!("routes file {} has no file name", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        // Readable by BIRD, which often runs as its own user.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "writing the routes file {} (through {})",
                path.display(),
                tmp.display()
            )
        });
    }
    // Make the rename itself durable; a failure here changes nothing for BIRD.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(true)
}

/// True for the codes that mean BIRD took a `configure` (or one of its variants):
/// 0003 Reconfigured, 0004 Reconfiguration in progress (protocols are restarting),
/// 0005 Reconfiguration already in progress, queueing new config (the new file is already
/// parsed and applies next), 0017 removing queued config (`configure undo`),
/// 0018 Reconfiguration confirmed, 0019 Nothing to do (`configure confirm/undo`),
/// 0020 Configuration OK (`configure check`).
/// 0006 (ignored, shutting down), 0016 (access restricted) and every 8xxx/9xxx are failures.
pub fn configure_succeeded(code: u16) -> bool {
    matches!(code, 3 | 4 | 5 | 17 | 18 | 19 | 20)
}

/// One line of a reply. Continuation lines (` text`) carry the code of the line they continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyLine {
    pub code: u16,
    pub text: String,
}

/// A complete reply to one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirdReply {
    /// Every line in order; the last one ended the reply.
    pub lines: Vec<ReplyLine>,
    /// Spontaneous messages (`+text`) that arrived meanwhile.
    pub spontaneous: Vec<String>,
}

impl BirdReply {
    /// The code of the line that ended the reply.
    pub fn code(&self) -> u16 {
        self.lines.last().map_or(0, |l| l.code)
    }

    /// 8xxx (run-time error) or 9xxx (parse error).
    pub fn is_error(&self) -> bool {
        self.code() >= 8000
    }

    /// The text of the lines that carry the final code (BIRD's message, for errors).
    pub fn message(&self) -> String {
        let code = self.code();
        let mut start = self.lines.len();
        while start > 0 && self.lines[start - 1].code == code {
            start -= 1;
        }
        self.lines[start..]
            .iter()
            .map(|l| l.text.trim_end())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text of every line with `code`.
    pub fn texts(&self, code: u16) -> impl Iterator<Item = &str> {
        self.lines
            .iter()
            .filter(move |l| l.code == code)
            .map(|l| l.text.as_str())
    }

    /// The whole reply as text, one line each.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.text.trim_end())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Builds replies line by line.
#[derive(Debug, Default)]
pub struct ReplyParser {
    reply: BirdReply,
}

impl ReplyParser {
    /// Whether no line of the current reply has arrived yet.
    pub fn is_empty(&self) -> bool {
        self.reply.lines.is_empty() && self.reply.spontaneous.is_empty()
    }

    /// Takes one line (without its newline). Returns the reply once its last line arrived.
    pub fn push(&mut self, line: &str) -> std::result::Result<Option<BirdReply>, String> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(text) = line.strip_prefix('+') {
            self.reply.spontaneous.push(text.to_string());
            return Ok(None);
        }
        if let Some(text) = line.strip_prefix(' ') {
            let Some(last) = self.reply.lines.last() else {
                return Err(format!(
                    "a continuation line with nothing to continue: {line:?}"
                ));
            };
            let code = last.code;
            self.reply.lines.push(ReplyLine {
                code,
                text: text.to_string(),
            });
            return Ok(None);
        }
        let b = line.as_bytes();
        if b.len() < 4 || !b[..4].iter().all(u8::is_ascii_digit) {
            return Err(format!("not a BIRD reply line: {line:?}"));
        }
        let code: u16 = line[..4].parse().expect("four digits");
        let (last, text) = match b.get(4) {
            None => (true, ""),
            Some(b' ') => (true, &line[5..]),
            Some(b'-') => (false, &line[5..]),
            Some(_) => return Err(format!("not a BIRD reply line: {line:?}")),
        };
        self.reply.lines.push(ReplyLine {
            code,
            text: text.to_string(),
        });
        Ok(last.then(|| std::mem::take(&mut self.reply)))
    }
}

/// Parses exactly one complete reply (tests, recorded output).
pub fn parse_reply(text: &str) -> Result<BirdReply> {
    let mut parser = ReplyParser::default();
    let mut lines = text.lines();
    for line in lines.by_ref() {
        if let Some(reply) = parser.push(line).map_err(anyhow::Error::msg)? {
            if let Some(extra) = lines.find(|l| !l.is_empty()) {
                anyhow::bail!("text after the end of the reply: {extra:?}");
            }
            return Ok(reply);
        }
    }
    anyhow::bail!("the reply has no final line (`DDDD text`)")
}

/// One row of `show protocols`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolStatus {
    pub name: String,
    /// `BGP`, `Static`, `Device`, `Kernel`, ...
    pub proto: String,
    pub table: String,
    /// BIRD's protocol state: `up`, `start`, `down`, `stop`, ...
    pub state: String,
    pub since: String,
    /// For BGP: the session state (`Established`, `Active`, `Connect`, `Idle`, ...), then the
    /// last error if any.
    pub info: String,
}

impl ProtocolStatus {
    pub fn is_bgp(&self) -> bool {
        self.proto == "BGP"
    }

    /// The BGP session state, for BGP protocols.
    pub fn bgp_state(&self) -> Option<&str> {
        self.is_bgp()
            .then(|| self.info.split_whitespace().next().unwrap_or(""))
    }

    /// A BGP session that is up.
    pub fn established(&self) -> bool {
        self.bgp_state() == Some("Established")
    }
}

/// Parses one `show protocols` row (`%-10s %-10s %-10s %-6s %-12s  %s` in BIRD 2). Names never
/// hold spaces; the time may (`timeformat protocol iso long`), so it ends at the first double
/// space, which the format always puts before the info column.
pub fn parse_protocol_row(row: &str) -> Option<ProtocolStatus> {
    let mut rest = row;
    let mut fields = Vec::with_capacity(4);
    for _ in 0..4 {
        rest = rest.trim_start();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        fields.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    let rest = rest.trim_start();
    let (since, info) = match rest.find("  ") {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest.trim_end(), ""),
    };
    let [name, proto, table, state] = <[String; 4]>::try_from(fields).ok()?;
    Some(ProtocolStatus {
        name,
        proto,
        table,
        state,
        since: since.to_string(),
        info: info.to_string(),
    })
}

/// The rows of a `show protocols` reply (code 1002).
pub fn parse_protocols(reply: &BirdReply) -> Vec<ProtocolStatus> {
    reply.texts(1002).filter_map(parse_protocol_row).collect()
}

/// The host routes (/32, /128) listed in a `show route` reply (code 1007): the first word of
/// each line that is a prefix.
pub fn parse_host_routes(reply: &BirdReply) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    for text in reply.texts(1007) {
        let Some(word) = text.split_whitespace().next() else {
            continue;
        };
        let Some((addr, len)) = word.split_once('/') else {
            continue;
        };
        let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u8>()) else {
            continue;
        };
        if len == if addr.is_ipv4() { 32 } else { 128 } {
            out.insert(addr);
        }
    }
    out
}

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
    routes_file: PathBuf,
    timeout: Duration,
    max_reply: usize,
    /// The routes text BIRD last accepted through this handle (None: unknown). Also
    /// serialises announcements, so the file and BIRD never see two writers interleave.
    applied: Arc<tokio::sync::Mutex<Option<String>>>,
}

impl Bird {
    pub fn new(socket: impl Into<PathBuf>, routes_file: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            routes_file: routes_file.into(),
            timeout: DEFAULT_TIMEOUT,
            max_reply: DEFAULT_MAX_REPLY,
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
        let content = render_routes(vips);
        self.write_routes(&content).await?;
        *applied = None;
        let reply = self.configure().await?;
        *applied = Some(content);
        Ok(reply)
    }

    /// Like [`Bird::announce`], but sends `configure` only if the file changed or BIRD has not
    /// accepted this content through this handle yet (a new handle, or a failed attempt);
    /// `None` when there was nothing to do. For periodic calls.
    pub async fn sync(&self, vips: &BTreeSet<IpAddr>) -> Result<Option<BirdReply>> {
        let mut applied = self.applied.lock().await;
        let content = render_routes(vips);
        let written = self.write_routes(&content).await?;
        if !written && applied.as_deref() == Some(content.as_str()) {
            return Ok(None);
        }
        *applied = None;
        let reply = self.configure().await?;
        *applied = Some(content);
        Ok(Some(reply))
    }

    /// Withdraws every VIP (`announce` of the empty set).
    pub async fn withdraw_all(&self) -> Result<BirdReply> {
        self.announce(&BTreeSet::new()).await
    }

    async fn write_routes(&self, content: &str) -> Result<bool> {
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

    /// `configure check`: parses the config without applying it (0020 Configuration OK).
    pub async fn check_config(&self) -> Result<BirdReply> {
        self.configure_cmd("configure check").await
    }

    async fn configure_cmd(&self, cmd: &str) -> Result<BirdReply> {
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

    /// Any CLI command (`show protocols`, `show route protocol lb_vips4`, ...). An 8xxx/9xxx
    /// reply is an error carrying BIRD's message. `configure` replies should go through
    /// [`configure_succeeded`] (or use [`Bird::configure`]).
    pub async fn command(&self, cmd: &str) -> Result<BirdReply> {
        let reply = self.exchange(cmd).await?;
        if reply.is_error() {
            return Err(BirdError::Rejected {
                command: cmd.to_string(),
                code: reply.code(),
                message: reply.message(),
            }
            .into());
        }
        Ok(reply)
    }

    /// `show protocols`, parsed; BGP rows tell whether each session is established.
    pub async fn protocols(&self) -> Result<Vec<ProtocolStatus>> {
        Ok(parse_protocols(&self.command("show protocols").await?))
    }

    /// The VIPs BIRD currently holds in `lb_vips4` and `lb_vips6` (what it can announce).
    pub async fn announced(&self) -> Result<BTreeSet<IpAddr>> {
        let mut out = BTreeSet::new();
        for proto in [PROTO_V4, PROTO_V6] {
            let reply = self
                .command(&format!("show route protocol {proto}"))
                .await
                .with_context(|| {
                    format!(
                        "does BIRD's config include {} (which declares {proto})?",
                        self.routes_file.display()
                    )
                })?;
            out.extend(parse_host_routes(&reply));
        }
        Ok(out)
    }

    /// Sends one command on a new connection and reads its reply, all within the deadline.
    async fn exchange(&self, cmd: &str) -> Result<BirdReply, BirdError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "lb-bird-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn render_routes_exact() {
        let text = render_routes(&set(&[
            "2001:db8:100::10",
            "192.0.2.10",
            "198.51.100.7",
            "2001:db8::1",
        ]));
        let want = "# written by the lb agent; do not edit
# BIRD includes this file from bird.conf; the agent rewrites it and runs `configure`
# whenever the set of announced VIPs changes. Export these protocols to BGP with
# `export where proto = \"lb_vips4\";` and `export where proto = \"lb_vips6\";`.

protocol static lb_vips4 {
\tipv4;
\troute 192.0.2.10/32 blackhole;
\troute 198.51.100.7/32 blackhole;
}

protocol static lb_vips6 {
\tipv6;
\troute 2001:db8::1/128 blackhole;
\troute 2001:db8:100::10/128 blackhole;
}
";
        assert_eq!(text, want);
    }

    #[test]
    fn render_routes_empty_keeps_both_protocols() {
        let text = initial_routes();
        assert!(text.starts_with(ROUTES_HEADER));
        assert!(text.contains("protocol static lb_vips4 {\n\tipv4;\n}\n"));
        assert!(text.contains("protocol static lb_vips6 {\n\tipv6;\n}\n"));
        assert!(!text.contains("route "));
    }

    #[test]
    fn routes_file_written_atomically_and_only_on_change() {
        let dir = TempDir::new();
        let path = dir.0.join("lb-vips.conf");
        assert!(write_initial_routes(&path).unwrap());
        assert!(!write_initial_routes(&path).unwrap(), "kept when present");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), initial_routes());
        let content = render_routes(&set(&["192.0.2.10"]));
        assert!(write_routes_file(&path, &content).unwrap());
        assert!(!write_routes_file(&path, &content).unwrap(), "unchanged");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("lb-vips.conf")]);
        let err = write_routes_file(&dir.0.join("missing/x.conf"), &content).unwrap_err();
        assert!(format!("{err:#}").contains("missing/x.conf"), "{err:#}");
    }

    #[test]
    fn parses_multi_line_reply_with_continuations() {
        let r = parse_reply(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-device1    Device     ---        up     10:46:46.029  \n \
             lb_vips4   Static     master4    up     10:46:46.029  \n \
             bgp1       BGP        ---        start  10:46:47.100  Active        Socket: Connection refused\n\
             1002-bgp2       BGP        ---        up     2024-01-02 10:00:00  Established   \n\
             0000 \n",
        )
        .unwrap();
        assert_eq!(r.code(), 0);
        assert!(!r.is_error());
        assert_eq!(r.lines.len(), 6);
        assert_eq!(r.lines[2].code, 1002, "continuation keeps the code");
        assert!(r.lines[2].text.starts_with("lb_vips4 "));
        let p = parse_protocols(&r);
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].name, "device1");
        assert_eq!(p[0].proto, "Device");
        assert_eq!(p[0].info, "");
        assert_eq!(p[1].table, "master4");
        assert_eq!(p[1].bgp_state(), None);
        assert_eq!(p[2].state, "start");
        assert_eq!(p[2].since, "10:46:47.100");
        assert_eq!(p[2].bgp_state(), Some("Active"));
        assert_eq!(p[2].info, "Active        Socket: Connection refused");
        assert!(!p[2].established());
        assert_eq!(p[3].since, "2024-01-02 10:00:00");
        assert!(p[3].established());
    }

    #[test]
    fn parses_errors_and_spontaneous_lines() {
        let r = parse_reply(
            "0002-Reading configuration from /etc/bird/bird.conf\n\
             +Config timeout expired, starting undo\n\
             8002 /etc/bird/lb-vips.conf, line 3: syntax error, unexpected CF_SYM_UNDEFINED\n",
        )
        .unwrap();
        assert_eq!(r.code(), 8002);
        assert!(r.is_error());
        assert_eq!(
            r.message(),
            "/etc/bird/lb-vips.conf, line 3: syntax error, unexpected CF_SYM_UNDEFINED"
        );
        assert_eq!(r.spontaneous, vec!["Config timeout expired, starting undo"]);
        let r = parse_reply("9001 syntax error, unexpected CF_SYM_UNDEFINED\n").unwrap();
        assert_eq!(r.code(), 9001);
        let r = parse_reply("0000\n").unwrap();
        assert_eq!((r.code(), r.message().as_str()), (0, ""));
        let r = parse_reply("0002-Reading configuration from x\r\n0003 Reconfigured\r\n").unwrap();
        assert_eq!(r.code(), 3);
        assert_eq!(r.message(), "Reconfigured");
        assert!(configure_succeeded(r.code()));
        for bad in [
            "garbage\n",
            " continuation first\n",
            "12 short\n",
            "0003xReconfigured\n",
            "0002-Reading configuration\n",
            "",
            "0003 Reconfigured\n0000 \n",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn success_codes() {
        for c in [3, 4, 5, 17, 18, 19, 20] {
            assert!(configure_succeeded(c), "{c}");
        }
        for c in [0, 1, 2, 6, 16, 1002, 8002, 9001] {
            assert!(!configure_succeeded(c), "{c}");
        }
    }

    #[test]
    fn parses_host_routes() {
        let r = parse_reply(
            "0002-\n1007-Table master4:\n \
             192.0.2.10/32        blackhole [lb_vips4 11:00:00.000] * (200)\n \
             198.51.100.0/24      unicast [bgp1 11:00:00.000] * (100) [AS65000i]\n\
             1007-2001:db8:100::10/128 blackhole [lb_vips6 11:00:00.000] * (200)\n\
             0000 \n",
        )
        .unwrap();
        assert_eq!(
            parse_host_routes(&r),
            set(&["192.0.2.10", "2001:db8:100::10"])
        );
    }

    #[derive(Clone, Copy)]
    enum Script {
        /// Greets, then answers every command with this text.
        Answer(&'static str),
        /// Greets, reads the command, never answers.
        Silent,
        /// Never greets.
        Mute,
        /// Greets, reads the command, sends this and closes.
        CloseAfter(&'static str),
        /// Greets, then streams table rows forever.
        Flood,
    }

    /// A fake BIRD on a unix socket: serves every connection with `script`; records the
    /// commands it received and counts connections.
    struct FakeBird {
        dir: TempDir,
        socket: PathBuf,
        commands: Arc<Mutex<Vec<String>>>,
        script: Arc<Mutex<Script>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl FakeBird {
        fn start(script: Script) -> Self {
            let dir = TempDir::new();
            let socket = dir.0.join("bird.ctl");
            let listener = UnixListener::bind(&socket).unwrap();
            let commands = Arc::new(Mutex::new(Vec::new()));
            let script = Arc::new(Mutex::new(script));
            let (c, s) = (commands.clone(), script.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let script = *s.lock().unwrap();
                    tokio::spawn(serve(stream, script, c.clone()));
                }
            });
            Self {
                dir,
                socket,
                commands,
                script,
                task,
            }
        }

        fn bird(&self) -> Bird {
            Bird::new(&self.socket, self.dir.0.join("lb-vips.conf"))
                .with_timeout(Duration::from_millis(500))
        }

        fn commands(&self) -> Vec<String> {
            self.commands.lock().unwrap().clone()
        }

        fn set_script(&self, script: Script) {
            *self.script.lock().unwrap() = script;
        }
    }

    impl Drop for FakeBird {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(stream: UnixStream, script: Script, commands: Arc<Mutex<Vec<String>>>) {
        let (rd, mut wr) = stream.into_split();
        let mut rd = tokio::io::BufReader::new(rd);
        if matches!(script, Script::Mute) {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return;
        }
        if wr.write_all(b"0001 BIRD 2.0.12 ready.\n").await.is_err() {
            return;
        }
        let mut line = String::new();
        loop {
            line.clear();
            if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            commands.lock().unwrap().push(line.trim_end().to_string());
            match script {
                Script::Answer(text) => {
                    if wr.write_all(text.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Script::Silent | Script::Mute => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                Script::CloseAfter(text) => {
                    let _ = wr.write_all(text.as_bytes()).await;
                    return;
                }
                Script::Flood => {
                    let row = format!("1007-192.0.2.10/32 blackhole {}\n", "x".repeat(200));
                    for _ in 0..100_000 {
                        if wr.write_all(row.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
    }

    const RECONFIGURED: &str =
        "0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n";

    fn bird_error(err: &anyhow::Error) -> &BirdError {
        err.downcast_ref::<BirdError>()
            .unwrap_or_else(|| panic!("not a BirdError: {err:#}"))
    }

    #[tokio::test]
    async fn fake_bird_announce_success() {
        let fake = FakeBird::start(Script::Answer(RECONFIGURED));
        let bird = fake.bird();
        let vips = set(&["192.0.2.10", "2001:db8:100::10"]);
        let reply = bird.announce(&vips).await.unwrap();
        assert_eq!(reply.code(), 3);
        assert_eq!(reply.message(), "Reconfigured");
        assert_eq!(
            std::fs::read_to_string(bird.routes_file()).unwrap(),
            render_routes(&vips)
        );
        assert_eq!(fake.commands(), vec!["configure"]);
        // announce always configures; sync only when something changed.
        bird.announce(&vips).await.unwrap();
        assert_eq!(fake.commands().len(), 2);
        assert!(bird.sync(&vips).await.unwrap().is_none());
        assert_eq!(fake.commands().len(), 2);
        let fewer = set(&["192.0.2.10"]);
        assert_eq!(bird.sync(&fewer).await.unwrap().unwrap().code(), 3);
        assert_eq!(fake.commands().len(), 3);
        assert_eq!(
            std::fs::read_to_string(bird.routes_file()).unwrap(),
            render_routes(&fewer)
        );
        // A new handle does not know what BIRD took: its first sync configures.
        let again = fake.bird();
        assert!(again.sync(&fewer).await.unwrap().is_some());
        assert_eq!(fake.commands().len(), 4);
    }

    #[tokio::test]
    async fn fake_bird_other_success_codes_and_commands() {
        let fake = FakeBird::start(Script::Answer(
            "0002-Reading configuration from /etc/bird/bird.conf\n0004 Reconfiguration in progress\n",
        ));
        assert_eq!(fake.bird().configure().await.unwrap().code(), 4);
        fake.set_script(Script::Answer(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-lb_vips4   Static     master4    up     10:46:46.029  \n \
             router4    BGP        ---        up     10:46:47.000  Established   \n0000 \n",
        ));
        let p = fake.bird().protocols().await.unwrap();
        assert_eq!(p.len(), 2);
        assert!(p[1].established());
        assert_eq!(fake.commands(), vec!["configure", "show protocols"]);
        fake.set_script(Script::Answer(
            "9001 syntax error, unexpected CF_SYM_UNDEFINED\n",
        ));
        let err = fake.bird().command("shwo protocols").await.unwrap_err();
        assert!(matches!(
            bird_error(&err),
            BirdError::Rejected { code: 9001, .. }
        ));
        let err = fake.bird().command("show\nprotocols").await.unwrap_err();
        assert!(format!("{err}").contains("one line"), "{err}");
    }

    #[tokio::test]
    async fn fake_bird_config_error() {
        let fake = FakeBird::start(Script::Answer(
            "0002-Reading configuration from /etc/bird/bird.conf\n\
             8002 /etc/bird/lb-vips.conf:7:2 syntax error, unexpected CF_SYM_UNDEFINED\n",
        ));
        let bird = fake.bird();
        let vips = set(&["192.0.2.10"]);
        let err = bird.announce(&vips).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("BIRD refused `configure` (8002)")
                && msg.contains("lb-vips.conf:7:2 syntax error"),
            "{msg}"
        );
        assert!(matches!(
            bird_error(&err),
            BirdError::Rejected { code: 8002, .. }
        ));
        // The file is written; a later sync retries because BIRD never took it.
        fake.set_script(Script::Answer(RECONFIGURED));
        assert!(bird.sync(&vips).await.unwrap().is_some());
        assert!(bird.sync(&vips).await.unwrap().is_none());
        // 0006 (shutting down) is not success either.
        fake.set_script(Script::Answer(
            "0002-Reading configuration from x\n0006 Reconfiguration ignored, shutting down\n",
        ));
        let err = bird.configure().await.unwrap_err();
        assert!(matches!(
            bird_error(&err),
            BirdError::Rejected { code: 6, .. }
        ));
    }

    #[tokio::test]
    async fn fake_bird_never_answers() {
        for script in [Script::Silent, Script::Mute] {
            let fake = FakeBird::start(script);
            let bird = fake.bird().with_timeout(Duration::from_millis(200));
            let t = std::time::Instant::now();
            let err = bird.configure().await.unwrap_err();
            assert!(t.elapsed() < Duration::from_secs(2));
            assert!(matches!(bird_error(&err), BirdError::Timeout { .. }));
            assert!(
                format!("{err}").contains("did not answer `configure` within 200ms"),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn fake_bird_closes_mid_reply() {
        let fake = FakeBird::start(Script::CloseAfter(
            "0002-Reading configuration from /etc/bird/bird.conf\n000",
        ));
        let err = fake.bird().configure().await.unwrap_err();
        assert!(
            format!("{err}").contains("closed the connection in the middle of a reply"),
            "{err}"
        );
        fake.set_script(Script::CloseAfter(""));
        let err = fake.bird().configure().await.unwrap_err();
        assert!(
            format!("{err}").contains("closed the connection without answering"),
            "{err}"
        );
        fake.set_script(Script::CloseAfter("HTTP/1.1 400 Bad Request\n"));
        let err = fake.bird().configure().await.unwrap_err();
        assert!(format!("{err}").contains("not a BIRD reply line"), "{err}");
    }

    #[tokio::test]
    async fn fake_bird_reply_too_long() {
        let fake = FakeBird::start(Script::Flood);
        let bird = fake.bird().with_max_reply(64 << 10);
        let err = bird.command("show route").await.unwrap_err();
        assert!(
            matches!(bird_error(&err), BirdError::TooLong { .. }),
            "{err}"
        );
        assert!(format!("{err}").contains("exceeds 65536 bytes"), "{err}");
    }

    #[tokio::test]
    async fn unreachable_socket_errors() {
        let dir = TempDir::new();
        let missing = Bird::new(dir.0.join("bird.ctl"), dir.0.join("lb-vips.conf"));
        let err = missing.configure().await.unwrap_err();
        let msg = format!("{err}");
        assert!(
            msg.contains("is BIRD running?") && msg.contains("bird.ctl"),
            "{msg}"
        );
        // A stale socket file nobody listens on.
        let stale = dir.0.join("stale.ctl");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let err = Bird::new(&stale, dir.0.join("lb-vips.conf"))
            .configure()
            .await
            .unwrap_err();
        assert!(format!("{err}").contains("nothing listens"), "{err}");
        // announce still leaves the file written for BIRD's next start.
        let vips = set(&["192.0.2.10"]);
        assert!(missing.announce(&vips).await.is_err());
        assert_eq!(
            std::fs::read_to_string(missing.routes_file()).unwrap(),
            render_routes(&vips)
        );
    }
}
