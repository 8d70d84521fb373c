//! Tests of the harness itself, without lbd: the topologies route, peers answer, and every
//! namespace is gone after its guard drops, also when the test body panics.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use xdplb_integration::{
    lbd_config, tcp_name_server, tcp_request, udp_name_server, udp_request, udp_requests, NetNs,
    Topology, VIP,
};

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn two_arm_routes_without_lbd() {
    let topo = Topology::two_arm(2).expect("topology");
    assert_eq!(topo.lb_interfaces(), ["eth0", "eth1", "eth2"]);
    let servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| {
            tcp_name_server(
                &b.ns,
                SocketAddrV4::new(b.addr, 8080),
                &format!("b{}", b.index),
            )
            .expect("server")
        })
        .collect();
    for b in topo.backends() {
        for from in topo.client_addrs() {
            let reply = tcp_request(
                topo.client(),
                Some(SocketAddrV4::new(from, 0)),
                SocketAddrV4::new(b.addr, 8080),
                TIMEOUT,
            )
            .expect("routed request");
            assert_eq!(reply.name, format!("b{}", b.index));
            assert_eq!(*reply.peer.ip(), from, "no NAT without lbd");
        }
    }
    assert_eq!(servers.iter().map(|s| s.served()).sum::<usize>(), 4);

    // Without lbd the VIP leads nowhere: the LB has no route for it.
    let err = tcp_request(topo.client(), None, SocketAddrV4::new(VIP, 80), TIMEOUT);
    assert!(err.is_err(), "the VIP answered without lbd: {err:?}");
}

#[test]
fn one_arm_routes_without_lbd() {
    let mut topo = Topology::one_arm(1).expect("topology");
    let (index, addr) = topo.add_backend().expect("second backend");
    assert_eq!((index, addr), (2, Ipv4Addr::new(10, 200, 50, 12)));
    assert_eq!(topo.lb_interfaces(), ["eth0"]);
    let b = topo.backend(2);
    let _server = udp_name_server(&b.ns, SocketAddrV4::new(b.addr, 5353), "b2").expect("server");
    let reply = udp_request(
        topo.client(),
        None,
        SocketAddrV4::new(b.addr, 5353),
        TIMEOUT,
        3,
    )
    .expect("UDP over the bridge");
    assert_eq!(reply.name, "b2");
    assert_eq!(*reply.peer.ip(), topo.client_addrs()[0]);
}

/// Every request of a batch is a flow of its own: the counters of the metrics tests count one
/// new flow per request, so no two requests may leave from the same port, as sequential sockets
/// bound to port 0 can (600 random picks among Linux's 28,232 ephemeral ports collide with a
/// probability of 99.8%; the batch stays well under the usual limit of 1,024 open files).
#[test]
fn udp_requests_leave_from_distinct_ports() {
    let topo = Topology::one_arm(1).expect("topology");
    let b = topo.backend(1);
    let _server = udp_name_server(&b.ns, SocketAddrV4::new(b.addr, 5353), "b1").expect("server");
    const COUNT: usize = 600;
    let replies = udp_requests(
        topo.client(),
        None,
        SocketAddrV4::new(b.addr, 5353),
        COUNT,
        TIMEOUT,
        3,
        Duration::from_secs(60),
    )
    .expect("client runs");
    let ports: std::collections::BTreeSet<u16> = replies
        .iter()
        .map(|r| r.as_ref().expect("answer").local.port())
        .collect();
    assert_eq!(replies.len(), COUNT);
    assert_eq!(ports.len(), COUNT, "source ports were reused");
}

#[test]
fn namespaces_are_removed_even_on_panic() {
    let names = std::sync::Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let topo = Topology::two_arm(1).expect("topology");
        let mut n = names.lock().expect("lock");
        n.push(topo.client().name().to_string());
        n.push(topo.lb().name().to_string());
        n.push(topo.backend(1).ns.name().to_string());
        drop(n);
        panic!("deliberate");
    });
    assert!(outcome.is_err());
    for name in names.lock().expect("lock").iter() {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "namespace {name} survived its guard"
        );
    }
}

#[test]
fn run_stays_in_namespace() {
    let ns = NetNs::new("t").expect("namespace");
    // Only lo exists inside: binding an address of the root namespace's interfaces would fail,
    // but loopback works and a listener made inside is reachable only from inside.
    let server = tcp_name_server(&ns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7000), "inner")
        .expect("server");
    let reply = tcp_request(&ns, None, server.addr(), TIMEOUT).expect("request inside");
    assert_eq!(reply.name, "inner");
    let out = ns.exec(&["ip", "-o", "link"]).expect("exec");
    assert_eq!(
        out.lines().count(),
        1,
        "a fresh namespace has only lo: {out}"
    );
}

#[test]
fn config_names_interfaces_and_pins() {
    let cfg = lbd_config(
        &["eth0".to_string(), "eth1".to_string()],
        "/sys/fs/bpf/xdplb-test",
        Ipv4Addr::new(10, 200, 1, 1),
    );
    assert!(cfg.contains(r#"interfaces = ["eth0", "eth1"]"#), "{cfg}");
    assert!(
        cfg.contains(r#"pin_path = "/sys/fs/bpf/xdplb-test""#),
        "{cfg}"
    );
    assert!(cfg.contains(r#"snat_address = "10.200.1.1""#), "{cfg}");
}
