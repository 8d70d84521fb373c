//! `lbctl backend check`: what usually breaks a backend, checked from the balancer (lbd's own
//! network namespace) through the real path of the VIP's mode, one line per check with the fix.
//!
//! | check | how | mode |
//! |---|---|---|
//! | `port` | a TCP connection to the backend's own address and port (UDP: a datagram, and an ICMP port unreachable fails it) | all |
//! | `neighbour` | the kernel's neighbour entry (MAC) of the next hop, after `port` made it resolve | all |
//! | `vip` | a TCP SYN to VIP:PORT in a frame to the backend's MAC; a SYN-ACK or RST means it holds the VIP | l2dsr |
//! | `arp` | an ARP who-has for the VIP on the link: the backend must not answer | l2dsr |
//! | `ipip` | the same SYN, IPIP-encapsulated as the data plane does (outer: `[ipip] source` to the backend) | ipip |
//! | `mtu` | ICMP echo with DF of the egress interface's MTU to the backend; on loss, the largest size that passes | all |
//! | `rp_filter` | a hint when the VIP probe got no answer (not measured) | dsr |
//! | `veth` | the egress interface is a veth whose peer has no XDP program | all |
//!
//! The probes use lbd's own address towards the backend and a TCP port it holds meanwhile (outside
//! the SNAT range, so the data plane passes the answers to the kernel, which resets them): no
//! flow is created, no real client touched. Answers are caught below the IP layer (AF_PACKET), so
//! lbd's rp_filter and the VIP's blackhole route do not hide them.

pub mod links;
pub(crate) mod probe;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use xdplb_model::state::{Mode, Protocol, VipKey};

use crate::dataplane::explain::{build_frame, Probe, Proto, Segment};
use links::{Link, VethPeer};
use probe::{PingAnswer, SynAnswer};

/// How long the port check waits for the backend.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the VIP probes (L2 DSR, IPIP) wait for an answer.
pub const SYN_TIMEOUT: Duration = Duration::from_millis(1200);
const ARP_TIMEOUT: Duration = Duration::from_millis(600);

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    Warn,
    Skipped,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Fail => "fail",
            Status::Warn => "warn",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// fail and warn: the fix, one line.
    pub fix: String,
}

fn line(name: &'static str, status: Status, detail: impl Into<String>) -> Line {
    Line {
        name,
        status,
        detail: detail.into(),
        fix: String::new(),
    }
}

