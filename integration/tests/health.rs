//! Health checks and draining, end to end: lbd probes the backends from the LB's namespace, a
//! backend whose server dies leaves the Maglev table within `interval x fall` and comes back after
//! `rise` good probes; every-backend-down follows the VIP's policy (drop or fail-open); a drained
//! backend keeps its open connections while new ones go elsewhere, and `backend list` counts its
//! flows down to zero. NAT in both topologies; L2 DSR and IPIP on the LB's segment (checks and
//! drains), IPIP behind a router (`--all-down drop`).
//! Run as root: `cargo test -p xdplb-integration --test health -- --test-threads=1`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xdplb_integration::dsr::{backend_setup, LbCounters, LineServer, ModeTopology, RoutedTopology};
use xdplb_integration::procs::{
    health_flags, HEALTH_FALL as FALL, HEALTH_INTERVAL as INTERVAL, HEALTH_RISE as RISE,
    HEALTH_TIMEOUT as PROBE_TIMEOUT,
};
use xdplb_integration::server::{tcp_server, Stoppable};
use xdplb_integration::topology::Backend;
use xdplb_integration::{
    all_ok, count_by_name, tcp_connect, tcp_exchange, tcp_name_server, tcp_request, tcp_requests,
    udp_name_server, udp_requests, Lbd, NetNs, Proto, ServerHandle, Topology, VIP,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one batch of requests, whatever happens.
const BATCH_LIMIT: Duration = Duration::from_secs(60);
/// On top of the bound the check promises: the checker's 50 ms tick, the reconcile, and lbctl
/// starting up for every poll.
const SLACK: Duration = Duration::from_millis(1200);
/// How long a state may take to show at all before a test gives up.
const WAIT_LIMIT: Duration = Duration::from_secs(15);
const NAT_PORT: u16 = 8080;

fn vip_tcp() -> SocketAddrV4 {
    TCP80.0
}

/// The TCP VIP of most tests.
const TCP80: (SocketAddrV4, Proto) = (SocketAddrV4::new(VIP, 80), Proto::Tcp);

fn vip_add(lbd: &Lbd, vip: SocketAddrV4, proto: Proto, mode: &str, health: &[&str]) {
    lbd.add_vip_with(vip, proto, &[&["--mode", mode], health].concat())
        .expect("lbctl vip add");
}

/// The LB's namespace of `topo` and the lbd configuration for it.
fn lab(topo: &Topology) -> (&NetNs, String) {
    (topo.lb(), topo.lbd_config())
}

/// lbd started in `lb` with `config`, serving `vip` (in `mode`, checked by `health`) with
/// `addrs` as its backends.
fn lbd_serving(
    (lb, config): (&NetNs, String),
    (vip, proto): (SocketAddrV4, Proto),
    mode: &str,
    health: &[&str],
    addrs: &[SocketAddrV4],
) -> Lbd {
    let lbd = Lbd::start(lb, &config).expect("lbd starts");
    vip_add(&lbd, vip, proto, mode, health);
    for a in addrs {
        lbd.add_backend(vip, proto, *a).expect("add backend");
    }
    lbd
}

/// `lbctl backend <verb> --vip <vip> --proto <proto> [backend]`.
fn backend_cmd(
    lbd: &Lbd,
    verb: &str,
    (vip, proto): (SocketAddrV4, Proto),
    backend: Option<SocketAddrV4>,
    json: bool,
) -> Result<String> {
    let (vip, proto) = (vip.to_string(), proto.to_string());
    let backend = backend.map(|b| b.to_string());
    let mut args = vec!["backend", verb, "--vip", &vip, "--proto", &proto];
    args.extend(backend.as_deref());
    if json {
        args.insert(0, "--json");
    }
    lbd.ctl(&args)
}

/// One row of `lbctl --json backend list`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    weight: u64,
    health: String,
    flows: u64,
    drained_from: Option<u64>,
}

