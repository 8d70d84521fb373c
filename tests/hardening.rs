//! Data-plane hardening (issue 17) through the loaded XDP program (BPF_PROG_TEST_RUN, the bench of
//! `common::lab`): nothing from a blocked source reaches anything addressed to a VIP; ICMP errors
//! pay their sender's rate limit and their VIP's ICMP budget before any flow lookup; the balancer
//! forwards like a router (TTL one less, ICMP time exceeded from its address when the TTL runs
//! out, within a budget); L2 DSR never sends through a gateway. Every expected frame is built from
//! scratch by `xdplb_testkit::packet`.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::maps::{vip_filter_bit, RuntimeConfig};
use xdplb::skel::types::{self, lb_reason as R};
use xdplb_model::ratelimit::{Bucket, Policy, Scope};
use xdplb_model::state::{Mode, Protocol};

use common::expect::*;
use common::lab::*;
use xdplb_testkit::packet::*;

/// A router on the client side (the sender of ICMP errors about packets to clients).
const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
/// "Fragmentation needed", next-hop MTU 1400.
const MTU_1400: [u8; 4] = [0, 0, 0x05, 0x78];

fn reason(lb: &Lb, r: types::lb_reason) -> Result<u64> {
    Ok(lb.global()?.reasons[r.0 as usize])
}

/// A client's SYN to `vip` with TTL `ttl`, as received on veth0.
fn syn_ttl(client: SocketAddrV4, vip: SocketAddrV4, ttl: u8) -> Packet {
    let mut p = client_syn(client, vip);
    p.ttl = ttl;
    p
}

/// "Fragmentation needed" from `from` to the VIP address, quoting the first 28 bytes of what the
/// client was sent from `vip` (VIP:vport -> client:cport).
fn error_about(from: Ipv4Addr, vip: SocketAddrV4, client: SocketAddrV4) -> Packet {
    let sent = Packet::tcp(VETH0_MAC, CLIENT_MAC, vip, client, TCP_ACK).with_payload(b"data");
    let quote = sent.ip_bytes()[..28].to_vec();
    Packet::icmp(
        ROUTER_MAC,
        VETH0_MAC,
        from,
        *vip.ip(),
        3,
        4,
        MTU_1400,
        &quote,
    )
}

/// Runs `pkt` on veth0 `n` times and checks every verdict.
fn expect_n(lb: &Lb, pkt: &Packet, n: usize, action: u32, what: &str) -> Result<()> {
    let frame = pkt.build();
    for i in 0..n {
        let run = lb.run(lb.net.veth0, &frame)?;
        expect_action(&run, action, &format!("{what}, packet {} of {n}", i + 1))?;
    }
    Ok(())
}

/// Checks that `run` is the ICMP time exceeded (type 11 code 0) from `from` to the sender of
/// `pkt`: back out where it came from (XDP_TX), MACs swapped, quoting the packet's IPv4 header and
/// 8 bytes as received. The whole frame is built from scratch (TOS 0, id 0, no DF, TTL 64).
fn expect_time_exceeded(run: &Run, pkt: &Packet, from: Ipv4Addr, what: &str) -> Result<()> {
    let want = Packet {
        eth_dst: pkt.eth_src,
        eth_src: pkt.eth_dst,
        vlans: pkt.vlans.clone(),
        tos: 0,
        ip_id: 0,
        frag: 0,
        ttl: 64,
        src: from,
        dst: pkt.src,
        ip_options: Vec::new(),
        l4: Transport::Icmp {
            kind: 11,
            code: 0,
            rest: [0; 4],
        },
        payload: pkt.ip_bytes()[..28].to_vec(),
    };
    expect_frame(run, XDP_TX, &want.build(), what)?;
    verify_checksums(&run.out, false).with_context(|| format!("{what}: checksums"))
}

/// An address other than the VIP's that the prefilter cannot tell from it (same filter bit):
/// to the prefilter it looks like a VIP, to the firewall of scope "vips" it is the host's.
fn prefilter_twin(vip: Ipv4Addr) -> Ipv4Addr {
    let bit = vip_filter_bit(vip);
    (1..=u32::MAX)
        .map(|i| Ipv4Addr::from(0x0a64_0000 + i))
        .find(|a| *a != vip && vip_filter_bit(*a) == bit)
        .expect("some address shares the VIP's prefilter bit")
}

