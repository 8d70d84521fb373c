//! Long TCP transfers for the restart and upgrade tests: an echo server on a backend, and a
//! client that sends numbered 1 KiB chunks through the VIP for a fixed time and checks that each
//! comes back intact, so a reset, a stall longer than the socket timeout or a lost or altered
//! byte ends it with an error; [`TransferLab`], the network of such a test in each mode.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::dsr::ModeTopology;
use crate::peers::MAX_SOCKET_TIMEOUT;
use crate::procs::{Lbd, Proto, StartOptions};
use crate::server::{tcp_server, Stoppable};
use crate::topology::{Topology, VIP};
use xdplb_testkit::NetNs;

/// Bytes per chunk.
pub const CHUNK: usize = 1024;
/// Pause between two chunks: about 100 round trips a second, gentle on a 2-CPU VM.
const PACE: Duration = Duration::from_millis(10);

/// A TCP echo server (everything read is written back) listening inside a namespace; dropping
/// it stops accepting and ends its connections within ~200 ms.
pub struct EchoServer {
    accepted: Arc<AtomicUsize>,
    _server: Stoppable,
}

impl EchoServer {
    /// Listens on `addr` inside `ns` (DSR backends: `0.0.0.0:PORT`, so that the VIP on `lo` is
    /// served too).
    pub fn start(ns: &NetNs, addr: SocketAddrV4) -> Result<EchoServer> {
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = {
            let accepted = accepted.clone();
            tcp_server(ns, addr, "echo", move |stream, _, stop| {
                accepted.fetch_add(1, Ordering::SeqCst);
                echo(stream, stop);
                Ok(())
            })?
        };
        Ok(EchoServer {
            accepted,
            _server: server,
        })
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn echo(mut s: TcpStream, stop: &AtomicBool) {
    if s.set_nonblocking(false).is_err()
        || s.set_read_timeout(Some(Duration::from_millis(200)))
            .is_err()
        || s.set_write_timeout(Some(MAX_SOCKET_TIMEOUT)).is_err()
    {
        return;
    }
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

/// A transfer running in a client thread: numbered chunks to the echo server behind `vip`, each
/// checked on its way back.
pub struct Transfer {
    verified: Arc<AtomicUsize>,
    thread: JoinHandle<Result<usize>>,
}

impl Transfer {
    /// Connects from `client` to `vip` (within [`MAX_SOCKET_TIMEOUT`]) and starts sending for
    /// `duration`. Returns once the connection is up and the first chunk came back, so that the
    /// flow is in the LB's flow table before the caller restarts anything.
    pub fn start(client: &NetNs, vip: SocketAddrV4, duration: Duration) -> Result<Transfer> {
        let verified = Arc::new(AtomicUsize::new(0));
        let thread = {
            let verified = verified.clone();
            client.spawn("transfer", move || -> Result<usize> {
                let mut s = TcpStream::connect_timeout(&vip.into(), MAX_SOCKET_TIMEOUT)
                    .with_context(|| format!("connecting to {vip}"))?;
                s.set_read_timeout(Some(MAX_SOCKET_TIMEOUT))?;
                s.set_write_timeout(Some(MAX_SOCKET_TIMEOUT))?;
                run(&mut s, duration, &verified)
            })?
        };
        let t = Transfer { verified, thread };
        let deadline = Instant::now() + MAX_SOCKET_TIMEOUT * 2;
        while t.verified() == 0 {
            if t.thread.is_finished() {
                return Err(t.finish().err().unwrap_or_else(|| anyhow!("ended at once")))
                    .context("the transfer did not start");
            }
            if Instant::now() > deadline {
                bail!("no chunk came back within {:?}", MAX_SOCKET_TIMEOUT * 2);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(t)
    }

    /// Bytes sent and verified so far.
    pub fn verified(&self) -> usize {
        self.verified.load(Ordering::SeqCst)
    }

    /// Whether the transfer is over (done or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until the transfer has verified `bytes` more bytes than now (it still flows), at
    /// most `limit`.
    pub fn wait_progress(&self, bytes: usize, limit: Duration) -> Result<()> {
        let target = self.verified() + bytes;
        let deadline = Instant::now() + limit;
        while self.verified() < target {
            if self.is_finished() {
                bail!("the transfer ended after {} bytes", self.verified());
            }
            if Instant::now() > deadline {
                bail!(
                    "the transfer stalled: {} bytes, waiting for {target} for {limit:?}",
                    self.verified()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits for the end; the bytes verified, or the first error (reset, timeout, altered data).
    pub fn finish(self) -> Result<usize> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the transfer thread panicked"))?
    }
}

fn run(stream: &mut TcpStream, duration: Duration, verified: &AtomicUsize) -> Result<usize> {
    let start = Instant::now();
    let mut seq: u32 = 0;
    let mut back = vec![0u8; CHUNK];
    while start.elapsed() < duration {
        let chunk: Vec<u8> = (0..CHUNK).map(|i| (seq as usize * 7 + i) as u8).collect();
        stream
            .write_all(&chunk)
            .with_context(|| format!("writing chunk {seq} after {:?}", start.elapsed()))?;
        stream
            .read_exact(&mut back)
            .with_context(|| format!("reading chunk {seq} after {:?}", start.elapsed()))?;
        if back != chunk {
            bail!("chunk {seq} came back altered");
        }
        verified.fetch_add(CHUNK, Ordering::SeqCst);
        seq += 1;
        std::thread::sleep(PACE);
    }
    Ok(verified.load(Ordering::SeqCst))
}

/// The network of a transfer test in one forwarding mode, with the echo server running on its
/// one backend: `nat` on the two-arm topology (the backend on port 8080), `l2dsr` and `ipip` on
/// a one-arm [`ModeTopology`] (the backend on the VIP's port 80, prepared by `backend-setup`).
pub struct TransferLab {
    // First: the server stops before the namespaces go.
    server: EchoServer,
    net: LabNet,
    mode: &'static str,
    backend: SocketAddrV4,
    config: String,
}

enum LabNet {
    TwoArm(Topology),
    Mode(ModeTopology),
}

impl TransferLab {
    /// Builds it for `mode` (`nat`, `l2dsr` or `ipip`).
    pub fn build(mode: &'static str) -> Result<TransferLab> {
        let (net, backend, listen) = match mode {
            "nat" => {
                let topo = Topology::two_arm(1)?;
                let backend = SocketAddrV4::new(topo.backend(1).addr, 8080);
                (LabNet::TwoArm(topo), backend, backend)
            }
            _ => {
                let topo = ModeTopology::one_arm(mode, 1)?;
                let backend = topo.backend_addr(1, 80);
                let listen = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 80);
                (LabNet::Mode(topo), backend, listen)
            }
        };
        let topo = match &net {
            LabNet::TwoArm(t) => t,
            LabNet::Mode(m) => &m.topo,
        };
        let server = EchoServer::start(&topo.backend(1).ns, listen)?;
        let config = topo.lbd_config();
        Ok(TransferLab {
            server,
            net,
            mode,
            backend,
            config,
        })
    }

    /// The topology.
    pub fn topo(&self) -> &Topology {
        match &self.net {
            LabNet::TwoArm(t) => t,
            LabNet::Mode(m) => &m.topo,
        }
    }

    pub fn lb(&self) -> &NetNs {
        self.topo().lb()
    }

    pub fn client(&self) -> &NetNs {
        self.topo().client()
    }

    /// `nat`, `l2dsr` or `ipip`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// The backend as registered with lbd.
    pub fn backend(&self) -> SocketAddrV4 {
        self.backend
    }

    /// The echo server.
    pub fn server(&self) -> &EchoServer {
        &self.server
    }

    /// Starts an lbd on the state directory `state` that keeps its pins on exit (the first lbd
    /// of a restart), with the VIP `VIP:80` (TCP, default mode) and the lab's backend, and a
    /// [`Transfer`] of `duration` through it.
    pub fn start_lbd_under_transfer(
        &self,
        state: &Path,
        duration: Duration,
    ) -> Result<(Lbd, Transfer)> {
        let lbd = Lbd::start_with(self.lb(), self.config(), &StartOptions::keep(state))?;
        let vip = SocketAddrV4::new(VIP, 80);
        lbd.add_vip(vip, Proto::Tcp).context("vip add")?;
        lbd.add_backend(vip, Proto::Tcp, self.backend)
            .context("backend add")?;
        let transfer = Transfer::start(self.client(), vip, duration).context("transfer")?;
        Ok((lbd, transfer))
    }

    /// The lbd configuration, the same (pin path included) for every lbd of the test.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The pinned XDP link of each interface lbd attaches to.
    pub fn link_pins(&self) -> Vec<std::path::PathBuf> {
        let pin_path = self
            .config
            .lines()
            .find_map(|l| l.strip_prefix("pin_path = "))
            .map(|p| p.trim_matches('"').to_string())
            .unwrap_or_default();
        self.topo()
            .lb_interfaces()
            .iter()
            .map(|i| std::path::Path::new(&pin_path).join(format!("link_{i}")))
            .collect()
    }
}

/// A NAT [`TransferLab`], a fresh state directory and the lab's first lbd in it, keeping its
/// pins on exit and carrying a 5 s [`Transfer`]: where the tests that have a later lbd refuse to
/// take over begin. Bound in this order, they drop from the last: transfer, lbd, state, lab.
pub fn nat_handover() -> Result<(TransferLab, tempfile::TempDir, Lbd, Transfer)> {
    let lab = TransferLab::build("nat").context("topology")?;
    let state = tempfile::tempdir().context("state dir")?;
    let (first, transfer) = lab
        .start_lbd_under_transfer(state.path(), Duration::from_secs(5))
        .context("first lbd with the VIP, a transfer through it")?;
    Ok((lab, state, first, transfer))
}
