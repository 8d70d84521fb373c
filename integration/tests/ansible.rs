//! The Ansible collection (`contrib/ansible`) against a real lbd in a namespace: the test
//! playbook configures VIPs, backends, firewall and rate limits through `lbctl --json`; a
//! second run changes nothing, check mode changes nothing, the configured VIP serves real
//! clients, a bad CIDR fails with lbctl's own message, and `state: absent` takes things back.
//!
//! Needs `ansible-playbook` from the virtualenv `make test` creates (`make ansible-venv`), or
//! the one `$XDPLB_ANSIBLE_PLAYBOOK` names. Run as root:
//! `cargo test -p xdplb-integration --test ansible`.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xdplb_integration::procs::bin_dir;
use xdplb_integration::{tcp_name_server, tcp_request, Lbd, ServerHandle, Topology, VIP};
use xdplb_testkit::cmd::wait_bounded;

/// Longest one ansible-playbook run may take before it is killed.
const PLAYBOOK_TIMEOUT: Duration = Duration::from_secs(180);
const BACKEND_PORT: u16 = 8080;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn ansible_playbook() -> Result<PathBuf> {
    let path = std::env::var_os("XDPLB_ANSIBLE_PLAYBOOK")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-ansible/bin/ansible-playbook"));
    if !path.is_file() {
        bail!(
            "{} not found: `make ansible-venv` installs ansible-core into .venv-ansible \
             (or set XDPLB_ANSIBLE_PLAYBOOK)",
            path.display()
        );
    }
    Ok(path)
}

/// What one ansible-playbook run did.
struct Run {
    success: bool,
    output: String,
    /// `changed=` of localhost in the PLAY RECAP.
    changed: u64,
    failed: u64,
}

/// A two-arm topology with a TCP server on each backend and lbd on the LB.
///
/// Field order is drop order: servers, then lbd, then the namespaces.
struct Lab {
    _servers: Vec<ServerHandle>,
    lbd: Lbd,
    topo: Topology,
    home: tempfile::TempDir,
}

impl Lab {
    fn start() -> Lab {
        let topo = Topology::two_arm(2).expect("topology");
        let servers = [1, 2]
            .iter()
            .map(|&i| {
                let b = topo.backend(i);
                let addr = SocketAddrV4::new(b.addr, BACKEND_PORT);
                tcp_name_server(&b.ns, addr, &format!("b{i}")).expect("backend server")
            })
            .collect();
        let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
        let home = tempfile::Builder::new()
            .prefix("xdplb-ansible-")
            .tempdir()
            .expect("ANSIBLE_HOME");
        Lab {
            _servers: servers,
            lbd,
            topo,
            home,
        }
    }

