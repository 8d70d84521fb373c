//! End-to-end DSR tests: L2 DSR to backends on the LB's segment, IPIP DSR to a backend behind a
//! router, switching a VIP from NAT to IPIP under an open connection, the off-link refusal, and
//! `lbctl backend-setup` itself. Backends are prepared with the real `lbctl backend-setup`.
//! Run as root: `cargo test -p xdplb-integration --test dsr -- --test-threads=1` (the decap pins
//! live in the one bpffs all namespaces share: two IPIP tests at once would collide).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use xdplb_integration::dsr::{
    backend_setup, decap_pin_dir, lbctl_in, link_packets, send_ipip, BackendSetup, CtlOutput,
    LbCounters, LineServer, RoutedTopology,
};
use xdplb_integration::{
    all_ok, count_by_name, tcp_connect, tcp_exchange, tcp_name_server, tcp_requests,
    udp_name_server, udp_requests, veth, Lbd, NetNs, Proto, Reply, ServerHandle, Topology, VIP,
};
use xdplb_testkit::xdp::attach_xdp_pass;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one batch of requests, whatever happens.
const BATCH_LIMIT: Duration = Duration::from_secs(120);
/// DSR cannot translate ports: backends listen on the VIP's port.
const PORT: u16 = 80;
/// Packets the LB may see besides the client's, and the client may send besides the VIP's, during
/// a batch: ARP and IPv6 neighbour discovery. Replies passing the LB would be hundreds.
const NOISE: u64 = 20;

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, PORT)
}

fn any_port(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)
}

/// The balancer `backend_setup_and_undo_leave_nothing` prepares its hosts for (no lbd runs).
const SOME_LB: Ipv4Addr = Ipv4Addr::new(10, 200, 99, 1);

/// `lbctl backend-setup --vip <vip> --mode ipip --dev eth0 --lb-source 10.200.99.1 <extra>...`.
fn ipip_setup_args<'a>(vip: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let base = [
        "backend-setup",
        "--vip",
        vip,
        "--mode",
        "ipip",
        "--dev",
        "eth0",
        "--lb-source",
        "10.200.99.1",
    ];
    [&base[..], extra].concat()
}

/// [`ipip_setup_args`] run in `ns` by [`lbctl_in`].
fn ipip_setup(ns: &NetNs, vip: &str, extra: &[&str]) -> anyhow::Result<CtlOutput> {
    lbctl_in(ns, &ipip_setup_args(vip, extra))
}

/// The number after the first `word` in what the last `--undo` of a VIP printed ("... (it
/// decapsulated N packets, passed N, dropped N from other outer sources and N ...)").
fn undo_count(undone: &str, word: &str) -> u64 {
    undone
        .split(&format!("{word} "))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("undo should report the decap counters ({word}):\n{undone}"))
}

fn tcp_batch(client: &NetNs, count: usize) -> Vec<Reply> {
    let results =
        tcp_requests(client, None, vip(), count, TIMEOUT, BATCH_LIMIT).expect("client runs");
    all_ok(results, count)
}

/// Every backend saw the client itself, with the client's own source port.
fn assert_real_client(replies: &[Reply]) {
    for r in replies {
        assert_eq!(
            r.peer, r.local,
            "backend {} saw {} as the client, but the client is {} (DSR keeps the client's address)",
            r.name, r.peer, r.local
        );
    }
}

