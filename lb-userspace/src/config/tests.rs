use super::*;

pub const EXAMPLE: &str = include_str!("../../../examples/lb.toml");

#[test]
fn the_example_config_is_valid() {
    let cfg = Config::parse(EXAMPLE).unwrap();
    let state = cfg.desired_state().unwrap();
    assert_eq!(state.vips.len(), 2);
    assert_eq!(cfg.interfaces[0].name, "eth1");
    // The first VIP's [vip.health] overrides kind and path; the rest comes from [health].
    let web = cfg.health_for(&"192.0.2.10:80/tcp".parse().unwrap());
    assert_eq!(
        (web.kind, web.http_path.as_str()),
        (CheckKind::Http, "/healthz")
    );
    assert_eq!(
        (web.interval_ms, web.timeout_ms, web.rise, web.fall),
        (2000, 1000, 3, 3)
    );
    let other = cfg.health_for(&"[2001:db8:5::10]:443/tcp".parse().unwrap());
    assert_eq!(other.kind, CheckKind::Tcp);
    assert_eq!(
        other.port_for(&"[2001:db8:5::10]:443/tcp".parse().unwrap()),
        Some(443)
    );
    // A VIP added at run time gets [health]; UDP and every-port VIPs need a port.
    assert_eq!(
        cfg.health_for(&"192.0.2.99:53/udp".parse().unwrap())
            .port_for(&"192.0.2.99:53/udp".parse().unwrap()),
        None
    );
    assert!(cfg.bgp.is_some());
    assert!(cfg.sync.is_none());
    // The commented [sync] example is valid once uncommented.
    let mut in_sync = false;
    let text: String = EXAMPLE
        .lines()
        .map(|l| {
            in_sync |= l == "# [sync]";
            in_sync &= l.starts_with('#');
            let l = if in_sync {
                l.trim_start_matches('#').trim_start()
            } else {
                l
            };
            format!("{}\n", l.split(" #").next().unwrap())
        })
        .collect();
    let with_sync = Config::parse(&text).unwrap();
    let sync = with_sync.sync.expect("[sync] uncommented");
    assert_eq!((sync.node.as_str(), sync.peers.len()), ("lb1", 1));
}

#[test]
fn refuses_bad_sync_sections_with_the_reason() {
    let base = r#"
[dataplane]
tunnel_source = "2001:db8:1b::1"
seed = 7
[[interface]]
name = "eth1"
next_hop_mac = "02:00:00:00:00:01"
[sync]
node = "lb1"
listen = "[2001:db8:5::1]:7946"
key_file = "/etc/lb/fleet.key"
state_file = "/var/lib/lb/state.json"
[[sync.peer]]
name = "lb2"
address = "[2001:db8:5::2]:7946"
"#;
    let ok = Config::parse(base).unwrap();
    let sync = ok.sync.as_ref().unwrap();
    assert_eq!(
        sync.flows,
        FlowSync::Changes,
        "flows a change moves, by default"
    );
    assert_eq!((sync.changes_rate, sync.changes_max), (20_000, 262_144));
    // The modes, and the booleans of earlier versions.
    for (line, want) in [
        ("flows = \"all\"", FlowSync::All),
        ("flows = \"changes\"", FlowSync::Changes),
        ("flows = \"off\"", FlowSync::Off),
        ("flows = true", FlowSync::All),
        ("flows = false", FlowSync::Off),
    ] {
        let text = base.replace("node = \"lb1\"", &format!("node = \"lb1\"\n{line}"));
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{line}: {e:#}"));
        assert_eq!(c.sync.unwrap().flows, want, "{line}");
    }
    assert_eq!(
        (sync.refresh_secs, sync.startup_wait_secs),
        (300, 10),
        "defaults"
    );
    assert_eq!(sync.max_clock_jump, 1_000_000);
    for (edit, why) in [
        (("node = \"lb1\"", "node = \"lb 1\""), "use 1-64 of"),
        (("name = \"lb2\"", "name = \"lb1\""), "this node's own name"),
        (
            ("\"/etc/lb/fleet.key\"", "\"fleet.key\""),
            "must be absolute",
        ),
        (
            ("[2001:db8:5::2]:7946", "[::]:7946"),
            "not an address to connect to",
        ),
        (
            (
                "address = \"[2001:db8:5::2]:7946\"",
                "address = \"[2001:db8:5::2]:7946\"\n[[sync.peer]]\nname = \"lb2\"\naddress = \"[2001:db8:5::3]:7946\"",
            ),
            "listed twice",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nrefresh_secs = 0"),
            "refresh_secs = 0",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nflows = \"some\""),
            "flows = \"some\": use \"all\", \"changes\" or \"off\"",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nflows = 1"),
            "expected \"all\", \"changes\" or \"off\"",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nchanges_rate = 10"),
            "changes_rate = 10: use 100 to",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nchanges_max = 0"),
            "changes_max = 0: use 1 to",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nmax_clock_jump = 10"),
            "max_clock_jump = 10: use 1000",
        ),
        (
            ("node = \"lb1\"", "node = \"lb1\"\nsecret = \"x\""),
            "unknown field `secret`",
        ),
        (
            ("listen = \"[2001:db8:5::1]:7946\"\n", ""),
            "missing field `listen`",
        ),
    ] {
        let text = base.replace(edit.0, edit.1);
        assert_ne!(text, base, "edit {edit:?} applies");
        let e = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(e.contains(why), "{edit:?}: `{e}` should say `{why}`");
    }
    // [sync] cannot change under a running agent.
    let mut other = ok.clone();
    other.sync.as_mut().unwrap().flows = FlowSync::Off;
    assert_eq!(
        ok.restart_only_difference(&other).as_deref(),
        Some("[sync]")
    );
}