fn bad(
    name: &'static str,
    status: Status,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Line {
    Line {
        name,
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// What is checked: a backend of a VIP, as the control plane holds it.
#[derive(Debug, Clone)]
pub struct Target {
    pub vip: VipKey,
    pub mode: Mode,
    pub backend: SocketAddrV4,
    /// `[ipip] source`: the outer source of IPIP packets (the first address of a prefix).
    pub ipip_source: Ipv4Net,
}

/// The report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub egress: String,
    pub source: Option<Ipv4Addr>,
    pub lines: Vec<Line>,
}

/// The path towards the backend.
struct Path {
    egress: Link,
    via: Ipv4Addr,
    source: Ipv4Addr,
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An ICMP echo id of this check: the process id mixed with a counter.
fn echo_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16) ^ NEXT.fetch_add(0x9e37, Ordering::Relaxed)
}

/// Runs every check for `t` and returns the lines in order.
pub async fn check_backend(t: Target) -> Report {
    let mut report = Report::default();
    let backend_ip = *t.backend.ip();
    let path = match find_path(backend_ip).await {
        Ok(p) => p,
        Err(e) => {
            report.lines.push(bad(
                "route",
                Status::Fail,
                format!("no way to {backend_ip} from lbd: {e}"),
                format!("add a route to {backend_ip} on the balancer"),
            ));
            return report;
        }
    };
    report.egress = path.egress.name.clone();
    report.source = Some(path.source);

    report.lines.push(port_check(&t, &path).await);

    let neighbour = links::neighbour_mac(path.egress.ifindex, path.via).await;
    let via_mac = match &neighbour {
        Ok(Some(m)) => {
            let what = if path.via == backend_ip {
                "the backend".to_string()
            } else {
                format!("the gateway {}", path.via)
            };
            report.lines.push(line(
                "neighbour",
                Status::Ok,
                format!("{what} is {} on {}", mac(m), path.egress.name),
            ));
            Some(*m)
        }
        Ok(None) => {
            report.lines.push(bad(
                "neighbour",
                Status::Fail,
                format!(
                    "no neighbour entry for {} on {}: its ARP went unanswered",
                    path.via, path.egress.name
                ),
                format!(
                    "check that {} is up and on {}'s link (ip neigh show dev {})",
                    path.via, path.egress.name, path.egress.name
                ),
            ));
            None
        }
        Err(e) => {
            report.lines.push(line(
                "neighbour",
                Status::Skipped,
                format!("cannot read the neighbour table: {e}"),
            ));
            None
        }
    };

    // The VIP path, ARP and MTU probes are independent: run them at once.
    let vip_probe = vip_probe(&t, &path, via_mac);
    let arp = arp_check(&t, &path, via_mac);
    let mtu = mtu_check(&t, &path);
    let ((vip_line, vip_answered), arp_line, mtu_line) = tokio::join!(vip_probe, arp, mtu);
    report.lines.push(vip_line);
    report.lines.extend(arp_line);
    report.lines.push(mtu_line);
    report.lines.push(rp_filter_hint(&t, &path, vip_answered));
    report.lines.push(veth_line(&path.egress).await);
    report
}

async fn find_path(backend: Ipv4Addr) -> Result<Path, String> {
    let (oif, via) = crate::neighbor::route_to(backend)
        .await
        .map_err(|e| e.to_string())?;
    let egress = links::link(oif).await?;
    let source = links::source_towards(backend)?;
    Ok(Path {
        egress,
        via,
        source,
    })
}

async fn port_check(t: &Target, path: &Path) -> Line {
    let b = t.backend;
    match t.vip.proto {
        Protocol::Tcp => {
            let start = Instant::now();
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(b)).await {
                Ok(Ok(_)) => line(
                    "port",
                    Status::Ok,
                    format!(
                        "{b} accepted a TCP connection from {} ({:.1} ms)",
                        path.source,
                        start.elapsed().as_secs_f64() * 1e3
                    ),
                ),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => bad(
                    "port",
                    Status::Fail,
                    format!("{b} refused the connection: nothing listens on port {}", b.port()),
                    format!(
                        "start the service on {} listening on port {} (0.0.0.0:{}{}), or register the backend with the port it listens on",
                        b.ip(),
                        b.port(),
                        b.port(),
                        if t.mode.is_dsr() {
                            format!(" or {}:{}", t.vip.addr.ip(), b.port())
                        } else {
                            String::new()
                        }
                    ),
                ),
                Ok(Err(e)) => bad(
                    "port",
                    Status::Fail,
                    format!("connecting to {b}: {e}"),
                    format!("check that {} is up and reachable from {}", b.ip(), path.source),
                ),
                Err(_) => bad(
                    "port",
                    Status::Fail,
                    format!("{b} did not answer a TCP connection within {CONNECT_TIMEOUT:?}"),
                    format!(
                        "check that {} is up and that no firewall on it or on the way drops TCP to port {} from {}",
                        b.ip(),
                        b.port(),
                        path.source
                    ),
                ),
            }
        }
        Protocol::Udp if t.mode.is_dsr() => line(
            "port",
            Status::Skipped,
            "UDP under DSR: the server binds the VIP, not the backend's own address (the vip check below reaches the VIP)",
        ),
        Protocol::Udp => {
            let b2 = b;
            let r = tokio::task::spawn_blocking(move || udp_probe(b2)).await;
            match r {
                Ok(Ok(true)) => line("port", Status::Ok, format!("{b} answered a UDP datagram")),
                Ok(Ok(false)) => line(
                    "port",
                    Status::Skipped,
                    format!(
                        "{b} neither answered a UDP datagram nor refused it within {CONNECT_TIMEOUT:?} (a silent UDP service and a dropped datagram look the same)"
                    ),
                ),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => bad(
                    "port",
                    Status::Fail,
                    format!("{b} answered ICMP port unreachable: nothing listens on UDP port {}", b.port()),
                    format!(
                        "start the service on {} listening on UDP port {}, or register the backend with the port it listens on",
                        b.ip(),
                        b.port()
                    ),
                ),
                Ok(Err(e)) => line("port", Status::Skipped, format!("UDP probe: {e}")),
                Err(e) => line("port", Status::Skipped, format!("UDP probe task: {e}")),
            }
        }
    }
}

