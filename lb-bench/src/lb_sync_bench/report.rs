//! The results as text tables.

use std::fmt::Write as _;

use serde_json::Value;

pub(crate) fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                l += &format!("{c}{}", " ".repeat(pad));
            } else {
                l += &format!("  {}{c}", " ".repeat(pad));
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(
        &mut out,
        &head.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    );
    for r in rows {
        line(&mut out, r);
    }
    out
}

pub(crate) fn render(r: &Value) -> String {
    let f = |v: &Value, d: usize| match v.as_f64() {
        Some(x) if x.is_finite() => format!("{x:.d$}"),
        _ => "-".into(),
    };
    let mut o = String::new();
    let m = &r["machine"];
    let s = &r["setup"];
    let _ = writeln!(
        o,
        "\nFlow sync cost: new TCP flows on lb1, shared with lb2 ({} s per rate; {} CPUs, {}, Linux {})",
        s["secs_per_rate"],
        m["cpus"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    let i = &r["idle"];
    let _ = writeln!(
        o,
        "idle (subtracted below): lb1 agent {} % CPU, lb2 agent {} % CPU, lb1->lb2 link {} B/s, sync wire {} B/s\n",
        f(&i["lb1_agent_cpu_pct"], 2),
        f(&i["lb2_agent_cpu_pct"], 2),
        f(&i["sync_app_bytes_per_sec"], 0),
        f(&i["sync_wire_bytes_per_sec"], 0)
    );
    let rows: Vec<&Value> = r["rates"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let u = |v: &Value| v.as_u64().map_or("-".into(), |n| n.to_string());
    let flags = |x: &Value| {
        let v: Vec<&str> = x["flags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if v.is_empty() {
            "ok".to_string()
        } else {
            v.join(" ")
        }
    };
    o += "Delivery (per rate, all flows of the window):\n";
    o += &table(
        &[
            "TARGET/s",
            "SENT/s",
            "GEN CPU%",
            "SENT",
            "SYN@lb1",
            "EVENTS",
            "LOST",
            "EXPORTED",
            "IMPORTED@lb2",
            "DROPPED",
            "STATUS",
        ],
        &rows
            .iter()
            .map(|x| {
                let dropped = [
                    "lb1_dropped_send_queue",
                    "lb2_dropped_import_queue",
                    "lb2_untranslated",
                ]
                .iter()
                .filter_map(|k| x[*k].as_u64())
                .sum::<u64>();
                vec![
                    u(&x["target_rate"]),
                    f(&x["achieved_rate"], 0),
                    f(&x["generator_cpu_pct"], 1),
                    u(&x["frames_sent"]),
                    u(&x["lb1_syn"]),
                    u(&x["lb1_flow_events"]),
                    u(&x["lb1_flow_events_lost"]),
                    u(&x["lb1_exported"]),
                    u(&x["lb2_imported"]),
                    dropped.to_string(),
                    flags(x),
                ]
            })
            .collect::<Vec<_>>(),
    );
    o += "\nCost (idle subtracted; CPU % of one core; B = the agent's link bytes, framing and AEAD tags included; wire = both sync interfaces, Ethernet/IPv6/TCP and ACKs included):\n";
    o += &table(
        &[
            "TARGET/s",
            "B/FLOW",
            "WIRE B/FLOW",
            "FLOWS/BATCH",
            "LINK kB/s",
            "lb1 CPU%",
            "lb2 CPU%",
            "| PER 10k/s: lb1 CPU%",
            "lb2 CPU%",
            "LINK kB/s",
            "WIRE kB/s",
        ],
        &rows
            .iter()
            .map(|x| {
                let p = &x["per_10k_flows_per_sec"];
                let kb = |v: &Value| {
                    v.as_f64()
                        .map_or("-".into(), |b| format!("{:.0}", b / 1000.0))
                };
                vec![
                    u(&x["target_rate"]),
                    f(&x["app_bytes_per_flow"], 1),
                    f(&x["wire_bytes_per_flow"], 1),
                    f(&x["flows_per_batch_est"], 0),
                    kb(&x["app_bytes_per_sec"]),
                    f(&x["lb1_agent_cpu_pct"], 2),
                    f(&x["lb2_agent_cpu_pct"], 2),
                    f(&p["lb1_agent_cpu_pct"], 2),
                    f(&p["lb2_agent_cpu_pct"], 2),
                    kb(&p["app_bytes_per_sec"]),
                    kb(&p["wire_bytes_per_sec"]),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let refreshes: Vec<&Value> = r["refreshes"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if !refreshes.is_empty() {
        o += &format!(
            "\nRefreshes (every {} s each agent re-sends the flows active since its last one, after walking its whole table; measured between the windows, idle subtracted):\n",
            s["refresh_secs"]
        );
        o += &table(
            &[
                "AT s",
                "OF",
                "lb1 RE-SENT",
                "lb2 IMPORTED",
                "LINK kB",
                "lb1 CPU-s",
                "lb2 CPU-s",
                "MEASURED s",
            ],
            &refreshes
                .iter()
                .map(|x| {
                    let of: Vec<&str> = x["refresh_of"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    vec![
                        f(&x["at_secs"], 1),
                        of.join("+"),
                        x["lb1_flows_refreshed"].to_string(),
                        u(&x["lb2_imported"]),
                        x["lb1_to_lb2_app_bytes"]
                            .as_f64()
                            .map_or("-".into(), |b| format!("{:.0}", b / 1000.0)),
                        f(&x["lb1_agent_cpu_secs"], 3),
                        f(&x["lb2_agent_cpu_secs"], 3),
                        f(&x["measured_secs"], 1),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    let rc = &r["refresh_per_10k_flows_per_sec"];
    if !rc.is_null() {
        let _ = writeln!(
            o,
            "refreshing, per 10k new flows/s (each flow re-sent once; from the refresh of {} flows): lb1 agent {} % CPU, lb2 agent {} % CPU, link {} kB/s ({} B/flow).\n\
             Each refresh also walks the whole table (up to max_flows entries) on both agents, whatever the rate.",
            f(&rc["flows"], 0),
            f(&rc["lb1_agent_cpu_pct"], 2),
            f(&rc["lb2_agent_cpu_pct"], 2),
            rc["app_bytes_per_sec"]
                .as_f64()
                .map_or("-".into(), |b| format!("{:.0}", b / 1000.0)),
            f(&rc["app_bytes_per_flow"], 1)
        );
    }
    let _ = writeln!(
        o,
        "\nconnection-table entries at the end: lb1 {}, lb2 {} (max_flows {}); lb_sync_bytes_sent_total{{peer=\"lb2\"}} on lb1: {}; run took {:.0} s",
        r["tables_at_end"]["lb1"],
        r["tables_at_end"]["lb2"],
        s["max_flows"],
        r["metrics_lb_sync_bytes_sent_total_lb1_to_lb2"],
        r["total_secs"].as_f64().unwrap_or(0.0)
    );
    o
}
