//! Real TCP/UDP peers inside namespaces: name servers on the backends and bounded clients.
//!
//! A name server answers each request with `"<name> <peer address>\n"`, so a test learns which
//! backend answered and which source address that backend saw (the SNAT address under full NAT).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::server::{tcp_server, Stoppable, STOP_POLL};
use xdplb_testkit::NetNs;

/// Upper bound for every socket timeout in the harness.
pub const MAX_SOCKET_TIMEOUT: Duration = Duration::from_secs(2);
/// A batch of requests gives up after this many failures in a row (the path is broken; the
/// remaining requests would only burn their timeouts).
pub const MAX_CONSECUTIVE_FAILURES: usize = 10;

fn clamp(timeout: Duration) -> Duration {
    timeout.clamp(Duration::from_millis(1), MAX_SOCKET_TIMEOUT)
}

/// A parsed name-server answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The name of the server that answered.
    pub name: String,
    /// The source address of the request as the server saw it.
    pub peer: SocketAddrV4,
    /// The client socket's local address (useful to check source ports).
    pub local: SocketAddrV4,
}

impl Reply {
    fn parse(line: &str, local: SocketAddrV4) -> Result<Reply> {
        let line = line.trim_end();
        let (name, peer) = line
            .split_once(' ')
            .with_context(|| format!("malformed reply {line:?}"))?;
        let peer = peer
            .parse()
            .with_context(|| format!("malformed peer address in reply {line:?}"))?;
        Ok(Reply {
            name: name.to_string(),
            peer,
            local,
        })
    }
}

#[derive(Default)]
struct ServerStats {
    served: AtomicUsize,
    peers: Mutex<Vec<SocketAddr>>,
}

impl ServerStats {
    fn record(&self, peer: SocketAddr) {
        self.served.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut peers) = self.peers.lock() {
            peers.push(peer);
        }
    }
}

/// A running name server; dropping it stops its loop and joins the thread (within ~50 ms).
pub struct ServerHandle {
    name: String,
    addr: SocketAddrV4,
    stats: Arc<ServerStats>,
    _server: Stoppable,
}

impl ServerHandle {
    /// The handle of the server `start` spawns with the handle's counters and its name.
    fn start(
        name: &str,
        addr: SocketAddrV4,
        start: impl FnOnce(Arc<ServerStats>, String) -> Result<Stoppable>,
    ) -> Result<ServerHandle> {
        let stats = Arc::new(ServerStats::default());
        let server = start(stats.clone(), name.to_string())?;
        Ok(ServerHandle {
            name: name.to_string(),
            addr,
            stats,
            _server: server,
        })
    }

    /// The name this server answers with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// How many requests it has answered (counted just before the answer is written).
    pub fn served(&self) -> usize {
        self.stats.served.load(Ordering::SeqCst)
    }

    /// The source addresses of the requests it answered, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.stats
            .peers
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}

/// Starts a TCP name server on `addr` inside `ns`: for each connection (on its own thread) it
/// reads one line and answers `"<name> <peer>\n"`, then closes.
pub fn tcp_name_server(ns: &NetNs, addr: SocketAddrV4, name: &str) -> Result<ServerHandle> {
    ServerHandle::start(name, addr, |stats, name| {
        tcp_server(ns, addr, &format!("tcp-{name}"), move |stream, peer, _| {
            serve_tcp(stream, peer, &name, &stats)
        })
    })
}