/// true: answered; false: silence; Err(ConnectionRefused): port unreachable.
fn udp_probe(b: SocketAddrV4) -> std::io::Result<bool> {
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(b)?;
    sock.set_read_timeout(Some(CONNECT_TIMEOUT / 2))?;
    let mut buf = [0u8; 512];
    for _ in 0..2 {
        sock.send(b"xdplb backend check\n")?;
        match sock.recv(&mut buf) {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err(e),
            Err(_) => continue,
        }
    }
    Ok(false)
}

/// The SYN of the VIP probes: from `from` to the VIP's address and port.
fn syn_packet(
    from: SocketAddrV4,
    vip: SocketAddrV4,
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
) -> Vec<u8> {
    build_frame(&Probe {
        client: from,
        vip,
        proto: Proto::Tcp,
        segment: Segment::Syn,
        ingress_ifindex: 0,
        eth_dst,
        eth_src,
    })
}

/// The first address of the `[ipip] source` prefix (the data plane varies the host bits per
/// flow; the backend accepts the whole prefix).
fn outer_source(p: Ipv4Net) -> Ipv4Addr {
    if p.prefix_len() >= 31 {
        p.network()
    } else {
        p.hosts().next().unwrap_or(p.network())
    }
}

/// The `vip` (L2 DSR) or `ipip` line, and whether the backend answered the probe at all
/// (None: not probed).
async fn vip_probe(t: &Target, path: &Path, via_mac: Option<[u8; 6]>) -> (Line, Option<bool>) {
    let name = match t.mode {
        Mode::Nat => {
            return (
                line(
                    "vip",
                    Status::Skipped,
                    "nat: the backend gets packets addressed to itself, not to the VIP",
                ),
                None,
            )
        }
        Mode::L2dsr => "vip",
        Mode::Ipip => "ipip",
    };
    let Some(dmac) = via_mac else {
        return (
            line(
                name,
                Status::Skipped,
                "no MAC address for the next hop (see neighbour)",
            ),
            None,
        );
    };
    // DSR cannot translate ports: the VIP's port is the backend's.
    let vip = SocketAddrV4::new(*t.vip.addr.ip(), t.vip.addr.port());
    let held = match probe::hold_port(path.source) {
        Ok(h) => h,
        Err(e) => {
            return (
                line(
                    name,
                    Status::Skipped,
                    format!("holding a TCP port of {}: {e}", path.source),
                ),
                None,
            )
        }
    };
    let from = held.addr;
    let frame = match t.mode {
        Mode::Ipip => {
            let inner = syn_packet(from, vip, dmac, path.egress.mac);
            let inner_ip = &inner[14..];
            let outer = probe::ipv4_header(
                outer_source(t.ipip_source),
                *t.backend.ip(),
                4,
                inner_ip.len(),
                true,
            );
            let mut f = inner[..14].to_vec();
            f.extend_from_slice(&outer);
            f.extend_from_slice(inner_ip);
            f
        }
        _ => syn_packet(from, vip, dmac, path.egress.mac),
    };
    let ifindex = path.egress.ifindex;
    let answer = tokio::task::spawn_blocking(move || {
        let r = probe::syn_probe(ifindex, &frame, from, vip, SYN_TIMEOUT);
        drop(held);
        r
    })
    .await;
    let vip_a = t.vip.addr.ip();
    let tcp_vip = t.vip.proto == Protocol::Tcp;
    let b = t.backend;
    let answered = match &answer {
        Ok(Ok(SynAnswer::Nothing)) => Some(false),
        Ok(Ok(_)) => Some(true),
        _ => None,
    };
    let l = match (t.mode, answer) {
        (_, Err(e)) => line(name, Status::Skipped, format!("probe task: {e}")),
        (_, Ok(Err(e))) => line(name, Status::Skipped, format!("raw socket probe: {e}")),
        (Mode::L2dsr, Ok(Ok(SynAnswer::SynAck))) => line(
            name,
            Status::Ok,
            format!("{} holds {vip_a}: a SYN to {vip} sent to {} got a SYN-ACK", b.ip(), mac(&dmac)),
        ),
        (Mode::Ipip, Ok(Ok(SynAnswer::SynAck))) => line(
            name,
            Status::Ok,
            format!(
                "{} decapsulates IPIP from {} and holds {vip_a}: an encapsulated SYN to {vip} got a SYN-ACK",
                b.ip(),
                outer_source(t.ipip_source)
            ),
        ),
        (_, Ok(Ok(SynAnswer::Rst))) if tcp_vip => bad(
            name,
            Status::Fail,
            format!(
                "{} holds {vip_a} but answered a SYN to {vip} with a RST: the service does not listen on the VIP",
                b.ip()
            ),
            format!(
                "make the service on {} listen on 0.0.0.0:{} or {vip} (not only {}:{})",
                b.ip(),
                vip.port(),
                b.ip(),
                vip.port()
            ),
        ),
        (_, Ok(Ok(SynAnswer::Rst))) => line(
            name,
            Status::Ok,
            format!(
                "{} holds {vip_a}: a TCP SYN to {vip} got a RST (fine for a UDP VIP: the kernel took the packet as its own)",
                b.ip()
            ),
        ),
        (Mode::Ipip, Ok(Ok(_))) => bad(
            name,
            Status::Fail,
            format!(
                "no answer within {SYN_TIMEOUT:?} to a SYN for {vip} encapsulated in IPIP from {} to {}: no IPIP decap on the backend (or {vip_a} is not on its lo)",
                outer_source(t.ipip_source),
                b.ip()
            ),
            format!(
                "on the backend: lbctl backend-setup --vip {vip_a} --mode ipip --dev <its interface> --lb-source {} (attaches the decap program and puts {vip_a}/32 on lo)",
                t.ipip_source
            ),
        ),
        (_, Ok(Ok(_))) => bad(
            name,
            Status::Fail,
            format!(
                "no answer within {SYN_TIMEOUT:?} to a SYN for {vip} sent to {} ({}): the backend does not hold {vip_a} on lo",
                b.ip(),
                mac(&dmac)
            ),
            format!(
                "on the backend: lbctl backend-setup --vip {vip_a} --mode l2dsr --dev <its interface> (or: ip addr add {vip_a}/32 dev lo, after arp_ignore=1 and arp_announce=2)"
            ),
        ),
    };
    (l, answered)
}

