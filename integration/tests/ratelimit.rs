//! End-to-end rate-limit tests: real UDP and TCP traffic from a client namespace through lbd's XDP
//! program, policies set with lbctl. Run as root: `cargo test -p xdplb-integration`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use xdplb_integration::server::{tcp_server, Stoppable};
use xdplb_integration::{tcp_connect, Lbd, NetNs, Proto, StartOptions, Topology, VIP};

const TIMEOUT: Duration = Duration::from_secs(2);
/// How often a server loop checks whether it should stop.
const POLL: Duration = Duration::from_millis(20);

/// A UDP server that counts datagrams by their first byte (the sender's tag): under full NAT
/// every datagram comes from the SNAT address, so the payload says which client sent it.
struct UdpSink {
    counts: Arc<Mutex<BTreeMap<u8, usize>>>,
    _server: Stoppable,
}

impl UdpSink {
    fn start(ns: &NetNs, addr: SocketAddrV4) -> Result<UdpSink> {
        let socket = ns
            .run(|| UdpSocket::bind(addr))?
            .with_context(|| format!("binding UDP {addr}"))?;
        socket.set_read_timeout(Some(POLL))?;
        SockRef::from(&socket).set_recv_buffer_size(4 << 20)?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let server = {
            let counts = counts.clone();
            Stoppable::spawn("udp-sink", move |stop| {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::SeqCst) {
                    match socket.recv(&mut buf) {
                        Ok(n) if n > 0 => {
                            if let Ok(mut c) = counts.lock() {
                                *c.entry(buf[0]).or_insert(0) += 1;
                            }
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => eprintln!("udp sink: {e}"),
                    }
                }
            })?
        };
        Ok(UdpSink {
            counts,
            _server: server,
        })
    }

    fn count(&self, tag: u8) -> usize {
        self.counts
            .lock()
            .map(|c| c.get(&tag).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// A TCP server that reads each connection to its end and answers with the number of bytes it
/// read ("<n>\n").
struct TcpSink {
    accepted: Arc<AtomicUsize>,
    _server: Stoppable,
}

impl TcpSink {
    fn start(ns: &NetNs, addr: SocketAddrV4) -> Result<TcpSink> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = {
            let accepted = accepted.clone();
            tcp_server(ns, addr, "tcp-sink", move |conn, _, _| {
                accepted.fetch_add(1, Ordering::SeqCst);
                count_and_answer(conn)
            })?
        };
        Ok(TcpSink {
            accepted,
            _server: server,
        })
    }
}

fn count_and_answer(conn: TcpStream) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match (&conn).read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    (&conn).write_all(format!("{total}\n").as_bytes())?;
    let _ = conn.shutdown(Shutdown::Write);
    Ok(())
}

/// lbd on a two-arm topology with one backend. Field order is drop order.
struct Lab {
    lbd: Lbd,
    topo: Topology,
}

impl Lab {
    fn start() -> Lab {
        let topo = Topology::two_arm(1).expect("topology");
        let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
        Lab { lbd, topo }
    }

    fn backend(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.backend(1).addr, port)
    }

    fn vip(&self, vip: SocketAddrV4, proto: Proto, backend_port: u16) {
        self.lbd.add_vip(vip, proto).expect("lbctl vip add");
        self.lbd
            .add_backend(vip, proto, self.backend(backend_port))
            .expect("lbctl add-backend");
    }

    fn ctl(&self, args: &[&str]) -> String {
        self.lbd
            .ctl(args)
            .unwrap_or_else(|e| panic!("lbctl {args:?}: {e:#}"))
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        self.lbd
            .ctl_json(args)
            .unwrap_or_else(|e| panic!("lbctl --json {args:?}: {e:#}"))
    }

    /// `(allowed, dropped)` of the policy of `cidr` (None: the default) in `ratelimit list`.
    fn counters(&self, cidr: Option<&str>) -> (u64, u64) {
        let list = self.ctl_json(&["ratelimit", "list"]);
        let entry = list["rate_limits"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["cidr"].as_str() == cidr))
            .unwrap_or_else(|| panic!("no policy {cidr:?} in {list}"));
        (
            entry["allowed"].as_u64().unwrap_or(0),
            entry["dropped"].as_u64().unwrap_or(0),
        )
    }
}