    /// Runs `contrib/ansible/tests/<playbook>` against localhost with this lab's lbd.
    fn playbook(&self, playbook: &str, extra: &[&str]) -> Result<Run> {
        let bin = ansible_playbook()?;
        let lbctl = bin_dir()?.join("lbctl");
        let python = bin.with_file_name("python3");
        let mut cmd = Command::new(&bin);
        cmd.arg("-i")
            .arg("localhost,")
            .arg(repo_root().join("contrib/ansible/tests").join(playbook))
            .arg("-e")
            .arg(format!("lbctl_path={}", lbctl.display()))
            .arg("-e")
            .arg(format!("lbd_socket={}", self.lbd.socket().display()))
            .arg("-e")
            .arg(format!("vip={VIP}"))
            .arg("-e")
            .arg(format!("backend_1={}", self.topo.backend(1).addr))
            .arg("-e")
            .arg(format!("backend_2={}", self.topo.backend(2).addr))
            .args(extra)
            .env(
                "ANSIBLE_COLLECTIONS_PATH",
                repo_root().join("contrib/ansible"),
            )
            .env("ANSIBLE_HOME", self.home.path())
            .env("ANSIBLE_LOCAL_TEMP", self.home.path().join("tmp"))
            .env("ANSIBLE_PYTHON_INTERPRETER", &python)
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0")
            .env("ANSIBLE_DEPRECATION_WARNINGS", "0")
            .env_remove("LBCTL_ADDR")
            .env_remove("LBCTL_SOCKET")
            .stdin(Stdio::null());
        let log = self.home.path().join(format!("{playbook}.log"));
        let out = std::fs::File::create(&log).context("creating the playbook log")?;
        cmd.stdout(out.try_clone()?).stderr(out);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let Some(status) = wait_bounded(&mut child, PLAYBOOK_TIMEOUT)? else {
            bail!(
                "{playbook} ran longer than {PLAYBOOK_TIMEOUT:?}; output:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let output = std::fs::read_to_string(&log).context("reading the playbook log")?;
        let recap = |key: &str| -> Result<u64> {
            let line = output
                .lines()
                .find(|l| l.starts_with("localhost") && l.contains(" ok="))
                .with_context(|| format!("no PLAY RECAP for localhost in:\n{output}"))?;
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("no {key}= in the recap line {line:?}"))
        };
        Ok(Run {
            success: status.success(),
            changed: recap("changed")?,
            failed: recap("failed")?,
            output,
        })
    }

    /// Runs a playbook that must succeed.
    fn play(&self, playbook: &str, extra: &[&str]) -> Run {
        let run = self
            .playbook(playbook, extra)
            .unwrap_or_else(|e| panic!("{playbook}: {e:#}"));
        assert!(
            run.success && run.failed == 0,
            "{playbook} {extra:?} failed:\n{}",
            run.output
        );
        run
    }

    /// Everything the playbooks configure, as lbctl lists it, without counters and live
    /// health (which move on their own).
    fn snapshot(&self) -> Value {
        let ctl = |args: &[&str]| {
            self.lbd
                .ctl_json(args)
                .unwrap_or_else(|e| panic!("lbctl {args:?}: {e:#}"))
        };
        let mut vips = ctl(&["vip", "list"])["vips"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for v in &mut vips {
            let vip = format!("{}:{}", v["address"].as_str().unwrap_or(""), v["port"]);
            let proto = v["protocol"].as_str().unwrap_or("").to_string();
            let mut backends = ctl(&["backend", "list", "--vip", &vip, "--proto", &proto])
                ["backends"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for b in &mut backends {
                strip(b, &["health", "tracked_flows", "id"]);
            }
            strip(v, &["id"]);
            v["backend_list"] = Value::Array(backends);
        }
        let mut rules = ctl(&["fw", "list"])["rules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for r in &mut rules {
            strip(r, &["hits", "id"]);
        }
        let mut limits = ctl(&["ratelimit", "list"])["rate_limits"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for l in &mut limits {
            strip(l, &["allowed", "dropped", "id"]);
        }
        json!({"vips": vips, "rules": rules, "rate_limits": limits})
    }
}

fn strip(v: &mut Value, keys: &[&str]) {
    if let Some(obj) = v.as_object_mut() {
        for k in keys {
            obj.remove(*k);
        }
    }
}

/// The (address, port, weight, drained_from) of each backend of one VIP in a snapshot.
fn backends_of(snap: &Value, port: u64, proto: &str) -> Vec<(String, u64, u64, Option<u64>)> {
    let vip = snap["vips"]
        .as_array()
        .and_then(|vs| {
            vs.iter()
                .find(|v| v["port"] == port && v["protocol"] == proto)
        })
        .unwrap_or_else(|| panic!("no VIP :{port}/{proto} in {snap:#}"));
    let mut list: Vec<_> = vip["backend_list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or("").to_string(),
                b["port"].as_u64().unwrap_or(0),
                b["weight"].as_u64().unwrap_or(u64::MAX),
                b["drained_from"].as_u64(),
            )
        })
        .collect();
    list.sort();
    list
}

/// (action, cidr) of every firewall rule in a snapshot, sorted.
fn rules_of(snap: &Value) -> Vec<(String, String)> {
    let mut rules: Vec<_> = snap["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or("").to_string(),
                r["cidr"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    rules.sort();
    rules
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn playbook_is_idempotent_supports_check_mode_and_reports_lbctl_errors() {
    let lab = Lab::start();
    let b1 = lab.topo.backend(1).addr.to_string();
    let b2 = lab.topo.backend(2).addr.to_string();

    // Check mode on an empty lbd: it would change things, and changes nothing.
    let empty = lab.snapshot();
    let check = lab.play("site.yml", &["--check", "--diff"]);
    assert!(
        check.changed > 0,
        "check mode found nothing to do:\n{}",
        check.output
    );
    assert_eq!(lab.snapshot(), empty, "check mode changed lbd's state");
    assert!(
        check.output.contains("lbctl vip add") || check.output.contains("+++ after"),
        "check --diff showed no diff:\n{}",
        check.output
    );

    // The real run configures everything.
    let first = lab.play("site.yml", &["--diff"]);
    assert!(
        first.changed >= 8,
        "first run changed only {}:\n{}",
        first.changed,
        first.output
    );
    let configured = lab.snapshot();
    let vips = configured["vips"].as_array().cloned().unwrap_or_default();
    assert_eq!(vips.len(), 2, "{configured:#}");
    let tcp = vips
        .iter()
        .find(|v| v["protocol"] == "tcp")
        .expect("the TCP VIP");
    assert_eq!(tcp["address"], VIP.to_string());
    assert_eq!(tcp["port"], 80);
    assert_eq!(tcp["mode"], "nat");
    assert_eq!(tcp["health"]["kind"], "tcp");
    assert_eq!(tcp["health"]["interval_ms"], 1000);
    assert_eq!(tcp["health"]["fall"], 2);
    assert_eq!(
        backends_of(&configured, 80, "tcp"),
        vec![(b1.clone(), 8080, 100, None), (b2.clone(), 8080, 200, None)]
    );
    assert_eq!(
        backends_of(&configured, 53, "udp"),
        vec![(b1.clone(), 5353, 0, Some(50))]
    );
    assert_eq!(
        rules_of(&configured),
        vec![
            (s("allow"), s("192.0.2.128/25")),
            (s("block"), s("192.0.2.0/24")),
            (s("block"), s("198.51.100.7/32")),
        ]
    );
    let limits = configured["rate_limits"].clone();
    assert_eq!(
        limits,
        json!([
            {"cidr": null, "rate": 100000, "burst": 10000, "scope": "all"},
            {"cidr": "198.51.100.0/24", "rate": 20, "burst": 5, "scope": "new-flows"}
        ]),
        "{configured:#}"
    );

    // What the playbook configured serves a real client.
    let reply = tcp_request(
        lab.topo.client(),
        None,
        SocketAddrV4::new(VIP, 80),
        Duration::from_secs(2),
    )
    .expect("a request to the VIP configured by Ansible");
    assert!(
        reply.name == "b1" || reply.name == "b2",
        "answered by {}",
        reply.name
    );

    // Idempotent: the second run and a check-mode run change nothing.
    let second = lab.play("site.yml", &[]);
    assert_eq!(
        second.changed, 0,
        "second run changed things:\n{}",
        second.output
    );
    let check = lab.play("site.yml", &["--check"]);
    assert_eq!(
        check.changed, 0,
        "check mode after the run:\n{}",
        check.output
    );
    assert_eq!(lab.snapshot(), configured);

    // A bad CIDR fails with lbctl's own message, and changes nothing.
    let direct = lab
        .lbd
        .ctl(&["block", "add", "10.0.0.1/8"])
        .expect_err("lbctl refuses 10.0.0.1/8");
    let message = format!("{direct:#}");
    let lbctl_says = message
        .lines()
        .find_map(|l| l.trim().strip_prefix("stderr: "))
        .unwrap_or_else(|| panic!("no stderr in {message}"))
        .to_string();
    assert!(
        lbctl_says.contains("invalid CIDR '10.0.0.1/8'"),
        "{lbctl_says}"
    );
    let bad = lab
        .playbook("bad_cidr.yml", &[])
        .expect("bad_cidr.yml runs");
    assert!(
        !bad.success && bad.failed == 1,
        "bad CIDR did not fail:\n{}",
        bad.output
    );
    assert!(
        bad.output.contains(&format!("\"msg\": \"{lbctl_says}\"")),
        "the task's msg is not lbctl's message {lbctl_says:?}:\n{}",
        bad.output
    );
    assert_eq!(
        lab.snapshot(),
        configured,
        "a failed task changed lbd's state"
    );

    // state: absent (and undrain) take part of it back; again idempotent.
    let teardown = lab.play("teardown.yml", &["--diff"]);
    assert_eq!(teardown.changed, 6, "teardown:\n{}", teardown.output);
    let after = lab.snapshot();
    assert_eq!(after["vips"].as_array().map(Vec::len), Some(1), "{after:#}");
    assert_eq!(backends_of(&after, 53, "udp"), vec![(b1, 5353, 50, None)]);
    assert_eq!(
        rules_of(&after),
        vec![
            (s("allow"), s("192.0.2.128/25")),
            (s("block"), s("192.0.2.0/24"))
        ]
    );
    assert_eq!(
        after["rate_limits"],
        json!([{"cidr": null, "rate": 0, "burst": 0, "scope": "all"}])
    );
    let again = lab.play("teardown.yml", &[]);
    assert_eq!(again.changed, 0, "second teardown:\n{}", again.output);
}

/// `contrib/ansible/tests/config.yml`'s document with the second backend at `weight`, as a file
/// for its `config_src` run.
fn config_document(b1: &str, b2: &str, weight: u32) -> String {
    format!(
        r#"[[vip]]
address = "{VIP}:80"
proto = "tcp"
[vip.health]
proto = "tcp"
interval = "1s"
fall = 2
[[vip.backend]]
address = "{b1}:8080"
[[vip.backend]]
address = "{b2}:8080"
weight = {weight}

[firewall]
block = ["192.0.2.0/24"]

[ratelimit.default]
rate = 100000
burst = 10000
"#
    )
}

#[test]
fn config_module_applies_a_document_with_check_and_diff_mode() {
    let lab = Lab::start();
    let b1 = lab.topo.backend(1).addr.to_string();
    let b2 = lab.topo.backend(2).addr.to_string();

    // Check mode on an empty lbd: it would change things, changes nothing, shows lbd's diff.
    let empty = lab.snapshot();
    let check = lab.play("config.yml", &["--check", "--diff"]);
    assert_eq!(check.changed, 1, "{}", check.output);
    assert!(
        check.output.contains(&format!("+ vip {VIP}:80/tcp nat"))
            && check.output.contains("+ block 192.0.2.0/24"),
        "check --diff showed no diff lines:\n{}",
        check.output
    );
    assert_eq!(lab.snapshot(), empty, "check mode changed lbd's state");

    // Applied.
    let first = lab.play("config.yml", &["--diff"]);
    assert_eq!(first.changed, 1, "{}", first.output);
    let configured = lab.snapshot();
    assert_eq!(
        backends_of(&configured, 80, "tcp"),
        vec![(b1.clone(), 8080, 100, None), (b2.clone(), 8080, 50, None)]
    );
    assert_eq!(rules_of(&configured), vec![(s("block"), s("192.0.2.0/24"))]);
    assert_eq!(
        configured["rate_limits"],
        json!([{"cidr": null, "rate": 100000, "burst": 10000, "scope": "all"}])
    );
    let tcp = configured["vips"]
        .as_array()
        .and_then(|v| v.first().cloned())
        .expect("the VIP");
    assert_eq!(tcp["health"]["kind"], "tcp");
    assert_eq!(tcp["health"]["fall"], 2);
    let reply = tcp_request(
        lab.topo.client(),
        None,
        SocketAddrV4::new(VIP, 80),
        Duration::from_secs(2),
    )
    .expect("a request to the VIP xdplb_config configured");
    assert!(reply.name == "b1" || reply.name == "b2", "{}", reply.name);

    // Check mode now: nothing to do.
    let check = lab.play("config.yml", &["--check"]);
    assert_eq!(check.changed, 0, "{}", check.output);

    // A changed document in check mode: reported as a change, with its diff line, not made.
    let check = lab.play("config.yml", &["--check", "--diff", "-e", "weight=20"]);
    assert_eq!(check.changed, 1, "{}", check.output);
    assert!(
        check
            .output
            .contains(&format!("~ weight {VIP}:80/tcp {b2}:8080 50 -> 20")),
        "{}",
        check.output
    );
    assert_eq!(lab.snapshot(), configured, "check mode changed lbd's state");

    // Applied, this time from a file on the host (src); then idempotent.
    let file = lab.home.path().join("desired.toml");
    std::fs::write(&file, config_document(&b1, &b2, 20)).expect("writing the document");
    let src = format!("config_src={}", file.display());
    let applied = lab.play("config.yml", &["-e", &src]);
    assert_eq!(applied.changed, 1, "{}", applied.output);
    let after = lab.snapshot();
    assert_eq!(
        backends_of(&after, 80, "tcp"),
        vec![(b1.clone(), 8080, 100, None), (b2.clone(), 8080, 20, None)]
    );
    assert_eq!(lab.play("config.yml", &["-e", &src]).changed, 0);
    assert_eq!(
        lab.play("config.yml", &["-e", "weight=20"]).changed,
        0,
        "the inline document and the file are the same configuration"
    );

    // A bad document fails with lbd's message (line, column, key) and changes nothing.
    let bad = lab
        .playbook("bad_config.yml", &[])
        .expect("bad_config.yml runs");
    assert!(!bad.success && bad.failed == 1, "{}", bad.output);
    assert!(
        bad.output.contains(
            "lbctl: <stdin>:6:10: vip[0].backend[0].weight: 2000000 is above the maximum 1000000"
        ),
        "{}",
        bad.output
    );
    assert_eq!(lab.snapshot(), after, "a failed task changed lbd's state");
}
