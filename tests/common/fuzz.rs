//! The data-plane fuzzer: a seeded packet generator with mutators, and the invariants every run of
//! the `lb` and `decap` programs must keep. `tests/fuzz.rs` drives it; the same seed gives the same
//! packets, so a failure names the seed and the packet number that replay it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, ensure, Result};
use ipnet::Ipv4Net;

use super::lab::*;
use xdplb_testkit::packet::*;

/// splitmix64: small, fast, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// One VIP of the fuzz configuration.
#[derive(Debug, Clone, Copy)]
pub struct FuzzVip {
    pub addr: SocketAddrV4,
    pub proto: u8,
}

/// What the invariants need to know about the program's configuration.
#[derive(Debug, Clone)]
pub struct World {
    pub vips: Vec<FuzzVip>,
    pub snat: Ipv4Addr,
    pub snat_ports: (u16, u16),
    /// Blocked source prefixes: (network, prefix length).
    pub blocked: Vec<(Ipv4Addr, u8)>,
    /// Sources the generator uses as clients (some blocked, some rate limited).
    pub clients: Vec<Ipv4Addr>,
    /// Backends (address, port) the generator forges replies from.
    pub backends: Vec<SocketAddrV4>,
    /// The IPIP outer IDs of DF-clear packets so far ([`check_ipip_outer_id`]).
    pub ipip_ids: RefCell<IpipIds>,
}

impl World {
    pub fn is_vip_addr(&self, a: Ipv4Addr) -> bool {
        self.vips.iter().any(|v| *v.addr.ip() == a)
    }

    pub fn is_blocked(&self, a: Ipv4Addr) -> bool {
        self.blocked.iter().any(|(net, len)| {
            let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(*net) & mask
        })
    }
}

/// What the generator meant a packet to be (for the histogram and for messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    ToVip,
    Reply,
    IcmpToVip,
    IcmpToSnat,
    Host,
    Land,
    NotIpv4,
    Truncated,
}

/// One generated frame and the interface it arrives on (veth0 or veth2).
#[derive(Debug, Clone)]
pub struct Case {
    pub kind: Kind,
    pub frame: Vec<u8>,
    pub on_veth2: bool,
    pub mutations: Vec<&'static str>,
}

/// The generator: fresh packets of every kind, then mutations. It remembers flows the program
/// forwarded, so that replies, ICMP errors and later packets hit live state too.
pub struct Generator {
    pub rng: Rng,
    pub world: World,
    /// Client flows (client, VIP, proto) that were forwarded.
    client_flows: Vec<(SocketAddrV4, SocketAddrV4, u8)>,
    /// NAT flows as the backend sees them: (backend, SNAT address:port, proto).
    nat_flows: Vec<(SocketAddrV4, SocketAddrV4, u8)>,
}

const INTERESTING_FLAGS: [u8; 12] = [
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_ACK,
    TCP_ACK | TCP_PSH,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    TCP_RST | TCP_ACK,
    0,
    0xff,
    TCP_SYN | TCP_FIN,
    TCP_SYN | TCP_RST,
    0x3f,
];

impl Generator {
    pub fn new(seed: u64, world: World) -> Generator {
        Generator {
            rng: Rng::new(seed),
            world,
            client_flows: Vec::new(),
            nat_flows: Vec::new(),
        }
    }

    fn remember<T>(list: &mut Vec<T>, item: T) {
        if list.len() >= 512 {
            list.swap_remove(0);
        }
        list.push(item);
    }

    /// Records what a forwarded `case` tells about live flows.
    pub fn learn(&mut self, case: &Case, out: &[u8]) {
        let (Some(a), Some(b)) = (parse(&case.frame), parse(out)) else {
            return;
        };
        if let (Some((cs, cd)), Some(_)) = (a.ports, b.ports) {
            if self.world.is_vip_addr(*cd.ip()) {
                Self::remember(&mut self.client_flows, (cs, cd, a.proto));
            }
        }
        if let Some((os, od)) = b.ports {
            if *os.ip() == self.world.snat && b.proto != IPPROTO_ICMP {
                Self::remember(&mut self.nat_flows, (od, os, b.proto));
            }
        }
    }

    fn port(&mut self) -> u16 {
        if self.rng.chance(70) {
            40000 + self.rng.below(64) as u16
        } else {
            self.rng.next_u64() as u16
        }
    }

    fn client(&mut self) -> Ipv4Addr {
        if self.rng.chance(85) {
            let c = self.world.clients.clone();
            self.rng.pick(&c)
        } else {
            Ipv4Addr::from(self.rng.next_u64() as u32)
        }
    }

    fn l4(&mut self, proto: u8, sport: u16, dport: u16) -> Transport {
        if proto == IPPROTO_UDP {
            return Transport::Udp {
                sport,
                dport,
                zero_checksum: self.rng.chance(10),
            };
        }
        let flags = if self.rng.chance(70) {
            self.rng.pick(&INTERESTING_FLAGS)
        } else {
            self.rng.byte()
        };
        let options = match self.rng.below(4) {
            0 => Vec::new(),
            1 => vec![2, 4, 0x05, 0xb4],
            2 => vec![2, 4, 0x05, 0xb4, 1, 1, 4, 2],
            _ => {
                let n = 4 * self.rng.below(11);
                self.rng.bytes(n)
            }
        };
        Transport::Tcp {
            sport,
            dport,
            seq: self.rng.next_u64() as u32,
            ack: self.rng.next_u64() as u32,
            flags,
            window: self.rng.next_u64() as u16,
            urgent: 0,
            options,
        }
    }

