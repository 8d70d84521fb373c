//! `lbctl backend check` against a real lbd in namespaces: a good L2 DSR backend and a good IPIP
//! backend pass every check; broken ones are each named by their check with the fix (an L2 DSR
//! backend without the VIP on lo, one answering ARP for the VIP, an IPIP backend without decap, a
//! wrong backend port, an MTU too small on the backend's side); a VIP or backend lbd does not
//! hold is NotFound; lbd warns at attach about a veth whose peer has no XDP program (and not
//! when it has one), and the check reports it. Run as root:
//! `cargo test -p xdplb-integration --test backend_check -- --test-threads=1`.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde_json::Value;
use xdplb_integration::dsr::{backend_setup, lbctl_in, ModeTopology, RoutedTopology};
use xdplb_integration::topology::{lbd_config, unique_pin_path};
use xdplb_integration::{tcp_name_server, veth, Lbd, NetNs, Proto, Topology, VIP};

/// DSR cannot translate ports: backends listen on the VIP's port.
const PORT: u16 = 80;

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, PORT)
}

fn any_port(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

/// lbd started in `ns` with `config`, serving the TCP VIP in `mode` with `backend`.
fn serve(ns: &NetNs, config: &str, mode: &str, backend: SocketAddrV4) -> Lbd {
    let lbd = Lbd::start(ns, config).expect("lbd starts");
    lbd.add_vip_with(vip(), Proto::Tcp, &["--mode", mode])
        .expect("vip add");
    lbd.add_backend(vip(), Proto::Tcp, backend)
        .expect("add-backend");
    lbd
}

/// What one `lbctl backend check` printed.
struct Checked {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

impl Checked {
    fn status(&self, name: &str) -> String {
        self.check(name)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn check(&self, name: &str) -> &Value {
        self.json["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == name))
            .unwrap_or_else(|| panic!("no {name} check in {:#}", self.json))
    }

    fn text(&self, name: &str, key: &str) -> String {
        self.check(name)[key].as_str().unwrap_or("").to_string()
    }

    /// Every check is ok, except those in `skipped`, which are skipped.
    fn assert_all_ok(&self, skipped: &[&str]) {
        for c in self.json["checks"].as_array().expect("checks") {
            let name = c["name"].as_str().unwrap_or("");
            let want = if skipped.contains(&name) {
                "skipped"
            } else {
                "ok"
            };
            assert_eq!(c["status"], want, "{name}: {:#}", self.json);
        }
        assert_eq!(self.code, Some(0), "exit status; stderr {}", self.stderr);
    }
}

/// `lbctl --json backend check --vip VIP --proto P BACKEND` (exit status kept).
fn check(lbd: &Lbd, ns: &NetNs, vip: SocketAddrV4, proto: &str, backend: SocketAddrV4) -> Checked {
    let socket = lbd.socket().display().to_string();
    let (v, b) = (vip.to_string(), backend.to_string());
    let out = lbctl_in(
        ns,
        &[
            "--socket", &socket, "--json", "backend", "check", "--vip", &v, "--proto", proto, &b,
        ],
    )
    .expect("lbctl runs");
    let json = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "backend check printed no JSON ({e}), exit {:?}\nstdout: {}\nstderr: {}",
            out.code, out.stdout, out.stderr
        )
    });
    let c = Checked {
        code: out.code,
        json,
        stderr: out.stderr,
    };
    eprintln!("backend check {b} of {v}: {:#}", c.json);
    c
}

/// An L2 DSR backend prepared with `backend-setup` passes every check, the human report shows
/// one line per check; the same backend once it answers ARP for the VIP fails `arp` with the
/// sysctl fix. A VIP or a backend lbd does not hold is NotFound.
#[test]
fn good_l2dsr_backend_passes_then_arp_is_named() {
    let mt = ModeTopology::one_arm("l2dsr", 1).expect("topology");
    let b1 = mt.topo.backend(1);
    let server = tcp_name_server(&b1.ns, any_port(PORT), "b1").expect("server");
    let backend = mt.backend_addr(1, PORT);
    let lbd = serve(mt.topo.lb(), &mt.topo.lbd_config(), "l2dsr", backend);

    let c = check(&lbd, mt.topo.lb(), vip(), "tcp", backend);
    c.assert_all_ok(&[]);
    for name in [
        "port",
        "neighbour",
        "vip",
        "arp",
        "mtu",
        "rp_filter",
        "veth",
    ] {
        assert_eq!(c.status(name), "ok", "{name}");
    }
    assert_eq!(c.json["mode"], "l2dsr");
    assert_eq!(c.json["egress"], "eth0");
    assert!(c.text("vip", "detail").contains("SYN-ACK"), "{:#}", c.json);
    assert!(
        c.text("veth", "detail").contains("has an XDP program"),
        "the LB's veth peer has the XDP_PASS program: {:#}",
        c.json
    );
    assert!(
        !lbd.log_text().contains("arrive late"),
        "lbd warned about a veth whose peer has XDP:\n{}",
        lbd.log_text()
    );

    let human = lbd
        .ctl(&[
            "backend",
            "check",
            "--vip",
            &vip().to_string(),
            "--proto",
            "tcp",
            &backend.to_string(),
        ])
        .expect("backend check passes");
    eprintln!("{human}");
    assert!(
        human.contains("backend 10.200.50.11:80 of vip 10.200.100.1:80/tcp (l2dsr)"),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.trim_start().starts_with("ok") && l.contains("vip")),
        "{human}"
    );
    assert!(human.contains("=> all 7 checks passed"), "{human}");

    // The backend answers ARP for the VIP (its arp_ignore back to 0).
    b1.ns.sysctl("net.ipv4.conf.all.arp_ignore", "0").unwrap();
    b1.ns.sysctl("net.ipv4.conf.eth0.arp_ignore", "0").unwrap();
    let c = check(&lbd, mt.topo.lb(), vip(), "tcp", backend);
    assert_eq!(c.status("arp"), "fail", "{:#}", c.json);
    assert!(
        c.text("arp", "fix").contains("arp_ignore=1"),
        "{:#}",
        c.json
    );
    assert_eq!(c.status("vip"), "ok");
    assert_eq!(c.code, Some(1), "a failed check: exit 1");
    assert!(c.stderr.contains("failed checks: arp"), "{}", c.stderr);
    assert_eq!(c.json["failed"], serde_json::json!(["arp"]));

    // Not held by lbd: NotFound, naming what.
    let other = SocketAddrV4::new(Ipv4Addr::new(10, 200, 50, 99), PORT);
    let err = lbd
        .ctl(&[
            "backend",
            "check",
            "--vip",
            &vip().to_string(),
            "--proto",
            "tcp",
            &other.to_string(),
        ])
        .expect_err("an unknown backend");
    assert!(
        err.to_string().contains("not found") && err.to_string().contains("10.200.50.99:80"),
        "{err:#}"
    );
    let err = lbd
        .ctl(&[
            "backend",
            "check",
            "--vip",
            "10.200.100.1:81",
            "--proto",
            "tcp",
            &backend.to_string(),
        ])
        .expect_err("an unknown VIP");
    assert!(err.to_string().contains("not found"), "{err:#}");
    drop(server);
    drop(lbd);
}