/// A UDP socket in the client namespace, bound to `from`, connected to `to`.
fn udp_client(ns: &NetNs, from: Ipv4Addr, to: SocketAddrV4) -> Result<UdpSocket> {
    ns.run(|| -> Result<UdpSocket> {
        let s = UdpSocket::bind(SocketAddrV4::new(from, 0))?;
        s.connect(to)?;
        Ok(s)
    })?
}

#[test]
fn udp_flood_is_held_to_the_limit_and_a_quiet_client_loses_nothing() {
    const RATE: u64 = 200;
    const BURST: u64 = 50;
    const TICK: Duration = Duration::from_millis(5);
    const TICKS: u32 = 600; // 3 s
    const FLOOD_PER_TICK: u32 = 10; // 2000 packets/s: 10x the limit
    const QUIET_EVERY: u32 = 4; // one per 20 ms: 50 packets/s, a quarter of the limit

    let lab = Lab::start();
    let vip = SocketAddrV4::new(VIP, 53);
    lab.vip(vip, Proto::Udp, 5353);
    let sink = UdpSink::start(&lab.topo.backend(1).ns, lab.backend(5353)).expect("udp sink");
    lab.ctl(&[
        "ratelimit",
        "set",
        "--rate",
        &RATE.to_string(),
        "--burst",
        &BURST.to_string(),
    ]);
    let [a, b] = lab.topo.client_addrs();
    let flood = udp_client(lab.topo.client(), a, vip).expect("client A socket");
    let quiet = udp_client(lab.topo.client(), b, vip).expect("client B socket");

    // Paced on an absolute schedule (no drift), bounded by TICKS and a hard deadline.
    let (mut sent_a, mut sent_b) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + TICK * TICKS + Duration::from_secs(2);
    let (mut first_a, mut last_a) = (None, start);
    for tick in 0..TICKS {
        if Instant::now() > deadline {
            break;
        }
        let due = start + TICK * tick;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for _ in 0..FLOOD_PER_TICK {
            if flood.send(b"A flood").is_ok() {
                sent_a += 1;
                last_a = Instant::now();
                first_a.get_or_insert(last_a);
            }
        }
        if tick % QUIET_EVERY == 0 && quiet.send(b"B quiet").is_ok() {
            sent_b += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (got_a, got_b) = (sink.count(b'A') as u64, sink.count(b'B') as u64);

    let secs = last_a
        .duration_since(first_a.unwrap_or(start))
        .as_secs_f64();
    let expected = RATE as f64 * secs + BURST as f64;
    eprintln!(
        "client A sent {sent_a} in {secs:.3} s ({:.0}/s), backend got {got_a}, expected {expected:.0} \
         ({RATE}/s x {secs:.3} s + {BURST}); client B sent {sent_b}, backend got {got_b}",
        sent_a as f64 / secs
    );
    assert!(
        sent_a as f64 >= 9.0 * expected,
        "the flood was too slow to test anything: {sent_a} packets"
    );
    assert!(
        (got_a as f64 - expected).abs() <= 0.1 * expected,
        "client A: backend got {got_a}, expected {expected:.0} +- 10 %"
    );
    assert_eq!(got_b, sent_b, "client B (under its limit) lost packets");

    let (allowed, dropped) = lab.counters(None);
    assert_eq!(
        allowed + dropped,
        sent_a + sent_b,
        "every VIP packet is checked"
    );
    assert_eq!(
        allowed,
        got_a + got_b,
        "allowed = what the backend received"
    );
    let top = lab.ctl_json(&["ratelimit", "top", "-n", "5"]);
    assert_eq!(top["clients"][0]["address"], a.to_string(), "{top}");
    assert_eq!(top["clients"][0]["dropped"], dropped, "{top}");
    assert_eq!(
        top["clients"].as_array().map(Vec::len),
        Some(1),
        "B has no drops: {top}"
    );
    let human = lab.ctl(&["ratelimit", "top"]);
    assert!(human.contains(&a.to_string()), "{human}");
}

/// Opens `count` connections to `to` from `from` without waiting for any of them (non-blocking
/// connects: each one is a SYN), paced `gap` apart. Returns the sockets, to be closed later.
fn syn_flood(from: Ipv4Addr, to: SocketAddrV4, count: usize, gap: Duration) -> Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())?;
        match s.connect(&SocketAddr::V4(to).into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => bail!("connect #{}: {e}", sockets.len()),
        }
        sockets.push(s);
        std::thread::sleep(gap);
    }
    Ok(sockets)
}

