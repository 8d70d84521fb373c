//! Observability end to end: a known number of UDP requests and TCP connections through lbd, then
//! `/metrics` scraped over real HTTP from inside the LB namespace, parsed as Prometheus parses it,
//! checked against what was sent and by `promtool check metrics`; and `lbctl top` under a
//! pseudo-terminal (`script` from util-linux) while a paced load runs.
//!
//! Run as root: `cargo test -p xdplb-integration --test metrics -- --test-threads=1`.

use std::net::{SocketAddrV4, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xdplb_integration::procs::health_flags;
use xdplb_integration::scrape::{http, Scrape};
use xdplb_integration::server::Stoppable;
use xdplb_integration::{
    tcp_name_server, tcp_requests, udp_name_server, udp_requests, Lbd, NetNs, Proto, Reply,
    ServerHandle, Topology, VIP,
};
use xdplb_testkit::cmd::wait_bounded;

const TIMEOUT: Duration = Duration::from_secs(2);
const BATCH_LIMIT: Duration = Duration::from_secs(60);

/// A two-arm topology with one backend, a TCP and a UDP name server on it, and lbd.
///
/// Field order is drop order: servers stop first, then lbd, then the namespaces go.
struct Lab {
    _servers: Vec<ServerHandle>,
    lbd: Lbd,
    topo: Topology,
}

impl Lab {
    fn start() -> Lab {
        let topo = Topology::two_arm(1).expect("topology");
        let b1 = topo.backend(1);
        let servers = vec![
            udp_name_server(&b1.ns, SocketAddrV4::new(b1.addr, 5353), "b1").expect("udp server"),
            tcp_name_server(&b1.ns, SocketAddrV4::new(b1.addr, 8080), "b1").expect("tcp server"),
        ];
        let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
        Lab {
            _servers: servers,
            lbd,
            topo,
        }
    }

    /// A VIP on `port` with the single backend b1:`backend_port`.
    fn vip(&self, port: u16, proto: Proto, backend_port: u16) -> SocketAddrV4 {
        let vip = SocketAddrV4::new(VIP, port);
        self.lbd.add_vip(vip, proto).expect("lbctl vip add");
        let be = SocketAddrV4::new(self.topo.backend(1).addr, backend_port);
        self.lbd
            .add_backend(vip, proto, be)
            .expect("lbctl add-backend");
        vip
    }

    fn backend(&self, port: u16) -> String {
        SocketAddrV4::new(self.topo.backend(1).addr, port).to_string()
    }
}

fn all_ok(results: Vec<Result<Reply>>, count: usize) {
    let errs: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .take(5)
        .map(|e| format!("{e:#}"))
        .collect();
    assert!(
        results.len() == count && errs.is_empty(),
        "{} of {count} requests attempted; errors:\n{}",
        results.len(),
        errs.join("\n")
    );
}

#[test]
fn metrics_count_what_was_sent() {
    let lab = Lab::start();
    let lb = lab.topo.lb();

    // The endpoint is up before any VIP exists, and serves only GET /metrics.
    let first = Scrape::take(lb);
    assert_eq!(
        first.get(
            "xdplb_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let missing = http(lb, "GET", "/", "*/*").expect("GET /");
    assert_eq!(missing.status, 404);
    let post = http(lb, "POST", "/metrics", "*/*").expect("POST /metrics");
    assert_eq!(post.status, 405);
    assert!(post.headers.contains("allow: get"), "{}", post.headers);
    let om = http(
        lb,
        "GET",
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )
    .expect("OpenMetrics scrape");
    assert_eq!(om.status, 200);
    assert!(
        om.headers.contains("application/openmetrics-text"),
        "{}",
        om.headers
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);

    // Phase 1, UDP only: 50 requests of one datagram each ("hello\n"), 50 answers.
    const UDP: usize = 50;
    let udp_vip = lab.vip(53, Proto::Udp, 5353);
    let results = udp_requests(
        lab.topo.client(),
        None,
        udp_vip,
        UDP,
        TIMEOUT,
        1,
        BATCH_LIMIT,
    )
    .expect("client runs");
    all_ok(results, UDP);
    let m = Scrape::fresh(lb);
    let b1 = lab.backend(5353);
    let (vip, be) = series_labels("10.200.100.1:53", "udp", &b1);
    let n = UDP as f64;
    // Frames as received: Ethernet 14 + IP 20 + UDP 8 + "hello\n" 6 = 48 bytes; the answer
    // "b1 10.200.1.1:PPPPP\n" (SNAT port of 5 digits, 20000-29999) makes 14 + 20 + 8 + 20 = 62.
    let (request_frame, answer_frame) = (48.0, 62.0);
    assert_eq!(m.get("xdplb_vip_packets_total", &vip), n);
    assert_eq!(m.get("xdplb_vip_bytes_total", &vip), n * request_frame);
    assert_eq!(m.get("xdplb_vip_new_flows_total", &vip), n);
    assert_eq!(m.get("xdplb_vip_tracked_flows", &vip), n);
    // A backend's counters hold both directions of its NAT flows.
    assert_eq!(m.get("xdplb_backend_packets_total", &be), 2.0 * n);
    assert_eq!(
        m.get("xdplb_backend_bytes_total", &be),
        n * (request_frame + answer_frame)
    );
    assert_eq!(m.get("xdplb_backend_new_flows_total", &be), n);
    assert_eq!(m.get("xdplb_backend_tracked_flows", &be), n);
    assert_eq!(m.get("xdplb_backend_weight", &be), 100.0);
    assert_eq!(
        m.get("xdplb_packets_total", &[("reason", "tx_nat_forward")]),
        n
    );
    assert_eq!(
        m.get("xdplb_packets_total", &[("reason", "tx_nat_reply")]),
        n
    );
    assert_eq!(
        m.get(
            "xdplb_map_entries",
            &[("map", "nat_fwd_v2"), ("type", "lru_hash")]
        ),
        n
    );
    assert_eq!(m.get("xdplb_map_entries", &[("map", "nat_rev_v2")]), n);
    assert_eq!(
        m.get("xdplb_map_capacity", &[("map", "nat_fwd_v2")]),
        1_048_576.0
    );
    assert_eq!(m.get("xdplb_map_entries", &[("map", "vips")]), 1.0);
    // Two arms: every balanced packet leaves by another interface.
    assert_eq!(
        m.get("xdplb_verdicts_total", &[("verdict", "XDP_REDIRECT")])
            + m.get("xdplb_verdicts_total", &[("verdict", "XDP_TX")]),
        2.0 * n
    );
    // lbctl sees the same counters.
    let stats = lab.lbd.ctl_json(&["stats"]).expect("lbctl --json stats");
    let udp_stats = stats["vips"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["port"] == 53))
        .unwrap_or_else(|| panic!("no UDP VIP in {stats}"));
    assert_eq!(udp_stats["packets"].as_f64(), Some(n));

    // Phase 2, TCP: 40 connections (handshake, one line each way, FIN) to one backend.
    const TCP: usize = 40;
    let tcp_vip = lab.vip(80, Proto::Tcp, 8080);
    let results = tcp_requests(lab.topo.client(), None, tcp_vip, TCP, TIMEOUT, BATCH_LIMIT)
        .expect("client runs");
    all_ok(results, TCP);
    let m = Scrape::fresh(lb);
    let t = TCP as f64;
    let b1 = lab.backend(8080);
    let (vip, be) = series_labels("10.200.100.1:80", "tcp", &b1);
    let tcp_in = m.get("xdplb_vip_packets_total", &vip);
    let tcp_both = m.get("xdplb_backend_packets_total", &be);
    assert_eq!(m.get("xdplb_vip_new_flows_total", &vip), t);
    assert_eq!(m.get("xdplb_backend_new_flows_total", &be), t);
    // SYN, ACK, data, FIN (and its ACK): at least 4 client packets per connection.
    assert!(
        tcp_in >= 4.0 * t,
        "{tcp_in} client packets for {TCP} connections"
    );
    // Closed connections stay tracked for the closing timeout (10 s).
    assert_eq!(m.get("xdplb_vip_tracked_flows", &vip), t);
    assert_eq!(m.get("xdplb_backend_tracked_flows", &be), t);
    assert_eq!(m.get("xdplb_map_entries", &[("map", "nat_fwd_v2")]), n + t);
    // Every client packet of either VIP was forwarded, every backend packet restored.
    assert_eq!(
        m.get("xdplb_packets_total", &[("reason", "tx_nat_forward")]),
        n + tcp_in
    );
    assert_eq!(
        m.get("xdplb_packets_total", &[("reason", "tx_nat_reply")]),
        n + (tcp_both - tcp_in)
    );
    // Each packet is counted once by reason and once by verdict.
    let by_reason = m.sum("xdplb_packets_total", "reason", |_| true);
    let by_verdict = m.sum("xdplb_verdicts_total", "verdict", |_| true);
    assert_eq!(by_reason, by_verdict);
    // Nothing was dropped; what was passed is the kernel's own traffic (ARP, IPv6 ND, ...).
    assert_eq!(
        m.sum("xdplb_packets_total", "reason", |r| r.starts_with("drop_")),
        0.0
    );
    let passed = m.sum("xdplb_packets_total", "reason", |r| r.starts_with("pass_"));
    assert!(
        passed < 100.0,
        "{passed} packets passed to the kernel: more than ARP/ND noise"
    );
    eprintln!(
        "sent: {UDP} UDP requests, {TCP} TCP connections; counted: UDP vip {n} packets, \
         TCP vip {tcp_in} packets / {t} new flows, backend {tcp_both} packets both ways, \
         {passed} passed (noise)"
    );
    m.promtool();
}

/// A client socket in `ns` sending `pps` datagrams of `payload` bytes per second to `to` until
/// stopped (at most `limit`).
struct Load {
    _sender: Stoppable,
}

impl Load {
    fn start(ns: &NetNs, to: SocketAddrV4, pps: u64, payload: usize, limit: Duration) -> Load {
        let socket = ns
            .run(|| -> std::io::Result<UdpSocket> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(to)?;
                Ok(s)
            })
            .expect("in the client namespace")
            .expect("load socket");
        let thread = Stoppable::spawn("load", move |stop| {
            let data = vec![b'x'; payload];
            let start = Instant::now();
            let gap = Duration::from_nanos(1_000_000_000 / pps);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && start.elapsed() < limit {
                // Paced against the start, so sleeping late does not lower the rate.
                let due = start + gap * u32::try_from(sent).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if socket.send(&data).is_ok() {
                    sent += 1;
                }
            }
        });
        Load {
            _sender: thread.expect("load thread"),
        }
    }
}

/// `1.23k` -> 1230.
fn parse_si(s: &str) -> Option<f64> {
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().ok().map(|v| v * mult)
}

/// Runs `cmd` under a pseudo-terminal (`script -qec`) for at most `limit`; returns its output.
fn under_pty(cmd: &str, limit: Duration) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let out_path = dir.path().join("pty.out");
    let out = std::fs::File::create(&out_path)?;
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .context("running script (util-linux)")?;
    let Some(status) = wait_bounded(&mut child, limit)? else {
        bail!(
            "`{cmd}` did not finish within {limit:?}; output so far:\n{}",
            std::fs::read_to_string(&out_path).unwrap_or_default()
        );
    };
    let text = std::fs::read_to_string(&out_path)?;
    if !status.success() {
        bail!("`{cmd}` failed ({status}):\n{text}");
    }
    Ok(text)
}