/// An L2 DSR backend that never ran `backend-setup`: no VIP on lo, named by the `vip` check with
/// the backend-setup command; its port answers.
#[test]
fn l2dsr_backend_without_vip_on_lo_is_named() {
    let topo = Topology::one_arm(1).expect("topology");
    let b1 = topo.backend(1);
    let server = tcp_name_server(&b1.ns, any_port(PORT), "b1").expect("server");
    let backend = SocketAddrV4::new(b1.addr, PORT);
    let lbd = serve(topo.lb(), &topo.lbd_config(), "l2dsr", backend);
    let c = check(&lbd, topo.lb(), vip(), "tcp", backend);
    assert_eq!(c.status("port"), "ok", "{:#}", c.json);
    assert_eq!(c.status("vip"), "fail", "{:#}", c.json);
    assert!(
        c.text("vip", "detail")
            .contains("does not hold 10.200.100.1 on lo"),
        "{:#}",
        c.json
    );
    assert!(
        c.text("vip", "fix")
            .contains("lbctl backend-setup --vip 10.200.100.1 --mode l2dsr"),
        "{:#}",
        c.json
    );
    assert_eq!(
        c.status("rp_filter"),
        "warn",
        "a hint when nothing answered"
    );
    assert_eq!(c.code, Some(1));
    drop(server);
    drop(lbd);
}

