//! IPIP DSR and the MTU end to end: a UDP datagram without DF that is too big for the LB's route
//! to the backend once encapsulated is encapsulated by XDP and handed to the LB's kernel
//! (`pass_ipip_too_big`), which forwards the outer packet and fragments it. The backend receives
//! outer fragments (captured with an AF_PACKET socket in its namespace, before reassembly) that
//! reassemble to the client's datagram byte for byte (but for its TTL, one less: the LB forwards
//! like a router) behind an outer header from the IPIP source.
//!
//! The outer source is the LB's own address, so the LB's kernel takes the packet for a martian
//! unless `net.ipv4.conf.<ingress>.accept_local = 1`: the test shows both. (The backend's kernel
//! reassembles and then needs the `ipip` module to decapsulate: that part is not tested here.)
//! Run as root: `cargo test -p xdplb-integration --test ipip_fragments`.

use std::ffi::CString;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xdplb_integration::dsr::{LbCounters, RoutedTopology};
use xdplb_integration::{Lbd, NetNs, Proto, VIP};
use xdplb_testkit::packet::internet_checksum;

const PORT: u16 = 53;
/// The MTU of the LB's route to the backend subnet, locked (bpf_fib_lookup and ip_forward honour
/// a route MTU only when locked, or with ip_forward_use_pmtu); the links stay at 1500.
const ROUTE_MTU: usize = 1400;
/// The client's datagram: 1450 IP bytes, 1470 once encapsulated.
const PAYLOAD: usize = 1450 - 28;
/// How long a capture listens.
const CAPTURE: Duration = Duration::from_millis(1500);

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, PORT)
}

/// setsockopt(2) of `value` at `level`/`name`.
fn setsockopt<T>(fd: i32, level: i32, name: i32, value: &T) -> Result<()> {
    // SAFETY: value points to a T of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
    Ok(())
}

/// An AF_PACKET socket on `ifname` (all protocols), with a receive timeout of 100 ms.
fn packet_socket(ifname: &str) -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    ensure!(
        fd >= 0,
        "socket(AF_PACKET): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(ifname)?;
    // SAFETY: name is a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {ifname}");
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: sll is a sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    ensure!(
        rc == 0,
        "bind(AF_PACKET, {ifname}): {}",
        std::io::Error::last_os_error()
    );
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).context("SO_RCVTIMEO")?;
    Ok(fd)
}

/// Starts capturing on `ifname` in `ns` (the socket is open when this returns) and returns the
/// capture thread: the IPv4 packets (without their Ethernet header) that `keep` accepts, seen
/// within [`CAPTURE`]; `outgoing` selects the direction.
fn capture(
    ns: &NetNs,
    ifname: &str,
    outgoing: bool,
    keep: fn(&[u8]) -> bool,
) -> Result<std::thread::JoinHandle<Vec<Vec<u8>>>> {
    let fd = ns.run(|| packet_socket(ifname))??;
    Ok(std::thread::spawn(move || {
        let (mut kept, start) = (Vec::new(), Instant::now());
        let mut buf = vec![0u8; 65536];
        while start.elapsed() < CAPTURE && kept.len() < 64 {
            // SAFETY: an all-zero sockaddr_ll is valid for recvfrom to fill.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buf and from are valid for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 14 {
                continue; // timeout (or a runt): the loop is bounded by CAPTURE
            }
            let frame = &buf[..n as usize];
            let is_out = from.sll_pkttype == libc::PACKET_OUTGOING;
            if is_out == outgoing && frame[12..14] == [0x08, 0x00] && keep(&frame[14..]) {
                kept.push(frame[14..].to_vec());
            }
        }
        kept
    }))
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
}