fn backends(lbd: &Lbd, vip: SocketAddrV4, proto: Proto) -> Result<BTreeMap<SocketAddrV4, Row>> {
    let out = backend_cmd(lbd, "list", (vip, proto), None, true)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).context("backend list printed no JSON")?;
    let mut rows = BTreeMap::new();
    for b in v["backends"].as_array().context("no backends array")? {
        let ip: Ipv4Addr = b["address"].as_str().context("address")?.parse()?;
        let port = u16::try_from(b["port"].as_u64().context("port")?)?;
        rows.insert(
            SocketAddrV4::new(ip, port),
            Row {
                weight: b["weight"].as_u64().context("weight")?,
                health: b["health"].as_str().context("health")?.to_string(),
                flows: b["tracked_flows"].as_u64().context("tracked_flows")?,
                drained_from: b["drained_from"].as_u64(),
            },
        );
    }
    Ok(rows)
}

/// Polls `backend list` until `done` holds; returns how long that took. Panics after `limit`,
/// showing the last listing and lbd's log.
fn wait_for(
    lbd: &Lbd,
    vip: SocketAddrV4,
    proto: Proto,
    what: &str,
    limit: Duration,
    done: impl Fn(&BTreeMap<SocketAddrV4, Row>) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        match backends(lbd, vip, proto) {
            Ok(rows) if done(&rows) => return start.elapsed(),
            Ok(rows) => last = Some(rows),
            Err(e) => eprintln!("backend list: {e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what}: not within {limit:?}; last backend list: {last:#?}\nlbd log:\n{}",
        lbd.log_text()
    );
}

/// The two-arm topology with two backends, their NAT addresses, and `start(backend, address)`
/// run for each (its server).
fn two_backends<T>(
    start: impl Fn(&Backend, SocketAddrV4) -> Result<T>,
) -> (Topology, Vec<SocketAddrV4>, Vec<T>) {
    let topo = Topology::two_arm(2).expect("topology");
    let addrs = topo.backend_addrs(NAT_PORT);
    let servers = topo
        .on_each_backend(|b| start(b, SocketAddrV4::new(b.addr, NAT_PORT)))
        .expect("servers");
    (topo, addrs, servers)
}

fn health_of(rows: &BTreeMap<SocketAddrV4, Row>, be: SocketAddrV4) -> &str {
    rows.get(&be).map_or("<missing>", |r| r.health.as_str())
}

fn tcp_batch(client: &NetNs, vip: SocketAddrV4, count: usize) -> BTreeMap<String, usize> {
    let results =
        tcp_requests(client, None, vip, count, TIMEOUT, BATCH_LIMIT).expect("client runs");
    count_by_name(&all_ok(results, count))
}

/// The bound a check promises for taking a dead backend out: `fall` probes, one interval apart,
/// the last of which may take the whole timeout.
fn down_bound() -> Duration {
    INTERVAL * FALL + PROBE_TIMEOUT + SLACK
}

fn up_bound() -> Duration {
    INTERVAL * RISE + PROBE_TIMEOUT + SLACK
}

/// [`wait_for`] `done` with [`WAIT_LIMIT`], and checks that it took no longer than `bound` (what
/// the check promises); returns how long it took.
fn within(
    lbd: &Lbd,
    (vip, proto): (SocketAddrV4, Proto),
    what: &str,
    bound: Duration,
    done: impl Fn(&BTreeMap<SocketAddrV4, Row>) -> bool,
) -> Duration {
    let took = wait_for(lbd, vip, proto, what, WAIT_LIMIT, done);
    assert!(
        took <= bound,
        "{what} after {took:?}, the bound is {bound:?}"
    );
    took
}

/// Kills the server of backend `victim` (`servers[victim]`), checks that it is marked down within
/// the bound and gets no new connection while the others answer every one; restarts it with
/// `restart` and checks that it comes back within `rise` probes and gets connections again.
fn kill_and_restart(
    lbd: &Lbd,
    topo: &Topology,
    servers: &mut [Option<ServerHandle>],
    addrs: &[SocketAddrV4],
    victim: usize,
    restart: impl Fn() -> ServerHandle,
) {
    let (client, vip) = (topo.client(), vip_tcp());
    let before = tcp_batch(client, vip, 90);
    assert_eq!(
        before.len(),
        addrs.len(),
        "every backend answers at first: {before:?}"
    );
    let name = servers[victim]
        .as_ref()
        .map(|s| s.name().to_string())
        .expect("victim runs");
    let be = addrs[victim];

    servers[victim] = None; // the server stops listening: probes are refused
    let what = format!("{be} marked down");
    let took = within(lbd, (vip, Proto::Tcp), &what, down_bound(), |rows| {
        health_of(rows, be) == "down"
    });
    eprintln!("{be} marked down {took:?} after its server stopped");
    let rows = backends(lbd, vip, Proto::Tcp).expect("backend list");
    for (addr, row) in &rows {
        if *addr != be {
            assert_eq!(row.health, "up", "{addr}: {rows:?}");
        }
    }

    let during = tcp_batch(client, vip, 90);
    assert_eq!(
        during.get(&name),
        None,
        "{name} got connections while down: {during:?}"
    );
    assert_eq!(
        during.len(),
        addrs.len() - 1,
        "the others all answer: {during:?}"
    );

    servers[victim] = Some(restart());
    let what = format!("{be} back up");
    let took = within(lbd, (vip, Proto::Tcp), &what, up_bound(), |rows| {
        health_of(rows, be) == "up"
    });
    eprintln!("{be} back up {took:?} after its server returned");
    let after = tcp_batch(client, vip, 90);
    assert!(
        after.get(&name).is_some_and(|n| *n > 0),
        "{name} gets connections again: {after:?}"
    );

    let log = lbd.log_text();
    assert!(
        log.contains("backend health changed: out of the Maglev table")
            && log.contains(&be.to_string()),
        "the down transition is logged:\n{log}"
    );
    assert!(
        log.contains("backend health changed: back in the Maglev table"),
        "the up transition is logged:\n{log}"
    );
}

/// NAT, two-arm: TCP checks on three backends; one dies and returns.
#[test]
fn nat_tcp_check_takes_a_dead_backend_out_and_back() {
    let topo = Topology::two_arm(3).expect("topology");
    let addrs: Vec<SocketAddrV4> = topo.backend_addrs(NAT_PORT);
    let mut servers: Vec<Option<ServerHandle>> = topo
        .stoppable_name_servers(addrs[0].port(), tcp_name_server)
        .expect("servers");
    let lbd = lbd_serving(lab(&topo), TCP80, "nat", &health_flags("tcp", &[]), &addrs);
    let list = lbd.ctl(&["vip", "list"]).expect("vip list");
    assert!(
        list.contains("tcp 200ms/100ms rise 2 fall 3 fail-open"),
        "{list}"
    );

    let b2 = &topo.backend(2).ns;
    let restart = || tcp_name_server(b2, addrs[1], "b2").expect("server restarts");
    kill_and_restart(&lbd, &topo, &mut servers, &addrs, 1, restart);
    drop(servers);
}

/// DSR, one-arm: the same with backends prepared by `backend-setup` for `mode` (the probes go
/// to the backends' own addresses, not the VIP; for IPIP they are not encapsulated).
fn dsr_check_takes_a_dead_backend_out_and_back(mode: &str) {
    let net = ModeTopology::one_arm(mode, 3).expect("topology");
    let topo = &net.topo;
    let any80 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80);
    let addrs: Vec<SocketAddrV4> = (1..=3).map(|i| net.backend_addr(i, 80)).collect();
    let mut servers = topo
        .on_each_backend(|b| tcp_name_server(&b.ns, any80, &b.name()).map(Some))
        .expect("servers");
    let lbd = lbd_serving(lab(topo), TCP80, mode, &health_flags("tcp", &[]), &addrs);
    let before = LbCounters::read(&lbd).expect("stats");
    let b3 = &topo.backend(3).ns;
    let restart = || tcp_name_server(b3, any80, "b3").expect("server restarts");
    kill_and_restart(&lbd, topo, &mut servers, &addrs, 2, restart);
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    let reason = format!("tx_{mode}");
    assert!(d.reason(&reason) > 0, "nothing went by {mode}: {d:?}");
    assert_eq!(d.reason("tx_nat_forward"), 0, "{d:?}");
    drop(servers);
    drop(lbd);
    drop(net);
}