/// A NAT backend registered with a port nothing listens on: `port` names it.
#[test]
fn wrong_backend_port_is_named() {
    let topo = Topology::one_arm(1).expect("topology");
    let b1 = topo.backend(1);
    let server = tcp_name_server(&b1.ns, SocketAddrV4::new(b1.addr, 8080), "b1").expect("server");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    lbd.add_vip(vip(), Proto::Tcp).expect("vip add");
    let wrong = SocketAddrV4::new(b1.addr, 8081);
    lbd.add_backend(vip(), Proto::Tcp, wrong)
        .expect("add-backend");
    let c = check(&lbd, topo.lb(), vip(), "tcp", wrong);
    assert_eq!(c.status("port"), "fail", "{:#}", c.json);
    assert!(
        c.text("port", "detail")
            .contains("nothing listens on port 8081"),
        "{:#}",
        c.json
    );
    assert!(c.text("port", "fix").contains("port 8081"), "{:#}", c.json);
    // NAT: no VIP path to check; the rest passes.
    for name in ["vip", "rp_filter"] {
        assert_eq!(c.status(name), "skipped", "{name}: {:#}", c.json);
    }
    for name in ["neighbour", "mtu", "veth"] {
        assert_eq!(c.status(name), "ok", "{name}: {:#}", c.json);
    }
    assert_eq!(c.code, Some(1));

    // The right port passes.
    let right = SocketAddrV4::new(b1.addr, 8080);
    lbd.add_backend(vip(), Proto::Tcp, right)
        .expect("add-backend");
    check(&lbd, topo.lb(), vip(), "tcp", right).assert_all_ok(&["vip", "rp_filter"]);
    drop(server);
    drop(lbd);
}

/// The backend's interface has a smaller MTU than the balancer's: full-size frames are lost on
/// it. `mtu` names the largest size that gets through and the fix; the rest passes.
#[test]
fn mtu_too_small_is_named() {
    let mt = ModeTopology::one_arm("l2dsr", 1).expect("topology");
    let b1 = mt.topo.backend(1);
    b1.ns
        .ip(&["link", "set", "dev", "eth0", "mtu", "1400"])
        .unwrap();
    let server = tcp_name_server(&b1.ns, any_port(PORT), "b1").expect("server");
    let backend = mt.backend_addr(1, PORT);
    let lbd = serve(mt.topo.lb(), &mt.topo.lbd_config(), "l2dsr", backend);
    let c = check(&lbd, mt.topo.lb(), vip(), "tcp", backend);
    assert_eq!(c.status("mtu"), "fail", "{:#}", c.json);
    let detail = c.text("mtu", "detail");
    assert!(detail.contains("packets of 1500 bytes"), "{detail}");
    // veth accepts a VLAN tag's worth above its MTU: 1400 to 1404 bytes get through.
    let largest: usize = detail
        .split("the largest that does is ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no largest size in {detail}"));
    assert!((1400..=1404).contains(&largest), "{detail}");
    assert!(c.text("mtu", "fix").contains("mtu 1500"), "{:#}", c.json);
    for name in ["port", "vip", "arp"] {
        assert_eq!(c.status(name), "ok", "{name}: {:#}", c.json);
    }
    drop(server);
    drop(lbd);
}

