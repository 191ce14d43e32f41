//! The control API server: HTTP on the unix socket, root only. Each route asks the actor with
//! a [`Command`] and answers its reply as JSON (`crate::api` lists the routes).
//!
//! It must answer when the operator needs it most, so it has its own cap
//! (`agent.api_max_connections`) and one descriptor in reserve: when the process has none
//! left, the reserve is given up to take the operator's connection (`lb status`,
//! `lb node drain`), and taken back when it closes.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Result, anyhow};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::actor::{Command, Reply};
use crate::api::{BackendInfo, ReloadRequest};
use crate::dataplane::{FlowCounts, flow_counts_pinned};
use crate::http::{self, Request, Response};
use crate::listen::{self, Gate, Listener};
use crate::state::{Change, Refusal, Refused, Vip};

pub(super) async fn ask<T>(
    tx: &mpsc::Sender<Command>,
    make: impl FnOnce(Reply<T>) -> Command,
) -> Result<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply))
        .await
        .map_err(|_| anyhow!("the agent is shutting down"))?;
    rx.await
        .map_err(|_| anyhow!("the agent is shutting down"))?
}

/// Backends with their live flow counts (the walk runs here, off the actor, on the pinned
/// connection table's own file descriptor).
async fn backends_with_flows(
    tx: &mpsc::Sender<Command>,
    vip: Option<Vip>,
    pin_dir: &Path,
) -> Result<Vec<BackendInfo>> {
    let rows = ask(tx, |r| Command::Backends(vip, r)).await?;
    let dir = pin_dir.to_path_buf();
    // Without counts (no descriptor to open the table with, say) the list still answers.
    let counts: FlowCounts =
        match tokio::task::spawn_blocking(move || flow_counts_pinned(&dir)).await? {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("flow counts unavailable: {e:#}");
                FlowCounts::default()
            }
        };
    Ok(rows
        .into_iter()
        .map(|(mut b, generation)| {
            b.flows = counts.live.get(&(b.id, generation)).copied().unwrap_or(0);
            b
        })
        .collect())
}

type Reserve = Arc<Mutex<Option<OwnedFd>>>;

/// Puts a descriptor back in reserve if there is none (and one can be opened).
fn refill(reserve: &Reserve) {
    let mut r = reserve.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_none() {
        *r = std::fs::File::open("/dev/null").ok().map(OwnedFd::from);
    }
}

pub(super) async fn serve_api(
    listener: UnixListener,
    tx: mpsc::Sender<Command>,
    pin_dir: PathBuf,
    max_connections: usize,
) {
    let mut gate = Gate::new(Listener::Api, max_connections);
    let reserve: Reserve = Arc::new(Mutex::new(None));
    refill(&reserve);
    loop {
        let accepted = match listener.accept().await {
            Err(e) if listen::is_local_exhaustion(&e) => {
                // Out of descriptors: give up the reserve and take the waiting connection.
                let spare = reserve.lock().unwrap_or_else(|p| p.into_inner()).take();
                match spare {
                    Some(fd) => {
                        drop(fd);
                        listener.accept().await
                    }
                    None => Err(e),
                }
            }
            r => r,
        };
        let Some(((mut stream, _), slot)) = gate.admit(accepted).await else {
            refill(&reserve);
            continue;
        };
        let tx = tx.clone();
        let pin_dir = pin_dir.clone();
        let reserve = reserve.clone();
        tokio::spawn(async move {
            // The socket is mode 0600 already; the peer's uid is checked as well.
            let root = stream.peer_cred().map(|c| c.uid() == 0).unwrap_or(false);
            let resp = match http::read_request(&mut stream, http::MAX_API_BODY).await {
                Err(http::HttpError(status, msg)) => {
                    if status == 408 {
                        listen::refused(Listener::Api, listen::Reason::Deadline);
                    }
                    Response::error(status, msg)
                }
                Ok(_) if !root => Response::error(403, "the control API is root-only"),
                Ok(req) => route(&req, &tx, &pin_dir).await,
            };
            let _ = http::write_response(&mut stream, &resp).await;
            drop(stream);
            drop(slot);
            refill(&reserve);
        });
    }
}

fn error_status(e: &anyhow::Error) -> u16 {
    match e.downcast_ref::<Refused>().map(|r| r.kind) {
        Some(Refusal::NotFound) => 404,
        Some(Refusal::Conflict) => 409,
        None => 400,
    }
}

async fn route(req: &Request, tx: &mpsc::Sender<Command>, pin_dir: &Path) -> Response {
    let reply = |r: Result<Response>| match r {
        Ok(resp) => resp,
        Err(e) => Response::error(error_status(&e), format!("{e:#}")),
    };
    let path: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), path.as_slice()) {
        ("GET", ["v1", "status"]) => reply(
            ask(tx, Command::Status)
                .await
                .map(|s| Response::json(200, &s)),
        ),
        ("GET", ["v1", "vips"]) => reply(
            ask(tx, Command::Vips)
                .await
                .map(|v| Response::json(200, &v)),
        ),
        ("GET", ["v1", "backends"]) => {
            let vip = match req.query.iter().find(|(k, _)| k == "vip") {
                Some((_, v)) => match v.parse::<Vip>() {
                    Ok(v) => Some(v),
                    Err(e) => return Response::error(400, format!("{e:#}")),
                },
                None => None,
            };
            if let Some((k, _)) = req.query.iter().find(|(k, _)| k != "vip") {
                return Response::error(400, format!("unknown query parameter `{k}`"));
            }
            reply(
                backends_with_flows(tx, vip, pin_dir)
                    .await
                    .map(|b| Response::json(200, &b)),
            )
        }
        ("GET", ["v1", "stats"]) => reply(
            ask(tx, Command::Stats)
                .await
                .map(|s| Response::json(200, &s)),
        ),
        ("GET", ["v1", "peers"]) => reply(
            ask(tx, Command::Peers)
                .await
                .map(|s| Response::json(200, &s)),
        ),
        ("POST", ["v1", "reload"]) => {
            let request: ReloadRequest = if req.body.is_empty() {
                ReloadRequest::default()
            } else {
                match serde_json::from_slice(&req.body) {
                    Ok(r) => r,
                    Err(e) => return Response::error(400, format!("request body: {e}")),
                }
            };
            reply(
                ask(tx, |r| Command::Reload(request, r))
                    .await
                    .map(|r| Response::json(200, &r)),
            )
        }
        ("POST", ["v1", "node", verb @ ("drain" | "undrain")]) => {
            let drain = *verb == "drain";
            reply(
                ask(tx, |r| Command::NodeDrain(drain, r))
                    .await
                    .map(|r| Response::json(200, &r)),
            )
        }
        ("POST", ["v1", "change"]) => {
            // Deserializing checks the VIP; the actor's `DesiredState::apply` checks the rest.
            let change: Change = match serde_json::from_slice(&req.body) {
                Ok(c) => c,
                Err(e) => return Response::error(400, format!("request body: {e}")),
            };
            reply(
                ask(tx, |r| Command::Change(change, r))
                    .await
                    .map(|c| Response::json(200, &c)),
            )
        }
        (
            _,
            [
                "v1",
                "status" | "vips" | "backends" | "stats" | "reload" | "peers" | "change",
            ],
        )
        | (_, ["v1", "node", "drain" | "undrain"]) => Response::error(
            405,
            format!("{} is not allowed on {}", req.method, req.path),
        ),
        _ => Response::error(404, format!("no such endpoint {}", req.path)),
    }
}