/// The IPv4 packet `ip` as a router forwards it: TTL one less, header checksum from scratch.
fn routed(ip: &[u8]) -> Vec<u8> {
    let mut p = ip.to_vec();
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p[8] -= 1;
    p[10..12].copy_from_slice(&[0, 0]);
    let sum = internet_checksum(&p[..ihl]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

/// IPIP packets from the LB to the backend (fragments or not).
fn ipip_from_lb(ip: &[u8]) -> bool {
    ip.len() >= 20
        && ip[9] == 4
        && ip_at(ip, 12) == RoutedTopology::LB_ADDR
        && ip_at(ip, 16) == RoutedTopology::BACKEND_ADDR
}

/// The client's UDP datagrams to the VIP.
fn udp_to_vip(ip: &[u8]) -> bool {
    ip.len() >= 28 && ip[9] == 17 && ip_at(ip, 16) == VIP && be16(ip, 22) == PORT
}

/// Reassembles the outer fragments (RFC 791): one ID, offsets contiguous from 0, the last
/// without MF, each within the route MTU and with a right header checksum. Returns the outer
/// header of the first fragment and the reassembled payload.
fn reassemble(frags: &[Vec<u8>]) -> Result<(Vec<u8>, Vec<u8>)> {
    ensure!(
        frags.len() >= 2,
        "{} outer packet(s), expected fragments",
        frags.len()
    );
    let id = be16(&frags[0], 4);
    let mut parts: Vec<(usize, bool, &[u8])> = Vec::new();
    for f in frags {
        ensure!(f[0] == 0x45, "outer fragment with ihl {}", f[0] & 0x0f);
        let tot = usize::from(be16(f, 2));
        ensure!(
            tot <= ROUTE_MTU && tot <= f.len(),
            "fragment of {tot} bytes"
        );
        ensure!(
            internet_checksum(&f[..20]) == 0,
            "fragment header checksum wrong"
        );
        ensure!(
            be16(f, 4) == id,
            "fragments of two ids: {id:#06x}, {:#06x}",
            be16(f, 4)
        );
        let frag = be16(f, 6);
        ensure!(frag & 0x4000 == 0, "a fragment with DF");
        parts.push((
            usize::from(frag & 0x1fff) * 8,
            frag & 0x2000 != 0,
            &f[20..tot],
        ));
    }
    parts.sort_by_key(|p| p.0);
    let mut payload = Vec::new();
    for (i, (off, more, data)) in parts.iter().enumerate() {
        ensure!(
            *off == payload.len(),
            "fragment at {off}, expected {}",
            payload.len()
        );
        ensure!(*more == (i + 1 < parts.len()), "MF wrong on fragment {i}");
        payload.extend_from_slice(data);
    }
    let first = frags
        .iter()
        .find(|f| be16(f, 6) & 0x1fff == 0)
        .context("no first fragment")?;
    Ok((first[..20].to_vec(), payload))
}

/// Sends one datagram without DF (IP_PMTUDISC_DONT) from the client to the VIP.
fn send_big(client: &NetNs, marker: u8) -> Result<()> {
    client.run(|| -> Result<()> {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        let off: libc::c_int = libc::IP_PMTUDISC_DONT;
        setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &off,
        )
        .context("IP_MTU_DISCOVER")?;
        let payload: Vec<u8> = (0..PAYLOAD).map(|i| marker ^ (i as u8)).collect();
        let n = sock.send_to(&payload, vip())?;
        ensure!(n == PAYLOAD, "sent {n} bytes");
        Ok(())
    })?
}

/// One datagram through the LB: what the client sent (its IP packet) and the IPIP packets the
/// backend received.
fn through(topo: &RoutedTopology, marker: u8) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let at_backend = capture(topo.backend(), "eth0", false, ipip_from_lb)?;
    let at_client = capture(topo.client(), "eth0", true, udp_to_vip)?;
    send_big(topo.client(), marker)?;
    let sent = at_client
        .join()
        .map_err(|_| anyhow::anyhow!("client capture panicked"))?;
    let received = at_backend
        .join()
        .map_err(|_| anyhow::anyhow!("backend capture panicked"))?;
    let [sent] = <[Vec<u8>; 1]>::try_from(sent)
        .map_err(|s| anyhow::anyhow!("the client sent {} datagrams to the VIP", s.len()))?;
    ensure!(
        sent.len() == PAYLOAD + 28,
        "the client's datagram has {} bytes",
        sent.len()
    );
    ensure!(be16(&sent, 6) & 0x4000 == 0, "the client set DF");
    Ok((sent, received))
}

#[test]
fn oversize_df_clear_ipip_packet_is_fragmented_by_the_kernel() {
    let topo = RoutedTopology::build().expect("topology");
    topo.lb()
        .ip(&[
            "route",
            "replace",
            "10.200.61.0/24",
            "via",
            "10.200.60.254",
            "mtu",
            "lock",
            &ROUTE_MTU.to_string(),
        ])
        .expect("route MTU");
    let lbd = Lbd::start(topo.lb(), &topo.lbd_config()).expect("lbd starts");
    lbd.add_vip_with(vip(), Proto::Udp, &["--mode", "ipip"])
        .expect("vip add --mode ipip");
    let backend = SocketAddrV4::new(RoutedTopology::BACKEND_ADDR, PORT);
    lbd.add_backend(vip(), Proto::Udp, backend)
        .expect("add-backend");
    let before = LbCounters::read(&lbd).expect("stats");

    // accept_local 0 (the default): the LB's kernel drops its own source as a martian.
    topo.lb()
        .sysctl("net.ipv4.conf.eth0.accept_local", "0")
        .expect("sysctl");
    let (_, received) = through(&topo, 0xa5).expect("datagram without accept_local");
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    assert!(
        received.is_empty(),
        "without accept_local the backend got IPIP packets of {:?} bytes ({d:?})",
        received.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    assert_eq!(d.reason("pass_ipip_too_big"), 1, "{d:?}");

    // accept_local 1: forwarded and fragmented; rp_filter strict passes too (the source is on
    // the ingress interface).
    topo.lb()
        .sysctl("net.ipv4.conf.eth0.accept_local", "1")
        .expect("sysctl");
    let mut ids = Vec::new();
    for (marker, rp_filter) in [(0x5a, "0"), (0x3c, "1")] {
        topo.lb()
            .sysctl("net.ipv4.conf.all.rp_filter", rp_filter)
            .expect("sysctl");
        topo.lb()
            .sysctl("net.ipv4.conf.eth0.rp_filter", rp_filter)
            .expect("sysctl");
        let what = format!("accept_local 1, rp_filter {rp_filter}");
        let (sent, received) = through(&topo, marker).expect("datagram with accept_local");
        let (outer, inner) = reassemble(&received).unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(
            inner == routed(&sent),
            "{what}: the reassembled inner packet is not the client's datagram (TTL one less)"
        );
        ids.push(be16(&outer, 4));
        let check = |ok: bool, field: &str| assert!(ok, "{what}: outer {field}: {outer:02x?}");
        check(outer[1] == sent[1], "TOS (copied)");
        check(
            outer[8] == 64 - 2,
            "TTL (64, less the LB's and the router's hop)",
        );
        check(ip_at(&outer, 12) == RoutedTopology::LB_ADDR, "source");
        check(
            ip_at(&outer, 16) == RoutedTopology::BACKEND_ADDR,
            "destination",
        );
    }
    assert_ne!(
        ids[0], ids[1],
        "two datagrams of one flow got the same outer id"
    );
    let d = LbCounters::read(&lbd).expect("stats").since(&before);
    assert_eq!(d.reason("pass_ipip_too_big"), 3, "{d:?}");
}