/// IPIP DSR to a backend behind a router, prepared with `backend-setup --mode ipip`: the
/// encapsulated SYN is answered, every check passes.
#[test]
fn good_ipip_backend_passes() {
    let topo = RoutedTopology::build().expect("topology");
    let setup = backend_setup(topo.backend(), VIP, "ipip", "eth0", RoutedTopology::LB_ADDR)
        .expect("lbctl backend-setup");
    let server = tcp_name_server(topo.backend(), any_port(PORT), "b1").expect("server");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    let lbd = serve(topo.lb(), &topo.lbd_config(), "ipip", backend);
    let c = check(&lbd, topo.lb(), vip(), "tcp", backend);
    c.assert_all_ok(&[]);
    assert!(
        c.text("ipip", "detail").contains("decapsulates IPIP"),
        "{:#}",
        c.json
    );
    assert!(
        c.text("neighbour", "detail")
            .contains("the gateway 10.200.60.254"),
        "{:#}",
        c.json
    );
    assert!(
        c.text("mtu", "detail").contains("IPIP adds 20 bytes"),
        "{:#}",
        c.json
    );
    drop(server);
    drop(lbd);
    drop(setup);
}

/// An IPIP backend with the VIP on lo but no decap program (prepared for l2dsr): `ipip` names
/// the missing decap with the backend-setup command.
#[test]
fn ipip_backend_without_decap_is_named() {
    let topo = RoutedTopology::build().expect("topology");
    let setup = backend_setup(
        topo.backend(),
        VIP,
        "l2dsr",
        "eth0",
        RoutedTopology::LB_ADDR,
    )
    .expect("lbctl backend-setup");
    let server = tcp_name_server(topo.backend(), any_port(PORT), "b1").expect("server");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    let lbd = serve(topo.lb(), &topo.lbd_config(), "ipip", backend);
    let c = check(&lbd, topo.lb(), vip(), "tcp", backend);
    assert_eq!(c.status("port"), "ok", "{:#}", c.json);
    assert_eq!(c.status("ipip"), "fail", "{:#}", c.json);
    assert!(
        c.text("ipip", "detail").contains("no IPIP decap"),
        "{:#}",
        c.json
    );
    assert!(
        c.text("ipip", "fix")
            .contains("lbctl backend-setup --vip 10.200.100.1 --mode ipip --dev <its interface> --lb-source 10.200.60.1/32"),
        "{:#}",
        c.json
    );
    assert_eq!(c.code, Some(1));
    drop(server);
    drop(lbd);
    drop(setup);
}

/// lbd attached to a veth whose peer has no XDP program warns at attach with the fix, and
/// `backend check` reports it as a warning.
#[test]
fn veth_peer_without_xdp_is_warned() {
    let lb = NetNs::new("lb").expect("ns");
    let peer = NetNs::new("peer").expect("ns");
    veth(&peer, "eth0", &lb, "eth0").expect("veth");
    lb.ip(&["addr", "add", "10.200.70.1/24", "dev", "eth0"])
        .unwrap();
    peer.ip(&["addr", "add", "10.200.70.2/24", "dev", "eth0"])
        .unwrap();
    lb.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let backend = SocketAddrV4::new(Ipv4Addr::new(10, 200, 70, 2), 8080);
    let server = tcp_name_server(&peer, backend, "p").expect("server");
    let config = lbd_config(
        &["eth0".to_string()],
        &unique_pin_path(),
        Ipv4Addr::new(10, 200, 70, 1),
    );
    let lbd = Lbd::start(&lb, &config).expect("lbd starts");
    let log = lbd.log_text();
    assert!(
        log.contains("into veth eth0 arrive late and in bursts"),
        "no veth warning in lbd's log:\n{log}"
    );
    assert!(
        log.contains("ethtool -K eth0 gro on"),
        "the fix names the peer:\n{log}"
    );
    lbd.add_vip(vip(), Proto::Tcp).expect("vip add");
    lbd.add_backend(vip(), Proto::Tcp, backend)
        .expect("add-backend");
    let c = check(&lbd, &lb, vip(), "tcp", backend);
    assert_eq!(c.status("veth"), "warn", "{:#}", c.json);
    assert!(
        c.text("veth", "detail").contains("has no XDP program"),
        "{:#}",
        c.json
    );
    assert!(c.text("veth", "fix").contains("gro on"), "{:#}", c.json);
    assert_eq!(c.status("port"), "ok", "{:#}", c.json);
    assert_eq!(c.code, Some(0), "a warning is not a failure");
    drop(server);
    drop(lbd);
    drop(peer);
}
