//! Calls only tests and tools make (`test-bird` feature): what BIRD runs and holds.

use std::collections::BTreeSet;
use std::net::IpAddr;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::client::{Bird, BirdError};
use super::reply::BirdReply;
use super::routes::{PROTO_V4, PROTO_V6};

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

impl Bird {
    /// Like [`Bird::announce`], but sends `configure` only if the file changed or BIRD has not
    /// accepted this content through this handle yet (a new handle, or a failed attempt);
    /// `None` when there was nothing to do. For periodic calls.
    pub async fn sync(&self, vips: &BTreeSet<IpAddr>) -> Result<Option<BirdReply>> {
        let mut applied = self.applied.lock().await;
        let content = self.render(vips);
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

    /// `configure check`: parses the config without applying it (0020 Configuration OK).
    pub async fn check_config(&self) -> Result<BirdReply> {
        self.configure_cmd("configure check").await
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
}