#[test]
fn l2dsr_tcp_check_takes_a_dead_backend_out_and_back() {
    dsr_check_takes_a_dead_backend_out_and_back("l2dsr");
}

#[test]
fn ipip_tcp_check_takes_a_dead_backend_out_and_back() {
    dsr_check_takes_a_dead_backend_out_and_back("ipip");
}

/// IPIP DSR to the one backend behind a router, with `--all-down drop`: while its server is
/// down, new connections are dropped by the LB (no Maglev table); when it returns, they work.
#[test]
fn ipip_check_behind_a_router_with_drop() {
    let topo = RoutedTopology::build().expect("topology");
    let setup = backend_setup(topo.backend(), VIP, "ipip", "eth0", RoutedTopology::LB_ADDR)
        .expect("lbctl backend-setup");
    let any80 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80);
    let server = tcp_name_server(topo.backend(), any80, "b1").expect("server");
    let be = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, 80);
    let check = health_flags("tcp", &["--all-down", "drop"]);
    let routed = (topo.lb(), topo.lbd_config());
    let lbd = lbd_serving(routed, TCP80, "ipip", &check, &[be]);
    // Up after `rise` probes through the router (not just "never probed").
    std::thread::sleep(INTERVAL * (RISE + 1));
    assert_eq!(tcp_batch(topo.client(), vip_tcp(), 20).get("b1"), Some(&20));

    drop(server);
    within(&lbd, TCP80, "backend marked down", down_bound(), |rows| {
        health_of(rows, be) == "down"
    });
    let before = LbCounters::read(&lbd).expect("stats");
    let refused = tcp_request(topo.client(), None, vip_tcp(), Duration::from_millis(500));
    assert!(
        refused.is_err(),
        "a connection got through with every backend down and drop: {refused:?}"
    );
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    assert!(
        d.reason("drop_no_backend") > 0,
        "the LB dropped the SYNs as no backend: {d:?}"
    );

    let _server = tcp_name_server(topo.backend(), any80, "b1").expect("server restarts");
    within(&lbd, TCP80, "backend back up", up_bound(), |rows| {
        health_of(rows, be) == "up"
    });
    assert_eq!(tcp_batch(topo.client(), vip_tcp(), 20).get("b1"), Some(&20));
    drop(lbd);
    drop(setup);
}

