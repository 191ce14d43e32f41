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
        json!({
            "iface": self.iface,
            "pin_dir": self.pin_dir,
            "program_id": self.program_id,
            "attached": self.mode.is_some(),
            "mode": self.mode,
            "addresses": self.addresses,
            "gue_port": self.gue_port,
            "counters": counters,
        })
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
        format!(
            "lb-decap on {}: {state} (program id {}), pinned at {}\ntunnel addresses: {}\nGUE \
             port: {}\n\n{}",
            self.iface,
            self.program_id,
            self.pin_dir.display(),
            join(&self.addresses),
            self.gue_port,
            table(&["COUNTER", "PACKETS", "BYTES"], &rows)
        )
    }
}
