//! `lbctl explain` against a real lbd in namespaces: broken setups an operator meets (a blocked
//! client, a rate-limited client, a backend down, no neighbour for the next hop), each named
//! by explain, which agrees with what real clients get, and changes nothing (a series of
//! explains creates no flow: the VIP's new-flow counter stays put). Run as root:
//! `cargo test -p xdplb-integration --test explain -- --test-threads=1`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::Value;
use xdplb_integration::procs::health_flags;
use xdplb_integration::{
    tcp_name_server, tcp_request, vip_new_flows, Lbd, Proto, ServerHandle, Topology, VIP,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const BACKEND_PORT: u16 = 8080;

fn vip_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

/// Two-arm topology, one backend server, a TCP VIP (with `vip_flags`) on it. Field order is
/// drop order: server, lbd, namespaces.
struct Lab {
    server: Option<ServerHandle>,
    lbd: Lbd,
    topo: Topology,
}

impl Lab {
    fn start(vip_flags: &[&str]) -> Lab {
        let topo = Topology::two_arm(1).expect("topology");
        let backend = SocketAddrV4::new(topo.backend(1).addr, BACKEND_PORT);
        let server = tcp_name_server(&topo.backend(1).ns, backend, "b1").expect("backend server");
        let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
        lbd.add_vip_with(vip_tcp(), Proto::Tcp, vip_flags)
            .expect("lbctl vip add");
        lbd.add_backend(vip_tcp(), Proto::Tcp, backend)
            .expect("lbctl add-backend");
        Lab {
            server: Some(server),
            lbd,
            topo,
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.lbd
            .ctl(args)
            .unwrap_or_else(|e| panic!("lbctl {}: {e:#}", args.join(" ")))
    }

    /// `lbctl --json explain CLIENT VIP --proto tcp [extra]`.
    fn explain(&self, client: SocketAddrV4, vip: SocketAddrV4, extra: &[&str]) -> Value {
        let (c, v) = (client.to_string(), vip.to_string());
        let mut args = vec!["explain", &c, &v, "--proto", "tcp"];
        args.extend_from_slice(extra);
        self.lbd
            .ctl_json(&args)
            .unwrap_or_else(|e| panic!("lbctl explain {c} {v}: {e:#}"))
    }

    fn reaches(&self, from: Ipv4Addr) -> bool {
        tcp_request(
            self.topo.client(),
            Some(SocketAddrV4::new(from, 0)),
            vip_tcp(),
            TIMEOUT,
        )
        .is_ok()
    }

    fn new_flows(&self) -> u64 {
        let stats = self.lbd.ctl_json(&["stats"]).expect("lbctl stats");
        vip_new_flows(&stats, vip_tcp()).unwrap_or(0)
    }
}

fn s(v: &Value, path: &[&str]) -> String {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str().unwrap_or_default().to_string()
}

/// A healthy VIP: a new flow to the backend in NAT with a SNAT port and a next hop on the
/// backend's interface; a block rule then makes explain name the rule, and the real client is
/// refused too. No explain creates a flow.
#[test]
fn forwarded_then_blocked_client() {
    let lab = Lab::start(&[]);
    let [a, _] = lab.topo.client_addrs();
    let client = SocketAddrV4::new(a, 40000);
    let backend = SocketAddrV4::new(lab.topo.backend(1).addr, BACKEND_PORT);
    let flows = lab.new_flows();
    let ex = lab.explain(client, vip_tcp(), &[]);
    assert_eq!(s(&ex, &["reason"]), "tx_nat_forward", "{ex:#}");
    assert_eq!(
        s(&ex, &["backend", "address"]),
        backend.to_string(),
        "{ex:#}"
    );
    assert_eq!(s(&ex, &["mode"]), "nat");
    assert_eq!(s(&ex, &["ingress"]), "eth0", "the client's interface");
    assert_eq!(s(&ex, &["next_hop", "device"]), "eth1", "{ex:#}");
    assert!(ex["snat_port"].as_u64().unwrap_or(0) > 0, "{ex:#}");
    assert!(ex["flow"]["table"].is_null(), "a new flow: {ex:#}");
    assert_eq!(s(&ex, &["firewall", "action"]), "none");
    for _ in 0..10 {
        lab.explain(client, vip_tcp(), &[]);
        lab.explain(client, vip_tcp(), &["--established"]);
    }
    assert_eq!(lab.new_flows(), flows, "explain created a flow");
    assert!(lab.reaches(a), "the client reaches the VIP");

    lab.ctl(&["block", "add", &format!("{a}/32")]);
    let ex = lab.explain(client, vip_tcp(), &[]);
    assert_eq!(s(&ex, &["reason"]), "drop_firewall", "{ex:#}");
    assert_eq!(s(&ex, &["verdict"]), "XDP_DROP");
    assert_eq!(s(&ex, &["firewall", "action"]), "block");
    assert_eq!(s(&ex, &["firewall", "rule"]), format!("{a}/32"));
    assert!(
        s(&ex, &["summary"]).contains("blocked by firewall rule"),
        "{ex:#}"
    );
    let human = lab.ctl(&[
        "explain",
        &client.to_string(),
        &vip_tcp().to_string(),
        "--proto",
        "tcp",
    ]);
    assert!(human.contains("block (rule"), "{human}");
    assert!(!lab.reaches(a), "a blocked client got through");
}

/// A client over its rate limit: explain names the policy and says when the next packet
/// passes; another client is allowed.
#[test]
fn rate_limited_client() {
    let lab = Lab::start(&[]);
    let [a, b] = lab.topo.client_addrs();
    let cidr = format!("{a}/32");
    lab.ctl(&[
        "ratelimit",
        "set",
        "--rate",
        "1",
        "--burst",
        "1",
        "--cidr",
        &cidr,
    ]);
    // A connection attempt cut short: its SYN takes the one packet the client may send per
    // second (the rest of the exchange is dropped), and explain follows well within that second.
    let _ = tcp_request(
        lab.topo.client(),
        Some(SocketAddrV4::new(a, 0)),
        vip_tcp(),
        Duration::from_millis(150),
    );
    let ex = lab.explain(SocketAddrV4::new(a, 40001), vip_tcp(), &[]);
    assert_eq!(s(&ex, &["reason"]), "drop_ratelimit", "{ex:#}");
    assert_eq!(s(&ex, &["ratelimit", "policy"]), cidr);
    assert_eq!(s(&ex, &["ratelimit", "result"]), "limited");
    assert!(
        ex["ratelimit"]["wait_ns"].as_u64().unwrap_or(0) > 0,
        "{ex:#}"
    );
    assert!(s(&ex, &["summary"]).contains("rate limit"), "{ex:#}");
    // Explaining charges nothing: the same answer again.
    let again = lab.explain(SocketAddrV4::new(a, 40001), vip_tcp(), &[]);
    assert_eq!(s(&again, &["reason"]), "drop_ratelimit");
    let other = lab.explain(SocketAddrV4::new(b, 40001), vip_tcp(), &[]);
    assert_eq!(s(&other, &["reason"]), "tx_nat_forward", "{other:#}");
    assert!(other["ratelimit"].is_null() || s(&other, &["ratelimit", "result"]) != "limited");
}

/// The only backend's server stops: health checks mark it down and (all-down policy drop)
/// explain says the VIP has no backend and that this one is down.
#[test]
fn backend_down() {
    let mut lab = Lab::start(&health_flags("tcp", &["--all-down", "drop"]));
    let backend = SocketAddrV4::new(lab.topo.backend(1).addr, BACKEND_PORT);
    let [a, _] = lab.topo.client_addrs();
    let client = SocketAddrV4::new(a, 40002);
    assert_eq!(
        s(&lab.explain(client, vip_tcp(), &[]), &["reason"]),
        "tx_nat_forward"
    );
    lab.server = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    let ex = loop {
        let ex = lab.explain(client, vip_tcp(), &[]);
        if s(&ex, &["reason"]) == "drop_no_backend" || Instant::now() > deadline {
            break ex;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(s(&ex, &["reason"]), "drop_no_backend", "{ex:#}");
    let summary = s(&ex, &["summary"]);
    assert!(
        summary.contains(&format!("{backend} down (health check)")),
        "{summary}"
    );
}

/// A backend whose address nobody answers ARP for: the FIB lookup finds no neighbour and
/// explain names the next hop and the interface.
#[test]
fn no_neighbour_for_the_next_hop() {
    let lab = Lab::start(&[]);
    let o = lab.topo.backend(1).addr.octets();
    let ghost = Ipv4Addr::new(o[0], o[1], o[2], 250);
    let vip = SocketAddrV4::new(VIP, 81);
    lab.lbd.add_vip(vip, Proto::Tcp).expect("vip add");
    lab.lbd
        .add_backend(vip, Proto::Tcp, SocketAddrV4::new(ghost, BACKEND_PORT))
        .expect("add-backend");
    let [a, _] = lab.topo.client_addrs();
    // The kernel's neighbour entry for the ghost fails after its probes (a few seconds).
    let deadline = Instant::now() + Duration::from_secs(10);
    let ex = loop {
        let ex = lab.explain(SocketAddrV4::new(a, 40003), vip, &[]);
        if s(&ex, &["next_hop", "lookup"]) == "no_neigh" || Instant::now() > deadline {
            break ex;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        ["drop_fib_no_neigh", "pass_fib_no_neigh"].contains(&s(&ex, &["reason"]).as_str()),
        "{ex:#}"
    );
    assert_eq!(s(&ex, &["next_hop", "gateway"]), ghost.to_string());
    assert_eq!(s(&ex, &["next_hop", "device"]), "eth1");
    assert!(
        s(&ex, &["summary"]).contains("no neighbour entry"),
        "{ex:#}"
    );
}

/// Bad requests name the argument and change nothing.
#[test]
fn bad_requests() {
    let lab = Lab::start(&[]);
    let err = lab
        .lbd
        .ctl(&["explain", "10.200.1.2:0", "10.0.0.10:80", "--proto", "tcp"])
        .expect_err("port 0");
    assert!(format!("{err:#}").contains("CLIENT"), "{err:#}");
    let err = lab
        .lbd
        .ctl(&[
            "explain",
            "10.200.1.2:4000",
            &vip_tcp().to_string(),
            "--proto",
            "tcp",
            "--ingress",
            "nosuch0",
        ])
        .expect_err("unknown ingress");
    assert!(format!("{err:#}").contains("ingress"), "{err:#}");
}
