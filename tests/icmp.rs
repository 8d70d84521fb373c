//! ICMP errors and IP fragments through the loaded XDP program (BPF_PROG_TEST_RUN, one private
//! network namespace per test, the bench of `common::lab`).
//!
//! An ICMP error about a flow must reach the host that owns the flow's socket: for NAT the error and
//! the packet it quotes are readdressed (outer and quoted addresses, quoted ports, the outer, quoted
//! IPv4 and quoted L4 checksums and the ICMP checksum over the quote); for DSR the error goes
//! unchanged to the flow's backend (new MACs, or an IPIP header). Every expected frame is built from
//! scratch by `xdplb_testkit::packet` (all checksums computed per RFC 1071), never copied from the output.
//! Fragments addressed to a VIP (policy in docs/ARCHITECTURE.md, "Fragments") are dropped when they
//! carry the ports and passed untouched when they do not; nothing reaches a backend.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use xdplb::skel::types::{self, lb_reason as R};
use xdplb_model::state::{Mode, Protocol, VipKey};

use common::expect::*;
use common::lab::*;
use xdplb_testkit::packet::*;

/// A router on the client side of the LB (the sender of errors about packets to clients).
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
/// A router between the LB and the backends.
const BE_ROUTER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 253);

/// "Fragmentation needed" (type 3 code 4) with next-hop MTU 1400: the 4 bytes after the checksum.
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];
/// What Linux quotes of the offending packet: as much as fits in 576 bytes.
const LINUX_QUOTE: usize = 576 - 20 - 8;

/// An ICMP error's type, code and the 4 bytes after the checksum.
type Kind = (u8, u8, [u8; 4]);
const FRAG_NEEDED: Kind = (3, 4, MTU_1400);

/// The ICMP error `kind` from `src` to `dst` (MAC and address each), quoting `quoted`.
fn icmp(src: (Mac, Ipv4Addr), dst: (Mac, Ipv4Addr), kind: Kind, quoted: &[u8]) -> Packet {
    let (kind, code, rest) = kind;
    Packet::icmp(src.0, dst.0, src.1, dst.1, kind, code, rest, quoted)
}

/// The client-side router's "fragmentation needed" to the VIP, quoting `quoted`.
fn frag_needed_to_vip(quoted: &[u8]) -> Packet {
    icmp(
        (ROUTER_MAC, ROUTER),
        (VETH0_MAC, *VIP.ip()),
        FRAG_NEEDED,
        quoted,
    )
}

/// The LB (veth0) as the sender of a frame to the neighbour `to`.
fn from_lb_to(to: Ipv4Addr) -> [(Mac, Ipv4Addr); 2] {
    [(VETH0_MAC, LB_ADDR), (neighbour_mac(to), to)]
}

/// Runs the error `err` and checks that it leaves (XDP_TX) as `want` with the TTL `err` had, one
/// less (the LB forwards errors like a router), checksums verified again from the output.
fn expect_icmp_tx(lb: &Lb, err: &Packet, want: &Packet, what: &str) -> Result<()> {
    let run = lb.run(lb.net.veth0, &err.build())?;
    let want = Packet {
        ttl: err.ttl - 1,
        ..want.clone()
    };
    expect_frame(&run, XDP_TX, &want.build(), what)?;
    verify_checksums(&run.out, false).with_context(|| what.to_string())
}

/// `p` with the TTL of `quoted`, the copy of it an error quotes: the LB readdresses a quote, it
/// leaves its TTL (one less than `p`'s, the LB's forwarding) alone.
fn as_quoted(p: &Packet, quoted: &Packet) -> Packet {
    Packet {
        ttl: quoted.ttl,
        ..p.clone()
    }
}

/// Sends the SYN of `client` to the VIP (tracking its flow) and checks it is sent on.
fn track(lb: &Lb, client: SocketAddrV4) -> Result<()> {
    let run = lb.run(lb.net.veth0, &syn(client, VIP).build())?;
    ensure!(
        run.action == XDP_TX,
        "SYN of {client}: {}",
        action_name(run.action)
    );
    Ok(())
}

/// A VIP of the tests and its backends (weight 100 each).
struct VipSpec {
    addr: SocketAddrV4,
    proto: Protocol,
    mode: Mode,
    backends: &'static [SocketAddrV4],
}

