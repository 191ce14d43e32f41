//! The control API's client: one HTTP request per call over the agent's unix socket.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::api::{ChangeReply, ErrorReply, ReloadReply, ReloadRequest};
use crate::http;
use crate::state::Change;

pub struct Client {
    socket: PathBuf,
    timeout: std::time::Duration,
}

/// Why a call to the agent failed.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing answers on the socket (no agent, or not root).
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The agent refused the request; `message` is its reason.
    Refused { status: u16, message: String },
    /// The exchange broke off, or the answer is not what the API promises.
    Exchange(anyhow::Error),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ClientError::Unreachable { socket, source } => {
                let hint = match source.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                        " (is the agent running? `lb agent --config ...`)"
                    }
                    std::io::ErrorKind::PermissionDenied => " (the control API is root-only)",
                    _ => "",
                };
                write!(
                    f,
                    "cannot reach the agent at {}: {source}{hint}",
                    socket.display()
                )
            }
            ClientError::Refused { message, .. } => f.write_str(message),
            ClientError::Exchange(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl Client {
    /// A client of the agent at `socket`, waiting at most `timeout` for each answer.
    pub fn new(socket: &Path, timeout: std::time::Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Unreachable {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (status, body) = http::call(&mut stream, method, target, body.as_deref(), self.timeout)
            .await
            .map_err(ClientError::Exchange)?;
        if status != 200 {
            let message = serde_json::from_slice::<ErrorReply>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            return Err(ClientError::Refused { status, message });
        }
        serde_json::from_slice(&body).map_err(|e| {
            ClientError::Exchange(anyhow::Error::new(e).context("decoding the agent's answer"))
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, target: &str) -> Result<T, ClientError> {
        self.call("GET", target, None).await
    }

    /// A POST without a body (node drain).
    pub async fn post<T: DeserializeOwned>(&self, target: &str) -> Result<T, ClientError> {
        self.call("POST", target, None).await
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        target: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Exchange(e.into()))?;
        self.call("POST", target, Some(body)).await
    }

    /// Asks the agent to reload its config file (or, with `dry_run`, what that would change).
    pub async fn reload(&self, req: &ReloadRequest) -> Result<ReloadReply, ClientError> {
        self.post_json("/v1/reload", req).await
    }

    /// Asks the agent to apply one change.
    pub async fn change(&self, change: &Change) -> Result<ChangeReply, ClientError> {
        self.post_json("/v1/change", change).await
    }
}