/// The responses did not pass the LB: during the batch, every IPv4 packet the LB's program saw
/// was a client -> VIP packet it forwarded with `reason`, none was a reply, and the client sent
/// (about) as many packets as the LB forwarded.
fn assert_replies_bypass_lb(d: &LbCounters, reason: &str, client_tx: u64, backends_tx: u64) {
    let forwarded = d.reason(reason);
    eprintln!(
        "LB counters during the batch: {d:?}; client sent {client_tx}, backends {backends_tx}"
    );
    assert!(forwarded > 0, "nothing was forwarded with {reason}: {d:?}");
    assert_eq!(
        d.forwarded(),
        forwarded,
        "XDP_TX + XDP_REDIRECT should all be {reason}: {d:?}"
    );
    assert_eq!(d.reason("tx_nat_reply"), 0, "the LB rewrote replies: {d:?}");
    assert_eq!(d.reason("tx_nat_forward"), 0, "the LB NATed packets: {d:?}");
    let ipv4_seen = d.seen() - d.reason("pass_not_ip");
    assert_eq!(
        ipv4_seen, forwarded,
        "the LB saw IPv4 packets other than the client's VIP packets (replies?): {d:?}"
    );
    assert!(
        client_tx >= forwarded && client_tx <= forwarded + NOISE,
        "the client sent {client_tx} packets, the LB forwarded {forwarded}: {d:?}"
    );
    assert!(
        backends_tx > forwarded / 2,
        "the backends sent only {backends_tx} packets (the replies), the LB forwarded {forwarded}"
    );
}

/// L2 DSR, one-arm: three backends on the LB's segment, prepared with `backend-setup --mode
/// l2dsr`; 200 connections spread over them; each saw the real client; replies bypass the LB.
#[test]
fn l2dsr_on_the_lb_segment() {
    let topo = Topology::one_arm(3).expect("topology");
    let setups: Vec<BackendSetup> = topo
        .backends()
        .iter()
        .map(|b| {
            backend_setup(&b.ns, VIP, "l2dsr", "eth0", topo.snat_addr())
                .expect("lbctl backend-setup")
        })
        .collect();
    for s in &setups {
        assert!(
            s.output.contains("added 10.200.100.1/32 to lo"),
            "{}",
            s.output
        );
        assert!(s.output.contains("arp_ignore"), "{}", s.output);
        assert!(
            !s.output.contains("decap"),
            "l2dsr needs no decap: {}",
            s.output
        );
    }
    let servers: Vec<ServerHandle> = topo
        .backends()
        .iter()
        .map(|b| tcp_name_server(&b.ns, any_port(PORT), &format!("b{}", b.index)).expect("server"))
        .collect();
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    lbd.add_vip_with(vip(), Proto::Tcp, &["--mode", "l2dsr"])
        .expect("lbctl vip add --mode l2dsr");
    for b in topo.backends() {
        lbd.add_backend(vip(), Proto::Tcp, SocketAddrV4::new(b.addr, PORT))
            .expect("lbctl add-backend (on-link)");
    }

    // Packets sent by the client and by all the backends together.
    let sent = || {
        let (_, client) = link_packets(topo.client(), "eth0").expect("client counters");
        let backends: u64 = topo
            .backends()
            .iter()
            .map(|b| link_packets(&b.ns, "eth0").expect("backend counters").1)
            .sum();
        (client, backends)
    };
    let before = LbCounters::read(&lbd).expect("stats");
    let (client_tx0, backends_tx0) = sent();
    let replies = tcp_batch(topo.client(), 200);
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    let (client_tx1, backends_tx1) = sent();

    let counts = count_by_name(&replies);
    for name in ["b1", "b2", "b3"] {
        let n = counts.get(name).copied().unwrap_or(0);
        assert!(
            (30..=110).contains(&n),
            "{name} got {n} of 200 connections: {counts:?}"
        );
    }
    assert_real_client(&replies);
    let served: usize = servers.iter().map(ServerHandle::served).sum();
    assert_eq!(served, 200, "backends' own count of served connections");
    for s in &servers {
        for peer in s.peers() {
            assert_eq!(
                peer.ip(),
                std::net::IpAddr::V4(topo.client_addrs()[0]),
                "{} saw a peer that is not the client",
                s.name()
            );
        }
    }
    assert_replies_bypass_lb(
        &d,
        "tx_l2dsr",
        client_tx1 - client_tx0,
        backends_tx1 - backends_tx0,
    );

    // UDP takes the same way: a second VIP port on the same prepared address. A UDP server
    // bound to 0.0.0.0 would answer from its interface address (the client's connected socket
    // drops that): DSR UDP servers bind the VIP, or answer with IP_PKTINFO.
    let udp_vip = SocketAddrV4::new(VIP, 53);
    let udp_servers: Vec<ServerHandle> = topo
        .backends()
        .iter()
        .map(|b| udp_name_server(&b.ns, udp_vip, &format!("u{}", b.index)).expect("server"))
        .collect();
    lbd.add_vip_with(udp_vip, Proto::Udp, &["--mode", "l2dsr"])
        .expect("lbctl vip add udp --mode l2dsr");
    for b in topo.backends() {
        lbd.add_backend(udp_vip, Proto::Udp, SocketAddrV4::new(b.addr, 53))
            .expect("lbctl add-backend udp");
    }
    let results = udp_requests(topo.client(), None, udp_vip, 60, TIMEOUT, 3, BATCH_LIMIT)
        .expect("client runs");
    let replies = all_ok(results, 60);
    assert_real_client(&replies);
    assert!(
        count_by_name(&replies).len() >= 2,
        "UDP flows should spread: {:?}",
        count_by_name(&replies)
    );
    let stats = LbCounters::read(&lbd).expect("stats");
    assert_eq!(stats.reason("tx_nat_reply"), 0, "{stats:?}");
    drop(udp_servers);
    drop(servers);
    drop(lbd);
    drop(setups);
}

