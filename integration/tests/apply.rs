//! `lbctl apply -f FILE`: the whole desired configuration (VIPs, health checks, backends and
//! weights, firewall rules, rate limits) applied to a real lbd in a namespace, shown by the list
//! commands, idempotent, previewed with --dry-run, changed exactly by a modified file, refused
//! whole when bad, and used by a real client through the VIP. Run as root:
//! `cargo test -p xdplb-integration --test apply`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use xdplb_integration::{
    all_ok, count_by_name, tcp_name_server, tcp_request, tcp_requests, Lbd, ServerHandle, Topology,
    VIP,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const BATCH_LIMIT: Duration = Duration::from_secs(60);
const PORT: u16 = 8080;

/// Field order is drop order: servers, then lbd, then the namespaces; the files last.
struct Lab {
    _servers: Vec<ServerHandle>,
    lbd: Lbd,
    topo: Topology,
    dir: tempfile::TempDir,
}

impl Lab {
    fn start() -> Lab {
        let topo = Topology::two_arm(2).expect("topology");
        let servers = topo
            .backends()
            .iter()
            .map(|b| {
                tcp_name_server(
                    &b.ns,
                    SocketAddrV4::new(b.addr, PORT),
                    &format!("b{}", b.index),
                )
                .expect("name server")
            })
            .collect();
        let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
        let dir = tempfile::tempdir().expect("temporary directory");
        Lab {
            _servers: servers,
            lbd,
            topo,
            dir,
        }
    }

    fn backend(&self, i: usize) -> Ipv4Addr {
        self.topo.backend(i).addr
    }

    /// Writes `text` to `name` in the lab's directory.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing the file");
        path
    }

    fn apply(&self, path: &Path, extra: &[&str]) -> anyhow::Result<String> {
        let p = path.display().to_string();
        let mut args = vec!["apply", "-f", p.as_str()];
        args.extend_from_slice(extra);
        self.lbd.ctl(&args)
    }

    /// What the list commands show, without counters: VIPs (mode, health kind), backends and
    /// weights, firewall rules, rate-limit policies.
    fn shown(&self) -> Value {
        let vips = self.lbd.ctl_json(&["vip", "list"]).expect("vip list");
        let mut out = serde_json::Map::new();
        let mut vip_list = Vec::new();
        for v in vips["vips"].as_array().expect("vips") {
            let key = format!("{}:{}", v["address"].as_str().unwrap(), v["port"]);
            let proto = v["protocol"].as_str().unwrap().to_string();
            let backends = self
                .lbd
                .ctl_json(&["backend", "list", "--vip", &key, "--proto", &proto])
                .expect("backend list");
            let bes: Vec<Value> = backends["backends"]
                .as_array()
                .expect("backends")
                .iter()
                .map(|b| {
                    serde_json::json!(format!(
                        "{}:{} {}",
                        b["address"].as_str().unwrap(),
                        b["port"],
                        b["weight"]
                    ))
                })
                .collect();
            vip_list.push(serde_json::json!({
                "vip": format!("{key}/{proto}"),
                "mode": v["mode"],
                "health": v["health"]["kind"],
                "backends": bes,
            }));
        }
        out.insert("vips".into(), Value::Array(vip_list));
        let rules = self.lbd.ctl_json(&["fw", "list"]).expect("fw list");
        out.insert(
            "rules".into(),
            Value::Array(
                rules["rules"]
                    .as_array()
                    .expect("rules")
                    .iter()
                    .map(|r| {
                        serde_json::json!(format!(
                            "{} {}",
                            r["action"].as_str().unwrap(),
                            r["cidr"].as_str().unwrap()
                        ))
                    })
                    .collect(),
            ),
        );
        let rl = self
            .lbd
            .ctl_json(&["ratelimit", "list"])
            .expect("ratelimit list");
        out.insert(
            "ratelimits".into(),
            Value::Array(
                rl["rate_limits"]
                    .as_array()
                    .expect("rate_limits")
                    .iter()
                    .map(|p| {
                        serde_json::json!(format!(
                            "{} {} {} {}",
                            p["cidr"].as_str().unwrap_or("default"),
                            p["rate"],
                            p["burst"],
                            p["scope"].as_str().unwrap()
                        ))
                    })
                    .collect(),
            ),
        );
        Value::Object(out)
    }
}

