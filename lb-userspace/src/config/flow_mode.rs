//! `[sync] flows`: which flows an agent shares with its peers (docs/sync.md, "Flow sync
//! modes"). The booleans of earlier versions still read: `true` is `all`, `false` is `off`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Which flows are shared with peers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowSync {
    /// Every new flow (each SYN's entry), and every live flow on refresh and on connect.
    All,
    /// Only the live flows whose Maglev slot a change of this agent's tables moved, when it
    /// moves them (paced); nothing per SYN.
    #[default]
    Changes,
    /// No flow crosses a link; the desired state is still replicated.
    Off,
}

impl FlowSync {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Changes => "changes",
            Self::Off => "off",
        }
    }

    /// Whether any flows cross the links (the importer runs).
    pub fn shares(self) -> bool {
        self != Self::Off
    }
}

impl fmt::Display for FlowSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FlowSync {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FlowSync;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"all\", \"changes\" or \"off\" (or true = all, false = off)")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FlowSync, E> {
                Ok(if v { FlowSync::All } else { FlowSync::Off })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlowSync, E> {
                match v {
                    "all" => Ok(FlowSync::All),
                    "changes" => Ok(FlowSync::Changes),
                    "off" => Ok(FlowSync::Off),
                    other => Err(E::custom(format!(
                        "flows = \"{other}\": use \"all\", \"changes\" or \"off\""
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}