const TCP_NAT: VipSpec = VipSpec {
    addr: VIP,
    proto: Protocol::Tcp,
    mode: Mode::Nat,
    backends: &[BE1, BE2],
};
const TCP_NAT_BE1: VipSpec = VipSpec {
    backends: &[BE1],
    ..TCP_NAT
};
const UDP_NAT: VipSpec = VipSpec {
    addr: VIP_UDP,
    proto: Protocol::Udp,
    mode: Mode::Nat,
    backends: &[BE1_UDP],
};
const TCP_L2DSR: VipSpec = VipSpec {
    mode: Mode::L2dsr,
    backends: &[DSR1, DSR2],
    ..TCP_NAT
};
const TCP_IPIP: VipSpec = VipSpec {
    mode: Mode::Ipip,
    ..TCP_L2DSR
};

/// Runs `body` on the bench with the program loaded and the VIP `spec`.
fn bench_with_vip<F>(spec: &'static VipSpec, body: F)
where
    F: FnOnce(Lb, VipKey) -> Result<()>,
{
    let backends: Vec<_> = spec.backends.iter().map(|b| (*b, 100)).collect();
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip_mode(spec.addr, spec.proto, spec.mode, &backends)?;
        body(lb, vip)
    });
}

/// The counter of `r` is `want`.
fn expect_reason(lb: &Lb, r: types::lb_reason, want: u64, what: &str) -> Result<()> {
    let got = reason(lb, r)?;
    ensure!(got == want, "{what}: {got}, expected {want}");
    Ok(())
}

fn expect_untouched(lb: &Lb, frame: &[u8], what: &str) -> Result<()> {
    let run = lb.run(lb.net.veth0, frame)?;
    expect_frame(&run, XDP_PASS, frame, what)
}

fn expect_dropped(lb: &Lb, frame: &[u8], what: &str) -> Result<()> {
    let run = lb.run(lb.net.veth0, frame)?;
    ensure!(
        run.action == XDP_DROP,
        "{what}: verdict {}, expected XDP_DROP",
        action_name(run.action)
    );
    Ok(())
}

fn reason(lb: &Lb, r: types::lb_reason) -> Result<u64> {
    Ok(lb.global()?.reasons[r.0 as usize])
}

/// A client's SYN to `vip`, as received on veth0.
fn syn(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::tcp(neighbour_mac(*client.ip()), VETH0_MAC, client, vip, TCP_SYN).with_payload(b"syn")
}

/// A full-size data segment (1400 bytes) from `from` to `to`.
fn big_segment(from: SocketAddrV4, to: SocketAddrV4) -> Packet {
    Packet::tcp(ROUTER_MAC, VETH0_MAC, from, to, TCP_ACK | TCP_PSH)
        .with_seq_ack(0x7000_0001, 0x1234_5700)
        .with_payload(&[0x5a; 1400])
}

/// The first `n` bytes of the IP packet of `p` (what an ICMP error quotes).
fn quote(p: &Packet, n: usize) -> Vec<u8> {
    let ip = p.ip_bytes();
    ip[..n.min(ip.len())].to_vec()
}

/// Sends the first packet of a NAT flow `client` -> `vip` and returns (backend, SNAT port).
fn nat_flow(lb: &mut Lb, vip: &VipKey, client: SocketAddrV4) -> Result<(SocketAddrV4, u16)> {
    let pick = lb.pick(vip, client)?;
    let port = lb
        .claim_port(pick.hash, pick.backend)
        .context("a free SNAT port")?;
    let first = match vip.proto {
        Protocol::Tcp => syn(client, vip.addr),
        Protocol::Udp => Packet::udp(CLIENT_MAC, VETH0_MAC, client, vip.addr).with_payload(b"q"),
    };
    let run = lb.run(lb.net.veth0, &first.build())?;
    ensure!(
        run.action == XDP_TX && endpoints(&run.out)? == (sa(LB_ADDR, port), pick.backend),
        "the flow of {client} was not NATed to {} from port {port}",
        pick.backend
    );
    Ok((pick.backend, port))
}

