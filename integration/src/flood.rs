//! What the SYN-flood tests run: [`SynFlood`], a raw-socket generator of SYNs from spoofed
//! sources (bounded in packets and time); [`BulkTransfer`], a long TCP transfer through the VIP
//! whose echo is checked by length and CRC-32; [`IdleConnections`], connections opened before a
//! flood that must each answer afterwards; [`connections_during`], new connections spread over
//! a flood; and [`with_keys`], an lbd configuration with extra keys.
//!
//! Everything is written against behaviour (packets, replies, lbctl's counters), never against
//! the data plane's map names or layouts. Every socket timeout is at most
//! [`MAX_SOCKET_TIMEOUT`]; every loop is bounded.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::peers::MAX_SOCKET_TIMEOUT;
use xdplb_testkit::gen::Rng;
use xdplb_testkit::packet::{Packet, TCP_SYN};
use xdplb_testkit::NetNs;

// ---------------------------------------------------------------------------------------
// The SYN flood

/// A flood of SYNs to `target`, each from another spoofed source of the /16 `sources`: a
/// permutation of its 65,536 addresses, with source ports from a counter, so that no two
/// packets of a flood of up to 3.9 billion share a 5-tuple.
#[derive(Debug, Clone, Copy)]
pub struct SynFlood {
    pub target: SocketAddrV4,
    /// The first address of a /16 (e.g. 10.201.0.0).
    pub sources: Ipv4Addr,
    /// At most this many packets...
    pub packets: u64,
    /// ...and for at most this long.
    pub time: Duration,
}

/// What a flood sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodOutcome {
    pub sent: u64,
    pub took: Duration,
}

impl FloodOutcome {
    /// Packets per second, sender side.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for FloodOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} spoofed SYNs in {:.2?} ({:.0} pps offered, sender side)",
            self.sent,
            self.took,
            self.rate()
        )
    }
}

impl SynFlood {
    /// The `i`-th packet's source.
    pub fn source(&self, i: u32) -> SocketAddrV4 {
        let host = i.wrapping_mul(40503) & 0xffff;
        let base = u32::from(self.sources) & 0xffff_0000;
        SocketAddrV4::new(
            Ipv4Addr::from(base | host),
            1024 + ((i >> 16) % 60000) as u16,
        )
    }

    /// The `i`-th packet: an IPv4 + TCP SYN (valid checksums), as a raw socket sends it.
    pub fn packet(&self, i: u32) -> Vec<u8> {
        Packet::tcp([0; 6], [0; 6], self.source(i), self.target, TCP_SYN)
            .with_seq_ack(i.wrapping_mul(2_654_435_761), 0)
            .ip_bytes()
    }

    /// Runs the flood on a thread inside `ns` until its bounds or `stop`.
    pub fn spawn(
        self,
        ns: &NetNs,
        stop: Arc<AtomicBool>,
    ) -> Result<JoinHandle<Result<FloodOutcome>>> {
        ns.spawn("syn-flood", move || self.run(&stop))
    }

    /// Runs the flood on the calling thread (its namespace) until its bounds or `stop`.
    pub fn run(&self, stop: &AtomicBool) -> Result<FloodOutcome> {
        let sock = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(libc::IPPROTO_RAW)),
        )
        .context("raw socket (needs root)")?;
        let dst = SockAddr::from(SocketAddrV4::new(*self.target.ip(), 0));
        let start = Instant::now();
        let mut sent = 0u64;
        let mut i = 0u32;
        while sent < self.packets && start.elapsed() < self.time && !stop.load(Ordering::Relaxed) {
            match sock.send_to(&self.packet(i), &dst) {
                Ok(_) => {
                    sent += 1;
                    i = i.wrapping_add(1);
                }
                // The qdisc is full: let it drain, then send the same packet again.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(e) => return Err(e).context("sending a SYN"),
            }
        }
        Ok(FloodOutcome {
            sent,
            took: start.elapsed(),
        })
    }
}

// ---------------------------------------------------------------------------------------
// A long transfer, checked by length and hash

/// Bytes per write of a [`BulkTransfer`].
const BULK_CHUNK: usize = 64 * 1024;

