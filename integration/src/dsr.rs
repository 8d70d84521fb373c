//! DSR test support: the routed topology (a backend behind a router, for IPIP), `lbctl
//! backend-setup` run inside a backend's namespace and undone when its guard drops, a server that
//! answers every line of a connection, the counters that show which way packets went, and
//! [`ModeTopology`]: a one-arm topology whose backends are prepared for nat, l2dsr or ipip.
//!
//! ```text
//!   ns cli  eth0 10.200.60.2/24, .3/24 --- cli0 [        ] lb0 --- eth0 10.200.60.1/24  ns lb (XDP)
//!           default via .1                    [  br0   ]          10.200.61.0/24 via .254
//!                                             [        ] rt0 --- eth0 10.200.60.254/24  ns rt
//!                                                                 eth1 10.200.61.1/24  (forwarding)
//!                                                                   |
//!                                               ns b1  eth0 10.200.61.2/24, default via .1
//! ```
//!
//! The client routes the VIP to the LB; the LB reaches the backend through the router (so the
//! backend is off-link for L2 DSR); the backend's replies go backend -> router -> client, never
//! through the LB.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::peers::MAX_SOCKET_TIMEOUT;
use crate::procs::{bin_dir, Lbd, CTL_TIMEOUT};
use crate::server::{tcp_server, Stoppable};
use crate::topology::{forwarding, link_to_lb, udp_probe, unique_pin_path, Topology};
use xdplb_testkit::cmd::wait_bounded;
use xdplb_testkit::{veth, NetNs};

/// Where `lbctl backend-setup --mode ipip` pins the decap program of interface `dev`.
pub fn decap_pin_dir(dev: &str) -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xdplb-decap").join(dev)
}

// ---------------------------------------------------------------------------------------
// The routed topology

/// Client, LB and router on one bridge; one backend behind the router on its own subnet.
/// Namespaces are removed when it drops (backend first, the LB last).
#[derive(Debug)]
pub struct RoutedTopology {
    backend: NetNs,
    router: NetNs,
    client: NetNs,
    bridge: NetNs,
    lb: NetNs,
}

impl RoutedTopology {
    /// The LB's address (also the SNAT address and the IPIP outer source).
    pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 60, 1);
    /// The router's address on the shared segment.
    pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 60, 254);
    /// The backend, behind the router.
    pub const BACKEND_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 61, 2);
    /// The client's two addresses.
    pub const CLIENT_ADDRS: [Ipv4Addr; 2] =
        [Ipv4Addr::new(10, 200, 60, 2), Ipv4Addr::new(10, 200, 60, 3)];

    /// Builds it (see the module picture) and resolves the LB's neighbours.
    pub fn build() -> Result<RoutedTopology> {
        let lb = NetNs::new("lb")?;
        let client = NetNs::new("cli")?;
        let bridge = NetNs::new("br")?;
        let router = NetNs::new("rt")?;
        let backend = NetNs::new("b1")?;

        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;

        forwarding(&lb)?;
        link_to_lb(&lb, "eth0", &bridge, "lb0")?;
        bridge.ip(&["link", "set", "lb0", "master", "br0"])?;
        lb.ip(&["addr", "add", "10.200.60.1/24", "dev", "eth0"])?;

        veth(&client, "eth0", &bridge, "cli0")?;
        bridge.ip(&["link", "set", "cli0", "master", "br0"])?;
        client.ip(&["addr", "add", "10.200.60.2/24", "dev", "eth0"])?;
        client.ip(&["addr", "add", "10.200.60.3/24", "dev", "eth0"])?;
        client.ip(&["route", "add", "default", "via", "10.200.60.1"])?;

        // The router forwards the backend's replies, whose source (the VIP) it has no route
        // for: reverse-path filtering off.
        forwarding(&router)?;
        veth(&router, "eth0", &bridge, "rt0")?;
        bridge.ip(&["link", "set", "rt0", "master", "br0"])?;
        router.ip(&["addr", "add", "10.200.60.254/24", "dev", "eth0"])?;
        veth(&router, "eth1", &backend, "eth0")?;
        router.ip(&["addr", "add", "10.200.61.1/24", "dev", "eth1"])?;
        for ifname in ["eth0", "eth1"] {
            router.sysctl(&format!("net.ipv4.conf.{ifname}.rp_filter"), "0")?;
        }

        backend.ip(&["addr", "add", "10.200.61.2/24", "dev", "eth0"])?;
        backend.ip(&["route", "add", "default", "via", "10.200.61.1"])?;
        lb.ip(&["route", "add", "10.200.61.0/24", "via", "10.200.60.254"])?;

        let topo = RoutedTopology {
            backend,
            router,
            client,
            bridge,
            lb,
        };
        let mut targets = Self::CLIENT_ADDRS.to_vec();
        targets.extend([Self::ROUTER_ADDR, Self::BACKEND_ADDR]);
        topo.lb
            .run(|| targets.iter().try_for_each(|t| udp_probe(*t)))??;
        Ok(topo)
    }

    pub fn lb(&self) -> &NetNs {
        &self.lb
    }

    pub fn client(&self) -> &NetNs {
        &self.client
    }

    pub fn router(&self) -> &NetNs {
        &self.router
    }

    pub fn bridge(&self) -> &NetNs {
        &self.bridge
    }

    pub fn backend(&self) -> &NetNs {
        &self.backend
    }

    /// An lbd configuration: XDP on the LB's `eth0`, SNAT (and IPIP source) 10.200.60.1.
    pub fn lbd_config(&self) -> String {
        crate::topology::lbd_config(&["eth0".to_string()], &unique_pin_path(), Self::LB_ADDR)
    }
}