#[test]
fn nat_error_from_the_client_side_goes_to_the_flows_backend() {
    bench_with_vip(&TCP_NAT, |mut lb, vip| {
        let mut sent = 0;
        for (i, qlen) in [28usize, 20 + 28, LINUX_QUOTE].into_iter().enumerate() {
            let client = sa(CLIENT, 40000 + i as u16);
            let (backend, port) = nat_flow(&mut lb, &vip, client)?;
            // What the backend sent, and what the LB made of it on the way to the client.
            let from_backend = big_segment(backend, sa(LB_ADDR, port));
            let to_client = from_backend.natted(VETH0_MAC, CLIENT_MAC, VIP, client);
            // A router towards the client cannot forward it: "fragmentation needed" to the VIP.
            let err = frag_needed_to_vip(&quote(&to_client, qlen));
            // The backend must see it as if it came from the LB, about the packet it really sent.
            let [lb_end, backend_end] = from_lb_to(*backend.ip());
            let want = icmp(
                lb_end,
                backend_end,
                FRAG_NEEDED,
                &quote(&as_quoted(&from_backend, &to_client), qlen),
            );
            let what = format!("frag-needed quoting {qlen} bytes of {VIP} -> {client}");
            expect_icmp_tx(&lb, &err, &want, &what)?;
            sent += 1;
        }
        expect_reason(
            &lb,
            R::LB_REASON_TX_ICMP_ERROR,
            sent,
            "tx_icmp_error counter",
        )?;
        Ok(())
    });
}

#[test]
fn nat_error_from_the_backend_side_goes_to_the_client() {
    bench_with_vip(&TCP_NAT, |mut lb, vip| {
        for (i, kind) in [FRAG_NEEDED, (11, 0, [0; 4]), (12, 0, [20, 0, 0, 0])]
            .into_iter()
            .enumerate()
        {
            let client = sa(CLIENT, 41000 + i as u16);
            let (backend, port) = nat_flow(&mut lb, &vip, client)?;
            let from_client = big_segment(client, VIP);
            let to_backend = from_client.natted(
                VETH0_MAC,
                neighbour_mac(*backend.ip()),
                sa(LB_ADDR, port),
                backend,
            );
            let router = (neighbour_mac(*backend.ip()), BE_ROUTER);
            let quoted = quote(&to_backend, LINUX_QUOTE);
            let err = icmp(router, (VETH0_MAC, LB_ADDR), kind, &quoted);
            let quoted = quote(&as_quoted(&from_client, &to_backend), LINUX_QUOTE);
            let want = icmp((VETH0_MAC, *VIP.ip()), (CLIENT_MAC, CLIENT), kind, &quoted);
            let (kind, code, _) = kind;
            let what = format!(
                "ICMP {kind}/{code} quoting {} -> {backend}",
                sa(LB_ADDR, port)
            );
            expect_icmp_tx(&lb, &err, &want, &what)?;
        }
        Ok(())
    });
}

#[test]
fn nat_error_quoting_udp_updates_the_quoted_checksum() {
    bench_with_vip(&UDP_NAT, |mut lb, vip| {
        for (i, zero) in [false, true].into_iter().enumerate() {
            let client = sa(CLIENT, 42000 + i as u16);
            let (backend, port) = nat_flow(&mut lb, &vip, client)?;
            let mut answer = Packet::udp(ROUTER_MAC, VETH0_MAC, backend, sa(LB_ADDR, port))
                .with_payload(&[0x33; 1300]);
            if zero {
                answer = answer.with_zero_udp_checksum();
            }
            let to_client = answer.natted(VETH0_MAC, CLIENT_MAC, VIP_UDP, client);
            // Port unreachable from the client, quoting the UDP header (its checksum included).
            let unreachable = (3, 3, [0; 4]);
            let to_vip = (VETH0_MAC, *VIP_UDP.ip());
            let err = icmp(
                (CLIENT_MAC, CLIENT),
                to_vip,
                unreachable,
                &quote(&to_client, 28),
            );
            let [lb_end, backend_end] = from_lb_to(*backend.ip());
            let want = icmp(
                lb_end,
                backend_end,
                unreachable,
                &quote(&as_quoted(&answer, &to_client), 28),
            );
            let what =
                format!("port unreachable about {VIP_UDP} -> {client} (zero checksum: {zero})");
            expect_icmp_tx(&lb, &err, &want, &what)?;
        }
        Ok(())
    });
}