    fn payload(&mut self) -> Vec<u8> {
        let n = match self.rng.below(10) {
            0..=3 => 0,
            4..=7 => self.rng.below(200),
            8 => 1200 + self.rng.below(300),
            // Jumbo: beyond veth's 1500 MTU, within what BPF_PROG_TEST_RUN takes.
            _ => 1500 + self.rng.below(1800),
        };
        vec![self.rng.byte(); n]
    }

    fn packet(&mut self, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> Packet {
        let l4 = self.l4(proto, src.port(), dst.port());
        let mut p = match l4 {
            Transport::Udp { .. } => Packet::udp(CLIENT_MAC, VETH0_MAC, src, dst),
            _ => Packet::tcp(CLIENT_MAC, VETH0_MAC, src, dst, 0),
        };
        p.l4 = l4;
        p.payload = self.payload();
        p.frag = self.rng.pick(&[IP_DF, IP_DF, IP_DF, 0]);
        p.tos = self.rng.byte();
        p.ttl = self.rng.byte();
        p.ip_id = self.rng.next_u64() as u16;
        if self.rng.chance(10) {
            let n = 4 * (1 + self.rng.below(10));
            let mut o = self.rng.bytes(n);
            if self.rng.chance(50) {
                o.iter_mut().for_each(|b| *b = 1); // NOPs
            }
            p.ip_options = o;
        }
        // Tagged frames only go to the kernel (pass_vlan): a few, so that most reach the VIP paths.
        match self.rng.below(100) {
            0 => p
                .vlans
                .push((ETH_P_8021Q, self.rng.next_u64() as u16 & 0x0fff)),
            1 => p.vlans.push((ETH_P_8021AD, 100)),
            2 => {
                p.vlans.push((ETH_P_8021AD, 100));
                p.vlans.push((ETH_P_8021Q, 200));
            }
            _ => {}
        }
        p
    }

    fn icmp_error(&mut self, to: Ipv4Addr, quoted: &Packet) -> Packet {
        let (kind, code) = self.rng.pick(&[
            (3u8, 4u8),
            (3, 3),
            (3, 1),
            (11, 0),
            (12, 0),
            (8, 0),
            (0, 0),
            (5, 1),
        ]);
        let ip = quoted.ip_bytes();
        let qlen = match self.rng.below(4) {
            0 => 28,
            1 => 48,
            2 => 548,
            _ => self.rng.below(80),
        }
        .min(ip.len());
        let src = if self.rng.chance(80) {
            Ipv4Addr::new(192, 0, 2, self.rng.byte())
        } else {
            self.client()
        };
        let mut p = Packet::icmp(
            CLIENT_MAC,
            VETH0_MAC,
            src,
            to,
            kind,
            code,
            [0, 0, 0x05, 0x78],
            &ip[..qlen],
        );
        if self.rng.chance(2) {
            p.vlans.push((ETH_P_8021Q, 7));
        }
        p
    }

    /// A fresh, well-formed (or deliberately odd) frame.
    fn fresh(&mut self) -> Case {
        let w = self.world.clone();
        let mut on_veth2 = false;
        let (kind, frame) = match self.rng.below(100) {
            0..=44 => {
                let vip = self.rng.pick(&w.vips);
                let (client, port) = match self.client_flows.is_empty() || self.rng.chance(40) {
                    true => (self.client(), self.port()),
                    false => {
                        let (c, _, _) = self.rng.pick(&self.client_flows);
                        (*c.ip(), c.port())
                    }
                };
                let p = self.packet(SocketAddrV4::new(client, port), vip.addr, vip.proto);
                on_veth2 = self.rng.chance(10);
                (Kind::ToVip, p.build())
            }
            45..=59 => {
                let (backend, snat, proto) = match self.nat_flows.is_empty() || self.rng.chance(30)
                {
                    true => {
                        let be = self.rng.pick(&w.backends);
                        let port = w.snat_ports.0 + self.rng.below(64) as u16;
                        (
                            be,
                            SocketAddrV4::new(w.snat, port),
                            self.rng.pick(&[IPPROTO_TCP, IPPROTO_UDP]),
                        )
                    }
                    false => self.rng.pick(&self.nat_flows),
                };
                (Kind::Reply, self.packet(backend, snat, proto).build())
            }
            60..=69 => {
                let (client, vip, proto) = match self.client_flows.is_empty() || self.rng.chance(20)
                {
                    true => {
                        let v = self.rng.pick(&w.vips);
                        (
                            SocketAddrV4::new(self.client(), self.port()),
                            v.addr,
                            v.proto,
                        )
                    }
                    false => self.rng.pick(&self.client_flows),
                };
                let sent = self.packet(vip, client, proto);
                (Kind::IcmpToVip, self.icmp_error(*vip.ip(), &sent).build())
            }
            70..=74 => {
                let (backend, snat, proto) = match self.nat_flows.is_empty() || self.rng.chance(20)
                {
                    true => {
                        let be = self.rng.pick(&w.backends);
                        (be, SocketAddrV4::new(w.snat, self.port()), IPPROTO_TCP)
                    }
                    false => self.rng.pick(&self.nat_flows),
                };
                let sent = self.packet(snat, backend, proto);
                (Kind::IcmpToSnat, self.icmp_error(w.snat, &sent).build())
            }
            75..=86 => {
                let dst = match self.rng.below(4) {
                    0 => w.snat,
                    1 => LB2_ADDR,
                    _ => Ipv4Addr::from(self.rng.next_u64() as u32),
                };
                let src = SocketAddrV4::new(self.client(), self.port());
                let frame = match self.rng.below(4) {
                    0 => Packet::icmp_echo(CLIENT_MAC, VETH0_MAC, *src.ip(), dst).build(),
                    _ => {
                        let proto = self.rng.pick(&[IPPROTO_TCP, IPPROTO_UDP]);
                        let dport = self.rng.pick(&[22, 80, 53, 443, 33000]);
                        self.packet(src, SocketAddrV4::new(dst, dport), proto)
                            .build()
                    }
                };
                (Kind::Host, frame)
            }
            87..=90 => {
                let vip = self.rng.pick(&w.vips);
                let src =
                    SocketAddrV4::new(*vip.addr.ip(), self.rng.pick(&[vip.addr.port(), 1234]));
                (Kind::Land, self.packet(src, vip.addr, vip.proto).build())
            }
            _ => {
                let frame = match self.rng.below(4) {
                    0 => arp_request(CLIENT_MAC, CLIENT, LB_ADDR),
                    1 => ipv6_tcp_syn(CLIENT_MAC, VETH0_MAC),
                    2 => {
                        let mut f =
                            eth_header(&VETH0_MAC, &CLIENT_MAC, &[], self.rng.next_u64() as u16);
                        let n = self.rng.below(100);
                        f.extend(self.rng.bytes(n));
                        f
                    }
                    _ => {
                        let n = 14 + self.rng.below(80);
                        let mut f = self.rng.bytes(n);
                        if self.rng.chance(50) {
                            set_be16(&mut f, 12, ETH_P_IP);
                        }
                        f
                    }
                };
                (Kind::NotIpv4, frame)
            }
        };
        Case {
            kind,
            frame,
            on_veth2,
            mutations: Vec::new(),
        }
    }

    /// The next case: a fresh frame, mutated half of the time.
    pub fn next_case(&mut self) -> Case {
        let mut case = self.fresh();
        if self.rng.chance(50) {
            let n = 1 + self.rng.below(3);
            for _ in 0..n {
                self.mutate(&mut case);
            }
        }
        case
    }

    fn mutate(&mut self, case: &mut Case) {
        let f = &mut case.frame;
        let Some(l3) = l3_offset(f) else {
            let i = self.rng.below(f.len().max(1));
            if let Some(b) = f.get_mut(i) {
                *b ^= 1 << self.rng.below(8);
            }
            case.mutations.push("flip");
            return;
        };
        if f.len() < l3 + 20 {
            case.mutations.push("none");
            return;
        }
        let ihl = usize::from(f[l3] & 0x0f) * 4;
        let l4 = l3 + ihl.max(20);
        let fix_ip = self.rng.chance(70);
        let mut truncated = false;
        let what = match self.rng.below(14) {
            0 => {
                f[l3] = 0x40 | self.rng.below(16) as u8;
                "ihl"
            }
            1 => {
                let tot = get_be16(f, l3 + 2);
                let v = match self.rng.below(3) {
                    0 => tot.saturating_add(1 + self.rng.below(100) as u16),
                    1 => tot.saturating_sub(1 + self.rng.below(100) as u16),
                    _ => self.rng.next_u64() as u16,
                };
                set_be16(f, l3 + 2, v);
                "tot_len"
            }
            2 => {
                let v = self
                    .rng
                    .pick(&[IP_MF, 1, IP_MF | 185, IP_DF | 1, 0x1fff, IP_MF | IP_DF]);
                set_be16(f, l3 + 6, v);
                "fragment"
            }
            3 if f.len() > l4 + 12 => {
                f[l4 + 12] = (self.rng.below(16) as u8) << 4;
                "doff"
            }
            4 if f.len() > l4 + 13 => {
                f[l4 + 13] = self.rng.byte();
                "tcp flags"
            }
            5 => {
                f[l3 + 9] = self.rng.pick(&[
                    IPPROTO_TCP,
                    IPPROTO_UDP,
                    IPPROTO_ICMP,
                    IPPROTO_IPIP,
                    0,
                    41,
                    47,
                ]);
                "protocol"
            }
            6 => {
                let i = self.rng.below(f.len());
                f[i] ^= 1 << self.rng.below(8);
                "flip"
            }
            7 => {
                let n = 1 + self.rng.below(40);
                f.extend(vec![0u8; n]);
                "padding"
            }
            8 => {
                // The quote of an ICMP error: its header length, protocol or fragment field.
                let q = l4 + 8;
                if f.len() > q + 10 {
                    match self.rng.below(3) {
                        0 => f[q] = 0x40 | self.rng.below(16) as u8,
                        1 => f[q + 9] = self.rng.byte(),
                        _ => set_be16(f, q + 6, self.rng.pick(&[1, IP_MF, 0x1fff])),
                    }
                }
                "quote"
            }
            9 => {
                let src = self.client();
                f[l3 + 12..l3 + 16].copy_from_slice(&src.octets());
                "source"
            }
            10 => {
                f[l3] = 0x60 | (f[l3] & 0x0f);
                "version"
            }
            _ => {
                let cut = self.rng.below(f.len());
                f.truncate(cut);
                truncated = true;
                "truncate"
            }
        };
        if truncated {
            case.kind = Kind::Truncated;
        }
        if fix_ip && f.len() >= l3 + 20 {
            refresh_ip_checksum(f, l3);
        }
        case.mutations.push(what);
    }
}

/// Offset of the IPv4 header behind at most one VLAN tag (as the decap program finds it), or None.
pub fn l3_offset(f: &[u8]) -> Option<usize> {
    if f.len() < 14 {
        return None;
    }
    let mut proto = get_be16(f, 12);
    let mut l3 = 14;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        if f.len() < 18 {
            return None;
        }
        proto = get_be16(f, 16);
        l3 = 18;
    }
    (proto == ETH_P_IP).then_some(l3)
}

