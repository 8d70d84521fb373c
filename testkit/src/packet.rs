//! Hand-built Ethernet/802.1Q/IPv4/TCP/UDP/ICMP frames, checksums computed from scratch (RFC 1071).

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, ensure, Result};

/// A MAC address.
pub type Mac = [u8; 6];

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// IPv4 "don't fragment" flag, "more fragments" flag and fragment offset mask (host order).
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;

/// One's-complement sum of `data` as big-endian 16-bit words, an odd last byte padded with zero
/// (RFC 1071), not yet folded.
pub fn ones_sum(data: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// Folds a 32-bit one's-complement sum into 16 bits (end-around carry).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum of `data` (RFC 1071): the complement of the folded one's-complement sum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(ones_sum(data))
}

/// The TCP/UDP pseudo header of IPv4 (RFC 793 / RFC 768).
fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    p
}

/// The transport part of a [`Packet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        window: u16,
        urgent: u16,
        /// TCP options, a multiple of 4 bytes.
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// Send a zero checksum ("no checksum") instead of computing one.
        zero_checksum: bool,
    },
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// An IPv4 frame described field by field; [`Packet::build`] turns it into bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    /// VLAN tags, outermost first: (TPID, TCI).
    pub vlans: Vec<(u16, u16)>,
    pub tos: u8,
    pub ip_id: u16,
    /// Flags and fragment offset, host order (e.g. [`IP_DF`]).
    pub frag: u16,
    pub ttl: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IPv4 options, a multiple of 4 bytes.
    pub ip_options: Vec<u8>,
    pub l4: Transport,
    pub payload: Vec<u8>,
}

impl Packet {
    fn base(eth_src: Mac, eth_dst: Mac, src: Ipv4Addr, dst: Ipv4Addr, l4: Transport) -> Packet {
        Packet {
            eth_dst,
            eth_src,
            vlans: Vec::new(),
            tos: 0x10,
            ip_id: 0x1c46,
            frag: IP_DF,
            ttl: 61,
            src,
            dst,
            ip_options: Vec::new(),
            l4,
            payload: Vec::new(),
        }
    }