/// Under scope "vips", a blocked source is dropped for everything it sends to a VIP's address:
/// later fragments, echo requests, ports and protocols no VIP serves, not only the VIP's port
/// (before: all but the last went to the kernel). A source that is not blocked still reaches
/// the kernel with them, and the blocked source still reaches the host's own addresses, even
/// one that shares the VIP's prefilter bit.
#[test]
fn blocked_sources_get_nothing_to_a_vip_address() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        lb.block("10.1.0.50/32".parse()?)?;
        let vip_addr = *VIP.ip();
        let twin = prefilter_twin(vip_addr);
        let cases = |from: Ipv4Addr, to: Ipv4Addr| -> Vec<(&'static str, Packet)> {
            let mac = neighbour_mac(from);
            let mut later_fragment =
                Packet::udp(mac, VETH0_MAC, sa(from, 5000), sa(to, 53)).with_payload(&[7; 64]);
            later_fragment.frag = 0x0010; // offset 128 bytes, no MF: the last fragment
            let mut other_proto = Packet::udp(mac, VETH0_MAC, sa(from, 5000), sa(to, 99));
            other_proto.l4 = Transport::Icmp {
                kind: 13, // timestamp request
                code: 0,
                rest: [0, 1, 0, 1],
            };
            vec![
                ("later fragment", later_fragment),
                ("echo request", Packet::icmp_echo(mac, VETH0_MAC, from, to)),
                ("timestamp request", other_proto),
                (
                    "UDP to a port no VIP serves",
                    Packet::udp(mac, VETH0_MAC, sa(from, 5000), sa(to, 9999)).with_payload(b"q"),
                ),
                (
                    "TCP ACK to a port no VIP serves",
                    Packet::tcp(mac, VETH0_MAC, sa(from, 5000), sa(to, 22), TCP_ACK),
                ),
            ]
        };
        let mut dropped = 0;
        for (what, pkt) in cases(CLIENT, vip_addr) {
            let run = lb.run(lb.net.veth0, &pkt.build())?;
            expect_action(
                &run,
                XDP_DROP,
                &format!("{what} from blocked {CLIENT} to the VIP"),
            )?;
            dropped += 1;
        }
        for (from, to, why) in [
            (CLIENT_B, vip_addr, "from a source not blocked to the VIP"),
            (
                CLIENT,
                twin,
                "from the blocked source to the VIP's prefilter twin",
            ),
        ] {
            for (what, pkt) in cases(from, to) {
                let frame = pkt.build();
                let run = lb.run(lb.net.veth0, &frame)?;
                expect_frame(&run, XDP_PASS, &frame, &format!("{what} {why} ({to})"))?;
            }
        }
        ensure!(
            reason(&lb, R::LB_REASON_DROP_FIREWALL)? == dropped,
            "drop_firewall {}, expected {dropped}",
            reason(&lb, R::LB_REASON_DROP_FIREWALL)?
        );
        // The flows of a blocked source are dropped before any flow lookup: its SYN, its ACK.
        for flags in [TCP_SYN, TCP_ACK] {
            let run = lb.run(
                lb.net.veth0,
                &Packet::tcp(CLIENT_MAC, VETH0_MAC, sa(CLIENT, 7000), VIP, flags).build(),
            )?;
            expect_action(&run, XDP_DROP, "blocked client to the VIP's port")?;
        }
        lb.expect_flow_entries(0, "after the blocked client's packets")
    });
}

/// ICMP errors to a VIP pay their sender's rate limit (scope "all") before they are steered:
/// before, a rate-limited router had every error relayed.
#[test]
fn icmp_errors_pay_their_senders_rate_limit() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let client = sa(CLIENT, 41000);
        expect_n(
            &lb,
            &client_syn(client, VIP),
            1,
            XDP_TX,
            "SYN of the tracked flow",
        )?;
        lb.state
            .ratelimit
            .set(
                Some("192.0.2.0/24".parse()?),
                Policy {
                    rate: 1,
                    burst: 2,
                    scope: Scope::All,
                },
            )
            .context("rate limit of the routers")?;
        lb.reconcile()?;
        let err = error_about(ROUTER, VIP, client);
        expect_n(&lb, &err, 2, XDP_TX, "error within the router's burst")?;
        expect_n(&lb, &err, 3, XDP_DROP, "error over the router's rate")?;
        ensure!(
            reason(&lb, R::LB_REASON_DROP_RATELIMIT)? == 3
                && reason(&lb, R::LB_REASON_TX_ICMP_ERROR)? == 2,
            "drop_ratelimit {} tx_icmp_error {}",
            reason(&lb, R::LB_REASON_DROP_RATELIMIT)?,
            reason(&lb, R::LB_REASON_TX_ICMP_ERROR)?
        );
        Ok(())
    });
}

