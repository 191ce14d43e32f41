//! One rate's measurement (a row of the results) and the figures derived from it.

use serde_json::{Value, json};

use crate::port::*;

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) rate: u32,
    pub(crate) sent: Sent,
    pub(crate) window_s: f64,
    pub(crate) settle_s: f64,
    pub(crate) syn: u64,
    pub(crate) events: u64,
    pub(crate) events_lost: u64,
    pub(crate) exported: u64,
    pub(crate) imported: u64,
    pub(crate) dropped_queue: u64,
    pub(crate) dropped_import: u64,
    pub(crate) untranslated: u64,
    pub(crate) refreshed_in_window: i64,
    pub(crate) app_bytes: f64,
    pub(crate) wire_bytes: f64,
    /// lb1's lb_sync_bytes_sent_total{peer="lb2"} over the window (lags by the heartbeats).
    pub(crate) lb1_bytes_sent_counter: i64,
    pub(crate) cpu_s: [f64; 2],
    pub(crate) flags: Vec<String>,
}

pub(crate) fn delta(a: u64, b: u64) -> u64 {
    b.saturating_sub(a)
}

impl Row {
    pub(crate) fn secs(&self) -> f64 {
        self.sent.secs.max(1e-9)
    }
    pub(crate) fn flows(&self) -> f64 {
        self.syn.max(1) as f64
    }
    /// New flows per second lb1 actually saw.
    pub(crate) fn syn_rate(&self) -> f64 {
        self.syn as f64 / self.secs()
    }
    pub(crate) fn cpu_pct(&self, k: usize) -> f64 {
        self.cpu_s[k] / self.secs() * 100.0
    }
    /// CPU % of one core per 10,000 new flows/s.
    pub(crate) fn cpu_pct_per_10k(&self, k: usize) -> f64 {
        self.cpu_s[k] / self.flows() * 10_000.0 * 100.0
    }
    pub(crate) fn app_bytes_per_flow(&self) -> f64 {
        self.app_bytes / self.exported.max(1) as f64
    }
    pub(crate) fn wire_bytes_per_flow(&self) -> f64 {
        self.wire_bytes / self.exported.max(1) as f64
    }
    /// Flows per batch, from the bytes beyond the records (58 B/flow; per batch, the batch
    /// header and the link's framing: 36 B).
    pub(crate) fn flows_per_batch(&self) -> f64 {
        let per_batch = lb_userspace::sync::wire::wire_len(5) as f64;
        let overhead = self.app_bytes - 58.0 * self.exported as f64;
        if overhead <= per_batch / 2.0 {
            return f64::NAN;
        }
        self.exported as f64 / (overhead / per_batch)
    }

    pub(crate) fn json(&self) -> Value {
        let r = |x: f64, d: i32| {
            let m = 10f64.powi(d);
            (x * m).round() / m
        };
        json!({
            "target_rate": self.rate,
            "frames_sent": self.sent.frames,
            "send_errors": self.sent.errors,
            "send_secs": r(self.sent.secs, 3),
            "achieved_rate": r(self.sent.frames as f64 / self.secs(), 1),
            "generator_cpu_pct": r(self.sent.cpu_s / self.secs() * 100.0, 2),
            "window_secs": r(self.window_s, 3),
            "settle_secs": r(self.settle_s, 3),
            "lb1_syn": self.syn,
            "lb1_syn_rate": r(self.syn_rate(), 1),
            "lb1_flow_events": self.events,
            "lb1_flow_events_lost": self.events_lost,
            "lb1_exported": self.exported,
            "lb2_imported": self.imported,
            "lb1_dropped_send_queue": self.dropped_queue,
            "lb2_dropped_import_queue": self.dropped_import,
            "lb2_untranslated": self.untranslated,
            "refreshed_in_window": self.refreshed_in_window,
            "sync_app_bytes": r(self.app_bytes, 0),
            "sync_wire_bytes": r(self.wire_bytes, 0),
            "lb1_bytes_sent_counter_delta": self.lb1_bytes_sent_counter,
            "app_bytes_per_flow": r(self.app_bytes_per_flow(), 2),
            "wire_bytes_per_flow": r(self.wire_bytes_per_flow(), 2),
            "flows_per_batch_est": if self.flows_per_batch().is_finite() { json!(r(self.flows_per_batch(), 1)) } else { Value::Null },
            "app_bytes_per_sec": r(self.app_bytes / self.secs(), 0),
            "lb1_agent_cpu_secs": r(self.cpu_s[0], 3),
            "lb2_agent_cpu_secs": r(self.cpu_s[1], 3),
            "lb1_agent_cpu_pct": r(self.cpu_pct(0), 2),
            "lb2_agent_cpu_pct": r(self.cpu_pct(1), 2),
            "per_10k_flows_per_sec": {
                "lb1_agent_cpu_pct": r(self.cpu_pct_per_10k(0), 2),
                "lb2_agent_cpu_pct": r(self.cpu_pct_per_10k(1), 2),
                "app_bytes_per_sec": r(self.app_bytes_per_flow() * 10_000.0, 0),
                "wire_bytes_per_sec": r(self.wire_bytes_per_flow() * 10_000.0, 0),
            },
            "flags": self.flags,
        })
    }
}