    /// A TCP segment with MSS/SACK-permitted options, distinctive sequence numbers and window.
    pub fn tcp(
        eth_src: Mac,
        eth_dst: Mac,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        flags: u8,
    ) -> Packet {
        let l4 = Transport::Tcp {
            sport: src.port(),
            dport: dst.port(),
            seq: 0x1234_5678,
            ack: if flags & TCP_ACK != 0 { 0x0bad_cafe } else { 0 },
            flags,
            window: 0xfaf0,
            urgent: 0,
            options: vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2],
        };
        Packet::base(eth_src, eth_dst, *src.ip(), *dst.ip(), l4)
    }

    /// A UDP datagram (checksum computed).
    pub fn udp(eth_src: Mac, eth_dst: Mac, src: SocketAddrV4, dst: SocketAddrV4) -> Packet {
        let l4 = Transport::Udp {
            sport: src.port(),
            dport: dst.port(),
            zero_checksum: false,
        };
        Packet::base(eth_src, eth_dst, *src.ip(), *dst.ip(), l4)
    }

    /// An ICMP echo request.
    pub fn icmp_echo(eth_src: Mac, eth_dst: Mac, src: Ipv4Addr, dst: Ipv4Addr) -> Packet {
        let l4 = Transport::Icmp {
            kind: 8,
            code: 0,
            rest: [0x12, 0x34, 0x00, 0x01],
        };
        let mut p = Packet::base(eth_src, eth_dst, src, dst, l4);
        p.payload = b"ping-payload".to_vec();
        p
    }

    /// An ICMP message of `kind`/`code` whose 4 header bytes after the checksum are `rest` and
    /// whose payload is `quote` (for an error: the offending packet's IP header and first bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn icmp(
        eth_src: Mac,
        eth_dst: Mac,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        kind: u8,
        code: u8,
        rest: [u8; 4],
        quote: &[u8],
    ) -> Packet {
        let l4 = Transport::Icmp { kind, code, rest };
        let mut p = Packet::base(eth_src, eth_dst, src, dst, l4);
        // As Linux sends its errors: no DF, TOS 0xc0 (internetwork control).
        p.frag = 0;
        p.tos = 0xc0;
        p.payload = quote.to_vec();
        p
    }

    pub fn with_payload(mut self, payload: &[u8]) -> Packet {
        self.payload = payload.to_vec();
        self
    }

    pub fn with_vlan(mut self, tpid: u16, tci: u16) -> Packet {
        self.vlans.push((tpid, tci));
        self
    }

    pub fn with_ip_options(mut self, options: &[u8]) -> Packet {
        assert!(
            options.len() % 4 == 0 && options.len() <= 40,
            "IPv4 options must be a multiple of 4, at most 40 bytes"
        );
        self.ip_options = options.to_vec();
        self
    }

    /// Same packet with a TCP sequence/acknowledgement pair (no-op for UDP/ICMP).
    pub fn with_seq_ack(mut self, new_seq: u32, new_ack: u32) -> Packet {
        if let Transport::Tcp { seq, ack, .. } = &mut self.l4 {
            *seq = new_seq;
            *ack = new_ack;
        }
        self
    }

    pub fn with_zero_udp_checksum(mut self) -> Packet {
        if let Transport::Udp { zero_checksum, .. } = &mut self.l4 {
            *zero_checksum = true;
        }
        self
    }

    /// The same packet forwarded by a router: new MACs, TTL one less, nothing else.
    pub fn routed(&self, eth_src: Mac, eth_dst: Mac) -> Packet {
        let mut p = self.clone();
        p.eth_src = eth_src;
        p.eth_dst = eth_dst;
        p.ttl = p.ttl.wrapping_sub(1);
        p
    }

    /// The same packet after a full NAT by the balancer: new MACs, addresses and ports, TTL one
    /// less (it forwards like a router), nothing else.
    pub fn natted(
        &self,
        eth_src: Mac,
        eth_dst: Mac,
        src: SocketAddrV4,
        dst: SocketAddrV4,
    ) -> Packet {
        let mut p = self.routed(eth_src, eth_dst);
        p.src = *src.ip();
        p.dst = *dst.ip();
        match &mut p.l4 {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
                *sport = src.port();
                *dport = dst.port();
            }
            Transport::Icmp { .. } => panic!("ICMP is not NATed"),
        }
        p
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            Transport::Tcp { .. } => IPPROTO_TCP,
            Transport::Udp { .. } => IPPROTO_UDP,
            Transport::Icmp { .. } => IPPROTO_ICMP,
        }
    }

    /// Offset of the IPv4 header in the frame.
    pub fn l3_offset(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// Offset of the TCP/UDP/ICMP header in the frame.
    pub fn l4_offset(&self) -> usize {
        self.l3_offset() + 20 + self.ip_options.len()
    }

    /// The frame, with every length and checksum computed from scratch.
    pub fn build(&self) -> Vec<u8> {
        // Transport header and payload, checksum zero for now.
        let mut l4 = Vec::new();
        match &self.l4 {
            Transport::Tcp {
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                urgent,
                options,
            } => {
                assert!(
                    options.len() % 4 == 0,
                    "TCP options must be a multiple of 4 bytes"
                );
                let doff = (20 + options.len()) / 4;
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&seq.to_be_bytes());
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.push((doff as u8) << 4);
                l4.push(*flags);
                l4.extend_from_slice(&window.to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                l4.extend_from_slice(&urgent.to_be_bytes());
                l4.extend_from_slice(options);
            }
            Transport::Udp { sport, dport, .. } => {
                l4.extend_from_slice(&sport.to_be_bytes());
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            Transport::Icmp { kind, code, rest } => {
                l4.extend_from_slice(&[*kind, *code, 0, 0]);
                l4.extend_from_slice(rest);
            }
        }
        l4.extend_from_slice(&self.payload);
        let (check_off, check) = match &self.l4 {
            Transport::Tcp { .. } => (16, transport_checksum(self.src, self.dst, IPPROTO_TCP, &l4)),
            Transport::Udp {
                zero_checksum: true,
                ..
            } => (6, 0),
            Transport::Udp { .. } => (
                6,
                udp_wire_checksum(transport_checksum(self.src, self.dst, IPPROTO_UDP, &l4)),
            ),
            Transport::Icmp { .. } => (2, internet_checksum(&l4)),
        };
        l4[check_off..check_off + 2].copy_from_slice(&check.to_be_bytes());

        let ihl = (20 + self.ip_options.len()) / 4;
        let tot_len = ihl * 4 + l4.len();
        let mut ip = Vec::with_capacity(ihl * 4);
        ip.push(0x40 | ihl as u8);
        ip.push(self.tos);
        ip.extend_from_slice(&(tot_len as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let check = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&check.to_be_bytes());

        let mut frame = Vec::with_capacity(self.l3_offset() + tot_len);
        frame.extend_from_slice(&self.eth_dst);
        frame.extend_from_slice(&self.eth_src);
        for (tpid, tci) in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&tci.to_be_bytes());
        }
        frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// IP protocol number of IPv4-in-IPv4 (RFC 2003).
pub const IPPROTO_IPIP: u8 = 4;

impl Packet {
    /// The IP packet alone (header with options, transport header, payload), as in the frame.
    pub fn ip_bytes(&self) -> Vec<u8> {
        self.build()[self.l3_offset()..].to_vec()
    }
}

/// An Ethernet header with `vlans` (outermost first: (TPID, TCI)) and `ethertype`.
pub fn eth_header(dst: &Mac, src: &Mac, vlans: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(14 + 4 * vlans.len());
    h.extend_from_slice(dst);
    h.extend_from_slice(src);
    for (tpid, tci) in vlans {
        h.extend_from_slice(&tpid.to_be_bytes());
        h.extend_from_slice(&tci.to_be_bytes());
    }
    h.extend_from_slice(&ethertype.to_be_bytes());
    h
}

/// The fields of an option-less IPv4 header; [`Ipv4Header::bytes`] computes length and checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub tos: u8,
    pub id: u16,
    /// Flags and fragment offset, host order.
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

impl Ipv4Header {
    /// The 20 header bytes for a payload of `payload_len` bytes, checksum from scratch (RFC 1071).
    pub fn bytes(&self, payload_len: usize) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[1] = self.tos;
        h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6..8].copy_from_slice(&self.frag.to_be_bytes());
        h[8] = self.ttl;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        let check = internet_checksum(&h);
        h[10..12].copy_from_slice(&check.to_be_bytes());
        h
    }
}

