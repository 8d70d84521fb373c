//! End-to-end firewall tests: lbctl block/allow rules applied by a running lbd decide which
//! real client addresses reach the VIP (or, with scope "all", the LB itself), and changing the
//! rules takes effect at once, with no restart. Run as root: `cargo test -p xdplb-integration`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use xdplb_integration::lab::{vip_tcp, OneBackend};
use xdplb_integration::{tcp_name_server, tcp_request, Reply};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A two-arm topology with one backend serving the TCP VIP through lbd.
struct Lab(OneBackend);

impl std::ops::Deref for Lab {
    type Target = OneBackend;
    fn deref(&self) -> &OneBackend {
        &self.0
    }
}

impl Lab {
    /// `extra_config` is appended to the harness's lbd configuration.
    fn start(extra_config: &str) -> Lab {
        Lab(OneBackend::start(extra_config).expect("lab"))
    }

    /// One request to `to` from the client address `from` (ephemeral port).
    fn request(&self, from: Ipv4Addr, to: SocketAddrV4) -> Result<Reply> {
        tcp_request(
            self.topo.client(),
            Some(SocketAddrV4::new(from, 0)),
            to,
            TIMEOUT,
        )
    }

    fn reaches(&self, from: Ipv4Addr, to: SocketAddrV4) {
        let reply = self
            .request(from, to)
            .unwrap_or_else(|e| panic!("{from} should reach {to}: {e:#}"));
        assert_eq!(*reply.local.ip(), from);
    }

    fn blocked(&self, from: Ipv4Addr, to: SocketAddrV4) {
        if let Ok(r) = self.request(from, to) {
            panic!(
                "{from} reached {to} through a block rule (answered by {})",
                r.name
            );
        }
    }

    /// `lbctl args...`, which must succeed; its output.
    fn ctl(&self, args: &[&str]) -> String {
        self.lbd
            .ctl(args)
            .unwrap_or_else(|e| panic!("lbctl {}: {e:#}", args.join(" ")))
    }

    fn rules(&self) -> Vec<Value> {
        let v = self
            .lbd
            .ctl_json(&["fw", "list"])
            .expect("lbctl --json fw list");
        v["rules"].as_array().cloned().unwrap_or_default()
    }

    fn hits(&self, cidr: &str) -> Option<u64> {
        self.rules()
            .iter()
            .find(|r| r["cidr"] == cidr)
            .and_then(|r| r["hits"].as_u64())
    }

    fn reason(&self, name: &str) -> u64 {
        let stats = self.lbd.ctl_json(&["stats"]).expect("lbctl --json stats");
        stats["reasons"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["reason"] == name))
            .and_then(|r| r["packets"].as_u64())
            .unwrap_or(0)
    }
}

/// Writes the list file `name` with `text` into `dir`; its path.
fn list_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

#[test]
fn blocked_client_cannot_connect_and_removing_the_rule_restores_it() {
    let lab = Lab::start("");
    let [a, b] = lab.topo.client_addrs();
    lab.reaches(a, vip_tcp());
    lab.reaches(b, vip_tcp());

    let said = lab.ctl(&["block", "add", &b.to_string()]);
    assert!(said.starts_with("blocked 1 prefix"), "{said}");
    lab.blocked(b, vip_tcp());
    lab.reaches(a, vip_tcp());
    let hits = lab.hits(&format!("{b}/32"));
    assert!(
        hits.is_some_and(|h| h >= 1),
        "the block rule's hits: {hits:?}; rules: {:?}",
        lab.rules()
    );
    assert!(
        lab.reason("drop_firewall") >= 1,
        "drop_firewall not counted"
    );

    lab.ctl(&["block", "remove", &format!("{b}/32")]);
    assert!(lab.rules().is_empty(), "rules left: {:?}", lab.rules());
    lab.reaches(b, vip_tcp());
    lab.reaches(a, vip_tcp());
}

#[test]
fn list_load_allow_hole_and_replace() {
    let lab = Lab::start("");
    let [a, b] = lab.topo.client_addrs();
    let dir = tempfile::tempdir().expect("tempdir");

    // A host-bits typo is refused with its line number, and nothing reaches the data plane.
    let bad = list_file(
        &dir,
        "bad.txt",
        "; a drop list\n192.0.2.0/24 ; SBL1\n10.200.1.1/24 ; SBL2\n",
    );
    let err = lab
        .lbd
        .ctl(&["block", "load", &bad])
        .expect_err("a list with host bits set must be refused");
    let err = format!("{err:#}");
    assert!(
        err.contains("line 3") && err.contains("did you mean 10.200.1.0/24?"),
        "{err}"
    );
    assert!(lab.rules().is_empty(), "a refused list left rules behind");

    // The client's whole /24 blocked from a list, then an allow hole for one address.
    let list = list_file(
        &dir,
        "drop.txt",
        "; Spamhaus-style DROP list\n192.0.2.0/24 ; SBL1\n10.200.1.0/24 ; SBL2\n\n# end\n",
    );
    let said = lab.ctl(&["block", "load", &list]);
    assert!(said.starts_with("loaded 2 prefixes from "), "{said}");
    lab.blocked(a, vip_tcp());
    lab.blocked(b, vip_tcp());

    lab.ctl(&["allow", "add", &a.to_string()]);
    lab.reaches(a, vip_tcp());
    lab.blocked(b, vip_tcp());

    // Replacing the block list drops 10.200.1.0/24 and keeps the allow rule.
    let next = list_file(&dir, "drop2.txt", "192.0.2.0/24\n198.51.100.0/24\n");
    let said = lab.ctl(&["block", "load", "--replace", &next]);
    assert!(
        said.contains("1 added, 0 changed, 1 removed, 1 unchanged; 3 rules in total"),
        "{said}"
    );
    lab.reaches(b, vip_tcp());
    lab.reaches(a, vip_tcp());
    let mut rules: Vec<(String, String)> = lab
        .rules()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap_or_default().to_string(),
                r["cidr"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        vec![
            ("allow".to_string(), format!("{a}/32")),
            ("block".to_string(), "192.0.2.0/24".to_string()),
            ("block".to_string(), "198.51.100.0/24".to_string()),
        ]
    );
}

#[test]
fn scope_all_guards_the_lb_itself() {
    let lab = Lab::start("\n[firewall]\nscope = \"all\"\n");
    let [a, b] = lab.topo.client_addrs();
    let own = SocketAddrV4::new(lab.topo.lb_addr(), 9000);
    let _lb_server = tcp_name_server(lab.topo.lb(), own, "lb").expect("server on the LB");
    lab.reaches(b, own);

    lab.ctl(&["block", "add", &b.to_string()]);
    lab.blocked(b, own);
    lab.blocked(b, vip_tcp());
    lab.reaches(a, own);
    lab.reaches(a, vip_tcp());

    lab.ctl(&["block", "remove", &b.to_string()]);
    lab.reaches(b, own);
}