/// The two-arm topology with a UDP name server on port 5353 of each backend, for VIP :53.
fn udp_lab() -> (
    Topology,
    SocketAddrV4,
    Vec<SocketAddrV4>,
    Vec<Option<ServerHandle>>,
) {
    let topo = Topology::two_arm(2).expect("topology");
    let addrs: Vec<SocketAddrV4> = topo.backend_addrs(5353);
    let servers = topo
        .stoppable_name_servers(addrs[0].port(), udp_name_server)
        .expect("servers");
    (topo, SocketAddrV4::new(VIP, 53), addrs, servers)
}

/// UDP checks (send a payload, expect a reply): a dead UDP server is taken out, and back.
#[test]
fn nat_udp_check() {
    let (topo, vip, addrs, mut servers) = udp_lab();
    let udp = health_flags("udp", &[]);
    let lbd = lbd_serving(lab(&topo), (vip, Proto::Udp), "nat", &udp, &addrs);
    let udp_batch = |count| {
        let results = udp_requests(topo.client(), None, vip, count, TIMEOUT, 3, BATCH_LIMIT)
            .expect("client runs");
        count_by_name(&all_ok(results, count))
    };
    assert_eq!(udp_batch(40).len(), 2);

    servers[0] = None;
    within(
        &lbd,
        (vip, Proto::Udp),
        "udp backend marked down",
        down_bound(),
        |rows| health_of(rows, addrs[0]) == "down" && health_of(rows, addrs[1]) == "up",
    );
    let during = udp_batch(40);
    assert_eq!(during.get("b2"), Some(&40), "{during:?}");

    servers[0] =
        Some(udp_name_server(&topo.backend(1).ns, addrs[0], "b1").expect("server restarts"));
    within(
        &lbd,
        (vip, Proto::Udp),
        "udp backend back up",
        up_bound(),
        |rows| health_of(rows, addrs[0]) == "up",
    );
    assert!(udp_batch(40).get("b1").is_some_and(|n| *n > 0));
    drop(servers);
}

/// A tiny HTTP server: answers every request with 200 while `healthy`, else 503, and records
/// each request head.
struct HttpServer {
    healthy: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    _server: Stoppable,
}