/// An IPv4 frame, parsed the way the program parses it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub l3: usize,
    pub ihl: usize,
    pub tot_len: usize,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Fragment offset non-zero.
    pub later_fragment: bool,
    pub first_fragment: bool,
    /// (source, destination) when the TCP/UDP header is whole.
    pub ports: Option<(SocketAddrV4, SocketAddrV4)>,
    /// TCP/UDP whose header is cut short (or TCP doff impossible).
    pub l4_cut: bool,
}

fn ip4(f: &[u8], o: usize) -> Ipv4Addr {
    Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3])
}

/// Offset of the IPv4 header behind one or two VLAN tags, where bpf/parse.h (tagged_frame())
/// reads it for the firewall, or None.
fn tagged_l3(f: &[u8]) -> Option<usize> {
    let is_tag = |t: u16| t == ETH_P_8021Q || t == ETH_P_8021AD;
    let mut l3 = 14;
    while l3 <= 18 && f.len() >= l3 + 4 && is_tag(get_be16(f, l3 - 2)) {
        l3 += 4;
    }
    (l3 > 14 && f.len() >= l3 && get_be16(f, l3 - 2) == ETH_P_IP).then_some(l3)
}

/// Parses like bpf/parse.h: None for non-IPv4, for VLAN-tagged frames (the kernel's, untouched)
/// and for IPv4 the program passes as malformed.
pub fn parse(f: &[u8]) -> Option<Parsed> {
    parse_at(f, l3_offset(f).filter(|l3| *l3 == 14)?)
}

