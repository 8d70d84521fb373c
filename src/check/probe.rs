//! The probes of `backend check`, on raw sockets (root: CAP_NET_RAW), each bounded by a
//! deadline. Blocking: run them on a blocking thread.
//!
//! - [`syn_probe`]: a TCP SYN to the VIP in a frame of our own (L2 DSR: to the backend's MAC;
//!   IPIP: encapsulated like the data plane does, to the next hop's MAC), sent on an AF_PACKET
//!   socket of the egress interface, and the backend's SYN-ACK or RST caught on an AF_PACKET
//!   socket (below the IP layer, so the host's rp_filter and the VIP's blackhole route do not
//!   hide it) with a classic BPF filter on the VIP as source;
//! - [`arp_probe`]: an ARP who-has for the VIP on the link, and who answers;
//! - [`ping`]: an ICMP echo with DF of a given size, and its reply or a "fragmentation needed".

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const PACKET_OUTGOING: u8 = 4;

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn socket(domain: libc::c_int, kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned from here on.
    let fd = cvt(unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: a fresh, valid fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: v points to a T of size_of::<T>() bytes for the duration of the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Waits until `fd` is readable or `deadline` passes; false on timeout.
fn wait_readable(fd: &OwnedFd, deadline: Instant) -> io::Result<bool> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(false);
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    match unsafe { libc::poll(&mut pfd, 1, ms) } {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(true)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

fn sockaddr_ll(ifindex: u32, proto: u16, mac: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto.to_be();
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&mac);
    sa
}

/// A classic BPF program: ethertype `ethertype` and the 32-bit word at `offset` (from the start
/// of the frame) equal to `value`.
fn word_filter(ethertype: u16, offset: u32, value: u32) -> [libc::sock_filter; 6] {
    const LD_H_ABS: u16 = 0x28;
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        f(LD_H_ABS, 0, 0, 12),
        f(JEQ_K, 0, 3, u32::from(ethertype)),
        f(LD_W_ABS, 0, 0, offset),
        f(JEQ_K, 0, 1, value),
        f(RET_K, 0, 0, 0xffff),
        f(RET_K, 0, 0, 0),
    ]
}

/// An AF_PACKET socket that receives only the frames `filter` accepts, on `ifindex` (0: every
/// interface). Made with protocol 0 (receiving nothing) and bound once the filter is on, so no
/// other frame is ever queued on it.
fn packet_listener(
    ethertype: u16,
    ifindex: u32,
    filter: &[libc::sock_filter],
) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
    let sa = sockaddr_ll(ifindex, ethertype, [0; 6]);
    // SAFETY: sa is a valid sockaddr_ll of the size given.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Sends the Ethernet frame `frame` (its own header included) out of `ifindex`.
fn send_frame(ifindex: u32, ethertype: u16, frame: &[u8]) -> io::Result<()> {
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
    let mut dst = [0u8; 6];
    dst.copy_from_slice(&frame[..6]);
    let sa = sockaddr_ll(ifindex, ethertype, dst);
    // SAFETY: frame and sa are valid for the sizes given.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads frames (not our own outgoing ones) until `deadline`, giving each to `f` until it
/// returns Some.
fn read_frames<T>(
    fd: &OwnedFd,
    deadline: Instant,
    mut f: impl FnMut(&[u8]) -> Option<T>,
) -> io::Result<Option<T>> {
    let mut buf = vec![0u8; 2048];
    while wait_readable(fd, deadline)? {
        // SAFETY: zeroed sockaddr_ll is valid; buf is valid for its length.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut sa as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        if sa.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        if let Some(t) = f(&buf[..n as usize]) {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// The Internet checksum (RFC 1071) of `data`.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    crate::dataplane::explain::checksum(&[data])
}

/// A TCP port of lbd's own on `addr`, held (bound, never listening or connected) while the
/// guard lives, so no other socket of this host uses it meanwhile; the kernel answers what
/// comes to it with a RST.
pub(crate) struct HeldPort {
    _fd: OwnedFd,
    pub(crate) addr: SocketAddrV4,
}

pub(crate) fn hold_port(addr: Ipv4Addr) -> io::Result<HeldPort> {
    let fd = socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
    // SAFETY: sockaddr_in is plain old data.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from(addr).to_be();
    let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: sa is valid for size bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            size,
        )
    })?;
    let mut len = size;
    // SAFETY: sa is valid for len bytes.
    cvt(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    })?;
    Ok(HeldPort {
        _fd: fd,
        addr: SocketAddrV4::new(addr, u16::from_be(sa.sin_port)),
    })
}

