//! End-to-end full-NAT tests: real TCP/UDP traffic from a client namespace through lbd's XDP
//! program to backend namespaces and back. Run as root: `cargo test -p xdplb-integration`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use xdplb_integration::{
    all_ok, assert_spread, count_by_name, tcp_connect, tcp_exchange, tcp_name_server, tcp_request,
    tcp_requests, udp_name_server, udp_requests, vip_new_flows, Lbd, Proto, Reply, ServerHandle,
    Topology, VIP,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one batch of requests, whatever happens.
const BATCH_LIMIT: Duration = Duration::from_secs(120);
const BACKEND_PORT: u16 = 8080;

fn vip_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

/// A topology with lbd running on it and a name server on each backend.
///
/// Field order is drop order: servers stop first, then lbd, then the namespaces go.
struct Lab {
    servers: Vec<ServerHandle>,
    lbd: Lbd,
    topo: Topology,
}

impl Lab {
    /// Builds `topo`'s name servers (`b<i>` on `<backend>:port`), starts lbd.
    fn start(topo: Topology, proto: Proto, port: u16) -> Lab {
        let servers = topo
            .backends()
            .iter()
            .map(|b| {
                let addr = SocketAddrV4::new(b.addr, port);
                let name = format!("b{}", b.index);
                match proto {
                    Proto::Tcp => tcp_name_server(&b.ns, addr, &name),
                    Proto::Udp => udp_name_server(&b.ns, addr, &name),
                }
                .expect("backend name server starts")
            })
            .collect();
        let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
        Lab { servers, lbd, topo }
    }

    /// [`Lab::start`] with TCP name servers and the TCP VIP on backends 1 and 2.
    fn tcp_vip(topo: Topology) -> Lab {
        let lab = Lab::start(topo, Proto::Tcp, BACKEND_PORT);
        tcp_vip_with_backends(&lab, &[1, 2]);
        lab
    }

    /// `count` new connections, spread over b1 and b2 within `share`, all through SNAT.
    fn balanced_batch(&self, count: usize, share: std::ops::RangeInclusive<usize>) -> Vec<Reply> {
        let replies = self.tcp_batch(None, count);
        assert_spread(&count_by_name(&replies), &["b1", "b2"], count, share);
        assert_snat(&replies, self.topo.snat_addr());
        replies
    }

    fn backend(&self, index: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.backend(index).addr, BACKEND_PORT)
    }

    /// `count` TCP requests to the TCP VIP; every one must succeed. Returns the replies.
    fn tcp_batch(&self, from: Option<SocketAddrV4>, count: usize) -> Vec<Reply> {
        let results = tcp_requests(
            self.topo.client(),
            from,
            vip_tcp(),
            count,
            TIMEOUT,
            BATCH_LIMIT,
        )
        .expect("client runs");
        all_ok(results, count)
    }
}

/// Asserts that `result` is an error that says `says` (in any case); `what` if it is not an error.
fn assert_refused(result: anyhow::Result<String>, what: &str, says: &str) {
    let err = result.expect_err(what);
    assert!(
        format!("{err:#}").to_lowercase().contains(says),
        "error should say {says:?}: {err:#}"
    );
}

/// Asserts that every reply shows the SNAT address (and a port of the configured range) as the
/// source the backend saw.
fn assert_snat(replies: &[Reply], snat: Ipv4Addr) {
    for r in replies {
        assert!(
            *r.peer.ip() == snat && (20000..=29999).contains(&r.peer.port()),
            "backend {} saw {} as the client; expected {snat}:20000-29999 (full NAT)",
            r.name,
            r.peer
        );
    }
}

fn tcp_vip_with_backends(lab: &Lab, backends: &[usize]) {
    lab.lbd
        .add_vip(vip_tcp(), Proto::Tcp)
        .expect("lbctl vip add");
    for &i in backends {
        lab.lbd
            .add_backend(vip_tcp(), Proto::Tcp, lab.backend(i))
            .expect("lbctl add-backend");
    }
}

