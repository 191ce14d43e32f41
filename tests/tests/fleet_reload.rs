//! Issue 15 §9: what a reload means in fleet mode. The fleet's replicated state rules: a SIGHUP
//! or `lb reload` applies the file's node-local settings and only lists where the file differs
//! from the fleet, so a config-management HUP of a stale file cannot undo an incident drain
//! everywhere. `lb reload --fleet` shows those differences first and applies exactly that plan.

use std::time::Duration;

use serde_json::Value;
use tests::e2e::*;
use tests::lab::{HTTP_PORT, Lab, VIP4, backend_link6};
use tests::netns::{post, raw_http};

fn state_of(lab: &Lab, i: usize, vip: &str, j: usize) -> String {
    let list = lab.lb_json(i, &["backend", "list", vip]).unwrap();
    let want = backend_link6(j).1.to_string();
    list.as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == want.as_str())
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn lb_out(lab: &Lab, i: usize, args: &[&str]) -> (bool, String) {
    let out = lab.lb(i, args);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A raw control-API request, for what the CLI never sends (a stale plan, a bad body).
fn api_reload(lab: &Lab, i: usize, body: &str) -> (u16, String) {
    raw_http(&lab.socket(i), &post("/v1/reload", body))
}

fn table_version(lab: &Lab, i: usize) -> u64 {
    lab.lb_json(i, &["status"]).unwrap()["table_version"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_stale_config_reload_never_undoes_a_fleet_change_unless_asked() {
    let lab = lab_with("rl", |_| {});
    let v4 = format!("{VIP4}:{HTTP_PORT}/tcp");
    let be2 = backend_link6(2).1.to_string();
    wait_until("the peers to agree", Duration::from_secs(15), || {
        let a = lab.lb_json(1, &["peer", "list"]).unwrap();
        a["peers"][0]["state_match"] == true
    });

    // An incident drain on lb2, replicated to lb1.
    assert!(lab.lb(2, &["backend", "drain", &v4, &be2]).status.success());
    wait_until("lb1 to apply the drain", Duration::from_secs(10), || {
        state_of(&lab, 1, &v4, 2) == "draining"
    });

    // Config management rewrites lb1's file (still saying "active") with one new setting,
    // and sends SIGHUP.
    let path = lab.socket(1).with_file_name("lb.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace("[dataplane]\n", "[dataplane]\nicmp_rate = 77\n");
    assert_ne!(edited, text);
    std::fs::write(&path, &edited).unwrap();
    let pid = lab
        .processes()
        .into_iter()
        .find(|(k, node, _)| k == "agent" && node == "lb1")
        .map(|(_, _, pid)| pid)
        .expect("lb1's agent");
    // SAFETY: kill has no memory preconditions; the PID is the agent this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    wait_until("lb1 to reload", Duration::from_secs(10), || {
        lab.agent_log(1)
            .contains("reload: setting dataplane.icmp_rate: (default) -> 77")
    });
    let log = lab.agent_log(1);
    assert!(
        log.contains("1 difference(s) between the config file and the fleet's state not applied"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    for i in [1, 2] {
        assert_eq!(state_of(&lab, i, &v4, 2), "draining", "lb{i} after the HUP");
    }

    // `lb reload` does the same and says what it left alone.
    let (ok, out) = lb_out(&lab, 1, &["reload"]);
    assert!(ok, "{out}");
    assert!(out.contains("reloaded: no changes"), "{out}");
    assert!(
        out.contains("not applied") && out.contains(&format!("set backend {be2} of {v4} active")),
        "{out}"
    );

    // The fleet-wide plan: shown, nothing changes.
    let version = table_version(&lab, 1);
    let plan: Value = lab.lb_json(1, &["reload", "--fleet", "--dry-run"]).unwrap();
    assert_eq!(plan["dry_run"], true);
    assert_eq!(
        plan["changes"],
        serde_json::json!([format!("set backend {be2} of {v4} active")])
    );
    assert_eq!(table_version(&lab, 1), version);
    // Without a terminal to ask, --fleet needs --yes, and changes nothing without it.
    let (ok, out) = lb_out(&lab, 1, &["reload", "--fleet"]);
    assert!(!ok && out.contains("--yes"), "{out}");
    assert_eq!(state_of(&lab, 1, &v4, 2), "draining");
    // A plan made against another version is refused; so is a body the API does not know.
    let (status, text) = api_reload(
        &lab,
        1,
        &format!(
            "{{\"fleet\": true, \"expect_version\": {}}}",
            version + 1000
        ),
    );
    assert_eq!(status, 409, "{text}");
    let (status, text) = api_reload(&lab, 1, "{\"fleeet\": true}");
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("unknown field"), "{text}");
    assert_eq!(state_of(&lab, 1, &v4, 2), "draining");

    // Asked for, the file's state becomes the fleet's: the undrain reaches lb2.
    let (ok, out) = lb_out(&lab, 1, &["reload", "--fleet", "--yes"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("set backend {be2} of {v4} active")),
        "{out}"
    );
    wait_until("lb2 to apply the undrain", Duration::from_secs(10), || {
        state_of(&lab, 2, &v4, 2) == "active"
    });
}