/// An IPIP frame: Ethernet (`vlans` kept) + `outer` + the byte-identical `inner` IP packet.
pub fn ipip_frame(
    eth_dst: &Mac,
    eth_src: &Mac,
    vlans: &[(u16, u16)],
    outer: &Ipv4Header,
    inner: &[u8],
) -> Vec<u8> {
    let mut f = eth_header(eth_dst, eth_src, vlans, ETH_P_IP);
    f.extend_from_slice(&outer.bytes(inner.len()));
    f.extend_from_slice(inner);
    f
}

/// The TCP/UDP checksum of `segment` (its checksum field zero) over the IPv4 pseudo header.
pub fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut all = pseudo_header(src, dst, proto, segment.len());
    all.extend_from_slice(segment);
    internet_checksum(&all)
}

/// A computed UDP checksum of 0 is sent as 0xffff (RFC 768): 0 on the wire means "none".
pub fn udp_wire_checksum(computed: u16) -> u16 {
    if computed == 0 {
        0xffff
    } else {
        computed
    }
}

/// An ARP request (who has `target`? tell `sender`), broadcast.
pub fn arp_request(sender_mac: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

/// An IPv6 TCP SYN frame (fe80::1:12345 -> fe80::2:80); the data plane must leave it alone.
pub fn ipv6_tcp_syn(eth_src: Mac, eth_dst: Mac) -> Vec<u8> {
    let src: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let dst: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&12345u16.to_be_bytes());
    tcp.extend_from_slice(&80u16.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(tcp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, IPPROTO_TCP]);
    pseudo.extend_from_slice(&tcp);
    let check = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());

    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    f.push(IPPROTO_TCP);
    f.push(64);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&tcp);
    f
}

pub fn get_be16(buf: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([buf[off], buf[off + 1]])
}

pub fn set_be16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Recomputes the IPv4 header checksum of the header at `l3` (after a deliberate corruption, so
/// that the corruption is the only thing wrong with the header). Uses the header length of the
/// header itself when it is sane, 20 bytes otherwise.
pub fn refresh_ip_checksum(frame: &mut [u8], l3: usize) {
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let hlen = if ihl >= 20 && l3 + ihl <= frame.len() {
        ihl
    } else {
        20
    };
    set_be16(frame, l3 + 10, 0);
    let check = internet_checksum(&frame[l3..l3 + hlen]);
    set_be16(frame, l3 + 10, check);
}

/// Where the headers of an IPv4 frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    /// IPv4 total length (may be shorter than the frame: Ethernet padding).
    pub tot_len: usize,
}