// ---------------------------------------------------------------------------------------
// lbctl inside a namespace, and backend-setup guards

/// What a finished lbctl run printed.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `nsenter --net=<ns> lbctl args...` (nsenter, not `ip netns exec`, which would hide
/// /sys/fs/bpf) for at most [`CTL_TIMEOUT`]; any exit code is returned, not turned into an error.
pub fn lbctl_in(ns: &NetNs, args: &[&str]) -> Result<CtlOutput> {
    lbctl_at(&ns.path(), ns.name(), args)
}

/// [`lbctl_in`] by the namespace's path (`name` for the messages), for guards that outlive
/// their borrow of the namespace.
fn lbctl_at(ns_path: &Path, ns_name: &str, args: &[&str]) -> Result<CtlOutput> {
    let lbctl = bin_dir()?.join("lbctl");
    if !lbctl.is_file() {
        bail!(
            "{} not found: build it first (`cargo build -p lbctl`)",
            lbctl.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("xdplb-lbctl-")
        .tempdir()
        .context("temporary directory for lbctl's output")?;
    let (out_path, err_path) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", ns_path.display()))
        .arg(&lbctl)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("spawning lbctl in {ns_name}"))?;
    let Some(status) = wait_bounded(&mut child, CTL_TIMEOUT)? else {
        bail!(
            "`lbctl {}` in {ns_name} did not finish within {CTL_TIMEOUT:?}",
            args.join(" "),
        );
    };
    Ok(CtlOutput {
        code: status.code(),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

/// [`lbctl_at`] that must exit 0: what it printed, else an error with both outputs.
fn lbctl_ok_at(ns_path: &Path, ns_name: &str, args: &[&str]) -> Result<String> {
    let out = lbctl_at(ns_path, ns_name, args)?;
    if !out.success() {
        bail!(
            "`lbctl {}` in {ns_name} failed ({:?})\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.code,
            out.stdout.trim(),
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// A backend prepared with `lbctl backend-setup`; dropping it runs `--undo` (a failure there is
/// only printed). Drop it before its namespace.
#[derive(Debug)]
pub struct BackendSetup {
    ns_path: PathBuf,
    ns_name: String,
    args: Vec<String>,
    /// What `backend-setup` printed.
    pub output: String,
    armed: bool,
}

/// Runs `lbctl backend-setup --vip VIP --mode MODE --dev DEV` in `ns` (for `ipip` with
/// `--lb-source LB`: `lb` is the balancer's IPIP source, its `snat_address` in the tests'
/// configurations); it must succeed.
pub fn backend_setup(
    ns: &NetNs,
    vip: Ipv4Addr,
    mode: &str,
    dev: &str,
    lb: Ipv4Addr,
) -> Result<BackendSetup> {
    let mut args: Vec<String> = [
        "backend-setup",
        "--vip",
        &vip.to_string(),
        "--mode",
        mode,
        "--dev",
        dev,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if mode == "ipip" {
        args.extend(["--lb-source".to_string(), lb.to_string()]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = lbctl_ok_at(&ns.path(), ns.name(), &argv)?;
    Ok(BackendSetup {
        ns_path: ns.path(),
        ns_name: ns.name().to_string(),
        args,
        output,
        armed: true,
    })
}

impl BackendSetup {
    fn run_undo(&self) -> Result<String> {
        let mut argv: Vec<&str> = self.args.iter().map(String::as_str).collect();
        argv.push("--undo");
        lbctl_ok_at(&self.ns_path, &self.ns_name, &argv)
    }

    /// Makes dropping it do nothing (another guard undoes the same setup).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// Runs `--undo` now and returns what it printed.
    pub fn undo(mut self) -> Result<String> {
        self.armed = false;
        self.run_undo()
    }
}

impl Drop for BackendSetup {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.run_undo() {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

/// Sends the IP packet `inner` from inside `ns` to `to`, IPIP-encapsulated by the kernel (a raw
/// IPPROTO_IPIP socket: the outer header is the namespace's own, from its address towards
/// `to`): what any host that can reach a backend could send it.
pub fn send_ipip(ns: &NetNs, to: Ipv4Addr, inner: &[u8]) -> Result<()> {
    ns.run(|| -> Result<()> {
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_IPIP)),
        )
        .context("raw IPIP socket (needs root)")?;
        let dst = socket2::SockAddr::from(SocketAddrV4::new(to, 0));
        sock.send_to(inner, &dst)
            .with_context(|| format!("sending IPIP to {to} from {}", ns.name()))?;
        Ok(())
    })?
}

// ---------------------------------------------------------------------------------------
// A server answering every line

/// A TCP server answering each line of a connection with `"<name> <peer>\n"` until the client
/// closes; dropping it stops its loop and joins the thread (within ~50 ms).
pub struct LineServer {
    answered: Arc<AtomicUsize>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    _server: Stoppable,
}

impl LineServer {
    /// Listens on `addr` inside `ns`.
    pub fn start(ns: &NetNs, addr: SocketAddrV4, name: &str) -> Result<LineServer> {
        let answered = Arc::new(AtomicUsize::new(0));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let server = {
            let (answered, all_peers, name) = (answered.clone(), peers.clone(), name.to_string());
            tcp_server(
                ns,
                addr,
                &format!("lines-{name}"),
                move |stream, peer, stop| {
                    if let Ok(mut p) = all_peers.lock() {
                        p.push(peer);
                    }
                    serve_lines(stream, peer, &name, stop, &answered)
                },
            )?
        };
        Ok(LineServer {
            answered,
            peers,
            _server: server,
        })
    }

    /// Lines answered so far, over all connections.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// The peer address of each accepted connection, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

fn serve_lines(
    stream: TcpStream,
    peer: SocketAddr,
    name: &str,
    stop: &AtomicBool,
    answered: &AtomicUsize,
) -> Result<()> {
    stream.set_nonblocking(false)?;
    // Short reads so the thread notices `stop`; an idle connection may stay open for long.
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_write_timeout(Some(MAX_SOCKET_TIMEOUT))?;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) if line.ends_with('\n') => {
                answered.fetch_add(1, Ordering::SeqCst);
                (&stream)
                    .write_all(format!("{name} {peer}\n").as_bytes())
                    .context("writing the answer")?;
                line.clear();
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading a line"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Counters

/// (rx_packets, tx_packets) of `ifname` inside `ns`, from `ip -s -j link show`.
pub fn link_packets(ns: &NetNs, ifname: &str) -> Result<(u64, u64)> {
    let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -s -j link show {ifname}` printed no JSON: {out}"))?;
    let stats = &v[0]["stats64"];
    let get = |dir: &str| {
        stats[dir]["packets"]
            .as_u64()
            .with_context(|| format!("no {dir} packets for {ifname} in {out}"))
    };
    Ok((get("rx")?, get("tx")?))
}

/// The LB's global counters from `lbctl --json stats`: packets per reason and per verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbCounters {
    pub reasons: BTreeMap<String, u64>,
    pub verdicts: BTreeMap<String, u64>,
}

impl LbCounters {
    /// Reads them through `lbctl --json stats`.
    pub fn read(lbd: &Lbd) -> Result<LbCounters> {
        let stats = lbd.ctl_json(&["stats"])?;
        let table = |key: &str| -> Result<BTreeMap<String, u64>> {
            let rows = stats[key]
                .as_array()
                .with_context(|| format!("no {key} array in {stats}"))?;
            Ok(rows
                .iter()
                .filter_map(|r| Some((r["reason"].as_str()?.to_string(), r["packets"].as_u64()?)))
                .collect())
        };
        Ok(LbCounters {
            reasons: table("reasons")?,
            verdicts: table("verdicts")?,
        })
    }

    /// Packets counted with `reason` (e.g. `tx_l2dsr`).
    pub fn reason(&self, reason: &str) -> u64 {
        self.reasons.get(reason).copied().unwrap_or(0)
    }

    /// Packets that got `verdict` (e.g. `XDP_TX`).
    pub fn verdict(&self, verdict: &str) -> u64 {
        self.verdicts.get(verdict).copied().unwrap_or(0)
    }

    /// Every packet the program saw (the sum of the verdicts).
    pub fn seen(&self) -> u64 {
        self.verdicts.values().sum()
    }

    /// Packets sent on by the program (XDP_TX + XDP_REDIRECT).
    pub fn forwarded(&self) -> u64 {
        self.verdict("XDP_TX") + self.verdict("XDP_REDIRECT")
    }

    /// The counts since `earlier`.
    pub fn since(&self, earlier: &LbCounters) -> LbCounters {
        let delta = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(then.get(k).copied().unwrap_or(0)),
                    )
                })
                .collect()
        };
        LbCounters {
            reasons: delta(&self.reasons, &earlier.reasons),
            verdicts: delta(&self.verdicts, &earlier.verdicts),
        }
    }
}

// ---------------------------------------------------------------------------------------
// One-arm topologies prepared for a mode

static DEV_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A one-arm topology ([`Topology::one_arm`]) whose backends are prepared for one forwarding
/// mode: nothing for `nat`, `lbctl backend-setup --mode l2dsr` for `l2dsr`, and for `ipip` the
/// same with the decap program, after each backend's `eth0` was renamed to a name unique to this
/// test process (the decap pins are per interface name in the one bpffs all namespaces share, so
/// several IPIP backends, or tests of other processes, would collide on `eth0`).
///
/// Backends listen on `0.0.0.0:PORT` in every mode (DSR backends have the VIP on `lo`). The
/// setups are undone before the namespaces go (field order).
pub struct ModeTopology {
    /// `backend-setup` guards, one per backend (none for `nat`).
    pub setups: Vec<BackendSetup>,
    pub topo: Topology,
    /// Each backend's interface (1-based backend `i` at `[i - 1]`).
    pub devs: Vec<String>,
    mode: String,
}

impl ModeTopology {
    /// Builds `Topology::one_arm(n)` and prepares its backends for `mode` (`nat`, `l2dsr` or
    /// `ipip`).
    pub fn one_arm(mode: &str, n: usize) -> Result<ModeTopology> {
        let topo = Topology::one_arm(n)?;
        let mut devs = Vec::new();
        let mut setups = Vec::new();
        for b in topo.backends() {
            let dev = match mode {
                "ipip" => {
                    let dev = format!(
                        "xd{}b{}",
                        std::process::id(),
                        DEV_COUNTER.fetch_add(1, Ordering::Relaxed)
                    );
                    rename_link(&b.ns, "eth0", &dev, "10.200.50.1")?;
                    dev
                }
                "nat" | "l2dsr" => "eth0".to_string(),
                other => bail!("unknown mode {other:?}: nat, l2dsr or ipip"),
            };
            if mode != "nat" {
                setups.push(backend_setup(
                    &b.ns,
                    crate::VIP,
                    mode,
                    &dev,
                    topo.snat_addr(),
                )?);
            }
            devs.push(dev);
        }
        topo.prime_neighbours()?;
        Ok(ModeTopology {
            setups,
            topo,
            devs,
            mode: mode.to_string(),
        })
    }

    /// The mode it was prepared for.
    pub fn mode(&self) -> &str {
        &self.mode
    }

    /// Where backend `i` (1-based) is registered with lbd: its own address, port `port` (DSR
    /// cannot translate ports: `port` must be the VIP's).
    pub fn backend_addr(&self, i: usize, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.topo.backend(i).addr, port)
    }
}

/// Renames `from` to `to` inside `ns` (down, rename, up) and puts back the default route via
/// `gateway` that going down removed. Addresses and offload settings stay.
pub fn rename_link(ns: &NetNs, from: &str, to: &str, gateway: &str) -> Result<()> {
    ns.ip(&["link", "set", "dev", from, "down"])?;
    ns.ip(&["link", "set", "dev", from, "name", to])?;
    ns.ip(&["link", "set", "dev", to, "up"])?;
    ns.ip(&["route", "replace", "default", "via", gateway, "dev", to])?;
    Ok(())
}