/// The IPv4 header the firewall judges: [`parse`], or the one behind VLAN tags.
pub fn parse_for_firewall(f: &[u8]) -> Option<Parsed> {
    parse(f).or_else(|| parse_at(f, tagged_l3(f)?))
}

/// [`parse`] of the IPv4 header at `l3`.
fn parse_at(f: &[u8], l3: usize) -> Option<Parsed> {
    if f.len() < l3 + 20 || f[l3] >> 4 != 4 || f[l3] & 0x0f < 5 {
        return None;
    }
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    let tot_len = usize::from(get_be16(f, l3 + 2));
    if tot_len < ihl || l3 + tot_len > f.len() {
        return None;
    }
    let frag = get_be16(f, l3 + 6);
    let proto = f[l3 + 9];
    let (src, dst) = (ip4(f, l3 + 12), ip4(f, l3 + 16));
    let later_fragment = frag & 0x1fff != 0;
    let first_fragment = !later_fragment && frag & IP_MF != 0;
    let mut ports = None;
    let mut l4_cut = false;
    if !later_fragment && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
        let l4 = l3 + ihl;
        let need = if proto == IPPROTO_TCP { 20 } else { 8 };
        let header_cut = l4 + need > f.len() || ihl + need > tot_len;
        let doff_bad = !header_cut
            && proto == IPPROTO_TCP
            && (f[l4 + 12] >> 4 < 5 || ihl + usize::from(f[l4 + 12] >> 4) * 4 > tot_len);
        if header_cut || doff_bad {
            l4_cut = true;
        } else {
            ports = Some((
                SocketAddrV4::new(src, get_be16(f, l4)),
                SocketAddrV4::new(dst, get_be16(f, l4 + 2)),
            ));
        }
    }
    Some(Parsed {
        l3,
        ihl,
        tot_len,
        proto,
        src,
        dst,
        ttl: f[l3 + 8],
        later_fragment,
        first_fragment,
        ports,
        l4_cut,
    })
}