impl HttpServer {
    fn start(ns: &NetNs, addr: SocketAddrV4) -> Result<HttpServer> {
        let healthy = Arc::new(AtomicBool::new(true));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (healthy, requests) = (healthy.clone(), requests.clone());
            tcp_server(ns, addr, "http", move |stream, _, _| {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut head = String::new();
                let mut reader = BufReader::new(&stream);
                for _ in 0..32 {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(n) if n > 0 && line != "\r\n" => head.push_str(&line),
                        _ => break,
                    }
                }
                if let Ok(mut r) = requests.lock() {
                    r.push(head);
                }
                let status = if healthy.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = (&stream).write_all(
                    format!("HTTP/1.0 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
                );
                Ok(())
            })?
        };
        Ok(HttpServer {
            healthy,
            requests,
            _server: server,
        })
    }
}

/// HTTP checks: the probe is `GET /healthz HTTP/1.0` with a Host header; a 503 takes the backend
/// out, a 200 brings it back.
#[test]
fn nat_http_check_follows_the_status() {
    let (topo, addrs, servers) = two_backends(|b, a| HttpServer::start(&b.ns, a));
    let http = health_flags("http:/healthz", &[]);
    let lbd = lbd_serving(lab(&topo), TCP80, "nat", &http, &addrs);
    std::thread::sleep(INTERVAL * (RISE + 1));
    let head = servers[0]
        .requests
        .lock()
        .expect("lock")
        .first()
        .cloned()
        .unwrap_or_default();
    assert!(head.starts_with("GET /healthz HTTP/1.0\r\n"), "{head:?}");
    assert!(
        head.contains(&format!("Host: {}\r\n", addrs[0])),
        "{head:?}"
    );

    servers[0].healthy.store(false, Ordering::SeqCst);
    within(&lbd, TCP80, "503 marks it down", down_bound(), |rows| {
        health_of(rows, addrs[0]) == "down" && health_of(rows, addrs[1]) == "up"
    });
    assert!(
        lbd.log_text().contains("HTTP status 503, expected 200"),
        "{}",
        lbd.log_text()
    );
    servers[0].healthy.store(true, Ordering::SeqCst);
    within(&lbd, TCP80, "200 brings it back", up_bound(), |rows| {
        health_of(rows, addrs[0]) == "up"
    });
    drop(servers);
}

/// Every backend down: with `drop` new connections fail (dropped as no backend); switched to
/// `fail-open` with `vip set-health` they are all sent again; `--health none` shows them
/// unchecked. The check is an HTTP check against name servers, which fails while the service
/// itself works: exactly the case fail-open is for.
#[test]
fn all_down_drop_then_fail_open() {
    let (topo, addrs, servers) = two_backends(|b, a| tcp_name_server(&b.ns, a, &b.name()));
    let check = health_flags("http:/healthz", &["--all-down", "drop"]);
    let lbd = lbd_serving(lab(&topo), TCP80, "nat", &check, &addrs);
    wait_for(
        &lbd,
        vip_tcp(),
        Proto::Tcp,
        "every backend down",
        WAIT_LIMIT,
        |rows| rows.values().all(|r| r.health == "down"),
    );
    let before = LbCounters::read(&lbd).expect("stats");
    for _ in 0..3 {
        let r = tcp_request(topo.client(), None, vip_tcp(), Duration::from_millis(500));
        assert!(
            r.is_err(),
            "a connection got through with every backend down and drop: {r:?}"
        );
    }
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    assert!(d.reason("drop_no_backend") >= 3, "{d:?}");
    assert!(
        lbd.log_text().contains("every backend of the vip is down"),
        "{}",
        lbd.log_text()
    );

    let vip = vip_tcp().to_string();
    let mut args = vec!["vip", "set-health", vip.as_str(), "--proto", "tcp"];
    args.extend(health_flags("http:/healthz", &["--all-down", "fail-open"]));
    let out = lbd.ctl(&args).expect("vip set-health fail-open");
    assert!(out.contains("fail-open"), "{out}");
    let rows = backends(&lbd, vip_tcp(), Proto::Tcp).expect("backend list");
    assert!(
        rows.values().all(|r| r.health == "down"),
        "a new check keeps the status: {rows:?}"
    );
    let counts = tcp_batch(topo.client(), vip_tcp(), 60);
    assert_eq!(
        counts.len(),
        2,
        "fail-open sends to every backend: {counts:?}"
    );

    lbd.ctl(&[
        "vip",
        "set-health",
        vip.as_str(),
        "--proto",
        "tcp",
        "--health",
        "none",
    ])
    .expect("set-health none");
    let rows = backends(&lbd, vip_tcp(), Proto::Tcp).expect("backend list");
    assert!(rows.values().all(|r| r.health == "unchecked"), "{rows:?}");
    assert_eq!(tcp_batch(topo.client(), vip_tcp(), 30).len(), 2);
    drop(servers);
}