/// Forged errors from many senders, each within any per-sender limit, quoting flows a DSR VIP
/// has no entry for: each VIP relays at most its ICMP budget ([icmp] errors_per_second, bursts
/// of a tenth); another VIP's budget is its own. Before, every one was relayed to a backend.
#[test]
fn icmp_errors_of_a_vip_stay_within_its_budget() {
    bench(|_, net| {
        let cfg = RuntimeConfig {
            icmp_errors: Some(Bucket::new(1, 3)),
            ..config(PORTS)
        };
        let mut lb = Lb::new(net, cfg)?;
        let other = sa(Ipv4Addr::new(10, 9, 9, 20), 80);
        for addr in [VIP, other] {
            lb.add_vip_mode(
                addr,
                Protocol::Tcp,
                Mode::L2dsr,
                &[(DSR1, 100), (DSR2, 100)],
            )?;
        }
        for (vip, what) in [(VIP, "the VIP"), (other, "another VIP")] {
            for i in 0..5u8 {
                let sender = Ipv4Addr::new(192, 0, 2, 10 + i);
                let err = error_about(
                    sender,
                    vip,
                    sa(Ipv4Addr::new(198, 51, 100, 7), 40000 + u16::from(i)),
                );
                let run = lb.run(lb.net.veth0, &err.build())?;
                let want = if i < 3 { XDP_TX } else { XDP_DROP };
                expect_action(&run, want, &format!("forged error {i} to {what}"))?;
            }
        }
        ensure!(
            reason(&lb, R::LB_REASON_DROP_ICMP_BUDGET)? == 4
                && reason(&lb, R::LB_REASON_TX_ICMP_ERROR)? == 6,
            "drop_icmp_budget {} tx_icmp_error {}",
            reason(&lb, R::LB_REASON_DROP_ICMP_BUDGET)?,
            reason(&lb, R::LB_REASON_TX_ICMP_ERROR)?
        );
        Ok(())
    });
}

/// The balancer forwards like a router in every mode: TTL 2 leaves as 1 (checksum from scratch),
/// TTL 1 and 0 are answered with time exceeded from the balancer's address ([icmp] source) and
/// start no flow; a backend's reply with TTL 1 gets its time exceeded too; an ICMP error whose TTL
/// runs out is dropped (no error about an error). Before, TTLs went through unchanged.
#[test]
fn ttl_runs_out_at_the_balancer() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let modes = [
            (Mode::Nat, VIP, BE1),
            (Mode::L2dsr, sa(Ipv4Addr::new(10, 9, 9, 30), 80), DSR1),
            (Mode::Ipip, sa(Ipv4Addr::new(10, 9, 9, 31), 80), DSR1),
        ];
        let mut keys = Vec::new();
        for (mode, addr, backend) in modes {
            keys.push(lb.add_vip_mode(addr, Protocol::Tcp, mode, &[(backend, 100)])?);
            for ttl in [1, 0] {
                let pkt = syn_ttl(sa(CLIENT, 42000), addr, ttl);
                let run = lb.run(lb.net.veth0, &pkt.build())?;
                expect_time_exceeded(&run, &pkt, LB_ADDR, &format!("{mode} SYN of TTL {ttl}"))?;
            }
        }
        lb.expect_flow_entries(0, "after the expired SYNs")?;

        // TTL 2: forwarded with TTL 1 (NAT: the whole frame, built from scratch).
        let vip = keys[0];
        let client = sa(CLIENT, 42001);
        let pkt = syn_ttl(client, VIP, 2);
        let pick = lb.pick(&vip, client)?;
        let port = lb
            .claim_port(pick.hash, pick.backend)
            .context("a free port")?;
        let run = lb.run(lb.net.veth0, &pkt.build())?;
        let want = pkt.natted(VETH0_MAC, neighbour_mac(*BE1.ip()), sa(LB_ADDR, port), BE1);
        ensure!(want.ttl == 1, "the expected frame has TTL {}", want.ttl);
        expect_frame(&run, XDP_TX, &want.build(), "NAT SYN of TTL 2")?;

        // The backend's reply of that flow with TTL 1: time exceeded to the backend.
        let mut reply = Packet::tcp(
            BACKEND1_MAC,
            VETH0_MAC,
            BE1,
            sa(LB_ADDR, port),
            TCP_SYN | TCP_ACK,
        );
        reply.ttl = 1;
        let run = lb.run(lb.net.veth0, &reply.build())?;
        expect_time_exceeded(&run, &reply, LB_ADDR, "NAT reply of TTL 1")?;

        // An error about that flow whose TTL runs out here: dropped, never answered.
        let mut err = error_about(ROUTER, VIP, client);
        err.ttl = 1;
        expect_n(&lb, &err, 1, XDP_DROP, "ICMP error of TTL 1")?;
        ensure!(
            reason(&lb, R::LB_REASON_TX_ICMP_TIME_EXCEEDED)? == 7
                && reason(&lb, R::LB_REASON_DROP_TTL_EXCEEDED)? == 1,
            "tx_icmp_time_exceeded {} drop_ttl_exceeded {}",
            reason(&lb, R::LB_REASON_TX_ICMP_TIME_EXCEEDED)?,
            reason(&lb, R::LB_REASON_DROP_TTL_EXCEEDED)?
        );
        Ok(())
    });
}