fn ip_header_ok(f: &[u8], l3: usize, ihl: usize) -> bool {
    f.len() >= l3 + ihl && internet_checksum(&f[l3..l3 + ihl]) == 0
}

/// Whether the TCP/UDP/ICMP checksum of the IPv4 packet at `l3` is right (None: not checkable).
fn l4_ok(f: &[u8], l3: usize) -> Option<bool> {
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    let tot = usize::from(get_be16(f, l3 + 2));
    if ihl < 20 || tot < ihl || l3 + tot > f.len() {
        return None;
    }
    let seg = &f[l3 + ihl..l3 + tot];
    let (src, dst) = (ip4(f, l3 + 12), ip4(f, l3 + 16));
    let sum_over = |proto: u8| {
        let mut all = Vec::with_capacity(12 + seg.len());
        all.extend_from_slice(&src.octets());
        all.extend_from_slice(&dst.octets());
        all.extend_from_slice(&[0, proto]);
        all.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        all.extend_from_slice(seg);
        internet_checksum(&all) == 0
    };
    match f[l3 + 9] {
        IPPROTO_TCP if seg.len() >= 20 => Some(sum_over(IPPROTO_TCP)),
        IPPROTO_UDP if seg.len() >= 8 => Some(get_be16(seg, 6) == 0 || sum_over(IPPROTO_UDP)),
        IPPROTO_ICMP if seg.len() >= 8 => Some(internet_checksum(seg) == 0),
        _ => None,
    }
}

/// The IPv4 packet at `l3` whose checksums matter: the packet itself, or the inner one of IPIP.
fn checksums_ok(f: &[u8], l3: usize) -> (bool, Option<bool>) {
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    (ip_header_ok(f, l3, ihl.max(20)), l4_ok(f, l3))
}

/// Tally of a fuzz run.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub packets: u64,
    pub refused: u64,
    pub verdicts: BTreeMap<&'static str, u64>,
    pub kinds: BTreeMap<String, u64>,
}

/// Checks one run of the `lb` program against the invariants. `Err` names the broken one.
pub fn check_lb(world: &World, case: &Case, run: &Run) -> Result<()> {
    let input = &case.frame;
    ensure!(run.action != XDP_ABORTED, "XDP_ABORTED");
    ensure!(run.action <= XDP_REDIRECT, "unknown verdict {}", run.action);
    let parsed = parse(input);
    let forwarded = run.action == XDP_TX || run.action == XDP_REDIRECT;
    check_ipip_outer_id(world, case, run)?;

    // Blocked means blocked for everything addressed to a VIP (firewall scope "vips"): later
    // fragments, ICMP of any type, ports no VIP serves.
    if let Some(p) = parse_for_firewall(input).filter(|p| world.is_vip_addr(p.dst)) {
        if world.is_blocked(p.src) {
            ensure!(
                run.action == XDP_DROP,
                "a packet from blocked {} to VIP address {} got {}",
                p.src,
                p.dst,
                action_name(run.action)
            );
            return Ok(());
        }
    }

    // The host's own traffic (and anything the program cannot read) passes byte for byte.
    let host = match &parsed {
        None => true,
        Some(p) if p.later_fragment => true,
        Some(p) if world.is_vip_addr(p.dst) => false,
        Some(p) if p.dst == world.snat => match (p.proto, p.ports) {
            (IPPROTO_ICMP, _) => false,
            (_, Some((_, d))) => !(world.snat_ports.0..=world.snat_ports.1).contains(&d.port()),
            (IPPROTO_TCP | IPPROTO_UDP, None) => !p.l4_cut,
            _ => true,
        },
        Some(p) => !p.l4_cut,
    };
    if host {
        ensure!(
            run.action == XDP_PASS,
            "host/unparsable traffic got {}",
            action_name(run.action)
        );
        let d = diff(&run.out, input);
        ensure!(d.is_empty(), "host traffic passed modified: {d}");
        return Ok(());
    }
    if !forwarded {
        return Ok(());
    }
    let Some(p) = parsed else {
        bail!("forwarded a frame the parser cannot read");
    };
    ensure!(!p.l4_cut, "forwarded a TCP/UDP packet whose header is cut");
    ensure!(
        !p.first_fragment || p.proto == IPPROTO_ICMP,
        "forwarded a first fragment"
    );
    ensure!(
        !world.is_blocked(p.src),
        "forwarded a packet from blocked {}",
        p.src
    );
    ensure!(
        p.src != p.dst,
        "forwarded a packet from {} to itself",
        p.src
    );

    // The output: IPv4 (one tag at most), consistent lengths, checksums right when they were.
    let Some(o) = parse(&run.out) else {
        bail!("the output is not a readable IPv4 frame");
    };
    let in_pad = input.len() - p.l3 - p.tot_len;
    let out_pad = run.out.len() - o.l3 - o.tot_len;
    ensure!(
        out_pad == in_pad || out_pad == 0,
        "output has {out_pad} bytes after tot_len {} (input {in_pad})",
        o.tot_len
    );
    let (in_ip, in_l4) = checksums_ok(input, p.l3);
    let (out_ip, out_l4) = checksums_ok(&run.out, o.l3);
    if o.proto == IPPROTO_IPIP && p.proto != IPPROTO_IPIP {
        ensure!(out_ip, "IPIP outer header checksum wrong");
        ensure!(
            o.ihl == 20 && o.tot_len == p.tot_len + 20,
            "IPIP outer tot_len {}",
            o.tot_len
        );
        check_inner_routed(
            &input[p.l3..p.l3 + p.tot_len],
            &run.out[o.l3 + 20..o.l3 + o.tot_len],
        )?;
        return Ok(());
    }
    if o.proto == IPPROTO_ICMP && p.proto != IPPROTO_ICMP {
        // "Fragmentation needed" or "time exceeded" built in XDP: everything from scratch.
        let kind = run.out[o.l3 + o.ihl];
        ensure!(
            kind == 3 || (kind == 11 && p.ttl <= 1),
            "ICMP type {kind} built in XDP for a packet of TTL {}",
            p.ttl
        );
        ensure!(out_ip, "ICMP {kind}: IPv4 checksum wrong");
        ensure!(out_l4 == Some(true), "ICMP {kind}: ICMP checksum wrong");
        ensure!(
            o.tot_len == 56 && out_pad == 0,
            "ICMP {kind} of tot_len {}",
            o.tot_len
        );
        ensure!(o.dst == p.src, "ICMP {kind} not sent back to the source");
        return Ok(());
    }
    // Forwarded like a router: the TTL one less, never sent on expired.
    ensure!(
        p.ttl > 1 && o.ttl == p.ttl - 1,
        "TTL {} forwarded as {}",
        p.ttl,
        o.ttl
    );
    ensure!(
        o.tot_len == p.tot_len,
        "tot_len {} became {}",
        p.tot_len,
        o.tot_len
    );
    ensure!(!in_ip || out_ip, "IPv4 header checksum broken");
    if in_l4 == Some(true) {
        ensure!(
            out_l4 == Some(true),
            "L4 checksum broken (protocol {})",
            o.proto
        );
    }
    if o.proto == IPPROTO_ICMP && o.tot_len >= o.ihl + 28 {
        // The quoted IPv4 header of a steered error stays consistent too.
        let q = o.l3 + o.ihl + 8;
        let qihl = usize::from(run.out[q] & 0x0f) * 4;
        let iq = p.l3 + p.ihl + 8;
        if qihl >= 20
            && q + qihl <= o.l3 + o.tot_len
            && internet_checksum(&input[iq..iq + qihl]) == 0
        {
            ensure!(
                internet_checksum(&run.out[q..q + qihl]) == 0,
                "quoted IPv4 checksum broken"
            );
        }
    }
    Ok(())
}