async fn arp_check(t: &Target, path: &Path, backend_mac: Option<[u8; 6]>) -> Option<Line> {
    if t.mode != Mode::L2dsr {
        return None;
    }
    let Some(bmac) = backend_mac else {
        return Some(line(
            "arp",
            Status::Skipped,
            "no MAC address for the backend (see neighbour)",
        ));
    };
    let vip_a = *t.vip.addr.ip();
    let (ifindex, smac, src) = (path.egress.ifindex, path.egress.mac, path.source);
    let r = tokio::task::spawn_blocking(move || {
        probe::arp_probe(ifindex, smac, src, vip_a, ARP_TIMEOUT)
    })
    .await;
    let b = t.backend.ip();
    Some(match r {
        Err(e) => line("arp", Status::Skipped, format!("probe task: {e}")),
        Ok(Err(e)) => line("arp", Status::Skipped, format!("raw socket probe: {e}")),
        Ok(Ok(macs)) if macs.contains(&bmac) => bad(
            "arp",
            Status::Fail,
            format!(
                "{b} ({}) answers ARP for {vip_a} on {}: the link's router and hosts would send the VIP's traffic to it instead of the balancer",
                mac(&bmac),
                path.egress.name
            ),
            format!(
                "on the backend: sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 (lbctl backend-setup --vip {vip_a} --mode l2dsr --dev <its interface> sets them)"
            ),
        ),
        Ok(Ok(macs)) if !macs.is_empty() => bad(
            "arp",
            Status::Warn,
            format!(
                "{b} does not answer ARP for {vip_a}, but {} on {} does: that host takes the VIP's traffic",
                macs.iter().map(mac).collect::<Vec<_>>().join(", "),
                path.egress.name
            ),
            "find the host with that MAC and set its arp_ignore=1 and arp_announce=2 (or remove the VIP from it)",
        ),
        Ok(Ok(_)) => line(
            "arp",
            Status::Ok,
            format!("nobody answers ARP for {vip_a} on {}", path.egress.name),
        ),
    })
}