/// IPIP DSR to a backend in another subnet, behind a router: connections work, the server sees
/// the real client, the replies go backend -> router -> client, and the decap program counted.
#[test]
fn ipip_to_a_backend_behind_a_router() {
    let topo = RoutedTopology::build().expect("topology");
    let setup = backend_setup(topo.backend(), VIP, "ipip", "eth0", RoutedTopology::LB_ADDR)
        .expect("lbctl backend-setup");
    for want in [
        "attached the IPIP decap program to eth0",
        "added to the decap program's VIPs on eth0",
        "added 10.200.100.1/32 to lo",
        "net.ipv4.conf.eth0.rp_filter",
    ] {
        assert!(
            setup.output.contains(want),
            "missing {want:?} in:\n{}",
            setup.output
        );
    }
    let server = tcp_name_server(topo.backend(), any_port(PORT), "b1").expect("server");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    lbd.add_vip_with(vip(), Proto::Tcp, &["--mode", "ipip"])
        .expect("lbctl vip add --mode ipip");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    lbd.add_backend(vip(), Proto::Tcp, backend)
        .expect("lbctl add-backend (behind the router)");

    let before = LbCounters::read(&lbd).expect("stats");
    let (_, client_tx0) = link_packets(topo.client(), "eth0").expect("client counters");
    let (_, backend_tx0) = link_packets(topo.backend(), "eth0").expect("backend counters");
    let (router_fwd0, _) = link_packets(topo.router(), "eth1").expect("router counters");
    let replies = tcp_batch(topo.client(), 100);
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    let (_, client_tx1) = link_packets(topo.client(), "eth0").expect("client counters");
    let (_, backend_tx1) = link_packets(topo.backend(), "eth0").expect("backend counters");
    let (router_fwd1, _) = link_packets(topo.router(), "eth1").expect("router counters");

    assert!(replies.iter().all(|r| r.name == "b1"), "{replies:?}");
    assert_real_client(&replies);
    assert_eq!(server.served(), 100);
    assert_replies_bypass_lb(
        &d,
        "tx_ipip",
        client_tx1 - client_tx0,
        backend_tx1 - backend_tx0,
    );
    // The replies went through the router: it received them from the backend.
    assert!(
        router_fwd1 - router_fwd0 >= backend_tx1 - backend_tx0,
        "the router did not carry the backend's replies"
    );

    drop(server);
    drop(lbd);
    let undone = setup.undo().expect("lbctl backend-setup --undo");
    let decapsulated = undo_count(&undone, "decapsulated");
    assert!(
        decapsulated >= d.reason("tx_ipip"),
        "the decap program decapsulated {decapsulated} packets, the LB encapsulated {}",
        d.reason("tx_ipip")
    );
    assert!(!decap_pin_dir("eth0").exists(), "undo left pins behind");
}

/// Where the forged packets of [`ipip_from_another_host_is_not_delivered`] claim to come from.
const FORGED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A UDP datagram FORGED:`port` -> VIP:PORT (checksums right), as an IP packet.
fn forged_datagram(port: u16) -> Vec<u8> {
    use xdplb_testkit::packet::Packet;
    Packet::udp(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        SocketAddrV4::new(FORGED, port),
        vip(),
    )
    .with_payload(b"forged\n")
    .ip_bytes()
}