/// The inner packet of an IPIP output against the input packet: byte for byte but for the TTL
/// (one less) and the header checksum (right if it was).
fn check_inner_routed(input: &[u8], inner: &[u8]) -> Result<()> {
    ensure!(
        inner.len() == input.len(),
        "the IPIP inner packet has another length"
    );
    ensure!(
        input[8] > 1 && inner[8] == input[8] - 1,
        "IPIP inner TTL {} forwarded as {}",
        input[8],
        inner[8]
    );
    let same = |r: std::ops::Range<usize>| inner[r.clone()] == input[r];
    ensure!(
        same(0..8) && same(9..10) && same(12..input.len()),
        "the IPIP inner packet is not the input packet (but for its TTL)"
    );
    let ihl = usize::from(input[0] & 0x0f) * 4;
    if internet_checksum(&input[..ihl]) == 0 {
        ensure!(
            internet_checksum(&inner[..ihl]) == 0,
            "IPIP inner IPv4 checksum broken"
        );
    }
    Ok(())
}

/// The IPIP outer IDs of the DF-clear packets of a run (RFC 6864), per inner flow.
#[derive(Debug, Default, Clone)]
pub struct IpipIds {
    /// DF-clear IPIP packets sent (or passed to the kernel to fragment) so far.
    count: u64,
    /// Per inner (source, destination, protocol, ports): outer id -> the `count` it was sent at.
    seen: BTreeMap<(SocketAddrV4, SocketAddrV4, u8), BTreeMap<u16, u64>>,
}

