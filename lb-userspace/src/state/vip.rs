//! A VIP: address, port and protocol, as operators write it (`192.0.2.10:80/tcp`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use anyhow::{Result, anyhow, bail, ensure};
use lb_common::{PROTO_TCP, PROTO_UDP, VipKey};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Proto::Tcp),
            PROTO_UDP => Some(Proto::Udp),
            _ => None,
        }
    }
}

impl FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => bail!("protocol `{s}`: use tcp or udp"),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Refuses addresses that cannot be a service on the Internet: unspecified, loopback,
/// link-local, multicast and broadcast (IPv4-mapped IPv6 addresses by their IPv4 meaning).
/// Every VIP that enters the desired state passes here: config file, control API and peers'
/// states (`Change::validate` and `ReplicatedState::validate`).
pub fn check_vip_addr(addr: &IpAddr) -> Result<()> {
    let why = match addr.to_canonical() {
        a if a.is_unspecified() => "unspecified",
        a if a.is_loopback() => "loopback",
        a if a.is_multicast() => "multicast",
        IpAddr::V4(a) if a.is_broadcast() => "broadcast",
        IpAddr::V4(a) if a.is_link_local() => "link-local",
        IpAddr::V6(a) if a.is_unicast_link_local() => "link-local",
        _ => return Ok(()),
    };
    bail!("{addr} is a {why} address and cannot be a VIP")
}

/// A VIP service: address, port (0 = every port) and protocol. Written `192.0.2.10:80/tcp`,
/// `[2001:db8::10]:443/tcp`, `192.0.2.10:*/udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vip {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

impl Vip {
    pub fn key(&self) -> VipKey {
        VipKey::new(self.addr, self.port, self.proto.number())
    }

    pub fn from_key(key: &VipKey) -> Option<Self> {
        Some(Self {
            addr: lb_common::words_addr(key.family, &key.addr),
            port: u16::from_be(key.port),
            proto: Proto::from_number(key.proto)?,
        })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let port = if self.port == 0 {
            "*".to_string()
        } else {
            self.port.to_string()
        };
        match self.addr {
            IpAddr::V4(a) => write!(f, "{a}:{port}/{}", self.proto),
            IpAddr::V6(a) => write!(f, "[{a}]:{port}/{}", self.proto),
        }
    }
}

impl FromStr for Vip {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (sock, proto) = s.rsplit_once('/').ok_or_else(|| {
            anyhow!("VIP `{s}`: expected ADDR:PORT/tcp or /udp, e.g. 192.0.2.10:80/tcp")
        })?;
        let proto: Proto = proto.parse().map_err(|e| anyhow!("VIP `{s}`: {e}"))?;
        let sock = sock.replace(":*", ":0");
        let sock: SocketAddr = sock.parse().map_err(|_| {
            anyhow!(
                "VIP `{s}`: `{sock}` is not ADDR:PORT (IPv6 as [ADDR]:PORT; port * or 0 = every port)"
            )
        })?;
        let addr = sock.ip();
        ensure!(
            !addr.is_unspecified() && !addr.is_multicast(),
            "VIP `{s}`: {addr} cannot be a VIP address"
        );
        Ok(Self {
            addr,
            port: sock.port(),
            proto,
        })
    }
}

impl Serialize for Vip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Vip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: anyhow::Error| serde::de::Error::custom(e))
    }
}