fn serve_tcp(stream: TcpStream, peer: SocketAddr, name: &str, stats: &ServerStats) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(MAX_SOCKET_TIMEOUT))?;
    stream.set_write_timeout(Some(MAX_SOCKET_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .context("reading the request line")?;
    stats.record(peer);
    (&stream)
        .write_all(format!("{name} {peer}\n").as_bytes())
        .context("writing the answer")?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

/// Starts a UDP name server on `addr` inside `ns`: each datagram is answered with
/// `"<name> <peer>\n"` sent back to its source.
pub fn udp_name_server(ns: &NetNs, addr: SocketAddrV4, name: &str) -> Result<ServerHandle> {
    let socket = ns
        .run(|| UdpSocket::bind(addr))?
        .with_context(|| format!("binding UDP {addr} in {}", ns.name()))?;
    socket.set_read_timeout(Some(STOP_POLL))?;
    ServerHandle::start(name, addr, |stats, name| {
        Stoppable::spawn(&format!("udp-{name}"), move |stop| {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                match socket.recv_from(&mut buf) {
                    Ok((_, peer)) => {
                        stats.record(peer);
                        if let Err(e) = socket.send_to(format!("{name} {peer}\n").as_bytes(), peer)
                        {
                            eprintln!("udp server {name}: answering {peer}: {e}");
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => {
                        eprintln!("udp server {name}: recv: {e}");
                        std::thread::sleep(STOP_POLL);
                    }
                }
            }
        })
    })
}

fn local_v4(addr: SocketAddr) -> Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => bail!("unexpected IPv6 address {a}"),
    }
}

/// Opens a TCP connection to `to` from inside `ns`, bound to `from` when given, with connect,
/// read and write timeouts of `timeout` (at most 2 s). The socket stays in `ns`.
pub fn tcp_connect(
    ns: &NetNs,
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream> {
    ns.run(|| connect_here(from, to, timeout))?
}

/// [`tcp_connect`] in the calling thread's namespace.
fn connect_here(
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<TcpStream> {
    let timeout = clamp(timeout);
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let Some(from) = from {
        socket
            .bind(&SocketAddr::V4(from).into())
            .with_context(|| format!("binding {from}"))?;
    }
    socket
        .connect_timeout(&SocketAddr::V4(to).into(), timeout)
        .with_context(|| match from {
            Some(from) => format!("connecting {from} -> {to}"),
            None => format!("connecting to {to}"),
        })?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Sends `request` plus a newline on `stream` and reads one answer line.
pub fn tcp_exchange(stream: &TcpStream, request: &str) -> Result<Reply> {
    let local = local_v4(stream.local_addr()?)?;
    let peer = stream.peer_addr()?;
    (&*stream)
        .write_all(format!("{request}\n").as_bytes())
        .with_context(|| format!("{local} -> {peer}: sending"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("{local} -> {peer}: reading the answer"))?;
    if line.is_empty() {
        bail!("{local} -> {peer}: connection closed without an answer");
    }
    Reply::parse(&line, local)
}

/// One TCP request from inside `ns`: connect (bound to `from` if given), send a line, read the
/// answer.
pub fn tcp_request(
    ns: &NetNs,
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    timeout: Duration,
) -> Result<Reply> {
    ns.run(|| connect_here(from, to, timeout).and_then(|s| tcp_exchange(&s, "hello")))?
}

/// `count` sequential TCP requests from inside `ns`, each on a new connection, all on one thread.
///
/// Source: with `from = None` the kernel picks a fresh ephemeral port each time; with
/// `Some(a:p)` request `i` is bound to `a:(p+i)` (so phases of a test never reuse a 5-tuple).
/// Stops early when `overall` has passed or after [`MAX_CONSECUTIVE_FAILURES`] failures in a
/// row, so the result can be shorter than `count`.
pub fn tcp_requests(
    ns: &NetNs,
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    count: usize,
    timeout: Duration,
    overall: Duration,
) -> Result<Vec<Result<Reply>>> {
    let sources = sources(from, count)?;
    ns.run(|| {
        bounded_batch(sources, overall, |src| {
            connect_here(src, to, timeout).and_then(|s| tcp_exchange(&s, "hello"))
        })
    })
}

/// One request from each source in turn (`one`), all on the calling thread, until `overall` has
/// passed or after [`MAX_CONSECUTIVE_FAILURES`] failures in a row.
fn bounded_batch(
    sources: Vec<Option<SocketAddrV4>>,
    overall: Duration,
    mut one: impl FnMut(Option<SocketAddrV4>) -> Result<Reply>,
) -> Vec<Result<Reply>> {
    let deadline = Instant::now() + overall;
    let mut results = Vec::with_capacity(sources.len());
    let mut failures_in_a_row = 0;
    for src in sources {
        if Instant::now() >= deadline || failures_in_a_row >= MAX_CONSECUTIVE_FAILURES {
            break;
        }
        let result = one(src);
        failures_in_a_row = if result.is_ok() {
            0
        } else {
            failures_in_a_row + 1
        };
        results.push(result);
    }
    results
}

fn sources(from: Option<SocketAddrV4>, count: usize) -> Result<Vec<Option<SocketAddrV4>>> {
    (0..count)
        .map(|i| match from {
            None => Ok(None),
            Some(a) if a.port() == 0 => Ok(Some(a)),
            Some(a) => {
                let port = usize::from(a.port()) + i;
                let port =
                    u16::try_from(port).with_context(|| format!("source port {port} > 65535"))?;
                Ok(Some(SocketAddrV4::new(*a.ip(), port)))
            }
        })
        .collect()
}

/// One UDP request from inside `ns` on a new socket (bound to `from` if given, connected to
/// `to`): up to `tries` sends, each waiting `timeout` (at most 2 s) for the answer.
pub fn udp_request(
    ns: &NetNs,
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    timeout: Duration,
    tries: usize,
) -> Result<Reply> {
    ns.run(|| udp_request_here(from, to, timeout, tries).0)?
}

/// `count` UDP requests from inside `ns`, each from a new socket (fresh source port unless
/// `from` pins one, then as in [`tcp_requests`]). Stops early as [`tcp_requests`] does.
pub fn udp_requests(
    ns: &NetNs,
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    count: usize,
    timeout: Duration,
    tries: usize,
    overall: Duration,
) -> Result<Vec<Result<Reply>>> {
    let sources = sources(from, count)?;
    ns.run(|| {
        let mut open = Vec::with_capacity(count);
        let results = bounded_batch(sources, overall, |src| {
            let (result, socket) = udp_request_here(src, to, timeout, tries);
            // Held to the end, so that no later request of the batch gets this port: each
            // request is a flow of its own.
            open.extend(socket);
            result
        });
        drop(open);
        results
    })
}

/// One request (see [`udp_request`]), with its socket if it was bound, for the caller to hold.
fn udp_request_here(
    from: Option<SocketAddrV4>,
    to: SocketAddrV4,
    timeout: Duration,
    tries: usize,
) -> (Result<Reply>, Option<UdpSocket>) {
    let bind = from.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let socket = match UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}")) {
        Ok(s) => s,
        Err(e) => return (Err(e), None),
    };
    let result = udp_exchange(&socket, to, timeout, tries);
    (result, Some(socket))
}

fn udp_exchange(
    socket: &UdpSocket,
    to: SocketAddrV4,
    timeout: Duration,
    tries: usize,
) -> Result<Reply> {
    socket
        .connect(to)
        .with_context(|| format!("connecting UDP socket to {to}"))?;
    socket.set_read_timeout(Some(clamp(timeout)))?;
    let local = local_v4(socket.local_addr()?)?;
    let mut buf = [0u8; 2048];
    let mut last = None;
    for _ in 0..tries.max(1) {
        if let Err(e) = socket.send(b"hello\n") {
            last = Some(e);
            continue;
        }
        match socket.recv(&mut buf) {
            Ok(n) => return Reply::parse(&String::from_utf8_lossy(&buf[..n]), local),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => {
            Err(e).with_context(|| format!("{local} -> {to}: no UDP answer in {tries} tries"))
        }
        None => bail!("{local} -> {to}: no UDP answer"),
    }
}

/// How many replies each server gave, by name.
pub fn count_by_name(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in replies {
        *counts.entry(r.name.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that each of `names` answered a number of the `total` requests within `share` (in
/// per cent, inclusive): the spread of a balanced VIP.
pub fn assert_spread(
    counts: &BTreeMap<String, usize>,
    names: &[&str],
    total: usize,
    share: RangeInclusive<usize>,
) {
    let (lo, hi) = (total * share.start() / 100, total * share.end() / 100);
    for name in names {
        let n = counts.get(*name).copied().unwrap_or(0);
        assert!(
            (lo..=hi).contains(&n),
            "{name} got {n} of {total} (want {}-{} %): {counts:?}",
            share.start(),
            share.end()
        );
    }
}

/// For tests: asserts that there are `count` results and all are Ok; shows the first errors otherwise.
pub fn all_ok(results: Vec<Result<Reply>>, count: usize) -> Vec<Reply> {
    let total = results.len();
    let (ok, errs): (Vec<_>, Vec<_>) = results.into_iter().partition(|r| r.is_ok());
    let errs: Vec<String> = errs
        .into_iter()
        .filter_map(|r| r.err())
        .take(5)
        .map(|e| format!("{e:#}"))
        .collect();
    assert!(
        total == count && errs.is_empty(),
        "{} of {count} requests answered ({total} attempted within the time limit); first errors:\n{}",
        ok.len(),
        errs.join("\n")
    );
    ok.into_iter().filter_map(Result::ok).collect()
}