/// Drain: the open connection keeps being answered by the drained backend while every new one
/// goes to the other; `backend list` shows its flow, then zero once the connection is closed;
/// undrain restores the weight. NAT (conntrack) on the two-arm topology.
#[test]
fn drain_keeps_open_connection_and_undrain_restores() {
    let (topo, addrs, servers) = two_backends(|b, a| LineServer::start(&b.ns, a, &b.name()));
    drain_and_undrain(&topo, "nat", &addrs, &servers);
    drop(servers);
}

/// The same in the DSR modes, where the LB's flow table (no conntrack, no replies seen) keeps
/// the open connection on the drained backend.
fn dsr_drain(mode: &str) {
    let net = ModeTopology::one_arm(mode, 2).expect("topology");
    let any80 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80);
    let addrs: Vec<SocketAddrV4> = (1..=2).map(|i| net.backend_addr(i, 80)).collect();
    let servers = net
        .topo
        .on_each_backend(|b| LineServer::start(&b.ns, any80, &b.name()))
        .expect("servers");
    drain_and_undrain(&net.topo, mode, &addrs, &servers);
    for s in &servers {
        for peer in s.peers() {
            assert_eq!(
                peer.ip(),
                std::net::IpAddr::V4(net.topo.client_addrs()[0]),
                "DSR: the backend sees the client itself"
            );
        }
    }
    drop(servers);
    drop(net);
}

#[test]
fn l2dsr_drain_keeps_open_connection_and_undrain_restores() {
    dsr_drain("l2dsr");
}

#[test]
fn ipip_drain_keeps_open_connection_and_undrain_restores() {
    dsr_drain("ipip");
}

/// The drain test proper, on two backends `addrs` served by `servers` (named b1, b2).
fn drain_and_undrain(topo: &Topology, mode: &str, addrs: &[SocketAddrV4], servers: &[LineServer]) {
    // Closed flows leave the count after one second, not ten.
    let config = topo
        .lbd_config()
        .replace("tcp_closing = \"10s\"", "tcp_closing = \"1s\"");
    assert!(config.contains("tcp_closing = \"1s\""), "{config}");
    let lbd = lbd_serving((topo.lb(), config), TCP80, mode, &[], addrs);
    let stats_before = LbCounters::read(&lbd).expect("stats");

    let conn = tcp_connect(topo.client(), None, vip_tcp(), TIMEOUT).expect("open connection");
    let first = tcp_exchange(&conn, "hello").expect("first answer");
    let (idx, _) = addrs
        .iter()
        .enumerate()
        .find(|(i, _)| first.name == format!("b{}", i + 1))
        .expect("answered by a backend");
    let (drained, other) = (addrs[idx], addrs[1 - idx]);
    let other_name = format!("b{}", 2 - idx);

    let key = TCP80;
    let out = backend_cmd(&lbd, "drain", key, Some(drained), false).expect("backend drain");
    assert!(out.contains("undrain restores weight 100"), "{out}");
    let rows = backends(&lbd, vip_tcp(), Proto::Tcp).expect("list");
    let row = &rows[&drained];
    assert_eq!(
        (row.weight, row.drained_from, row.health.as_str()),
        (0, Some(100), "unchecked")
    );
    assert!(
        row.flows >= 1,
        "the open connection is a tracked flow: {rows:?}"
    );
    let human = backend_cmd(&lbd, "list", key, None, false).expect("list");
    assert!(
        human
            .lines()
            .next()
            .is_some_and(|h| h.contains("HEALTH") && h.ends_with("FLOWS")),
        "{human}"
    );
    assert!(human.contains("0 (drained from 100)"), "{human}");

    // New connections, interleaved with traffic on the open one.
    for round in 0..5 {
        let counts = tcp_batch(topo.client(), vip_tcp(), 20);
        assert_eq!(
            counts.get(&other_name),
            Some(&20),
            "round {round}: new flows avoid the drained backend: {counts:?}"
        );
        for i in 0..3 {
            let r = tcp_exchange(&conn, &format!("still there {round}.{i}"))
                .expect("the open connection keeps working");
            assert_eq!(r.name, first.name, "the open connection moved");
            assert_eq!(r.local, first.local);
        }
    }
    assert!(
        servers[idx].answered() >= 16,
        "the drained backend answered the open connection"
    );

    drop(conn);
    let took = wait_for(
        &lbd,
        vip_tcp(),
        Proto::Tcp,
        "drained backend reaches zero flows",
        WAIT_LIMIT,
        |rows| rows[&drained].flows == 0,
    );
    eprintln!("zero flows {took:?} after the close");

    let out = backend_cmd(&lbd, "undrain", key, Some(drained), false).expect("backend undrain");
    assert!(out.contains("weight 100"), "{out}");
    let rows = backends(&lbd, vip_tcp(), Proto::Tcp).expect("list");
    assert_eq!(
        (rows[&drained].weight, rows[&drained].drained_from),
        (100, None)
    );
    assert_eq!(rows[&other].weight, 100);
    let counts = tcp_batch(topo.client(), vip_tcp(), 60);
    assert_eq!(counts.len(), 2, "both get new flows again: {counts:?}");
    let again = backend_cmd(&lbd, "undrain", key, Some(drained), false);
    let e = format!("{:#}", again.expect_err("not drained any more"));
    assert!(e.contains("is not drained"), "{e}");
    let d = LbCounters::read(&lbd).expect("stats").since(&stats_before);
    let reason = if mode == "nat" {
        "tx_nat_forward".to_string()
    } else {
        format!("tx_{mode}")
    };
    assert!(d.reason(&reason) > 0, "nothing went by {mode}: {d:?}");
}