/// What came back for a [`syn_probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SynAnswer {
    /// SYN-ACK from VIP:PORT: something listens there.
    SynAck,
    /// RST from VIP:PORT: the backend took the packet as its own, nothing listens on the port.
    Rst,
    /// Nothing before the deadline.
    Nothing,
}

/// Sends `frame` (a SYN from `from` to `vip`, possibly encapsulated) out of `ifindex` and waits
/// up to `timeout` for the answer from `vip` to `from`, on any interface. Sent twice (at 0 and
/// at a third of the timeout) against a lost first frame.
pub(crate) fn syn_probe(
    ifindex: u32,
    frame: &[u8],
    from: SocketAddrV4,
    vip: SocketAddrV4,
    timeout: Duration,
) -> io::Result<SynAnswer> {
    let filter = word_filter(ETH_P_IP, 26, u32::from(*vip.ip()));
    let listener = packet_listener(ETH_P_IP, 0, &filter)?;
    let start = Instant::now();
    send_frame(ifindex, ETH_P_IP, frame)?;
    let matches = |f: &[u8]| -> Option<SynAnswer> {
        if f.len() < 14 + 20 || u16::from_be_bytes([f[12], f[13]]) != ETH_P_IP {
            return None;
        }
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip[9] != 6 || ip.len() < ihl + 20 {
            return None;
        }
        let (src, dst) = (&ip[12..16], &ip[16..20]);
        let tcp = &ip[ihl..];
        let (sport, dport) = (
            u16::from_be_bytes([tcp[0], tcp[1]]),
            u16::from_be_bytes([tcp[2], tcp[3]]),
        );
        if src != vip.ip().octets()
            || dst != from.ip().octets()
            || sport != vip.port()
            || dport != from.port()
        {
            return None;
        }
        let flags = tcp[13];
        if flags & 0x04 != 0 {
            Some(SynAnswer::Rst)
        } else if flags & 0x12 == 0x12 {
            Some(SynAnswer::SynAck)
        } else {
            None
        }
    };
    if let Some(a) = read_frames(&listener, start + timeout / 3, matches)? {
        return Ok(a);
    }
    send_frame(ifindex, ETH_P_IP, frame)?;
    Ok(read_frames(&listener, start + timeout, matches)?.unwrap_or(SynAnswer::Nothing))
}

/// An IPv4 header (20 bytes, no options) for `payload_len` bytes of protocol `proto`, checksum
/// filled; DF and an ID of 0 when `df` (RFC 6864), TTL 64.
pub(crate) fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload_len: usize,
    df: bool,
) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    if df {
        h[6] = 0x40;
    }
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// An ARP request (who-has `target`, tell `sender`) from `sender_mac`, to the broadcast address.
fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

/// Asks who has `target` on `ifindex` (from `sender_mac`/`sender`) and returns the MAC
/// addresses that answered within `timeout` (the request is sent twice).
pub(crate) fn arp_probe(
    ifindex: u32,
    sender_mac: [u8; 6],
    sender: Ipv4Addr,
    target: Ipv4Addr,
    timeout: Duration,
) -> io::Result<Vec<[u8; 6]>> {
    // The sender protocol address of an ARP frame is at offset 14 + 14.
    let filter = word_filter(ETH_P_ARP, 28, u32::from(target));
    let listener = packet_listener(ETH_P_ARP, ifindex, &filter)?;
    let request = arp_request(sender_mac, sender, target);
    let start = Instant::now();
    let mut macs: Vec<[u8; 6]> = Vec::new();
    for deadline in [start + timeout / 2, start + timeout] {
        send_frame(ifindex, ETH_P_ARP, &request)?;
        read_frames(&listener, deadline, |f| {
            // op 2 (reply), sender hardware address at 22..28.
            if f.len() >= 42 && f[20..22] == [0, 2] {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&f[22..28]);
                if !macs.contains(&mac) {
                    macs.push(mac);
                }
            }
            None::<()>
        })?;
    }
    Ok(macs)
}

/// What came back for a [`ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingAnswer {
    Reply,
    /// A router (or this host) says the packet needs fragmenting: the MTU it gave.
    FragNeeded(u16),
    /// Some other ICMP error about it: (type, code).
    Error(u8, u8),
    Nothing,
}