#[test]
fn refuses_bad_configs_with_the_reason() {
    let base = r#"
[dataplane]
tunnel_source = "2001:db8:1b::1"
seed = 7
[[interface]]
name = "eth1"
next_hop_mac = "02:00:00:00:00:01"
[[vip]]
address = "192.0.2.10"
port = 80
protocol = "tcp"
[[vip.backend]]
address = "2001:db8:be::1"
"#;
    let c = Config::parse(base).unwrap();
    // The ICMP budget's defaults (Linux's own); rate 0 (no limit) and the u16 maxima are valid.
    assert_eq!((c.dataplane.icmp_rate, c.dataplane.icmp_burst), (1000, 50));
    for edit in ["icmp_rate = 0", "icmp_rate = 65535\nicmp_burst = 65535"] {
        let c = Config::parse(&base.replacen("seed = 7", &format!("seed = 7\n{edit}"), 1)).unwrap();
        assert!(c.dataplane.icmp_rate == 0 || c.dataplane.icmp_burst == 65535);
    }
    // The new-flow gate: off by default; a rate with a burst of up to 4 seconds of it.
    assert_eq!(
        (c.dataplane.new_flow_rate, c.dataplane.new_flow_burst),
        (0, 0)
    );
    let c = Config::parse(&base.replacen(
        "seed = 7",
        "seed = 7\nnew_flow_rate = 200000\nnew_flow_burst = 800000",
        1,
    ))
    .unwrap();
    assert_eq!(
        (c.dataplane.new_flow_rate, c.dataplane.new_flow_burst),
        (200_000, 800_000)
    );
    for (edit, why) in [
        (("seed = 7", "seed = -1"), "invalid value"),
        (("seed = 7", "seed = 7\nring_size = 65536"), "not a prime"),
        (
            ("seed = 7", "seed = 7\nflow_cache_slots = 1000"),
            "flow_cache_slots 1000 must be a power of two from 256 to 1048576",
        ),
        (
            ("seed = 7", "seed = 7\nflow_cache_slots = 128"),
            "must be a power of two from 256",
        ),
        (("\"192.0.2.10\"", "\"127.0.0.1\""), "loopback address"),
        (("\"192.0.2.10\"", "\"fe80::10\""), "link-local address"),
        (
            ("\"192.0.2.10\"", "\"255.255.255.255\""),
            "broadcast address",
        ),
        (
            ("seed = 7", "seed = 7\ncolour = 1"),
            "unknown field `colour`",
        ),
        (("2001:db8:1b::1", "192.0.2.1"), "invalid IPv6 address"),
        (("02:00:00:00:00:01", "02:00:00:00:01"), "not a MAC address"),
        (
            (
                "next_hop_mac = \"02:00:00:00:00:01\"",
                "next_hop_mac = \"02:00:00:00:00:01\"\nmtu = 1000",
            ),
            "outside 1328..=65535",
        ),
        (
            (
                "next_hop_mac = \"02:00:00:00:00:01\"",
                "next_hop_mac = \"02:00:00:00:00:01\"\ngateway = \"2001:db8::1\"",
            ),
            "at most one of next_hop_mac and gateway",
        ),
        (
            ("protocol = \"tcp\"", "protocol = \"icmp\""),
            "use tcp or udp",
        ),
        (
            ("address = \"2001:db8:be::1\"", "address = \"192.0.2.5\""),
            "not an IPv6",
        ),
        (
            (
                "address = \"2001:db8:be::1\"",
                "address = \"2001:db8:be::1\"\nweight = 0",
            ),
            "outside 1..=1000",
        ),
        (
            (
                "address = \"2001:db8:be::1\"",
                "address = \"2001:db8:be::1\"\n[[vip.backend]]\naddress = \"2001:db8:be::1\"",
            ),
            "already has backend",
        ),
        (
            (
                "address = \"2001:db8:be::1\"",
                "address = \"2001:db8:be::1\"\n[[vip]]\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"",
            ),
            "already exists",
        ),
        (
            ("name = \"eth1\"", "name = \"eth1/x\""),
            "not a valid Linux interface",
        ),
        (("[dataplane]", "[dataplan]"), "unknown field `dataplan`"),
        (
            ("seed = 7", "seed = 7\ntcp_idle_timeout_secs = 0"),
            "use 1 second",
        ),
        (
            ("seed = 7", "seed = 7\nicmp_rate = 65536"),
            "dataplane.icmp_rate = 65536: use 0 (no limit) to 65535",
        ),
        (
            ("seed = 7", "seed = 7\nicmp_burst = 0"),
            "dataplane.icmp_burst = 0: use 1 to 65535",
        ),
        (
            ("seed = 7", "seed = 7\nnew_flow_rate = 16777217"),
            "dataplane.new_flow_rate = 16777217: use 0 (no gate) to 16777216",
        ),
        (
            (
                "seed = 7",
                "seed = 7\nnew_flow_rate = 1000\nnew_flow_burst = 4001",
            ),
            "dataplane.new_flow_burst = 4001: use 0 (the rate) to 4 times new_flow_rate (1000)",
        ),
        (
            ("[dataplane]", "[health]\ninterval_ms = 50\n[dataplane]"),
            "use 100 ms",
        ),
        (
            ("[dataplane]", "[health]\ntimeout_ms = 3000\n[dataplane]"),
            "up to interval_ms",
        ),
        (
            ("[dataplane]", "[health]\nkind = \"icmp\"\n[dataplane]"),
            "unknown variant `icmp`",
        ),
        (
            ("[dataplane]", "[health]\nrise = 0\n[dataplane]"),
            "rise and fall",
        ),
        (
            (
                "protocol = \"tcp\"",
                "protocol = \"tcp\"\n[vip.health]\nhttp_path = \"/a b\"",
            ),
            "[vip.health]",
        ),
        (
            (
                "[dataplane]",
                "[bgp]\nbird_socket = \"bird.ctl\"\nroutes_file = \"/etc/v.conf\"\n[dataplane]",
            ),
            "absolute paths",
        ),
    ] {
        let text = base.replacen(edit.0, edit.1, 1);
        assert_ne!(text, base, "edit {edit:?} did not apply");
        let e = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(e.contains(why), "{edit:?}: `{e}` should say `{why}`");
    }
}

#[test]
fn the_flow_cache_is_on_unless_switched_off() {
    assert!(Config::parse(EXAMPLE).unwrap().dataplane.flow_cache);
    let off = EXAMPLE.replace("# flow_cache = true", "flow_cache = false");
    assert_ne!(off, EXAMPLE);
    assert!(!Config::parse(&off).unwrap().dataplane.flow_cache);
    let c = Config::parse(EXAMPLE).unwrap();
    assert_eq!(c.limits().flow_cache_slots, 16_384);
    let small = EXAMPLE.replace("# flow_cache_slots = 16384", "flow_cache_slots = 1024");
    assert_ne!(small, EXAMPLE);
    let small = Config::parse(&small).unwrap();
    assert_eq!(small.limits().flow_cache_slots, 1024);
    // The maps are sized at load: a reload cannot change it.
    assert_eq!(
        c.restart_only_difference(&small).as_deref(),
        Some("dataplane.flow_cache_slots")
    );
}