/// Finds the IPv4 and transport headers of a well-formed frame (one optional VLAN tag).
pub fn layout(frame: &[u8]) -> Result<Layout> {
    ensure!(
        frame.len() >= 14,
        "frame of {} bytes has no Ethernet header",
        frame.len()
    );
    let mut l3 = 14;
    let mut ethertype = get_be16(frame, 12);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ensure!(frame.len() >= 18, "truncated VLAN tag");
        ethertype = get_be16(frame, 16);
        l3 = 18;
    }
    ensure!(
        ethertype == ETH_P_IP,
        "ethertype {ethertype:#06x} is not IPv4"
    );
    ensure!(frame.len() >= l3 + 20, "truncated IPv4 header");
    ensure!(
        frame[l3] >> 4 == 4,
        "IP version {} is not 4",
        frame[l3] >> 4
    );
    let ihl = usize::from(frame[l3] & 0x0f) * 4;
    let tot_len = usize::from(get_be16(frame, l3 + 2));
    ensure!(
        ihl >= 20 && tot_len >= ihl && l3 + tot_len <= frame.len(),
        "bad IPv4 lengths (ihl {ihl}, tot_len {tot_len})"
    );
    Ok(Layout {
        l3,
        l4: l3 + ihl,
        proto: frame[l3 + 9],
        tot_len,
    })
}

/// Checks every checksum of an IPv4 frame against a computation from scratch: the IPv4 header
/// checksum, and the TCP, UDP (a zero UDP checksum is accepted only if `allow_zero_udp`) or ICMP
/// checksum.
pub fn verify_checksums(frame: &[u8], allow_zero_udp: bool) -> Result<()> {
    let lay = layout(frame)?;
    let mut ip = frame[lay.l3..lay.l4].to_vec();
    check_sum("IPv4 header", &mut ip, 10, internet_checksum)?;

    let addr =
        |off: usize| Ipv4Addr::new(frame[off], frame[off + 1], frame[off + 2], frame[off + 3]);
    let (src, dst) = (addr(lay.l3 + 12), addr(lay.l3 + 16));
    let mut seg = frame[lay.l4..lay.l3 + lay.tot_len].to_vec();
    match lay.proto {
        IPPROTO_TCP => {
            ensure!(seg.len() >= 20, "truncated TCP header");
            check_sum("TCP", &mut seg, 16, |s| {
                transport_checksum(src, dst, IPPROTO_TCP, s)
            })
        }
        IPPROTO_UDP => {
            ensure!(seg.len() >= 8, "truncated UDP header");
            if get_be16(&seg, 6) == 0 {
                ensure!(
                    allow_zero_udp,
                    "UDP checksum is 0 (none), a checksum was expected"
                );
                return Ok(());
            }
            check_sum("UDP", &mut seg, 6, |s| {
                udp_wire_checksum(transport_checksum(src, dst, IPPROTO_UDP, s))
            })
        }
        IPPROTO_ICMP => check_sum("ICMP", &mut seg, 2, internet_checksum),
        p => bail!("unexpected IP protocol {p}"),
    }
}

/// Checks the checksum at `off` of `bytes` against `compute` over `bytes` with that field
/// zeroed (which it leaves zeroed).
fn check_sum(
    what: &str,
    bytes: &mut [u8],
    off: usize,
    compute: impl FnOnce(&[u8]) -> u16,
) -> Result<()> {
    let got = get_be16(bytes, off);
    set_be16(bytes, off, 0);
    let want = compute(bytes);
    ensure!(
        got == want,
        "{what} checksum is {got:#06x}, computed from scratch {want:#06x}"
    );
    Ok(())
}

/// The addresses and ports of a TCP/UDP frame: (source, destination).
pub fn endpoints(frame: &[u8]) -> Result<(SocketAddrV4, SocketAddrV4)> {
    let lay = layout(frame)?;
    ensure!(
        lay.proto == IPPROTO_TCP || lay.proto == IPPROTO_UDP,
        "not TCP or UDP"
    );
    let a = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    Ok((
        SocketAddrV4::new(a(lay.l3 + 12), get_be16(frame, lay.l4)),
        SocketAddrV4::new(a(lay.l3 + 16), get_be16(frame, lay.l4 + 2)),
    ))
}

/// A readable description of where two frames differ (empty if they are equal).
pub fn diff(got: &[u8], want: &[u8]) -> String {
    let mut out = String::new();
    if got.len() != want.len() {
        out.push_str(&format!(
            "length {} != expected {}; ",
            got.len(),
            want.len()
        ));
    }
    let diffs: Vec<String> = got
        .iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| format!("[{i}] {g:#04x} != {w:#04x}"))
        .collect();
    if !diffs.is_empty() {
        out.push_str(&format!(
            "bytes differ (got != expected): {}",
            diffs.join(", ")
        ));
    }
    out
}

/// Formats a MAC for `ip`.
pub fn mac_str(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