#[test]
fn l2dsr_error_goes_to_the_flows_backend_unchanged() {
    bench_with_vip(&TCP_L2DSR, |lb, vip| {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..16u16 {
            let client = sa(CLIENT, 43000 + i);
            let pick = lb.pick(&vip, client)?;
            // Half the flows are tracked, half are not (Maglev of the quoted flow decides).
            if i % 2 == 0 {
                track(&lb, client)?;
            }
            let to_client = big_segment(VIP, client);
            let err = frag_needed_to_vip(&quote(&to_client, LINUX_QUOTE));
            let want = err
                .routed(VETH0_MAC, neighbour_mac(*pick.backend.ip()))
                .build();
            let run = lb.run(lb.net.veth0, &err.build())?;
            let what = format!("frag-needed about {VIP} -> {client} (to {})", pick.backend);
            expect_frame(&run, XDP_TX, &want, &what)?;
            seen.insert(pick.backend);
        }
        ensure!(seen.len() == 2, "16 flows all went to {seen:?}");
        expect_reason(&lb, R::LB_REASON_TX_ICMP_ERROR, 16, "tx_icmp_error counter")?;
        lb.expect_flow_entries(8, "ICMP errors must not create flow entries (8 SYNs)")?;
        Ok(())
    });
}

#[test]
fn ipip_error_is_encapsulated_to_the_flows_backend() {
    bench_with_vip(&TCP_IPIP, |lb, vip| {
        let decap = common::decap::Decap::load()?;
        decap.add_vip(*VIP.ip())?;
        decap.add_source(*VIP.ip(), ipnet::Ipv4Net::new(LB_ADDR, 32)?)?;
        for i in 0..8u16 {
            let client = sa(CLIENT, 44000 + i);
            let pick = lb.pick(&vip, client)?;
            if i % 2 == 0 {
                track(&lb, client)?;
            }
            let err = frag_needed_to_vip(&quote(&big_segment(VIP, client), LINUX_QUOTE));
            // RFC 2003 outer header: TOS and DF copied, TTL 64, from the IPIP source (/32); the
            // error has no DF, so its id is per packet (RFC 6864, tests/tunnel.rs).
            let run = lb.run(lb.net.veth0, &err.build())?;
            let outer = ipip_outer_sent(&err, LB_ADDR, *pick.backend.ip(), &run.out);
            let want = ipip_frame(
                &neighbour_mac(*pick.backend.ip()),
                &VETH0_MAC,
                &[],
                &outer,
                &err.routed(VETH0_MAC, ROUTER_MAC).ip_bytes(),
            );
            let what = format!("frag-needed about {VIP} -> {client} (to {})", pick.backend);
            expect_frame(&run, XDP_TX, &want, &what)?;
            // The backend's decapsulator hands the error on as it was sent to the VIP.
            let back = decap.run(0, &run.out)?;
            let inner_frame = err
                .routed(VETH0_MAC, neighbour_mac(*pick.backend.ip()))
                .build();
            expect_frame(&back, XDP_PASS, &inner_frame, "decapsulated error")?;
        }
        Ok(())
    });
}

#[test]
fn errors_that_are_not_about_a_flow() {
    bench_with_vip(&TCP_NAT, |mut lb, vip| {
        let client = sa(CLIENT, 45000);
        let (backend, _) = nat_flow(&mut lb, &vip, client)?;
        let to_client = big_segment(VIP, client);
        let err = |src: Ipv4Addr, dst: Ipv4Addr, q: &[u8]| {
            icmp((ROUTER_MAC, src), (VETH0_MAC, dst), FRAG_NEEDED, q).build()
        };

        // A NAT flow nobody created: the SNAT port is unknown, so the error cannot be delivered.
        let stranger = big_segment(VIP, sa(CLIENT, 45999));
        expect_dropped(
            &lb,
            &err(ROUTER, *VIP.ip(), &quote(&stranger, 48)),
            "unknown NAT flow",
        )?;
        expect_reason(&lb, R::LB_REASON_DROP_ICMP_NO_FLOW, 1, "drop_icmp_no_flow")?;

        // Not errors, or not about us: the kernel gets them as they were.
        let echo = Packet::icmp_echo(ROUTER_MAC, VETH0_MAC, ROUTER, *VIP.ip()).build();
        expect_untouched(&lb, &echo, "echo request to the VIP")?;
        let other = big_segment(sa(Ipv4Addr::new(10, 9, 9, 8), 80), client);
        expect_untouched(
            &lb,
            &err(ROUTER, *VIP.ip(), &quote(&other, 48)),
            "quote from elsewhere",
        )?;
        expect_untouched(
            &lb,
            &err(ROUTER, LB_ADDR, &quote(&to_client, 48)),
            "quote not from LB_ADDR",
        )?;
        let host_own = big_segment(sa(LB_ADDR, 33000), sa(ROUTER, 22));
        expect_untouched(
            &lb,
            &err(ROUTER, LB_ADDR, &quote(&host_own, 48)),
            "the host's own flow",
        )?;
        let untracked = big_segment(sa(LB_ADDR, PORTS.1), backend);
        expect_untouched(
            &lb,
            &err(BE_ROUTER, LB_ADDR, &quote(&untracked, 48)),
            "untracked SNAT port",
        )?;
        expect_untouched(
            &lb,
            &err(ROUTER, *VIP.ip(), &quote(&to_client, 27)),
            "quote without ports",
        )?;
        let mut later = to_client.clone();
        later.frag = 100;
        expect_untouched(
            &lb,
            &err(ROUTER, *VIP.ip(), &quote(&later, 48)),
            "quote of a later fragment",
        )?;
        let mut cut = err(ROUTER, *VIP.ip(), &quote(&to_client, 48));
        cut.truncate(cut.len() - 21);
        expect_untouched(&lb, &cut, "frame shorter than its tot_len")?;

        // The firewall applies to errors as to the flow's packets.
        lb.block("192.0.2.0/24".parse()?)?;
        let before = reason(&lb, R::LB_REASON_DROP_FIREWALL)?;
        expect_dropped(
            &lb,
            &err(ROUTER, *VIP.ip(), &quote(&to_client, 48)),
            "blocked router",
        )?;
        expect_reason(&lb, R::LB_REASON_DROP_FIREWALL, before + 1, "drop_firewall")?;
        Ok(())
    });
}

