//! Just enough HTTP/1.1 for the control API and `/metrics`: one request per connection,
//! `Content-Length` bodies, bounded sizes and time. Local, small, and strict: anything else is
//! refused with a 4xx and a reason.
//!
//! Against slow or hostile clients: one deadline for the whole request (head and body, however
//! it trickles in), one for the whole answer, and a body read as it arrives under the caller's
//! cap, so memory follows what was received, never what `Content-Length` promises.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEAD: usize = 16 * 1024;
/// The control API's largest body (a change is a few hundred bytes of JSON).
pub const MAX_API_BODY: usize = 64 * 1024;
/// The whole request must arrive within this.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The whole answer must be taken within this.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// Path without the query string.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        let mut body = serde_json::to_vec_pretty(value).expect("API types serialize");
        body.push(b'\n');
        Self {
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &crate::api::ErrorReply {
                error: message.into(),
            },
        )
    }

    pub fn text(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body: body.into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .ok_or_else(|| anyhow!("bad percent escape in `{s}`"))?;
                out.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| anyhow!("bad percent escape in `{s}`"))?,
                );
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| anyhow!("`{s}` is not UTF-8"))
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// An error status and message, for requests that are not well-formed HTTP.
pub struct HttpError(pub u16, pub String);

/// Reads one request, whose body may be at most `max_body` bytes, within [`REQUEST_DEADLINE`].
pub async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
) -> std::result::Result<Request, HttpError> {
    read_request_within(stream, max_body, REQUEST_DEADLINE).await
}

/// [`read_request`] with another deadline (tests).
pub async fn read_request_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
    deadline: Duration,
) -> std::result::Result<Request, HttpError> {
    match tokio::time::timeout(deadline, read_request_inner(stream, max_body)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError(408, "request not received in time".into())),
    }
}

async fn read_request_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_body: usize,
) -> std::result::Result<Request, HttpError> {
    let bad = |m: &str| HttpError(400, m.to_string());
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError(413, "request head too large".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| bad(&e.to_string()))?;
        if n == 0 {
            return Err(bad("connection closed before the request was complete"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad("only HTTP/1.x is spoken here"));
    }
    let mut content_length = 0usize;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header line"))?;
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| bad("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not accepted; send Content-Length"));
        }
    }
    if content_length > max_body {
        return Err(HttpError(413, "request body too large".into()));
    }
    let mut body = buf[head_end + 4..].to_vec();
    if body.len() > content_length {
        return Err(bad("more body than Content-Length says"));
    }
    // As it arrives: memory grows with what was sent, not with what was announced.
    while body.len() < content_length {
        let mut chunk = [0u8; 4096];
        let want = (content_length - body.len()).min(chunk.len());
        let n = stream
            .read(&mut chunk[..want])
            .await
            .map_err(|e| bad(&e.to_string()))?;
        if n == 0 {
            return Err(bad("body shorter than Content-Length"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut q = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        q.push((
            percent_decode(k).map_err(|e| bad(&e.to_string()))?,
            percent_decode(v).map_err(|e| bad(&e.to_string()))?,
        ));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: q,
        body,
    })
}

/// Writes the answer and closes, all within [`WRITE_DEADLINE`] (a client that does not read
/// does not hold the connection).
pub async fn write_response<S: AsyncWrite + Unpin>(stream: &mut S, r: &Response) -> Result<()> {
    tokio::time::timeout(WRITE_DEADLINE, write_response_inner(stream, r))
        .await
        .map_err(|_| anyhow!("the answer was not taken within {WRITE_DEADLINE:?}"))?
}

async fn write_response_inner<S: AsyncWrite + Unpin>(stream: &mut S, r: &Response) -> Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&r.body).await?;
    stream.shutdown().await.ok();
    Ok(())
}

/// Sends one request on a fresh stream and returns (status, body), waiting at most `timeout`.
pub async fn call<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: lb\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(timeout, stream.read_to_end(&mut buf))
        .await
        .with_context(|| {
            format!(
                "the agent did not answer within {} s (lb --timeout)",
                timeout.as_secs()
            )
        })??;
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed answer from the agent"))?;
    let head = std::str::from_utf8(&buf[..end])?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line from the agent"))?;
    ensure!((100..600).contains(&status), "bad status {status}");
    if buf.len() < end + 4 {
        bail!("truncated answer");
    }
    Ok((status, buf[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// A client trickling one byte every 100 ms never finishes its head: the one deadline ends
    /// the request, though no single read ever waits long.
    #[tokio::test(start_paused = true)]
    async fn one_deadline_for_a_whole_trickled_request() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let trickle = tokio::spawn(async move {
            for _ in 0..1000 {
                if client.write_all(b"G").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let t = Instant::now();
        let r = read_request(&mut server, 0).await;
        assert!(matches!(r, Err(HttpError(408, _))));
        assert_eq!(t.elapsed(), REQUEST_DEADLINE);
        trickle.abort();
    }

    /// A body is read as it comes, under the caller's cap: /metrics takes none at all, and a
    /// body promised but never sent ends at the deadline.
    #[tokio::test(start_paused = true)]
    async fn bodies_are_capped_and_read_as_they_arrive() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nContent-Length: 1\r\n\r\nx")
            .await
            .unwrap();
        assert!(matches!(
            read_request(&mut server, 0).await,
            Err(HttpError(413, _))
        ));
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client
            .write_all(b"POST /v1/change HTTP/1.1\r\nContent-Length: 60000\r\n\r\n{}")
            .await
            .unwrap();
        assert!(matches!(
            read_request(&mut server, MAX_API_BODY).await,
            Err(HttpError(408, _))
        ));
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        client
            .write_all(b"POST /v1/change HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
            .await
            .unwrap();
        let reader = tokio::spawn(async move { read_request(&mut server, 5).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"cde").await.unwrap();
        let req = reader.await.unwrap().map_err(|e| e.1).unwrap();
        assert_eq!(req.body, b"abcde");
    }

    /// A client that never reads its answer releases the connection after the write deadline.
    #[tokio::test(start_paused = true)]
    async fn an_answer_not_taken_times_out() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = Response::text(200, "text/plain", "x".repeat(1 << 16));
        let t = Instant::now();
        assert!(write_response(&mut server, &r).await.is_err());
        assert_eq!(t.elapsed(), WRITE_DEADLINE);
    }
}
