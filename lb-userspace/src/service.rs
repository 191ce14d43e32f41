//! A service as an operator writes it on the command line, and its installation into the
//! dataplane (backend ids, Maglev ring, VIP entry, in that order).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail, ensure};
use lb_common::{
    PROTO_TCP, PROTO_UDP, VIP_F_GUE, VipKey, VipMeta,
    maglev::{MAX_WEIGHT, MaglevMember, MaglevTable},
};

use crate::dataplane::Dataplane;

/// `ADDR:PORT/PROTO[/gue]=BACKEND[@WEIGHT],...`, e.g.
/// `192.0.2.10:80/tcp=2001:db8::a,2001:db8::b@2` or `[2001:db8::10]:0/udp/gue=2001:db8::a`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub gue: bool,
    pub backends: Vec<MaglevMember>,
}

impl FromStr for ServiceSpec {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (vip, backends) = s.split_once('=').ok_or_else(|| {
            anyhow!("`{s}`: expected VIP=BACKENDS, e.g. 192.0.2.10:80/tcp=2001:db8::a")
        })?;
        let mut parts = vip.split('/');
        let sock = parts.next().unwrap_or_default();
        let sock: SocketAddr = sock.parse().with_context(|| {
            format!("`{sock}` is not ADDR:PORT (IPv6 as [ADDR]:PORT; port 0 = any port)")
        })?;
        let proto = match parts.next() {
            Some("tcp") => PROTO_TCP,
            Some("udp") => PROTO_UDP,
            other => bail!("`{vip}`: protocol must be /tcp or /udp, got {other:?}"),
        };
        let gue = match parts.next() {
            None => false,
            Some("gue") => true,
            Some(x) => bail!("`{vip}`: unknown option `{x}` (only /gue)"),
        };
        ensure!(parts.next().is_none(), "`{vip}`: too many `/` parts");
        let mut members = Vec::new();
        for b in backends.split(',') {
            let (addr, weight) = match b.split_once('@') {
                Some((a, w)) => (
                    a,
                    w.parse::<u32>()
                        .with_context(|| format!("`{w}` is not a weight"))?,
                ),
                None => (b, 1),
            };
            let addr: Ipv6Addr = addr.parse().with_context(|| {
                format!("backend `{addr}` is not an IPv6 address (the tunnel endpoint)")
            })?;
            ensure!(
                (1..=MAX_WEIGHT).contains(&weight),
                "backend {addr}: weight {weight} is outside 1..={MAX_WEIGHT}"
            );
            ensure!(
                !members.iter().any(|m: &MaglevMember| m.addr == addr),
                "backend {addr} is listed twice"
            );
            members.push(MaglevMember { addr, weight });
        }
        Ok(Self {
            addr: sock.ip(),
            port: sock.port(),
            proto,
            gue,
            backends: members,
        })
    }
}

impl ServiceSpec {
    pub fn key(&self) -> VipKey {
        VipKey::new(self.addr, self.port, self.proto)
    }
}

/// Installs services with fresh dataplane ids: VIP i uses ring i; backends are numbered by
/// first appearance across all services (one id per tunnel address).
pub fn install(dp: &mut Dataplane, services: &[ServiceSpec], seed: u64) -> Result<Vec<Ipv6Addr>> {
    let limits = dp.limits();
    ensure!(
        services.len() as u32 <= limits.max_rings.min(limits.max_vips),
        "too many services for the map limits"
    );
    let mut ids: Vec<Ipv6Addr> = Vec::new();
    for (i, svc) in services.iter().enumerate() {
        ensure!(
            !services[..i].iter().any(|o| o.key() == svc.key()),
            "service {}:{} is given twice",
            svc.addr,
            svc.port
        );
        let table = MaglevTable::build(limits.ring_size, seed, &svc.backends)
            .map_err(|e| anyhow!("{e}"))?;
        let mut member_ids = Vec::new();
        for m in table.members() {
            let id = match ids.iter().position(|a| *a == m.addr) {
                Some(id) => id as u32,
                None => {
                    ids.push(m.addr);
                    let id = ids.len() as u32 - 1;
                    dp.set_backend(id, m.addr)?;
                    id
                }
            };
            member_ids.push(id);
        }
        let slots = table.slots_as_ids(&member_ids);
        dp.write_ring(i as u32, &slots)?;
        let meta = VipMeta {
            id: i as u32,
            ring: i as u32,
            flags: if svc.gue { VIP_F_GUE } else { 0 },
            _pad: 0,
        };
        dp.set_vip(svc.key(), meta)?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services() {
        let s: ServiceSpec = "192.0.2.10:80/tcp=2001:db8::a,2001:db8::b@2"
            .parse()
            .unwrap();
        assert_eq!(
            (s.addr, s.port, s.proto, s.gue),
            ("192.0.2.10".parse().unwrap(), 80, PROTO_TCP, false)
        );
        assert_eq!(s.backends[1].weight, 2);
        let s: ServiceSpec = "[2001:db8::10]:0/udp/gue=2001:db8::a".parse().unwrap();
        assert_eq!((s.port, s.proto, s.gue), (0, PROTO_UDP, true));
    }

    #[test]
    fn refuses_bad_services_with_a_reason() {
        for (bad, why) in [
            ("192.0.2.10:80/tcp", "expected VIP=BACKENDS"),
            ("192.0.2.300:80/tcp=2001:db8::a", "is not ADDR:PORT"),
            ("2001:db8::10:80/tcp=2001:db8::a", "is not ADDR:PORT"),
            ("192.0.2.10:80/sctp=2001:db8::a", "protocol must be"),
            ("192.0.2.10:80/tcp/vxlan=2001:db8::a", "unknown option"),
            ("192.0.2.10:80/tcp=192.0.2.1", "is not an IPv6 address"),
            ("192.0.2.10:80/tcp=2001:db8::a@0", "outside 1..="),
            ("192.0.2.10:80/tcp=2001:db8::a@1001", "outside 1..="),
            ("192.0.2.10:80/tcp=2001:db8::a@x", "is not a weight"),
            ("192.0.2.10:80/tcp=2001:db8::a,2001:db8::a", "listed twice"),
        ] {
            let err = format!("{:#}", bad.parse::<ServiceSpec>().unwrap_err());
            assert!(
                err.contains(why),
                "`{bad}`: error `{err}` should say `{why}`"
            );
        }
    }
}
