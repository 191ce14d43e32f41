//! `lb decap --stats`: the pinned program's settings, attachment and counters.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    CounterValue,
    decap::{DecapConfig, DecapCounter, names},
    words_v6,
};
use serde_json::json;

use crate::addr_list::join;
use crate::kernel::{iface_xdp, xdp_link_info};
use crate::pins::LINK_PIN;
use crate::program::read_counters;
use lb_host::table::table;

/// The pinned program's state: settings from its maps, whether it runs on `iface`, counters.
#[derive(Debug)]
pub struct DecapStatus {
    pub iface: String,
    pub pin_dir: PathBuf,
    pub program_id: u32,
    /// "driver" or "generic" while attached to `iface`; None when it is not (interface gone).
    pub mode: Option<&'static str>,
    pub addresses: Vec<Ipv6Addr>,
    pub gue_port: u16,
    pub counters: Vec<(DecapCounter, CounterValue)>,
}

pub fn status(iface: &str, pin_dir: &Path) -> Result<DecapStatus> {
    let link_pin = pin_dir.join(LINK_PIN);
    ensure!(
        link_pin.exists(),
        "lb-decap is not attached to {iface} (nothing pinned at {})",
        pin_dir.display()
    );
    let info = xdp_link_info(&link_pin)?;
    let mode = match iface_xdp(iface) {
        Ok(Some((prog, mode))) if prog == info.prog_id => Some(mode),
        _ => None,
    };
    let open = |name: &str| {
        let path = pin_dir.join(name);
        MapData::from_pin(&path).with_context(|| format!("opening the pinned {}", path.display()))
    };
    let addrs: HashMap<MapData, [u32; 4], u32> =
        HashMap::try_from(Map::HashMap(open(names::ADDRS)?))?;
    let mut addresses: Vec<(u32, Ipv6Addr)> = addrs
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, i)| (i, words_v6(&k)))
        .collect();
    addresses.sort();
    let cfg: Array<MapData, DecapConfig> = Array::try_from(Map::Array(open(names::CONFIG)?))?;
    let stats: PerCpuArray<MapData, CounterValue> =
        PerCpuArray::try_from(Map::PerCpuArray(open(names::STATS)?))?;
    Ok(DecapStatus {
        iface: iface.to_string(),
        pin_dir: pin_dir.to_path_buf(),
        program_id: info.prog_id,
        mode,
        addresses: addresses.into_iter().map(|(_, a)| a).collect(),
        gue_port: u16::from_be(cfg.get(&0, 0)?.gue_port),
        counters: read_counters(&stats)?,
    })
}

impl DecapStatus {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> = self
            .counters
            .iter()
            .map(|(c, v)| {
                (
                    c.name().to_string(),
                    json!({"packets": v.packets, "bytes": v.bytes}),
                )
            })
            .collect();
        let (handed_on, kept, dropped) = self.second_chance();
        json!({
            "iface": self.iface,
            "pin_dir": self.pin_dir,
            "program_id": self.program_id,
            "attached": self.mode.is_some(),
            "mode": self.mode,
            "addresses": self.addresses,
            "gue_port": self.gue_port,
            "counters": counters,
            "second_chance": {"handed_on": handed_on, "kept": kept, "dropped": dropped},
        })
    }

    /// Packets with a routing header (second chance), in packets: handed on to the previous
    /// backend, kept (decapsulated here), dropped (a malformed header or the hop limit).
    pub fn second_chance(&self) -> (u64, u64, u64) {
        let mut sums = (0, 0, 0);
        for (c, v) in &self.counters {
            match c {
                DecapCounter::SrhForwarded => sums.0 += v.packets,
                DecapCounter::SrhPassSyn
                | DecapCounter::SrhPassSocket
                | DecapCounter::SrhPassSyncookie
                | DecapCounter::SrhPassLast
                | DecapCounter::SrhPassNotTcp => sums.1 += v.packets,
                DecapCounter::DropBadSrh | DecapCounter::DropSrhHopLimit => sums.2 += v.packets,
                _ => {}
            }
        }
        sums
    }

    pub(crate) fn render(&self) -> String {
        let state = match self.mode {
            Some(m) => format!("attached in {m} mode"),
            None => "pinned but NOT attached to this interface".to_string(),
        };
        let rows: Vec<Vec<String>> = self
            .counters
            .iter()
            .map(|(c, v)| {
                vec![
                    c.name().to_string(),
                    v.packets.to_string(),
                    v.bytes.to_string(),
                ]
            })
            .collect();
        let (handed_on, kept, dropped) = self.second_chance();
        format!(
            "lb-decap on {}: {state} (program id {}), pinned at {}\ntunnel addresses: {}\nGUE \
             port: {}\nsecond chance (routing header): {handed_on} handed on to the previous \
             backend, {kept} kept, {dropped} dropped\n\n{}",
            self.iface,
            self.program_id,
            self.pin_dir.display(),
            join(&self.addresses),
            self.gue_port,
            table(&["COUNTER", "PACKETS", "BYTES"], &rows)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_every_counter_and_sums_second_chance() {
        let counters = DecapCounter::ALL
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let v = CounterValue {
                    packets: i as u64 + 1,
                    bytes: 100 * (i as u64 + 1),
                };
                (c, v)
            })
            .collect();
        let st = DecapStatus {
            iface: "eth0".into(),
            pin_dir: "/sys/fs/bpf/lb-decap/eth0".into(),
            program_id: 7,
            mode: Some("driver"),
            addresses: vec!["2001:db8:be::1".parse().unwrap()],
            gue_port: 6080,
            counters,
        };
        let n = |c: DecapCounter| c as u64 + 1;
        let kept = n(DecapCounter::SrhPassSyn)
            + n(DecapCounter::SrhPassSocket)
            + n(DecapCounter::SrhPassSyncookie)
            + n(DecapCounter::SrhPassLast)
            + n(DecapCounter::SrhPassNotTcp);
        let dropped = n(DecapCounter::DropBadSrh) + n(DecapCounter::DropSrhHopLimit);
        let handed_on = n(DecapCounter::SrhForwarded);
        assert_eq!(st.second_chance(), (handed_on, kept, dropped));
        let text = st.render();
        for (c, v) in &st.counters {
            let line = text
                .lines()
                .find(|l| l.split_whitespace().next() == Some(c.name()))
                .unwrap_or_else(|| panic!("{} missing: {text}", c.name()));
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                cells,
                [c.name(), &v.packets.to_string(), &v.bytes.to_string()]
            );
        }
        assert!(text.contains(&format!(
            "{handed_on} handed on to the previous backend, {kept} kept, {dropped} dropped"
        )));
        let j = st.to_json();
        assert_eq!(j["counters"]["srh_forwarded"]["packets"], handed_on);
        assert_eq!(j["second_chance"]["kept"], kept);
        assert_eq!(j["second_chance"]["dropped"], dropped);
    }
}