/// Two VIPs (the TCP one health-checked), three backends, a block rule, a default rate limit
/// and an override.
fn desired(b1: Ipv4Addr, b2: Ipv4Addr) -> String {
    format!(
        r#"# What this balancer should do.
[[vip]]
address = "{VIP}:80"
proto = "tcp"
[vip.health]
proto = "tcp"
interval = "200ms"
timeout = "100ms"
[[vip.backend]]
address = "{b1}:{PORT}"
[[vip.backend]]
address = "{b2}:{PORT}"
weight = 50

[[vip]]
address = "{VIP}:53"
proto = "udp"
[[vip.backend]]
address = "{b1}:5353"

[firewall]
block = ["198.51.100.0/24"]

[ratelimit.default]
rate = 10000
burst = 1000

[[ratelimit.override]]
cidr = "203.0.113.0/24"
rate = 10
burst = 5
scope = "new-flows"
"#
    )
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

#[test]
fn apply_a_file_then_again_then_a_dry_run_then_the_change() {
    let lab = Lab::start();
    let (b1, b2) = (lab.backend(1), lab.backend(2));
    let vip80 = format!("{VIP}:80/tcp");
    let vip53 = format!("{VIP}:53/udp");
    let first = lab.file("lb.toml", &desired(b1, b2));

    // 1. Everything is added, as one change.
    let out = lab.apply(&first, &[]).expect("lbctl apply");
    assert_eq!(
        lines(&out),
        [
            format!("+ vip {vip53} nat").as_str(),
            &format!("+ backend {vip53} {b1}:5353 weight 100"),
            &format!("+ vip {vip80} nat"),
            &format!("+ health {vip80} tcp every 200ms, timeout 100ms, rise 2, fall 3, all down: fail-open"),
            &format!("+ backend {vip80} {b1}:{PORT} weight 100"),
            &format!("+ backend {vip80} {b2}:{PORT} weight 50"),
            "+ block 198.51.100.0/24",
            "~ ratelimit default no limit -> 10000/s burst 1000 scope all",
            "+ ratelimit 203.0.113.0/24 10/s burst 5 scope new-flows",
            "applied 9 changes",
        ],
        "{out}"
    );
    let shown = lab.shown();
    assert_eq!(
        shown,
        serde_json::json!({
            "vips": [
                {"vip": vip53, "mode": "nat", "health": "none", "backends": [format!("{b1}:5353 100")]},
                {"vip": vip80, "mode": "nat", "health": "tcp",
                 "backends": [format!("{b1}:{PORT} 100"), format!("{b2}:{PORT} 50")]},
            ],
            "rules": ["block 198.51.100.0/24"],
            "ratelimits": ["default 10000 1000 all", "203.0.113.0/24 10 5 new-flows"],
        }),
        "{shown:#}"
    );

    // 2. A real client through the VIP reaches both backends.
    let replies = all_ok(
        tcp_requests(
            lab.topo.client(),
            None,
            SocketAddrV4::new(VIP, 80),
            40,
            TIMEOUT,
            BATCH_LIMIT,
        )
        .expect("client runs"),
        40,
    );
    let by_name = count_by_name(&replies);
    assert!(
        by_name.contains_key("b1") && by_name.contains_key("b2"),
        "{by_name:?}"
    );

    // 3. The same file again: nothing to do, and said so.
    assert_eq!(lab.apply(&first, &[]).expect("again").trim(), "no changes");
    let again = lab
        .lbd
        .ctl_json(&["apply", "-f", &first.display().to_string()])
        .expect("again, --json");
    assert_eq!(again["total"], 0, "{again}");
    assert_eq!(again["applied"], false, "{again}");
    assert_eq!(again["changed"], false, "{again}");

    // 4. A modified file, dry run: the diff, and nothing changes.
    let blocked = lab.topo.client_addrs()[1];
    let modified = desired(b1, b2)
        .replace("weight = 50", "weight = 20")
        .replace(
            &format!("[[vip]]\naddress = \"{VIP}:53\"\nproto = \"udp\"\n[[vip.backend]]\naddress = \"{b1}:5353\"\n"),
            "",
        )
        .replace(
            "block = [\"198.51.100.0/24\"]",
            &format!("block = [\"198.51.100.0/24\", \"{blocked}\"]"),
        )
        .replace("rate = 10\n", "rate = 20\n");
    let second = lab.file("lb2.toml", &modified);
    let diff = [
        format!("- vip {vip53} nat"),
        format!("- backend {vip53} {b1}:5353 weight 100"),
        format!("~ weight {vip80} {b2}:{PORT} 50 -> 20"),
        format!("+ block {blocked}/32"),
        "~ ratelimit 203.0.113.0/24 10/s burst 5 scope new-flows -> 20/s burst 5 scope new-flows"
            .to_string(),
    ];
    let out = lab.apply(&second, &["--dry-run"]).expect("dry run");
    let mut want: Vec<String> = diff.to_vec();
    want.push("5 changes (dry run: nothing changed)".into());
    assert_eq!(lines(&out), want, "{out}");
    assert_eq!(lab.shown(), shown, "a dry run changed something");
    tcp_request(
        lab.topo.client(),
        Some(SocketAddrV4::new(blocked, 0)),
        SocketAddrV4::new(VIP, 80),
        TIMEOUT,
    )
    .expect("not blocked yet after the dry run");

    // 5. Applied: exactly that changes.
    let out = lab.apply(&second, &[]).expect("apply the modified file");
    want.pop();
    want.push("applied 5 changes".into());
    assert_eq!(lines(&out), want, "{out}");
    assert_eq!(
        lab.shown(),
        serde_json::json!({
            "vips": [
                {"vip": vip80, "mode": "nat", "health": "tcp",
                 "backends": [format!("{b1}:{PORT} 100"), format!("{b2}:{PORT} 20")]},
            ],
            // Prefix order.
            "rules": [format!("block {blocked}/32"), "block 198.51.100.0/24".to_string()],
            "ratelimits": ["default 10000 1000 all", "203.0.113.0/24 20 5 new-flows"],
        })
    );
    // The new rule is in force: the blocked source gets nothing, the other one is served.
    assert!(
        tcp_request(
            lab.topo.client(),
            Some(SocketAddrV4::new(blocked, 0)),
            SocketAddrV4::new(VIP, 80),
            Duration::from_millis(500),
        )
        .is_err(),
        "{blocked} is blocked now"
    );
    tcp_request(
        lab.topo.client(),
        Some(SocketAddrV4::new(lab.topo.client_addrs()[0], 0)),
        SocketAddrV4::new(VIP, 80),
        TIMEOUT,
    )
    .expect("the other client address is served");
    assert_eq!(lab.apply(&second, &[]).expect("again").trim(), "no changes");

    // 6. Bad files: refused whole with the line, column and key; nothing changes.
    let before = lab.shown();
    let name = |p: &Path| p.display().to_string();
    let bad_weight = lab.file(
        "bad-weight.toml",
        &modified.replace("weight = 20", "weight = 2000000"),
    );
    let e = format!(
        "{:#}",
        lab.apply(&bad_weight, &[])
            .expect_err("a weight above the maximum")
    );
    assert!(
        e.contains(&format!(
            "lbctl: {}:13:10: vip[0].backend[1].weight: 2000000 is above the maximum 1000000",
            name(&bad_weight)
        )),
        "{e}"
    );
    let unknown = lab.file(
        "unknown-key.toml",
        &modified.replace("weight = 20", "wieght = 20"),
    );
    let e = format!(
        "{:#}",
        lab.apply(&unknown, &[]).expect_err("an unknown key")
    );
    assert!(
        e.contains(&format!(
            "lbctl: {}:13:1: vip[0].backend[1].wieght: unknown field `wieght`",
            name(&unknown)
        )),
        "{e}"
    );
    // Valid TOML, but a start-up setting: not part of the desired state.
    let startup = lab.file(
        "startup.toml",
        &format!("{modified}\n[dataplane]\ninterfaces = [\"eth0\"]\n"),
    );
    let e = format!(
        "{:#}",
        lab.apply(&startup, &["--dry-run"])
            .expect_err("a start-up table")
    );
    assert!(e.contains("dataplane: unknown field `dataplane`"), "{e}");
    // A file whose error only the state sees (a DSR VIP translating ports), after valid VIPs.
    let dsr = lab.file(
        "dsr.toml",
        &format!("{modified}\n[[vip]]\naddress = \"{VIP}:443\"\nproto = \"tcp\"\nmode = \"l2dsr\"\n[[vip.backend]]\naddress = \"{b1}:8443\"\n"),
    );
    let e = format!(
        "{:#}",
        lab.apply(&dsr, &[]).expect_err("port translation in DSR")
    );
    assert!(
        e.contains("vip[1].backend[0].address: l2dsr cannot translate ports"),
        "{e}"
    );
    assert_eq!(lab.shown(), before, "a refused file changed something");
}

/// The same tables in lbd.toml seed a fresh start: applying the file afterwards changes nothing.
#[test]
fn the_same_tables_in_lbd_toml_seed_the_start() {
    let topo = Topology::two_arm(2).expect("topology");
    let (b1, b2) = (topo.backend(1).addr, topo.backend(2).addr);
    let text = desired(b1, b2);
    let config = format!("{}\n{text}", topo.lbd_config());
    let lbd = Lbd::start(topo.lb(), &config).expect("lbd starts with the tables");
    let rules = lbd.ctl_json(&["fw", "list"]).expect("fw list");
    assert_eq!(rules["rules"][0]["cidr"], "198.51.100.0/24", "{rules}");
    assert_eq!(rules["rules"][0]["action"], "block", "{rules}");
    let limits = lbd
        .ctl_json(&["ratelimit", "list"])
        .expect("ratelimit list");
    assert_eq!(limits["rate_limits"][0]["rate"], 10000, "{limits}");
    assert_eq!(
        limits["rate_limits"][1]["cidr"], "203.0.113.0/24",
        "{limits}"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("lb.toml");
    std::fs::write(&file, &text).expect("writing the file");
    let out = lbd
        .ctl(&["apply", "-f", &file.display().to_string()])
        .expect("lbctl apply");
    assert_eq!(out.trim(), "no changes");
}