/// RFC 6864: the program encapsulated `case` (sent it, or passed it to the kernel to fragment)
/// without DF: its outer checksum is right (unless dropped) and its outer ID is not one that a packet of the same
/// flow had within the last 65,536 DF-clear IPIP packets (the per-CPU counter's period; the fuzz
/// thread stays on one CPU).
pub fn check_ipip_outer_id(world: &World, case: &Case, run: &Run) -> Result<()> {
    let (Some(p), Some(o)) = (parse(&case.frame), parse(&run.out)) else {
        return Ok(());
    };
    let encapsulated = o.proto == IPPROTO_IPIP && p.proto != IPPROTO_IPIP && o.ihl == 20;
    let df = get_be16(&run.out, o.l3 + 6) & IP_DF != 0;
    if !encapsulated || df {
        return Ok(());
    }
    // A drop after the encapsulation used up an id too: counted, not checked.
    ensure!(
        run.action == XDP_DROP || internet_checksum(&run.out[o.l3..o.l3 + 20]) == 0,
        "DF-clear IPIP outer header checksum wrong"
    );
    let id = get_be16(&run.out, o.l3 + 4);
    let (src, dst) = p
        .ports
        .unwrap_or((SocketAddrV4::new(p.src, 0), SocketAddrV4::new(p.dst, 0)));
    let mut ids = world.ipip_ids.borrow_mut();
    let now = ids.count;
    ids.count += 1;
    let flow = ids.seen.entry((src, dst, p.proto)).or_default();
    if let Some(before) = flow.insert(id, now) {
        ensure!(
            now - before >= 65_536,
            "IPIP outer id {id:#06x} of flow {src} -> {dst} (protocol {}) repeated after {} DF-clear IPIP packets",
            p.proto,
            now - before
        );
    }
    Ok(())
}

/// What the decap program is configured with: its VIPs and each VIP's allowed outer source
/// prefixes (`backend-setup --lb-source`).
#[derive(Debug, Clone)]
pub struct DecapWorld {
    pub vips: Vec<Ipv4Addr>,
    pub sources: Vec<(Ipv4Addr, Ipv4Net)>,
}

impl DecapWorld {
    /// Whether IPIP to `vip` from the outer source `src` is to be decapsulated.
    pub fn allows(&self, vip: Ipv4Addr, src: Ipv4Addr) -> bool {
        self.sources
            .iter()
            .any(|(v, p)| *v == vip && p.contains(&src))
    }

    /// An outer source for IPIP to `vip`: half the time one `vip` allows (a prefix's ends, or
    /// any address in it), else one of [`DecapWorld::outer_sources`].
    fn outer_source(&self, rng: &mut Rng, vip: Ipv4Addr) -> Ipv4Addr {
        let mine: Vec<Ipv4Net> = self
            .sources
            .iter()
            .filter(|(v, _)| *v == vip)
            .map(|(_, p)| *p)
            .collect();
        if mine.is_empty() || rng.chance(50) {
            return rng.pick(&self.outer_sources());
        }
        let p = rng.pick(&mine);
        let (first, last) = (u32::from(p.network()), u32::from(p.broadcast()));
        let span = u64::from(last - first) + 1;
        Ipv4Addr::from(first + (rng.next_u64() % span) as u32)
    }

    /// Outer sources for the generator: allowed ones (each prefix's ends among them), the
    /// addresses just outside each prefix, and strangers.
    fn outer_sources(&self) -> Vec<Ipv4Addr> {
        let mut v = vec![LB_ADDR, Ipv4Addr::new(10, 66, 0, 1), CLIENT];
        for (_, p) in &self.sources {
            let (first, last) = (u32::from(p.network()), u32::from(p.broadcast()));
            v.extend(
                [first, last, first.wrapping_sub(1), last.wrapping_add(1)].map(Ipv4Addr::from),
            );
        }
        v
    }
}

/// The IPIP frame the decap program takes apart, as it parses it: (l3, inner l3, inner VIP,
/// outer source), or None when the program must leave the frame alone.
fn decap_target(world: &DecapWorld, f: &[u8]) -> Option<(usize, usize, Ipv4Addr, Ipv4Addr)> {
    let l3 = l3_offset(f)?;
    let inner = l3 + 20;
    if f.len() < inner + 20 {
        return None;
    }
    let tot = usize::from(get_be16(f, l3 + 2));
    let frag = get_be16(f, l3 + 6);
    let outer_ok = f[l3] == 0x45 && f[l3 + 9] == IPPROTO_IPIP && frag & (IP_MF | 0x1fff) == 0;
    let vip = ip4(f, inner + 16);
    if !outer_ok || l3 + tot > f.len() || f[inner] >> 4 != 4 || !world.vips.contains(&vip) {
        return None;
    }
    Some((l3, inner, vip, ip4(f, l3 + 12)))
}

/// Whether the IPv4 header at `l3` is whole (IHL 5..15 within the frame) and its checksum right.
fn ip_checksum_ok(f: &[u8], l3: usize) -> bool {
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    ihl >= 20 && l3 + ihl <= f.len() && internet_checksum(&f[l3..l3 + ihl]) == 0
}