/// The bytes of chunk `k` of a bulk transfer: reproducible pseudo-random data.
fn bulk_chunk(k: usize) -> Vec<u8> {
    let mut rng = Rng(0x5eed_0000_0000_0001 ^ (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut out = Vec::with_capacity(BULK_CHUNK);
    while out.len() < BULK_CHUNK {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out
}

/// A TCP transfer through the VIP to an echo server: `bytes` of pseudo-random data written
/// (paced to last at least `at_least`), everything read back; both directions' CRC-32 and
/// lengths are compared at the end.
pub struct BulkTransfer {
    received: Arc<AtomicUsize>,
    total: usize,
    thread: JoinHandle<Result<BulkOutcome>>,
}

/// A finished transfer: bytes each way, CRC-32 of each way, how long it took.
#[derive(Debug, Clone, Copy)]
pub struct BulkOutcome {
    pub sent: usize,
    pub received: usize,
    pub sent_crc: u32,
    pub received_crc: u32,
    pub took: Duration,
}

impl BulkOutcome {
    /// Whether every byte came back as sent.
    pub fn intact(&self) -> bool {
        self.sent == self.received && self.sent_crc == self.received_crc
    }
}

impl BulkTransfer {
    /// Connects from `client` to `vip` and starts; returns once the first chunk came back, so
    /// that the flow is established in the LB before the caller floods it.
    pub fn start(
        client: &NetNs,
        vip: SocketAddrV4,
        bytes: usize,
        at_least: Duration,
    ) -> Result<BulkTransfer> {
        let received = Arc::new(AtomicUsize::new(0));
        let chunks = bytes.div_ceil(BULK_CHUNK);
        let thread = {
            let received = received.clone();
            client.spawn("bulk-transfer", move || -> Result<BulkOutcome> {
                let stream = TcpStream::connect_timeout(&vip.into(), MAX_SOCKET_TIMEOUT)
                    .with_context(|| format!("connecting to {vip}"))?;
                stream.set_read_timeout(Some(MAX_SOCKET_TIMEOUT))?;
                stream.set_write_timeout(Some(MAX_SOCKET_TIMEOUT))?;
                bulk(stream, chunks, at_least, &received)
            })?
        };
        let t = BulkTransfer {
            received,
            total: chunks * BULK_CHUNK,
            thread,
        };
        let deadline = Instant::now() + MAX_SOCKET_TIMEOUT * 2;
        while t.received() < BULK_CHUNK.min(t.total) {
            if t.thread.is_finished() {
                return Err(t.finish().err().unwrap_or_else(|| anyhow!("ended at once")))
                    .context("the transfer did not start");
            }
            ensure!(
                Instant::now() < deadline,
                "no chunk came back within {:?}",
                MAX_SOCKET_TIMEOUT * 2
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(t)
    }

    /// Bytes that came back so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Bytes it sends in all.
    pub fn total(&self) -> usize {
        self.total
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the end (bounded by the socket timeouts: a stall of
    /// [`MAX_SOCKET_TIMEOUT`] ends it with an error).
    pub fn finish(self) -> Result<BulkOutcome> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the transfer thread panicked"))?
    }
}

fn bulk(
    stream: TcpStream,
    chunks: usize,
    at_least: Duration,
    received: &AtomicUsize,
) -> Result<BulkOutcome> {
    let start = Instant::now();
    let total = chunks * BULK_CHUNK;
    let mut writer = stream.try_clone().context("cloning the socket")?;
    let sender = std::thread::Builder::new()
        .name("bulk-writer".into())
        .spawn(move || -> Result<(usize, u32)> {
            let mut crc = crc32fast::Hasher::new();
            for k in 0..chunks {
                let due = start + at_least.mul_f64(k as f64 / chunks as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let chunk = bulk_chunk(k);
                writer.write_all(&chunk).with_context(|| {
                    format!("writing chunk {k} of {chunks} after {:?}", start.elapsed())
                })?;
                crc.update(&chunk);
            }
            Ok((total, crc.finalize()))
        })
        .context("spawning the writer")?;
    let mut reader = &stream;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut got = 0usize;
    let read_result: Result<()> = loop {
        if got >= total {
            break Ok(());
        }
        match reader.read(&mut buf) {
            Ok(0) => break Err(anyhow!("closed after {got} of {total} bytes")),
            Ok(n) => {
                crc.update(&buf[..n]);
                got += n;
                received.store(got, Ordering::SeqCst);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                break Err(e).with_context(|| {
                    format!(
                        "reading after {got} of {total} bytes, {:?} in",
                        start.elapsed()
                    )
                })
            }
        }
    };
    if read_result.is_err() {
        // Unblock the writer (it may wait on a full socket) before joining it.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    let written = sender.join().map_err(|_| anyhow!("the writer panicked"))?;
    read_result?;
    let (sent, sent_crc) = written?;
    Ok(BulkOutcome {
        sent,
        received: got,
        sent_crc,
        received_crc: crc.finalize(),
        took: start.elapsed(),
    })
}

// ---------------------------------------------------------------------------------------
// Idle connections and new connections, against an echo server

/// One line out and the same line back on `stream`.
fn echo_line(mut stream: &TcpStream, line: &str) -> Result<()> {
    stream
        .write_all(line.as_bytes())
        .context("sending a line")?;
    let mut back = vec![0u8; line.len()];
    stream.read_exact(&mut back).context("reading the echo")?;
    ensure!(back == line.as_bytes(), "the echo differs from {line:?}");
    Ok(())
}

/// A connection to the echo server behind `vip` from the calling thread's namespace, proven by
/// one echoed line; `what` names it in errors.
fn echoing_connection(vip: SocketAddrV4, what: &str) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&vip.into(), MAX_SOCKET_TIMEOUT)
        .with_context(|| format!("{what}: connecting"))?;
    s.set_read_timeout(Some(MAX_SOCKET_TIMEOUT))?;
    s.set_write_timeout(Some(MAX_SOCKET_TIMEOUT))?;
    echo_line(&s, &format!("{what}\n")).with_context(|| what.to_string())?;
    Ok(s)
}

/// The results of scoped threads, in order (a panic is an error).
fn join_all<T>(handles: Vec<std::thread::ScopedJoinHandle<'_, Result<T>>>) -> Vec<Result<T>> {
    handles
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("panicked"))))
        .collect()
}

/// Connections to an echo server behind the VIP, each proven by one echoed line when opened,
/// then left idle.
pub struct IdleConnections {
    conns: Vec<TcpStream>,
}

impl IdleConnections {
    /// Opens `count` connections from `client` to `vip`, one after the other.
    pub fn open(client: &NetNs, vip: SocketAddrV4, count: usize) -> Result<IdleConnections> {
        let conns = client.run(|| {
            (0..count)
                .map(|i| echoing_connection(vip, &format!("idle connection {i}")))
                .collect::<Result<Vec<_>>>()
        })??;
        Ok(IdleConnections { conns })
    }

    /// Each connection echoes one more line, all at once (one thread each, so the whole round
    /// takes at most two socket timeouts); the result of each, in order.
    pub fn answer_all(&self) -> Vec<Result<()>> {
        std::thread::scope(|s| {
            join_all(
                self.conns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| s.spawn(move || echo_line(c, &format!("again {i}\n"))))
                    .collect(),
            )
        })
    }
}

/// `count` new connections from `client` to the echo server behind `vip`, started evenly over
/// `spread` (one thread each), each given [`MAX_SOCKET_TIMEOUT`] to connect (the kernel's SYN
/// retransmission within it) and as long to echo a line: each one's time, or its error.
pub fn connections_during(
    client: &NetNs,
    vip: SocketAddrV4,
    count: usize,
    spread: Duration,
) -> Result<JoinHandle<Vec<Result<Duration>>>> {
    client.spawn("new-connections", move || {
        let start = Instant::now();
        std::thread::scope(|s| {
            join_all(
                (0..count)
                    .map(|i| {
                        let due = start + spread.mul_f64(i as f64 / count.max(1) as f64);
                        s.spawn(move || -> Result<Duration> {
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                            let t = Instant::now();
                            echoing_connection(vip, &format!("new connection {i}"))?;
                            Ok(t.elapsed())
                        })
                    })
                    .collect(),
            )
        })
    })
}

// ---------------------------------------------------------------------------------------
// Configuration

/// `config` (lbd's TOML) with `keys` set: (table, key, value), the table created if missing.
pub fn with_keys(config: &str, keys: &[(&str, &str, toml::Value)]) -> Result<String> {
    let mut doc: toml::Table = toml::from_str(config).context("parsing the lbd config")?;
    for (table, key, value) in keys {
        let t = doc
            .entry(table.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(t) = t.as_table_mut() else {
            bail!("[{table}] is not a table in the config");
        };
        t.insert(key.to_string(), value.clone());
    }
    toml::to_string(&doc).context("writing the lbd config")
}
