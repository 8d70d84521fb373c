//! `lbctl backend drain --wait`, end to end: a real lbd (NAT, two-arm topology, two backends
//! with echo servers), a real TCP client through the VIP, and lbctl run as an operator runs it.
//!
//! - While a connection to the drained backend is open, `drain --wait` keeps waiting (it counts
//!   the backend's live flows, the open connection's), the connection keeps carrying
//!   byte-checked data, and every new connection goes to the other backend. Once the client
//!   closes, the flow is marked closing on its FIN and stops being live after
//!   `[timeouts] tcp_closing` (1 s here); `drain --wait` sees zero at its next count (lbd counts
//!   once a second) and exits 0.
//! - With the connection held open, `--wait-timeout 2s` gives up after 2 s with exit status 3
//!   and says how many flows are left; the backend stays drained and the connection works on.
//!   A drain of a backend the VIP does not have is refused (exit 1).
//!
//! Run as root: `cargo test -p xdplb-integration --test drain -- --test-threads=1`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use xdplb_integration::procs::bin_dir;
use xdplb_integration::transfer::EchoServer;
use xdplb_integration::{tcp_connect, Lbd, Proto, Topology, VIP};

const TIMEOUT: Duration = Duration::from_secs(2);
const PORT: u16 = 8080;
/// `[timeouts] tcp_closing` of these tests: a closed flow stops being live this long after its
/// last packet.
const CLOSING: Duration = Duration::from_secs(1);
/// lbd counts a drained backend's flows once a second (WatchDrain's default interval).
const COUNT_INTERVAL: Duration = Duration::from_secs(1);
/// lbctl starting, the map walk, a loaded 2-CPU machine.
const SLACK: Duration = Duration::from_secs(3);
/// Bytes per byte-checked exchange.
const EXCHANGE: usize = 16 * 1024;

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

/// Two backends with an echo server each, and lbd serving the TCP VIP with both.
///
/// Field order is drop order: lbd stops, then the servers, then the namespaces go.
struct Lab {
    lbd: Lbd,
    servers: Vec<EchoServer>,
    backends: Vec<SocketAddrV4>,
    topo: Topology,
}

impl Lab {
    fn start() -> Lab {
        let topo = Topology::two_arm(2).expect("topology");
        let backends = topo.backend_addrs(PORT);
        let servers = topo
            .on_each_backend(|b| EchoServer::start(&b.ns, SocketAddrV4::new(b.addr, PORT)))
            .expect("echo servers");
        let config = topo
            .lbd_config()
            .replace("tcp_closing = \"10s\"", "tcp_closing = \"1s\"");
        assert!(config.contains("tcp_closing = \"1s\""), "{config}");
        let lbd = Lbd::start(topo.lb(), &config).expect("lbd starts");
        lbd.add_vip(vip(), Proto::Tcp).expect("vip add");
        for b in &backends {
            lbd.add_backend(vip(), Proto::Tcp, *b).expect("add backend");
        }
        Lab {
            lbd,
            servers,
            backends,
            topo,
        }
    }

    fn accepted(&self) -> Vec<usize> {
        self.servers.iter().map(EchoServer::accepted).collect()
    }

    /// A connection through the VIP, one byte-checked exchange done, and the index of the
    /// backend that accepted it.
    fn connect(&self, tag: u8) -> (TcpStream, usize) {
        let before = self.accepted();
        let stream = tcp_connect(self.topo.client(), None, vip(), TIMEOUT).expect("connect");
        exchange(&stream, tag);
        // The server counts the connection in its own thread: it has, by the time it echoed.
        let after = self.accepted();
        let took: Vec<usize> = (0..after.len()).filter(|&i| after[i] > before[i]).collect();
        assert_eq!(
            took.len(),
            1,
            "one backend accepted the connection: before {before:?}, after {after:?}"
        );
        (stream, took[0])
    }

    /// `backend list --json`: (weight, tracked flows) of `backend`.
    fn backend_row(&self, backend: SocketAddrV4) -> (u64, u64) {
        let v = self
            .lbd
            .backend_list(vip(), Proto::Tcp)
            .expect("backend list");
        let row = v["backends"]
            .as_array()
            .and_then(|rows| {
                rows.iter().find(|r| {
                    r["address"] == backend.ip().to_string()
                        && r["port"] == u64::from(backend.port())
                })
            })
            .unwrap_or_else(|| panic!("no {backend} in {v}"));
        (
            row["weight"].as_u64().expect("weight"),
            row["tracked_flows"].as_u64().expect("tracked_flows"),
        )
    }
}

/// Sends [`EXCHANGE`] bytes of a pattern keyed by `tag` and checks that exactly those come back.
fn exchange(stream: &TcpStream, tag: u8) {
    let data: Vec<u8> = (0..EXCHANGE)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(tag))
        .collect();
    (&*stream)
        .write_all(&data)
        .expect("sending through the VIP");
    let mut back = vec![0u8; EXCHANGE];
    (&*stream)
        .read_exact(&mut back)
        .expect("reading the echo through the VIP");
    assert!(
        back == data,
        "exchange {tag}: the echo differs from what was sent"
    );
}