/// IPIP to the VIP from a host other than the balancer (the client's namespace, which reaches
/// the backend through the router, never through the LB) is dropped by the decap program: the
/// backend's server never sees it. The same packet sent from the balancer's address (its `[ipip]
/// source`, the backend's `--lb-source`) is delivered, and so is the clients' real traffic
/// through the balancer.
#[test]
fn ipip_from_another_host_is_not_delivered() {
    let topo = RoutedTopology::build().expect("topology");
    let setup = backend_setup(topo.backend(), VIP, "ipip", "eth0", RoutedTopology::LB_ADDR)
        .expect("lbctl backend-setup");
    assert!(
        setup
            .output
            .contains("IPIP to 10.200.100.1 on eth0 is decapsulated only from 10.200.60.1/32"),
        "{}",
        setup.output
    );
    // Bound to the VIP (on lo), so that its answers come from the VIP.
    let server = udp_name_server(topo.backend(), vip(), "b1").expect("server");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    lbd.add_vip_with(vip(), Proto::Udp, &["--mode", "ipip"])
        .expect("lbctl vip add --mode ipip");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    lbd.add_backend(vip(), Proto::Udp, backend)
        .expect("lbctl add-backend");
    // The other host goes to the backend's subnet through the router, not through the LB.
    topo.client()
        .ip(&["route", "add", "10.200.61.0/24", "via", "10.200.60.254"])
        .expect("route");

    const FORGERIES: u16 = 5;
    for i in 0..FORGERIES {
        send_ipip(
            topo.client(),
            RoutedTopology::BACKEND_ADDR,
            &forged_datagram(7100 + i),
        )
        .expect("IPIP from the client's namespace");
        send_ipip(
            topo.lb(),
            RoutedTopology::BACKEND_ADDR,
            &forged_datagram(7200 + i),
        )
        .expect("IPIP from the balancer's namespace");
    }
    let results =
        udp_requests(topo.client(), None, vip(), 20, TIMEOUT, 3, BATCH_LIMIT).expect("client runs");
    let replies = all_ok(results, 20);
    assert!(replies.iter().all(|r| r.name == "b1"), "{replies:?}");
    assert_real_client(&replies);

    // The balancer's forgeries arrive (bounded wait), the other host's never.
    let from_lb = |server: &ServerHandle| {
        server
            .peers()
            .iter()
            .filter(|p| p.ip() == FORGED && (7200..7200 + FORGERIES).contains(&p.port()))
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while from_lb(&server) < usize::from(FORGERIES) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let peers = server.peers();
    assert_eq!(
        from_lb(&server),
        usize::from(FORGERIES),
        "IPIP from the balancer's address did not all arrive: {peers:?}"
    );
    let strays: Vec<_> = peers
        .iter()
        .filter(|p| p.ip() == FORGED && (7100..7100 + FORGERIES).contains(&p.port()))
        .collect();
    assert!(
        strays.is_empty(),
        "IPIP from a host other than the balancer reached the server: {strays:?}"
    );

    drop(server);
    drop(lbd);
    let undone = setup.undo().expect("lbctl backend-setup --undo");
    let dropped = undo_count(&undone, "dropped");
    assert!(
        dropped >= u64::from(FORGERIES),
        "the decap program dropped {dropped} packets from other outer sources, expected at least {FORGERIES}"
    );
}

/// A VIP switched from nat to ipip under an open connection: that connection goes on in NAT (the
/// backend keeps seeing the SNAT address on it), new connections go by IPIP (the backend sees
/// the client). The same backend server (0.0.0.0:80) answers both.
#[test]
fn nat_to_ipip_switch_keeps_open_connection() {
    let topo = RoutedTopology::build().expect("topology");
    let setup = backend_setup(topo.backend(), VIP, "ipip", "eth0", RoutedTopology::LB_ADDR)
        .expect("lbctl backend-setup");
    let server = LineServer::start(topo.backend(), any_port(PORT), "b1").expect("server");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    lbd.add_vip(vip(), Proto::Tcp).expect("lbctl vip add (nat)");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    lbd.add_backend(vip(), Proto::Tcp, backend)
        .expect("lbctl add-backend");
    let snat = RoutedTopology::LB_ADDR;

    // NAT: the backend answers the SNAT address.
    for r in tcp_batch(topo.client(), 10) {
        assert!(
            *r.peer.ip() == snat && (20000..=29999).contains(&r.peer.port()),
            "under NAT the backend should see {snat}:20000-29999, saw {}",
            r.peer
        );
    }
    let open =
        tcp_connect(topo.client(), None, vip(), TIMEOUT).expect("connection before the switch");
    let first = tcp_exchange(&open, "before").expect("answer before the switch");
    assert_eq!(*first.peer.ip(), snat, "{first:?}");

    let before = LbCounters::read(&lbd).expect("stats");
    let said = lbd
        .set_vip_mode(vip(), Proto::Tcp, "ipip")
        .expect("lbctl vip set-mode");
    assert_eq!(
        said.trim(),
        "vip 10.200.100.1:80/tcp now uses ipip for new flows (tracked flows keep their mode)"
    );
    let list = lbd.ctl_json(&["vip", "list"]).expect("vip list");
    assert_eq!(list["vips"][0]["mode"], "ipip", "{list}");

    // The open connection carries on, still NATed (same SNAT address and port).
    for i in 0..5 {
        let r = tcp_exchange(&open, &format!("after {i}")).expect("answer on the open connection");
        assert_eq!(
            r.peer, first.peer,
            "the open connection changed its path: {r:?}"
        );
    }
    let during = LbCounters::read(&lbd).expect("stats").since(&before);
    assert!(
        during.reason("tx_nat_forward") >= 5 && during.reason("tx_nat_reply") >= 5,
        "the open connection should have stayed in NAT: {during:?}"
    );
    assert_eq!(during.reason("tx_ipip"), 0, "{during:?}");

    // New connections go by IPIP: the backend sees the client itself.
    let replies = tcp_batch(topo.client(), 20);
    assert_real_client(&replies);
    let after = LbCounters::read(&lbd).expect("stats").since(&before);
    assert!(
        after.reason("tx_ipip") >= 20 * 3,
        "new flows should use IPIP: {after:?}"
    );

    // And the old connection still works after the new ones.
    let last = tcp_exchange(&open, "last").expect("answer on the open connection at the end");
    assert_eq!(last.peer, first.peer);
    assert_eq!(server.answered(), 10 + 1 + 5 + 20 + 1);
    drop(open);
    drop(server);
    drop(lbd);
    drop(setup);
}

/// L2 DSR to a backend that is not on a directly connected subnet is refused (adding it, or
/// switching a VIP that has it to l2dsr), with a clear error and no change.
#[test]
fn offlink_l2dsr_backend_is_refused() {
    let topo = RoutedTopology::build().expect("topology");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    lbd.add_vip_with(vip(), Proto::Tcp, &["--mode", "l2dsr"])
        .expect("lbctl vip add --mode l2dsr");
    let other = SocketAddrV4::new(Ipv4Addr::new(10, 200, 100, 2), PORT);
    lbd.add_vip(other, Proto::Tcp).expect("lbctl vip add (nat)");
    lbd.add_backend(other, Proto::Tcp, backend)
        .expect("a routed backend is fine under NAT");
    let state = |lbd: &Lbd| {
        (
            lbd.ctl_json(&["vip", "list"]).expect("vip list"),
            lbd.ctl_json(&[
                "backend",
                "list",
                "--vip",
                &vip().to_string(),
                "--proto",
                "tcp",
            ])
            .expect("backend list"),
        )
    };
    let before = state(&lbd);

    let err = lbd
        .add_backend(vip(), Proto::Tcp, backend)
        .expect_err("an off-link L2 DSR backend must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("exit status: 1"), "lbctl should exit 1: {msg}");
    assert!(msg.contains("not on a directly connected subnet"), "{msg}");
    assert!(
        msg.contains("10.200.61.2"),
        "the error should name the backend: {msg}"
    );

    let err = lbd
        .set_vip_mode(other, Proto::Tcp, "l2dsr")
        .expect_err("switching a VIP with an off-link backend to l2dsr must be refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("exit status: 1"), "lbctl should exit 1: {msg}");
    assert!(msg.contains("not on a directly connected subnet"), "{msg}");

    assert_eq!(state(&lbd), before, "refused requests changed the state");
}

/// `backend-setup` is idempotent, shares the decap program between VIPs, and `--undo` leaves no
/// pins, no program and no VIP on lo; it refuses `ip netns exec` (pins would vanish) and another
/// namespace's pins.
#[test]
fn backend_setup_and_undo_leave_nothing() {
    let host = NetNs::new("host").expect("namespace");
    let peer = NetNs::new("peer").expect("namespace");
    veth(&host, "eth0", &peer, "eth0").expect("veth");
    let vip2 = Ipv4Addr::new(10, 200, 100, 2);
    let pins = decap_pin_dir("eth0");
    let lo_addrs = |ns: &NetNs| {
        ns.ip(&["-4", "addr", "show", "dev", "lo"])
            .expect("ip addr")
    };
    let has_xdp = |ns: &NetNs| {
        ns.ip(&["link", "show", "dev", "eth0"])
            .expect("ip link")
            .contains("xdp")
    };

    let first = backend_setup(&host, VIP, "ipip", "eth0", SOME_LB).expect("setup");
    assert!(
        pins.join("link").exists()
            && pins.join("decap_vips").exists()
            && pins.join("decap_stats").exists()
            && pins.join("decap_sources").exists()
    );
    assert!(
        first.output.contains(
            "IPIP to 10.200.100.1 on eth0 is decapsulated only from 10.200.99.1/32 (added 10.200.99.1/32)"
        ),
        "{}",
        first.output
    );
    assert!(has_xdp(&host), "no XDP program on eth0");
    assert!(lo_addrs(&host).contains("10.200.100.1/32"));
    for (key, want) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        for scope in ["all", "eth0", "lo"] {
            let got = host
                .exec(&["sysctl", "-n", &format!("net.ipv4.conf.{scope}.{key}")])
                .expect("sysctl");
            assert_eq!(got.trim(), want, "{scope}.{key}");
        }
    }
    let got = host
        .exec(&["sysctl", "-n", "net.ipv4.conf.eth0.rp_filter"])
        .expect("sysctl");
    assert_eq!(got.trim(), "2");

    // Again: nothing changes, and it says so.
    let mut again = backend_setup(&host, VIP, "ipip", "eth0", SOME_LB).expect("setup again");
    for want in [
        "is already attached to eth0",
        "is already one of",
        "is already on lo",
        "is already 1",
        "only from 10.200.99.1/32 (already so)",
    ] {
        assert!(
            again.output.contains(want),
            "missing {want:?} in:\n{}",
            again.output
        );
    }
    assert!(!again.output.contains("set net."), "{}", again.output);
    // The first guard undoes this VIP.
    again.disarm();

    // A setup makes the VIP's prefixes exactly those given, and --json shows them.
    let out = ipip_setup(
        &host,
        "10.200.100.1",
        &["--lb-source", "10.200.98.0/28", "--json"],
    )
    .expect("lbctl runs");
    assert!(out.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(
        doc["lb_sources"],
        serde_json::json!(["10.200.98.0/28", "10.200.99.1/32"]),
        "{doc}"
    );
    let out = ipip_setup(&host, "10.200.100.1", &[]).expect("lbctl runs");
    assert!(
        out.stdout
            .contains("only from 10.200.99.1/32 (removed 10.200.98.0/28)"),
        "{out:?}"
    );
    // Refused before anything runs: no --lb-source, a bad one; nothing changes.
    let bare = [
        "backend-setup",
        "--vip",
        "10.200.100.1",
        "--mode",
        "ipip",
        "--dev",
        "eth0",
    ];
    for (extra, want) in [
        (
            &[][..],
            "invalid --lb-source '': expected at least one with --mode ipip",
        ),
        (
            &["--lb-source", "10.200.98.1/28"][..],
            "invalid --lb-source '10.200.98.1/28'",
        ),
        (
            &["--lb-source", "0.0.0.0/0"][..],
            "invalid --lb-source '0.0.0.0/0'",
        ),
    ] {
        let out = lbctl_in(&host, &[&bare[..], extra].concat()).expect("lbctl runs");
        assert_eq!(out.code, Some(2), "{out:?}");
        assert!(out.stderr.contains(want), "{want}: {out:?}");
    }
    let out = ipip_setup(&host, "10.200.100.1", &["--json"]).expect("lbctl runs");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("one JSON document");
    assert_eq!(
        doc["lb_sources"],
        serde_json::json!(["10.200.99.1/32"]),
        "{doc}"
    );

    // A second VIP shares the program.
    let second = backend_setup(&host, vip2, "ipip", "eth0", SOME_LB).expect("second VIP");
    assert!(second.output.contains("(2 in all)"), "{}", second.output);

    // Another namespace's eth0 may not take over these pins.
    let out = ipip_setup(&peer, "10.200.100.3", &[]).expect("lbctl runs");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("another network namespace"), "{out:?}");
    // `ip netns exec` would pin into a bpffs that dies with lbctl: refused.
    let lbctl = xdplb_integration::procs::bin_dir()
        .expect("bin dir")
        .join("lbctl");
    let lbctl = lbctl.to_str().expect("utf-8 path");
    let err = host
        .exec(&[&[lbctl][..], &ipip_setup_args("10.200.100.4", &[])].concat())
        .expect_err("ip netns exec must be refused for ipip");
    assert!(format!("{err:#}").contains("nsenter"), "{err:#}");

    // Refused setups changed nothing.
    assert!(
        !lo_addrs(&peer).contains("10.200.100.3"),
        "{}",
        lo_addrs(&peer)
    );
    assert!(
        !lo_addrs(&host).contains("10.200.100.4"),
        "{}",
        lo_addrs(&host)
    );

    let undone = first.undo().expect("undo the first VIP");
    assert!(undone.contains("stays on eth0 for 1 other VIP"), "{undone}");
    assert!(
        pins.join("link").exists() && has_xdp(&host),
        "the second VIP still needs decap"
    );
    assert!(!lo_addrs(&host).contains("10.200.100.1/"));
    assert!(lo_addrs(&host).contains("10.200.100.2/32"));

    let undone = second.undo().expect("undo the second VIP");
    assert!(
        undone.contains("no VIP left: detached the decap program from eth0"),
        "{undone}"
    );
    assert!(undone.contains("left the sysctls as they are"), "{undone}");
    assert!(!pins.exists(), "pins left behind: {}", pins.display());
    assert!(!has_xdp(&host), "the decap program is still attached");
    assert!(
        !lo_addrs(&host).contains("10.200.100."),
        "{}",
        lo_addrs(&host)
    );

    // Undoing again is harmless.
    let out = ipip_setup(&host, "10.200.100.1", &["--undo"]).expect("lbctl runs");
    assert!(out.success(), "{out:?}");
    assert!(out.stdout.contains("no decap program is pinned"), "{out:?}");

    // L2 DSR: only the VIP on lo, no pins; undo removes it.
    let l2 = backend_setup(&host, VIP, "l2dsr", "eth0", SOME_LB).expect("l2dsr setup");
    assert!(!pins.exists(), "l2dsr made pins");
    assert!(lo_addrs(&host).contains("10.200.100.1/32"));
    l2.undo().expect("l2dsr undo");
    assert!(!lo_addrs(&host).contains("10.200.100.1/"));

    // An interface with another XDP program is refused before anything changes.
    attach_xdp_pass(&peer, "eth0").expect("XDP_PASS on the peer");
    let out = ipip_setup(&peer, "10.200.100.5", &[]).expect("lbctl runs");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("another XDP program is already attached to eth0"),
        "{out:?}"
    );
    assert!(!pins.exists(), "a refused setup made pins");
    assert!(
        !lo_addrs(&peer).contains("10.200.100.5"),
        "{}",
        lo_addrs(&peer)
    );
}