/// Sends ICMP echo requests of `size` bytes (IP header included) with DF to `dst`, `tries`
/// times, waiting `each` for an answer after each.
pub(crate) fn ping(
    dst: Ipv4Addr,
    size: usize,
    tries: u32,
    each: Duration,
    id: u16,
) -> io::Result<PingAnswer> {
    let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    // DF on every packet, whatever the route's cached path MTU says.
    setsockopt(
        &fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        &libc::IP_PMTUDISC_PROBE,
    )?;
    // SAFETY: sockaddr_in is plain old data.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from(dst).to_be();
    let icmp_len = size.saturating_sub(20).max(8);
    let mut buf = vec![0u8; 2048];
    for seq in 0..tries {
        let seq = seq as u16;
        let mut msg = vec![0u8; icmp_len];
        msg[0] = 8;
        msg[4..6].copy_from_slice(&id.to_be_bytes());
        msg[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in msg[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: msg and sa are valid for the sizes given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EMSGSIZE) {
                return Ok(PingAnswer::FragNeeded(0));
            }
            return Err(e);
        }
        let deadline = Instant::now() + each;
        while wait_readable(&fd, deadline)? {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                continue;
            }
            if let Some(a) = ping_answer(&buf[..n as usize], dst, id, seq) {
                return Ok(a);
            }
        }
    }
    Ok(PingAnswer::Nothing)
}

/// The answer to our echo (`id`, `seq`) to `dst` in the IP packet `p`, if it is one.
fn ping_answer(p: &[u8], dst: Ipv4Addr, id: u16, seq: u16) -> Option<PingAnswer> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    let icmp = p.get(ihl..)?;
    if icmp.len() < 8 {
        return None;
    }
    let be16 = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    match icmp[0] {
        0 if p[12..16] == dst.octets() && be16(icmp, 4) == id && be16(icmp, 6) == seq => {
            Some(PingAnswer::Reply)
        }
        3 | 11 | 12 => {
            // The quoted packet: our echo to dst with our id.
            let inner = icmp.get(8..)?;
            let inner_ihl = usize::from(*inner.first()? & 0x0f) * 4;
            let quoted = inner.get(inner_ihl..inner_ihl + 8)?;
            if inner.get(16..20)? != dst.octets() || quoted[0] != 8 || be16(quoted, 4) != id {
                return None;
            }
            if icmp[0] == 3 && icmp[1] == 4 {
                Some(PingAnswer::FragNeeded(be16(icmp, 6)))
            } else {
                Some(PingAnswer::Error(icmp[0], icmp[1]))
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071's example words, and an IPv4 header whose checksum is known (0xb861).
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        let full = ipv4_header(
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 199),
            17,
            0x73 - 20,
            true,
        );
        assert_eq!(
            checksum(&full),
            0,
            "a header with its checksum sums to zero"
        );
    }

    #[test]
    fn arp_request_layout() {
        let f = arp_request(
            [2, 0, 0, 0, 0, 1],
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 10),
        );
        assert_eq!(f.len(), 60);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[38..42], &[10, 0, 0, 10], "the target");
        assert_eq!(
            &f[28..32],
            &[10, 0, 0, 1],
            "the sender (the filter's offset 28)"
        );
    }

    #[test]
    fn echo_reply_and_frag_needed_are_recognised() {
        let dst = Ipv4Addr::new(10, 0, 0, 2);
        let mut reply = ipv4_header(dst, Ipv4Addr::new(10, 0, 0, 1), 1, 8, false).to_vec();
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 3]);
        assert_eq!(ping_answer(&reply, dst, 0x1234, 3), Some(PingAnswer::Reply));
        assert_eq!(ping_answer(&reply, dst, 0x1234, 4), None);
        let mut err = ipv4_header(
            Ipv4Addr::new(10, 0, 9, 1),
            Ipv4Addr::new(10, 0, 0, 1),
            1,
            36,
            false,
        )
        .to_vec();
        err.extend_from_slice(&[3, 4, 0, 0, 0, 0, 0x05, 0x78]);
        err.extend_from_slice(&ipv4_header(Ipv4Addr::new(10, 0, 0, 1), dst, 1, 1480, true));
        err.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 0]);
        assert_eq!(
            ping_answer(&err, dst, 0x1234, 0),
            Some(PingAnswer::FragNeeded(1400))
        );
    }
}