/// The time exceeded the balancer sends stay within their budget ([icmp]
/// time_exceeded_per_second): a flood of TTL 1 packets is dropped beyond it, and the source of
/// the ICMP is the configured one.
#[test]
fn time_exceeded_stays_within_its_budget() {
    bench(|_, net| {
        let source = Ipv4Addr::new(10, 1, 0, 100);
        let cfg = RuntimeConfig {
            icmp_source: source,
            time_exceeded: Some(Bucket::new(1, 2)),
            ..config(PORTS)
        };
        let mut lb = Lb::new(net, cfg)?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        for i in 0..5u16 {
            let pkt = syn_ttl(sa(CLIENT, 43000 + i), VIP, 1);
            let run = lb.run(lb.net.veth0, &pkt.build())?;
            if i < 2 {
                expect_time_exceeded(&run, &pkt, source, &format!("TTL 1 SYN {i}"))?;
            } else {
                expect_action(&run, XDP_DROP, &format!("TTL 1 SYN {i}, over the budget"))?;
            }
        }
        ensure!(
            reason(&lb, R::LB_REASON_DROP_TTL_EXCEEDED)? == 3,
            "drop_ttl_exceeded {}",
            reason(&lb, R::LB_REASON_DROP_TTL_EXCEEDED)?
        );
        Ok(())
    });
}

/// L2 DSR sends only to a backend on the link: once a route change puts the backend behind a
/// gateway, its packets are dropped and counted (before, they went to the gateway's MAC with the
/// VIP as destination: a loop). IPIP to the same backend goes through the gateway as it should.
#[test]
fn l2dsr_never_sends_through_a_gateway() {
    bench(|ns, net| {
        ns.ip(&[
            "route",
            "add",
            "10.7.0.0/24",
            "via",
            &BACKEND1.to_string(),
            "dev",
            "veth0",
        ])?;
        let far = sa(Ipv4Addr::new(10, 7, 0, 5), 80);
        let mut lb = Lb::new(net, config(PORTS))?;
        let l2 = sa(Ipv4Addr::new(10, 9, 9, 40), 80);
        let ipip = sa(Ipv4Addr::new(10, 9, 9, 41), 80);
        lb.add_vip_mode(l2, Protocol::Tcp, Mode::L2dsr, &[(far, 100)])?;
        lb.add_vip_mode(ipip, Protocol::Tcp, Mode::Ipip, &[(far, 100)])?;
        for flags in [TCP_SYN, TCP_ACK] {
            let pkt = Packet::tcp(CLIENT_MAC, VETH0_MAC, sa(CLIENT, 44000), l2, flags);
            expect_n(
                &lb,
                &pkt,
                1,
                XDP_DROP,
                "L2 DSR to a backend behind a gateway",
            )?;
        }
        ensure!(
            reason(&lb, R::LB_REASON_DROP_DSR_NOT_ONLINK)? == 2,
            "drop_dsr_not_onlink {}",
            reason(&lb, R::LB_REASON_DROP_DSR_NOT_ONLINK)?
        );
        let pkt = client_syn(sa(CLIENT, 44001), ipip);
        let run = lb.run(lb.net.veth0, &pkt.build())?;
        expect_action(&run, XDP_TX, "IPIP to a backend behind a gateway")?;
        ensure!(
            run.out[0..6] == BACKEND1_MAC && ip_at(&run.out, 14 + 16) == *far.ip(),
            "IPIP via the gateway: to MAC {} outer destination {}",
            mac_str(&run.out[0..6].try_into()?),
            ip_at(&run.out, 14 + 16)
        );
        Ok(())
    });
}