#[test]
fn tcp_500_connections_balanced() {
    let lab = Lab::tcp_vip(Topology::two_arm(2).expect("topology"));

    let replies = lab.balanced_batch(500, 35..=65);
    let mut ports: Vec<u16> = replies.iter().map(|r| r.local.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 500, "client source ports were reused");
    let served: usize = lab.servers.iter().map(ServerHandle::served).sum();
    assert_eq!(served, 500, "backends' own count of served connections");

    let stats = lab.lbd.ctl_json(&["stats"]).expect("lbctl --json stats");
    let new_flows = vip_new_flows(&stats, vip_tcp());
    assert!(
        new_flows.is_some_and(|n| n >= 500),
        "VIP new_flows = {new_flows:?}, want >= 500; stats: {stats:#}"
    );
}

#[test]
fn udp_request_response() {
    let lab = Lab::start(Topology::two_arm(2).expect("topology"), Proto::Udp, 5353);
    let vip = SocketAddrV4::new(VIP, 53);
    lab.lbd.add_vip(vip, Proto::Udp).expect("lbctl vip add");
    for b in lab.topo.backends() {
        lab.lbd
            .add_backend(vip, Proto::Udp, SocketAddrV4::new(b.addr, 5353))
            .expect("lbctl add-backend");
    }

    let results = udp_requests(lab.topo.client(), None, vip, 50, TIMEOUT, 3, BATCH_LIMIT)
        .expect("client runs");
    let replies = all_ok(results, 50);

    for r in &replies {
        assert!(r.name == "b1" || r.name == "b2", "unexpected answer {r:?}");
    }
    assert_snat(&replies, lab.topo.snat_addr());
    let mut ports: Vec<u16> = replies.iter().map(|r| r.local.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(
        ports.len(),
        50,
        "requests did not come from distinct sockets"
    );
}

#[test]
fn same_source_port_two_clients() {
    let lab = Lab::tcp_vip(Topology::two_arm(2).expect("topology"));
    let [a, b] = lab.topo.client_addrs();
    let from_a = SocketAddrV4::new(a, 40000);
    let from_b = SocketAddrV4::new(b, 40000);

    // Both connections are open at the same time before either sends anything.
    let conn_a = tcp_connect(lab.topo.client(), Some(from_a), vip_tcp(), TIMEOUT)
        .expect("connection from 10.200.1.2:40000");
    let conn_b = tcp_connect(lab.topo.client(), Some(from_b), vip_tcp(), TIMEOUT)
        .expect("connection from 10.200.1.3:40000");
    let reply_a = tcp_exchange(&conn_a, "from a").expect("answer on connection a");
    let reply_b = tcp_exchange(&conn_b, "from b").expect("answer on connection b");

    assert_eq!(reply_a.local, from_a);
    assert_eq!(reply_b.local, from_b);
    assert_snat(&[reply_a.clone(), reply_b.clone()], lab.topo.snat_addr());
    for r in [&reply_a, &reply_b] {
        assert!(r.name == "b1" || r.name == "b2", "unexpected answer {r:?}");
    }
    if reply_a.name == reply_b.name {
        assert_ne!(
            reply_a.peer, reply_b.peer,
            "two flows reached the same backend from the same SNAT address and port"
        );
    }
}

#[test]
fn third_backend_joins_and_removed_backend_gets_nothing() {
    let mut topo = Topology::two_arm(2).expect("topology");
    // The third backend's link must exist before lbd starts: lbd attaches to the interfaces
    // of its configuration only. It joins the VIP later, through lbctl.
    let (third, third_addr) = topo.add_backend().expect("third backend link");
    assert_eq!(third, 3);
    assert_eq!(third_addr, Ipv4Addr::new(10, 200, 13, 2));
    let lab = Lab::tcp_vip(topo);
    let client = lab.topo.client_addrs()[0];

    // Explicit, disjoint source ports per phase: no 5-tuple (and so no conntrack entry) of an
    // earlier phase is reused.
    let before = count_by_name(&lab.tcp_batch(Some(SocketAddrV4::new(client, 30000)), 150));
    assert!(
        before.get("b1").is_some_and(|&n| n > 0) && before.get("b2").is_some_and(|&n| n > 0),
        "with two backends both should answer: {before:?}"
    );
    assert_eq!(before.get("b3"), None, "b3 answered before it was added");

    lab.lbd
        .add_backend(vip_tcp(), Proto::Tcp, lab.backend(3))
        .expect("lbctl add-backend third");
    let joined = count_by_name(&lab.tcp_batch(Some(SocketAddrV4::new(client, 31000)), 300));
    let b3 = joined.get("b3").copied().unwrap_or(0);
    assert!(
        b3 >= 45,
        "after joining, b3 got {b3} of 300 connections (want >= 15 %): {joined:?}"
    );

    lab.lbd
        .remove_backend(vip_tcp(), Proto::Tcp, lab.backend(1))
        .expect("lbctl remove-backend first");
    let served_b1 = lab.servers[0].served();
    let after = count_by_name(&lab.tcp_batch(Some(SocketAddrV4::new(client, 32000)), 200));
    assert_eq!(
        after.get("b1"),
        None,
        "removed backend b1 still got connections: {after:?}"
    );
    assert_eq!(
        lab.servers[0].served(),
        served_b1,
        "b1's server saw connections after its removal"
    );
}

#[test]
fn non_vip_traffic_untouched() {
    let lab = Lab::tcp_vip(Topology::two_arm(2).expect("topology"));
    let client = lab.topo.client_addrs()[0];
    let lb_server = tcp_name_server(
        lab.topo.lb(),
        SocketAddrV4::new(lab.topo.lb_addr(), 9000),
        "lb",
    )
    .expect("server on the LB's own address");

    // The VIP is served (so the XDP program is attached and active)...
    let via_vip = tcp_request(lab.topo.client(), None, vip_tcp(), TIMEOUT).expect("VIP request");
    assert_snat(&[via_vip], lab.topo.snat_addr());

    // ...and traffic to the LB itself and to a backend's real address is left to the kernel.
    for _ in 0..10 {
        let local = tcp_request(
            lab.topo.client(),
            None,
            SocketAddrV4::new(lab.topo.lb_addr(), 9000),
            TIMEOUT,
        )
        .expect("request to the LB's own address 10.200.1.1:9000");
        assert_eq!(local.name, "lb");
        assert_eq!(
            *local.peer.ip(),
            client,
            "the LB's server saw a rewritten source"
        );

        let direct = tcp_request(lab.topo.client(), None, lab.backend(1), TIMEOUT)
            .expect("request to backend 1's real address, routed by the LB's kernel");
        assert_eq!(direct.name, "b1");
        assert_eq!(
            *direct.peer.ip(),
            client,
            "a routed (non-VIP) connection was NATed"
        );
        assert_eq!(direct.peer.port(), direct.local.port());
    }
    assert_eq!(lb_server.served(), 10);
}

#[test]
fn bad_rpc_is_refused_and_changes_nothing() {
    let lab = Lab::tcp_vip(Topology::two_arm(2).expect("topology"));
    let before = lab
        .lbd
        .ctl_json(&["vip", "list"])
        .expect("lbctl --json vip list");

    // Well-formed requests that only lbd can refuse.
    let missing_vip = SocketAddrV4::new(Ipv4Addr::new(10, 200, 100, 2), 80);
    assert_refused(
        lab.lbd.add_backend(missing_vip, Proto::Tcp, lab.backend(1)),
        "adding a backend to a VIP that does not exist must fail",
        "not found",
    );
    assert_refused(
        lab.lbd.add_vip(vip_tcp(), Proto::Tcp),
        "adding a duplicate VIP must fail",
        "already exists",
    );
    let stranger = SocketAddrV4::new(Ipv4Addr::new(10, 200, 11, 99), BACKEND_PORT);
    assert_refused(
        lab.lbd.remove_backend(vip_tcp(), Proto::Tcp, stranger),
        "removing a backend the VIP does not have must fail",
        "not found",
    );
    // Port 0 is refused by lbctl or by lbd; either way it must fail.
    lab.lbd
        .add_vip(SocketAddrV4::new(VIP, 0), Proto::Tcp)
        .expect_err("a VIP on port 0 must be refused");

    let after = lab
        .lbd
        .ctl_json(&["vip", "list"])
        .expect("lbctl --json vip list");
    assert_eq!(before, after, "refused requests changed the VIP list");

    // And the data plane still serves the VIP with both backends.
    let counts = count_by_name(&lab.tcp_batch(None, 40));
    assert!(
        counts.keys().all(|k| k == "b1" || k == "b2"),
        "unexpected answers: {counts:?}"
    );
}

#[test]
fn one_arm_tcp_balanced() {
    let lab = Lab::tcp_vip(Topology::one_arm(2).expect("topology"));

    lab.balanced_batch(200, 30..=70);
}