async fn mtu_check(t: &Target, path: &Path) -> Line {
    let mtu = path.egress.mtu as usize;
    let dev = path.egress.name.clone();
    let b = *t.backend.ip();
    if mtu < 68 {
        return line("mtu", Status::Skipped, format!("{dev} reports MTU {mtu}"));
    }
    let id = echo_id();
    let r = tokio::task::spawn_blocking(move || measure_mtu(b, mtu, id)).await;
    let ipip = t.mode == Mode::Ipip;
    let extra = if ipip {
        format!(
            "; IPIP adds 20 bytes: the balancer answers clients' packets above {} bytes with fragmentation needed",
            mtu - 20
        )
    } else {
        String::new()
    };
    match r {
        Err(e) => line("mtu", Status::Skipped, format!("probe task: {e}")),
        Ok(Err(e)) => line("mtu", Status::Skipped, format!("ping: {e}")),
        Ok(Ok(Mtu::NoPing)) => line(
            "mtu",
            Status::Skipped,
            format!("{b} does not answer ICMP echo: the path MTU was not measured"),
        ),
        Ok(Ok(Mtu::Full)) => line(
            "mtu",
            Status::Ok,
            format!("packets of {mtu} bytes ({dev}'s MTU) reach {b} with DF{extra}"),
        ),
        Ok(Ok(Mtu::Limited { largest, reported })) => {
            let reported = reported
                .map(|r| format!(", and a router on the way reports MTU {r}"))
                .unwrap_or_default();
            bad(
                "mtu",
                Status::Fail,
                format!(
                    "packets of {mtu} bytes ({dev}'s MTU) do not reach {b} with DF: the largest that does is {largest} bytes{reported}; full-size packets the balancer forwards are lost"
                ),
                format!(
                    "raise the MTU of the backend's interface and of every link on the way to {mtu} (ip link set dev <its interface> mtu {mtu}), or lower {dev}'s to {largest} (ip link set dev {dev} mtu {largest})"
                ),
            )
        }
    }
}

enum Mtu {
    NoPing,
    Full,
    Limited {
        largest: usize,
        reported: Option<u16>,
    },
}