#[test]
fn syn_flood_under_new_flows_leaves_an_established_transfer_alone() {
    const RATE: u64 = 20;
    const BURST: u64 = 5;
    const FLOOD: usize = 1500;
    const TRANSFER: Duration = Duration::from_secs(4);

    let lab = Lab::start();
    let vip = SocketAddrV4::new(VIP, 80);
    lab.vip(vip, Proto::Tcp, 8080);
    let sink = TcpSink::start(&lab.topo.backend(1).ns, lab.backend(8080)).expect("tcp sink");
    let [a, _] = lab.topo.client_addrs();
    let cidr = format!("{a}/32");
    let (rate, burst) = (RATE.to_string(), BURST.to_string());
    lab.ctl(&[
        "ratelimit",
        "set",
        "--rate",
        &rate,
        "--burst",
        &burst,
        "--scope",
        "new-flows",
        "--cidr",
        &cidr,
    ]);

    // The transfer starts first (its SYN is one of the burst), then runs through the flood.
    let stream = tcp_connect(
        lab.topo.client(),
        Some(SocketAddrV4::new(a, 0)),
        vip,
        TIMEOUT,
    )
    .expect("the transfer connects");
    // Paced (64 KiB every 2 ms, ~32 MB/s) so that it runs for the whole flood; counts what it
    // sent while the flood was on, and its longest wait for a write.
    let flooding = Arc::new(AtomicBool::new(false));
    let flooding_seen = flooding.clone();
    let transfer = std::thread::spawn(move || -> Result<(u64, u64, u64, Duration)> {
        let chunk = vec![0x5au8; 64 * 1024];
        let end = Instant::now() + TRANSFER;
        let (mut sent, mut during) = (0u64, 0u64);
        let mut max_gap = Duration::ZERO;
        while Instant::now() < end {
            let before = Instant::now();
            (&stream).write_all(&chunk).context("sending")?;
            max_gap = max_gap.max(before.elapsed());
            sent += chunk.len() as u64;
            if flooding_seen.load(Ordering::SeqCst) {
                during += chunk.len() as u64;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        stream.shutdown(Shutdown::Write)?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .context("reading the byte count")?;
        let got = line
            .trim()
            .parse()
            .with_context(|| format!("answer {line:?}"))?;
        Ok((sent, got, during, max_gap))
    });

    std::thread::sleep(Duration::from_millis(300));
    let flood_start = Instant::now();
    flooding.store(true, Ordering::SeqCst);
    let sockets = lab
        .topo
        .client()
        .run(|| syn_flood(a, vip, FLOOD, Duration::from_micros(1000)))
        .expect("into the client namespace")
        .expect("SYN flood");
    let flood_time = flood_start.elapsed();
    flooding.store(false, Ordering::SeqCst);
    let (sent, got, during, max_gap) = transfer
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
        .expect("the transfer completes during the flood");
    let elapsed = flood_start.elapsed();
    drop(sockets);

    let (allowed, dropped) = lab.counters(Some(&cidr));
    let accepted = sink.accepted.load(Ordering::SeqCst);
    eprintln!(
        "transfer: sent {sent} bytes ({during} while the flood ran), backend read {got}, \
         longest write {max_gap:?}; SYN flood: \
         {FLOOD} connects in {flood_time:?}, policy allowed {allowed} dropped {dropped}, backend \
         accepted {accepted} connections"
    );
    assert_eq!(got, sent, "the established transfer lost data");
    assert!(
        during >= 8 << 20,
        "the transfer barely moved during the flood: {during} bytes"
    );
    assert!(
        max_gap < Duration::from_secs(1),
        "the transfer stalled for {max_gap:?} (a write waited that long)"
    );
    // Only new flows are charged: the transfer's own packets (tens of thousands) are not.
    let most = BURST + RATE * (elapsed.as_secs() + 2);
    assert!(
        allowed <= most,
        "{allowed} flow starts allowed, at most {most} expected ({RATE}/s, burst {BURST})"
    );
    assert!(
        dropped >= (FLOOD as u64) - most,
        "only {dropped} SYNs dropped"
    );
    assert!(
        accepted as u64 <= allowed,
        "the backend accepted {accepted} connections, more than the {allowed} allowed"
    );
    let top = lab.ctl_json(&["ratelimit", "top"]);
    assert_eq!(top["clients"][0]["address"], a.to_string(), "{top}");
    assert_eq!(top["clients"][0]["cidr"], cidr, "{top}");
}

#[test]
fn bad_values_are_refused_and_change_nothing() {
    let lab = Lab::start();
    lab.ctl(&["ratelimit", "set", "--rate", "100", "--burst", "10"]);
    let before = lab.ctl_json(&["ratelimit", "list"]);
    for line in [
        "ratelimit set --rate -1 --burst 10",
        "ratelimit set --rate 10 --burst 0",
        "ratelimit set --rate 10 --burst 1 --scope syn",
        "ratelimit set --rate 10 --burst 1 --cidr 10.0.0.1/8",
        // Only lbd knows the maxima.
        "ratelimit set --rate 10000001 --burst 1",
        "ratelimit remove --cidr 10.9.0.0/16",
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        let err = lab.lbd.ctl(&args).expect_err("refused");
        let text = format!("{err:#}");
        assert!(
            [
                "--rate",
                "--burst",
                "--scope",
                "--cidr",
                "policy.rate",
                "not found"
            ]
            .iter()
            .any(|f| text.contains(f)),
            "{args:?}: the error should name the field: {text}"
        );
    }
    assert_eq!(lab.ctl_json(&["ratelimit", "list"]), before);
    let human = lab.ctl(&["ratelimit", "list"]);
    assert!(human.starts_with("POLICY"), "{human}");
    assert!(human.contains("default"), "{human}");
}

#[test]
fn policies_and_buckets_survive_a_restart() {
    const BURST: u64 = 50;
    let topo = Topology::two_arm(1).expect("topology");
    let vip = SocketAddrV4::new(VIP, 53);
    let backend = SocketAddrV4::new(topo.backend(1).addr, 5353);
    let sink = UdpSink::start(&topo.backend(1).ns, backend).expect("udp sink");
    let state = tempfile::tempdir().expect("state dir");
    let config = topo.lbd_config();
    let [a, b] = topo.client_addrs();
    let cidr_b = format!("{b}/32");

    let mut first =
        Lbd::start_with(topo.lb(), &config, &StartOptions::keep(state.path())).expect("first lbd");
    let ctl = |lbd: &Lbd, args: &[&str]| {
        lbd.ctl(args)
            .unwrap_or_else(|e| panic!("lbctl {args:?}: {e:#}"))
    };
    first.add_vip(vip, Proto::Udp).expect("vip add");
    first
        .add_backend(vip, Proto::Udp, backend)
        .expect("backend add");
    ctl(
        &first,
        &[
            "ratelimit",
            "set",
            "--rate",
            "1",
            "--burst",
            &BURST.to_string(),
        ],
    );
    ctl(
        &first,
        &["ratelimit", "set", "--rate", "0", "--cidr", &cidr_b],
    );
    let flood = udp_client(topo.client(), a, vip).expect("client A socket");
    let quiet = udp_client(topo.client(), b, vip).expect("client B socket");
    let send = |s: &UdpSocket, tag: &[u8], n: usize| {
        for _ in 0..n {
            s.send(tag).expect("send");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    send(&flood, b"A", 60);
    assert_eq!(sink.count(b'A') as u64, BURST, "the burst, then nothing");
    let before = first
        .ctl_json(&["ratelimit", "list"])
        .expect("ratelimit list");

    let restart = Instant::now();
    first.stop().expect("first lbd stops, keeping its pins");
    let second = Lbd::start_with(topo.lb(), &config, &StartOptions::state(state.path()))
        .expect("second lbd");
    // Same policies, same ids, counters kept (the maps were adopted, not recreated).
    let after = second
        .ctl_json(&["ratelimit", "list"])
        .expect("ratelimit list");
    assert_eq!(after, before, "policies after a restart");
    let log = second.log_text();
    assert!(
        log.contains("adopted a rate-limit override from pinned maps"),
        "the second lbd did not adopt the override:\n{log}"
    );

    // Client A's bucket survived too: only what it earned meanwhile (1/s) passes, not a new burst.
    send(&flood, b"A", 20);
    let earned = restart.elapsed().as_secs() + 1;
    let passed = sink.count(b'A') as u64 - BURST;
    eprintln!(
        "after a restart of {:?}: {passed} of 20 passed",
        restart.elapsed()
    );
    assert!(
        passed <= earned,
        "{passed} packets passed after the restart; the bucket allows {earned} (a fresh one {BURST})"
    );
    send(&quiet, b"B", 20);
    assert_eq!(sink.count(b'B'), 20, "the exempt client");
    drop(second);
    drop(first);
}