#[test]
fn top_shows_the_rate_of_a_known_load() {
    let mut lab = Lab::start();
    let vip = lab.vip(53, Proto::Udp, 5353);
    const PPS: u64 = 400;
    const PAYLOAD: usize = 100;
    let _load = Load::start(
        lab.topo.client(),
        vip,
        PPS,
        PAYLOAD,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(1500));

    let lbctl = xdplb_integration::procs::bin_dir()
        .expect("bin dir")
        .join("lbctl");
    let cmd = format!(
        "{} --socket {} top --interval 1s --iterations 3",
        lbctl.display(),
        lab.lbd.socket().display()
    );
    let text = under_pty(&cmd, Duration::from_secs(15)).expect("lbctl top under a pty");
    assert!(
        text.contains("\x1b[H\x1b[2J"),
        "no in-place redraw (cursor home, clear) in:\n{text}"
    );
    let last = text
        .rsplit("\x1b[2J")
        .next()
        .unwrap_or_default()
        .replace('\r', "");
    assert!(last.contains("update 3 of 3"), "last frame:\n{last}");
    let row = |prefix: &str| -> Vec<String> {
        last.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix} in:\n{last}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // VIP row: label, pkt/s, bit/s, new flows/s (no weight).
    let v = row("10.200.100.1:53/udp");
    let pps = parse_si(&v[1]).expect("pkt/s");
    let bps = parse_si(&v[2]).expect("bit/s");
    let frame_bits = ((14 + 20 + 8 + PAYLOAD) * 8) as f64;
    let want_pps = PPS as f64;
    eprintln!(
        "load {PPS} pkt/s of {frame_bits} bits; lbctl top shows {pps} pkt/s, {bps} bit/s\n{last}"
    );
    assert!(
        (want_pps * 0.8..=want_pps * 1.2).contains(&pps),
        "VIP {pps} pkt/s, load {want_pps}:\n{last}"
    );
    let want_bps = want_pps * frame_bits;
    assert!(
        (want_bps * 0.8..=want_bps * 1.2).contains(&bps),
        "VIP {bps} bit/s, load {want_bps}:\n{last}"
    );
    assert_eq!(parse_si(&v[3]), Some(0.0), "one socket is one flow: {last}");
    // Backend row: label, weight, pkt/s (requests and answers), ...
    let b = row(&format!("{}:5353", lab.topo.backend(1).addr));
    let be_pps = parse_si(&b[2]).expect("backend pkt/s");
    assert!(
        (2.0 * want_pps * 0.8..=2.0 * want_pps * 1.2).contains(&be_pps),
        "backend {be_pps} pkt/s, want about {}:\n{last}",
        2 * PPS
    );

    // A watcher that never stops must not hold lbd up: SIGTERM ends its stream, lbd exits
    // cleanly (pins removed, nothing "still in use"), and lbctl top says why it stopped.
    let err_path = lab.lbd.socket().with_file_name("top-forever.err");
    let mut forever = Command::new(&lbctl)
        .arg("--socket")
        .arg(lab.lbd.socket())
        .args(["top", "--interval", "200ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("lbctl top runs");
    std::thread::sleep(Duration::from_millis(1000));
    let stopping = Instant::now();
    let stopped = lab.lbd.stop();
    let took = stopping.elapsed();
    let log = lab.lbd.log_text();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match forever.try_wait().expect("polling lbctl top") {
            Some(s) => break Some(s),
            None if Instant::now() > deadline => {
                let _ = forever.kill();
                let _ = forever.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    stopped.unwrap_or_else(|e| panic!("lbd did not stop cleanly with a watcher: {e:#}\n{log}"));
    assert!(
        took < Duration::from_secs(3),
        "lbd took {took:?} to stop:\n{log}"
    );
    assert!(!log.contains("still in use"), "{log}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "lbctl top: {stderr}"
    );
    assert!(stderr.contains("shutting down"), "lbctl top said: {stderr}");
}

/// Health in the metrics: with a TCP check on two backends, `xdplb_backend_up` is 1 for both;
/// when b1's server dies it drops to 0, `xdplb_backend_health_transitions_total{to="down"}` and
/// `xdplb_backend_probe_failures_total` count it (at least `fall` failures); when the server is
/// back, `{to="up"}` counts the return. b2's series do not move.
#[test]
fn health_metrics_follow_a_dead_backend() {
    let topo = Topology::two_arm(2).expect("topology");
    let addrs: Vec<SocketAddrV4> = topo.backend_addrs(8080);
    let mut servers: Vec<Option<ServerHandle>> = topo
        .stoppable_name_servers(addrs[0].port(), tcp_name_server)
        .expect("servers");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    let vip = SocketAddrV4::new(VIP, 80).to_string();
    lbd.add_vip_with(
        SocketAddrV4::new(VIP, 80),
        Proto::Tcp,
        &health_flags("tcp", &[]),
    )
    .expect("vip add");
    for a in &addrs {
        lbd.add_backend(SocketAddrV4::new(VIP, 80), Proto::Tcp, *a)
            .expect("add backend");
    }
    let (b1, b2) = (addrs[0].to_string(), addrs[1].to_string());
    let (b1, b2) = (b1.as_str(), b2.as_str());
    let ns = topo.lb();
    // Polls until `done` holds for a scrape, at most 10 s; returns that scrape.
    let wait = |what: &str, done: &dyn Fn(&Scrape) -> bool| -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = Scrape::take(ns);
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within 10 s:\n{}",
                s.text
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // The health series of backend `be`.
    let up = |s: &Scrape, be| s.get("xdplb_backend_up", &be_labels(&vip, be, None));
    let failures = |s: &Scrape, be| {
        s.get(
            "xdplb_backend_probe_failures_total",
            &be_labels(&vip, be, None),
        )
    };
    let moved = |s: &Scrape, be, to| {
        let labels = be_labels(&vip, be, Some(("to", to)));
        s.get("xdplb_backend_health_transitions_total", &labels)
    };

    // Both probed up (after `rise`), nothing failed.
    std::thread::sleep(Duration::from_millis(800));
    let s = Scrape::take(ns);
    for be in [b1, b2] {
        assert_eq!(up(&s, be), 1.0, "{}", s.text);
        assert_eq!(failures(&s, be), 0.0);
        for to in ["down", "up"] {
            assert_eq!(moved(&s, be, to), 0.0);
        }
    }

    servers[0] = None;
    let s = wait("b1 down in the metrics", &|s| up(s, b1) == 0.0);
    assert_eq!(moved(&s, b1, "down"), 1.0);
    let failed = failures(&s, b1);
    assert!(failed >= 3.0, "fall is 3, failures {failed}");
    assert_eq!(up(&s, b2), 1.0);
    assert_eq!(failures(&s, b2), 0.0);
    s.promtool();

    servers[0] = Some(tcp_name_server(&topo.backend(1).ns, addrs[0], "b1").expect("restart"));
    let s = wait("b1 up again in the metrics", &|s| up(s, b1) == 1.0);
    assert_eq!(moved(&s, b1, "up"), 1.0);
    assert_eq!(moved(&s, b1, "down"), 1.0);
    assert!(failures(&s, b1) >= failed);
    for to in ["down", "up"] {
        assert_eq!(moved(&s, b2, to), 0.0, "b2 never moved");
    }
    drop(servers);
}

/// `N` label names and values of a series.
type Labels<'a, const N: usize> = [(&'a str, &'a str); N];

/// The labels of a VIP's series, and of its backend `backend`'s.
fn series_labels<'a>(
    vip: &'a str,
    proto: &'a str,
    backend: &'a str,
) -> (Labels<'a, 2>, Labels<'a, 3>) {
    let [v, p] = [("vip", vip), ("proto", proto)];
    ([v, p], [v, p, ("backend", backend)])
}

/// The labels of a backend's series, plus `extra`.
fn be_labels<'a>(
    vip: &'a str,
    backend: &'a str,
    extra: Option<(&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    let mut l = vec![("vip", vip), ("proto", "tcp"), ("backend", backend)];
    l.extend(extra);
    l
}