fn measure_mtu(b: Ipv4Addr, mtu: usize, id: u16) -> std::io::Result<Mtu> {
    const SMALL: usize = 84;
    if probe::ping(b, SMALL, 3, Duration::from_millis(300), id)? != PingAnswer::Reply {
        return Ok(Mtu::NoPing);
    }
    let mut reported = None;
    match probe::ping(b, mtu, 2, Duration::from_millis(400), id)? {
        PingAnswer::Reply => return Ok(Mtu::Full),
        PingAnswer::FragNeeded(m) if m > 0 => reported = Some(m),
        _ => {}
    }
    // Bisect between a size that passes and one that does not: at most 11 probes.
    let (mut lo, mut hi) = (SMALL, mtu);
    for _ in 0..12 {
        if hi - lo <= 1 {
            break;
        }
        let mid = (lo + hi) / 2;
        if probe::ping(b, mid, 1, Duration::from_millis(250), id)? == PingAnswer::Reply {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Mtu::Limited {
        largest: lo,
        reported,
    })
}

fn sysctl(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn rp_filter_hint(t: &Target, path: &Path, vip_answered: Option<bool>) -> Line {
    if !t.mode.is_dsr() {
        return line(
            "rp_filter",
            Status::Skipped,
            "nat: the backend's replies come back from its own address",
        );
    }
    let dev = &path.egress.name;
    // The kernel applies the higher of `all` and the interface's.
    let here = sysctl("/proc/sys/net/ipv4/conf/all/rp_filter")
        .max(sysctl(&format!("/proc/sys/net/ipv4/conf/{dev}/rp_filter")));
    let here = here.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    match vip_answered {
        None => line(
            "rp_filter",
            Status::Skipped,
            "the VIP path was not probed (see above)",
        ),
        Some(true) => line(
            "rp_filter",
            Status::Ok,
            format!(
                "the probe's answer came back; real clients' packets come from other sources: {}",
                if t.mode == Mode::Ipip {
                    "the backend needs rp_filter 0 or 2 (backend-setup sets 2)"
                } else {
                    "the backend accepts them as the link's"
                }
            ),
        ),
        Some(false) => bad(
            "rp_filter",
            Status::Warn,
            format!(
                "hint, not measured: the backend answered nothing; a backend with rp_filter=1 drops packets whose source it routes out of another interface (decapsulated IPIP, clients behind another route), and lbd's own rp_filter on {dev} is {here} (the probe listens below it, so that is not why)"
            ),
            "on the backend: sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.<its interface>.rp_filter=2 (loose)",
        ),
    }
}

async fn veth_line(egress: &Link) -> Line {
    match links::veth_peer(egress.ifindex).await {
        VethPeer::NotVeth => line("veth", Status::Ok, format!("{} is not a veth", egress.name)),
        VethPeer::WithXdp { peer } => line(
            "veth",
            Status::Ok,
            format!(
                "{} is a veth whose peer {peer} has an XDP program",
                egress.name
            ),
        ),
        VethPeer::WithoutXdp { peer, elsewhere } => bad(
            "veth",
            Status::Warn,
            format!(
                "{} is a veth whose peer {peer}{} has no XDP program",
                egress.name,
                if elsewhere {
                    " (in another namespace)"
                } else {
                    ""
                }
            ),
            VethPeer::warning(&egress.name, &peer, elsewhere),
        ),
        VethPeer::Unknown { reason } => line(
            "veth",
            Status::Skipped,
            format!(
                "{} is a veth, but whether its peer has XDP cannot be checked: {reason}",
                egress.name
            ),
        ),
    }
}

/// lbd at attach: warns for each veth among the interfaces `names` whose peer has no XDP
/// program (or whose peer cannot be read).
pub async fn warn_veth_peers(names: &[String]) {
    for name in names {
        let Ok(cname) = std::ffi::CString::new(name.as_str()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            continue;
        }
        match links::veth_peer(ifindex).await {
            VethPeer::NotVeth | VethPeer::WithXdp { .. } => {}
            VethPeer::WithoutXdp { peer, elsewhere } => tracing::warn!(
                interface = %name,
                peer = %peer,
                "{}",
                VethPeer::warning(name, &peer, elsewhere)
            ),
            VethPeer::Unknown { reason } => tracing::warn!(
                interface = %name,
                "{name} is a veth whose peer cannot be checked for an XDP program ({reason}): \
                 without one (or GRO on) there, frames sent with XDP_TX/XDP_REDIRECT into {name} \
                 arrive late and in bursts"
            ),
        }
    }
}