/// `lbctl backend drain ... --wait` running in the background; killed on drop if still running.
struct Drain {
    child: Child,
    started: Instant,
    out: PathBuf,
    err: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drain {
    fn start(lbd: &Lbd, backend: SocketAddrV4, extra: &[&str]) -> Drain {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (out, err) = (dir.path().join("out"), dir.path().join("err"));
        let child = Command::new(bin_dir().expect("bin dir").join("lbctl"))
            .arg("--socket")
            .arg(lbd.socket())
            .args(["backend", "drain", "--vip", &vip().to_string()])
            .args(["--proto", "tcp", &backend.to_string(), "--wait"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"))
            .spawn()
            .expect("lbctl runs");
        Drain {
            child,
            started: Instant::now(),
            out,
            err,
            _dir: dir,
        }
    }

    fn output(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default(),
        )
    }

    fn finished(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("polling lbctl")
    }

    /// Polls until `what` shows in stdout, at most `limit`.
    fn wait_for_output(&mut self, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.output().0.contains(what) {
            assert!(
                Instant::now() < deadline && self.finished().is_none(),
                "lbctl printed no {what:?} within {limit:?}: {:?}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits at most `limit` for lbctl to exit.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.finished() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if self.finished().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn drain_wait_returns_once_the_open_connection_closes() {
    let lab = Lab::start();
    let (conn, idx) = lab.connect(0);
    let (drained, other) = (lab.backends[idx], lab.backends[1 - idx]);

    let mut drain = Drain::start(&lab.lbd, drained, &["--wait-timeout", "30s"]);
    drain.wait_for_output(
        &format!("backend {drained} of {}/tcp: 1 tracked flows", vip()),
        TIMEOUT + SLACK,
    );
    // Waiting, not done: the open connection is a live flow of the drained backend.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        drain.finished().is_none(),
        "drain --wait returned with a connection open: {:?}",
        drain.output()
    );
    assert_eq!(lab.backend_row(drained), (0, 1), "weight 0, one live flow");

    // The open connection still carries data, to the drained backend; new ones go elsewhere.
    for tag in 1..=5 {
        exchange(&conn, tag);
    }
    let before = lab.accepted();
    for tag in 10..20 {
        let (c, to) = lab.connect(tag);
        assert_eq!(
            to,
            1 - idx,
            "a new connection went to the drained {drained}"
        );
        c.shutdown(Shutdown::Both).expect("close");
    }
    let after = lab.accepted();
    assert_eq!(
        after[idx], before[idx],
        "the drained backend took no new connection"
    );
    assert_eq!(
        after[1 - idx],
        before[1 - idx] + 10,
        "{other} took every new one"
    );
    assert!(
        drain.finished().is_none(),
        "drain --wait returned while its connection was open: {:?}",
        drain.output()
    );

    // Close: FIN both ways, the flow stops being live after `tcp_closing`, and the next count
    // finds none.
    exchange(&conn, 99);
    conn.shutdown(Shutdown::Both).expect("close the connection");
    drop(conn);
    let closed = Instant::now();
    let bound = CLOSING + COUNT_INTERVAL + SLACK;
    let status = drain.wait(bound).unwrap_or_else(|| {
        panic!(
            "drain --wait still running {bound:?} after the connection closed: {:?}\nlbd log:\n{}",
            drain.output(),
            lab.lbd.log_text()
        )
    });
    let after_close = closed.elapsed();
    let (out, err) = drain.output();
    assert_eq!(status.code(), Some(0), "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!(
            "backend {drained} of {}/tcp is drained: no tracked flows left",
            vip()
        )),
        "{out}"
    );
    assert!(
        after_close >= CLOSING - Duration::from_millis(100),
        "drained {after_close:?} after the close, before the closing timeout"
    );
    eprintln!(
        "drain --wait: exit 0 {after_close:?} after the close ({:?} in all)\n{out}",
        drain.started.elapsed()
    );
    assert_eq!(
        lab.backend_row(drained),
        (0, 0),
        "still drained, no flow left"
    );
}

#[test]
fn drain_wait_timeout_leaves_the_open_connection_and_exits_3() {
    let lab = Lab::start();
    let (conn, idx) = lab.connect(0);
    let drained = lab.backends[idx];

    let mut drain = Drain::start(&lab.lbd, drained, &["--wait-timeout", "2s"]);
    let limit = Duration::from_secs(2) + COUNT_INTERVAL + SLACK;
    let status = drain
        .wait(limit)
        .unwrap_or_else(|| panic!("drain --wait-timeout 2s still running after {limit:?}"));
    let took = drain.started.elapsed();
    let (out, err) = drain.output();
    assert_eq!(status.code(), Some(3), "stdout: {out}\nstderr: {err}");
    assert!(
        err.contains(&format!(
            "timed out after 2s waiting for backend {drained} of {}/tcp to drain: 1 tracked flows left",
            vip()
        )),
        "stderr: {err}"
    );
    assert!(
        took >= Duration::from_secs(2),
        "exit 3 after {took:?}, before the 2 s limit"
    );
    eprintln!("drain --wait-timeout 2s: exit 3 after {took:?}\n{out}{err}");

    // The drain stays in effect and the connection works on.
    assert_eq!(lab.backend_row(drained), (0, 1));
    for tag in 1..=3 {
        exchange(&conn, tag);
    }

    // A backend the VIP does not have: refused, exit 1, before any waiting.
    let stranger = SocketAddrV4::new(*lab.backends[0].ip(), PORT + 1);
    let mut refused = Drain::start(&lab.lbd, stranger, &["--wait-timeout", "30s"]);
    let status = refused
        .wait(TIMEOUT + SLACK)
        .expect("a refused drain returns at once");
    let (out, err) = refused.output();
    assert_eq!(status.code(), Some(1), "stdout: {out}\nstderr: {err}");
    assert!(err.contains(&stranger.to_string()), "stderr: {err}");
    drop(conn);
}