/// Checks one run of the `decap` program against `world`: XDP_PASS or XDP_DROP only; IPIP to a
/// VIP is decapsulated only from an allowed outer source (and always from one), otherwise
/// dropped; the ECN field merged per RFC 6040 (outer CE on a Not-ECT inner: dropped); the
/// decapsulated frame is the input without its 20-byte outer header (L2 header kept, inner
/// packet byte for byte but its ECN bits, its IPv4 checksum then right if it was right before
/// and wrong if it was wrong); everything else passes untouched.
pub fn check_decap(world: &DecapWorld, input: &[u8], run: &Run) -> Result<()> {
    ensure!(
        run.action == XDP_PASS || run.action == XDP_DROP,
        "decap verdict {}",
        action_name(run.action)
    );
    let Some((l3, inner, vip, src)) = decap_target(world, input) else {
        ensure!(
            run.action == XDP_PASS && run.out == input,
            "decap did not leave alone a frame that is not IPIP to a VIP: {} {}",
            action_name(run.action),
            diff(&run.out, input)
        );
        return Ok(());
    };
    if !world.allows(vip, src) {
        ensure!(
            run.action == XDP_DROP,
            "IPIP to {vip} from {src}, not an allowed outer source, was not dropped: {}{}",
            action_name(run.action),
            if run.out == input {
                " untouched"
            } else {
                ", decapsulated"
            }
        );
        return Ok(());
    }
    let (outer_ecn, inner_ecn) = (input[l3 + 1] & 3, input[inner + 1] & 3);
    let Some(ecn) = super::decap::rfc6040_decap(outer_ecn, inner_ecn) else {
        ensure!(
            run.action == XDP_DROP,
            "outer CE on a Not-ECT inner packet must be dropped (RFC 6040), got {}",
            action_name(run.action)
        );
        return Ok(());
    };
    ensure!(
        run.action == XDP_PASS,
        "IPIP to {vip} from the allowed {src} (ECN outer {outer_ecn} inner {inner_ecn}) was dropped"
    );
    let mut want = input[..l3].to_vec();
    want.extend_from_slice(&input[inner..]);
    want[l3 + 1] = (want[l3 + 1] & !3) | ecn;
    let check_was_ok = ip_checksum_ok(input, inner);
    if check_was_ok {
        set_be16(&mut want, l3 + 10, 0);
        let ihl = usize::from(want[l3] & 0x0f) * 4;
        let check = internet_checksum(&want[l3..l3 + ihl]);
        set_be16(&mut want, l3 + 10, check);
    } else if run.out.len() == want.len() {
        // Not the program's to repair: only the checksum bytes may differ, and stay wrong.
        want[l3 + 10..l3 + 12].copy_from_slice(&run.out[l3 + 10..l3 + 12]);
        ensure!(
            !ip_checksum_ok(&run.out, l3),
            "a wrong inner IPv4 checksum became right"
        );
    }
    let d = diff(&run.out, &want);
    ensure!(
        d.is_empty(),
        "decap output is not the inner packet with ECN {ecn} (outer {outer_ecn}, inner {inner_ecn}): {d}"
    );
    Ok(())
}

/// Random and mutated IPIP frames for the decap program (inner garbage included, random TOS
/// bytes inside and out), to `world`'s VIPs and others, from allowed outer sources and others.
pub fn ipip_case(rng: &mut Rng, world: &DecapWorld) -> Vec<u8> {
    let mut to = world.vips.clone();
    to.push(Ipv4Addr::new(10, 9, 9, 99));
    let vip = rng.pick(&to);
    let inner = match rng.below(4) {
        0 => {
            let n = rng.below(100);
            let mut p = Packet::tcp(
                CLIENT_MAC,
                VETH0_MAC,
                SocketAddrV4::new(CLIENT, 40000),
                SocketAddrV4::new(vip, 80),
                TCP_SYN,
            )
            .with_payload(&rng.bytes(n));
            p.tos = rng.byte();
            p.ip_bytes()
        }
        1 => {
            let mut p = Packet::udp(
                CLIENT_MAC,
                VETH0_MAC,
                SocketAddrV4::new(CLIENT, 40000),
                SocketAddrV4::new(vip, 53),
            );
            p.tos = rng.byte();
            let mut ip = p.ip_bytes();
            let i = rng.below(ip.len());
            ip[i] = rng.byte();
            ip
        }
        2 => {
            let n = rng.below(60);
            let mut g = rng.bytes(n);
            if g.len() >= 20 && rng.chance(50) {
                g[16..20].copy_from_slice(&vip.octets());
                g[0] = 0x40 | (g[0] & 0x0f);
            }
            g
        }
        _ => Vec::new(),
    };
    let outer = Ipv4Header {
        tos: rng.byte(),
        id: 0,
        frag: rng.pick(&[0, IP_DF, 0, IP_DF, IP_MF, 1]),
        ttl: 64,
        proto: rng.pick(&[IPPROTO_IPIP, IPPROTO_IPIP, IPPROTO_IPIP, IPPROTO_TCP]),
        src: world.outer_source(rng, vip),
        dst: BACKEND1,
    };
    let vlans: Vec<(u16, u16)> = match rng.below(4) {
        0 => vec![(ETH_P_8021Q, 5)],
        1 => vec![(ETH_P_8021AD, 5), (ETH_P_8021Q, 6)],
        _ => Vec::new(),
    };
    let mut f = ipip_frame(&BACKEND1_MAC, &VETH0_MAC, &vlans, &outer, &inner);
    let l3 = 14 + 4 * vlans.len();
    match rng.below(8) {
        0 => {
            let cut = rng.below(f.len());
            f.truncate(cut);
        }
        1 => {
            let v = rng.next_u64() as u16;
            set_be16(&mut f, l3 + 2, v);
        }
        2 => f[l3] = 0x40 | rng.below(16) as u8,
        _ => {}
    }
    f
}