/// A UDP client that keeps one source port keeps its flow as long as it sends: when its backend
/// goes down, the flow lives on and every query goes to the dead backend. After
/// `[timeouts] backend_down` (1 s here) lbd's sweep ends the flows of a down backend, and the
/// client's next query starts a new flow to a live one. (Before flow tables v2, or with a grace
/// of an hour, the flow stays on the dead backend for as long as the client keeps sending.)
#[test]
fn flows_of_a_backend_down_past_the_grace_end() {
    let (topo, vip, addrs, mut servers) = udp_lab();
    let (lb, config) = lab(&topo);
    let config = config.replace("[timeouts]", "[timeouts]\nbackend_down = \"1s\"");
    assert!(config.contains("backend_down = \"1s\""), "{config}");
    let udp = health_flags("udp", &[]);
    let lbd = lbd_serving((lb, config), (vip, Proto::Udp), "nat", &udp, &addrs);
    // One client socket, one source port: one flow.
    let source = SocketAddrV4::new(topo.client_addrs()[0], 47_123);
    let query = || {
        udp_requests(
            topo.client(),
            Some(source),
            vip,
            1,
            Duration::from_millis(300),
            1,
            BATCH_LIMIT,
        )
        .expect("client runs")
        .pop()
        .expect("one result")
    };
    let first = query().expect("the first query is answered");
    let idx = usize::from(first.name == "b2");
    let (dead, live) = (format!("b{}", idx + 1), format!("b{}", 2 - idx));
    servers[idx] = None;
    within(
        &lbd,
        (vip, Proto::Udp),
        "the flow's backend marked down",
        down_bound(),
        |rows| health_of(rows, addrs[idx]) == "down",
    );
    let down_at = Instant::now();
    let mut answered_by = None;
    while down_at.elapsed() < Duration::from_secs(10) {
        if let Ok(r) = query() {
            answered_by = Some((r.name, down_at.elapsed()));
            break;
        }
    }
    let (name, after) = answered_by.unwrap_or_else(|| {
        panic!(
            "the flow of {source} stayed on the dead backend {dead} for 10 s after it went down; lbd log:\n{}",
            lbd.log_text()
        )
    });
    assert_eq!(name, live, "answered by {name}");
    eprintln!("the flow moved from {dead} to {live} {after:?} after {dead} was marked down");
    assert!(lbd.log_text().contains("backend down past the grace"));
    drop(servers);
}