#[test]
fn fragments_to_a_vip_never_reach_a_backend() {
    bench_with_vip(&TCP_NAT, |mut lb, _| {
        let udp = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let client = sa(CLIENT, 46000);

        // First fragments carry the ports: dropped and counted, no flow created.
        let mut first = syn(client, VIP);
        first.frag = IP_MF;
        expect_dropped(&lb, &first.build(), "first TCP fragment")?;
        let mut ufirst = Packet::udp(CLIENT_MAC, VETH0_MAC, client, VIP_UDP).with_payload(&[7; 64]);
        ufirst.frag = IP_MF;
        expect_dropped(&lb, &ufirst.build(), "first UDP fragment")?;
        expect_reason(&lb, R::LB_REASON_DROP_FRAGMENT, 2, "drop_fragment counter")?;
        lb.expect_flow_entries(0, "fragments must not create flow entries")?;

        // Later fragments carry no ports: untouched, to the kernel.
        for frag in [1u16, IP_MF | 185] {
            let mut later =
                Packet::udp(CLIENT_MAC, VETH0_MAC, client, VIP_UDP).with_payload(&[7; 64]);
            later.frag = frag;
            expect_untouched(&lb, &later.build(), &format!("later fragment {frag:#06x}"))?;
        }
        expect_reason(&lb, R::LB_REASON_PASS_FRAGMENT, 2, "pass_fragment counter")?;

        // A first fragment of a NAT reply is dropped too; of the host's own traffic, passed.
        let (backend, port) = nat_flow(&mut lb, &udp, sa(CLIENT, 46001))?;
        let mut reply =
            Packet::udp(ROUTER_MAC, VETH0_MAC, backend, sa(LB_ADDR, port)).with_payload(&[9; 64]);
        reply.frag = IP_MF;
        expect_dropped(&lb, &reply.build(), "first fragment of a NAT reply")?;
        let mut host = Packet::udp(ROUTER_MAC, VETH0_MAC, sa(ROUTER, 53), sa(LB_ADDR, 33000))
            .with_payload(&[9; 64]);
        host.frag = IP_MF;
        expect_untouched(&lb, &host.build(), "first fragment to the host")?;
        expect_reason(&lb, R::LB_REASON_DROP_FRAGMENT, 3, "drop_fragment counter")?;
        Ok(())
    });
}

#[test]
fn packets_from_the_vip_to_itself_are_dropped() {
    bench_with_vip(&TCP_NAT_BE1, |lb, _| {
        for sport in [80u16, 12345] {
            let land = Packet::tcp(ROUTER_MAC, VETH0_MAC, sa(*VIP.ip(), sport), VIP, TCP_SYN);
            expect_dropped(
                &lb,
                &land.build(),
                &format!("{}:{sport} -> {VIP}", VIP.ip()),
            )?;
        }
        expect_reason(&lb, R::LB_REASON_DROP_LAND, 2, "drop_land counter")?;
        lb.expect_flow_entries(0, "land packets must not create flows")?;
        Ok(())
    });
}
