//! The next-hop cache (bpf/nexthop.h) through the loaded XDP program (BPF_PROG_TEST_RUN, one
//! private network namespace per test, the bench of `common::lab`).
//!
//! A flow's entry keeps what bpf_fib_lookup answered for it (egress, MACs, the largest length that
//! passed the MTU check) for `[timeouts] nexthop_cache`. The proof that established packets use it:
//! the neighbour's MAC is changed in the namespace, a new flow (a real lookup) gets the new MAC at
//! once, while the established flows keep sending to the old one until the cache lifetime has
//! passed, then switch. A packet bigger than the cached length looks up again (and gets ICMP
//! "fragmentation needed" when the MTU shrank); failed lookups are never cached; 0 turns the cache
//! off. Every expected frame is built from scratch by `xdplb_testkit::packet`.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::maps::RuntimeConfig;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::state::{Mode, Protocol, VipKey};

use common::expect::*;
use common::lab::*;
use xdplb_testkit::netns::NetNs;
use xdplb_testkit::packet::*;

const NAT_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80);
const L2_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 10), 80);
const IPIP_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 11), 80);
/// The NAT backend; DSR backends listen on the VIP port.
/// What the neighbours' MACs are changed to.
const NEW_BACKEND_MAC: Mac = [0x02, 0, 0, 0, 0x0b, 0x02];
const NEW_CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x0c, 0x50];
/// The cache lifetime of the tests that watch it expire.
const TTL: Duration = Duration::from_secs(2);

fn syn(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::tcp(CLIENT_MAC, VETH0_MAC, client, vip, TCP_SYN).with_payload(b"syn")
}

/// A data segment as long as [`syn`]: within the length the SYN's lookup vouched for.
fn data(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::tcp(CLIENT_MAC, VETH0_MAC, client, vip, TCP_ACK | TCP_PSH).with_payload(b"dat")
}

/// `pkt` padded with payload to exactly `tot_len` IP bytes.
fn sized(pkt: Packet, tot_len: usize) -> Packet {
    let header = pkt.clone().with_payload(&[]).ip_bytes().len();
    let payload: Vec<u8> = (0..tot_len - header).map(|i| (i * 7) as u8).collect();
    let p = pkt.with_payload(&payload);
    assert_eq!(p.ip_bytes().len(), tot_len);
    p
}

/// Points the static neighbour entry of `addr` on veth0 at `mac`.
fn set_neighbour(ns: &NetNs, addr: Ipv4Addr, mac: &Mac) -> Result<()> {
    ns.ip(&[
        "neigh",
        "replace",
        &addr.to_string(),
        "lladdr",
        &mac_str(mac),
        "dev",
        "veth0",
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// One flow through a VIP of each mode, and what its packets must become.
struct Flow {
    mode: Mode,
    vip: VipKey,
    client: SocketAddrV4,
    /// The backend the flow's hash picks.
    backend: SocketAddrV4,
    /// NAT only: the SNAT port the flow got.
    snat_port: u16,
}

impl Flow {
    /// The flow as the program will create it: its backend and (NAT) the SNAT port it claims.
    fn pick(lb: &mut Lb, mode: Mode, vip: &VipKey, client: SocketAddrV4) -> Result<Flow> {
        let pick = lb.pick(vip, client)?;
        let snat_port = match mode {
            Mode::Nat => lb
                .claim_port(pick.hash, pick.backend)
                .context("no SNAT port left")?,
            _ => 0,
        };
        Ok(Flow {
            mode,
            vip: *vip,
            client,
            backend: pick.backend,
            snat_port,
        })
    }

    /// Sends the flow's SYN (creating it) and checks that it leaves towards `mac`.
    fn open(
        lb: &mut Lb,
        mode: Mode,
        vip: &VipKey,
        client: SocketAddrV4,
        mac: &Mac,
    ) -> Result<Flow> {
        let flow = Flow::pick(lb, mode, vip, client)?;
        flow.send(lb, &syn(client, vip.addr), mac, "SYN")?;
        Ok(flow)
    }

    /// One flow through each of `vips`, from client ports `first_port`, `first_port + 1`, ...,
    /// opened towards `mac`.
    fn open_each(
        lb: &mut Lb,
        vips: &[(Mode, VipKey)],
        first_port: u16,
        mac: &Mac,
    ) -> Result<Vec<Flow>> {
        let mut flows = Vec::new();
        for (i, (mode, vip)) in vips.iter().enumerate() {
            let client = sa(CLIENT, first_port + i as u16);
            flows.push(Flow::open(lb, *mode, vip, client, mac)?);
        }
        Ok(flows)
    }

    /// Sends a [`data`] segment of each of `flows` and checks it leaves towards `mac`.
    fn send_data(flows: &[Flow], lb: &Lb, mac: &Mac, what: &str) -> Result<()> {
        for f in flows {
            f.send(lb, &data(f.client, f.vip.addr), mac, what)?;
        }
        Ok(())
    }

    /// [`Flow::send_data`] towards `backend_mac`, then the reply of the first (NAT) flow towards
    /// `client_mac`.
    fn data_and_reply(
        flows: &[Flow],
        lb: &Lb,
        backend_mac: &Mac,
        client_mac: &Mac,
        what: &str,
    ) -> Result<()> {
        Flow::send_data(flows, lb, backend_mac, &format!("{what} data"))?;
        flows[0].reply(lb, client_mac, &format!("{what} reply"))
    }

    /// What `pkt` of this flow must leave as, to the backend's MAC `mac`.
    fn expected(&self, pkt: &Packet, mac: &Mac) -> Vec<u8> {
        match self.mode {
            Mode::Nat => pkt
                .natted(VETH0_MAC, *mac, sa(LB_ADDR, self.snat_port), self.backend)
                .build(),
            Mode::L2dsr => pkt.routed(VETH0_MAC, *mac).build(),
            Mode::Ipip => {
                let outer = ipip_outer(pkt, LB_ADDR, *self.backend.ip());
                let inner = pkt.routed(VETH0_MAC, *mac).ip_bytes();
                ipip_frame(mac, &VETH0_MAC, &[], &outer, &inner)
            }
        }
    }

    /// Runs `pkt` and checks it left (XDP_TX) as this flow's packet to `mac`.
    fn send(&self, lb: &Lb, pkt: &Packet, mac: &Mac, what: &str) -> Result<()> {
        let run = lb.run(lb.net.veth0, &pkt.build())?;
        let what = format!(
            "{what} of the {} flow {} -> {} (expected to {})",
            self.mode,
            self.client,
            self.vip.addr,
            mac_str(mac)
        );
        expect_frame(&run, XDP_TX, &self.expected(pkt, mac), &what)?;
        // The expected frame's checksums are computed from scratch; this checks them once more
        // from the output (an IPIP frame's outer header is in the expected frame alone).
        if self.mode == Mode::Ipip {
            return Ok(());
        }
        verify_checksums(&run.out, false).with_context(|| what.clone())
    }

    /// NAT only: the backend's reply, and the frame it must leave as, to the client's MAC `mac`.
    fn reply(&self, lb: &Lb, mac: &Mac, what: &str) -> Result<()> {
        let pkt = Packet::tcp(
            BACKEND1_MAC,
            VETH0_MAC,
            BE1,
            sa(LB_ADDR, self.snat_port),
            TCP_SYN | TCP_ACK,
        )
        .with_payload(b"reply");
        let want = pkt
            .natted(VETH0_MAC, *mac, self.vip.addr, self.client)
            .build();
        let run = lb.run(lb.net.veth0, &pkt.build())?;
        let what = format!(
            "{what}: reply to {} (expected to {})",
            self.client,
            mac_str(mac)
        );
        expect_frame(&run, XDP_TX, &want, &what)?;
        verify_checksums(&run.out, false).with_context(|| what.clone())
    }
}

/// The bench's three VIPs, one per mode, each with the one backend 10.1.0.2.
fn three_vips(lb: &mut Lb) -> Result<[(Mode, VipKey); 3]> {
    Ok([
        (
            Mode::Nat,
            lb.add_vip_mode(NAT_VIP, Protocol::Tcp, Mode::Nat, &[(BE1, 100)])?,
        ),
        (
            Mode::L2dsr,
            lb.add_vip_mode(L2_VIP, Protocol::Tcp, Mode::L2dsr, &[(DSR1, 100)])?,
        ),
        (
            Mode::Ipip,
            lb.add_vip_mode(IPIP_VIP, Protocol::Tcp, Mode::Ipip, &[(DSR1, 100)])?,
        ),
    ])
}

fn tx_reason(mode: Mode) -> R {
    match mode {
        Mode::Nat => R::LB_REASON_TX_NAT_FORWARD,
        Mode::L2dsr => R::LB_REASON_TX_L2DSR,
        Mode::Ipip => R::LB_REASON_TX_IPIP,
    }
}

/// `n` packets sent on by each of `vips` (the reason of its mode).
fn tx_reasons(vips: &[(Mode, VipKey)], n: u64) -> Vec<(R, u64)> {
    vips.iter().map(|(m, _)| (tx_reason(*m), n)).collect()
}

/// The global counters after `per_mode` packets sent on by each of `vips` and `replies` NAT
/// replies, all of them XDP_TX.
fn expect_forwarded(lb: &Lb, vips: &[(Mode, VipKey)], per_mode: u64, replies: u64) -> Result<()> {
    let mut reasons = tx_reasons(vips, per_mode);
    reasons.push((R::LB_REASON_TX_NAT_REPLY, replies));
    let tx = per_mode * vips.len() as u64 + replies;
    lb.expect_global(&reasons, &[(XDP_TX, tx)])
}

/// The bench's program with a next-hop cache lifetime of `ttl`.
fn lb_with_cache(net: Net, ttl: Duration) -> Result<Lb> {
    Lb::new(
        net,
        RuntimeConfig {
            nexthop_cache: ttl,
            ..config(PORTS)
        },
    )
}

/// Established flows (all three modes, and NAT replies) keep the next hop they looked up when the
/// neighbour changes, while a new flow sees the change at once; after the cache lifetime they
/// look up again and follow it.
#[test]
fn established_flows_use_the_cached_next_hop_until_it_expires() {
    bench(|ns, net| {
        let mut lb = lb_with_cache(net, TTL)?;
        let vips = three_vips(&mut lb)?;
        let start = Instant::now();
        let flows = Flow::open_each(&mut lb, &vips, 40000, &BACKEND1_MAC)?;
        flows[0].reply(&lb, &CLIENT_MAC, "first reply")?;

        set_neighbour(ns, BACKEND1, &NEW_BACKEND_MAC)?;
        set_neighbour(ns, CLIENT, &NEW_CLIENT_MAC)?;
        Flow::data_and_reply(&flows, &lb, &BACKEND1_MAC, &CLIENT_MAC, "cached")?;
        // The same packets of new flows look up, and see the new neighbours.
        let fresh = Flow::open_each(&mut lb, &vips, 41000, &NEW_BACKEND_MAC)?;
        fresh[0].reply(&lb, &NEW_CLIENT_MAC, "new flow's reply")?;
        // The checks above only prove the cache if they ran within its lifetime.
        let took = start.elapsed();
        ensure!(
            took < TTL,
            "the cached phase took {took:?}, longer than the cache lifetime {TTL:?}: \
             the machine stalled, the test cannot tell the cache from a lookup"
        );

        std::thread::sleep(TTL + Duration::from_millis(300));
        Flow::data_and_reply(
            &flows,
            &lb,
            &NEW_BACKEND_MAC,
            &NEW_CLIENT_MAC,
            "after the lifetime:",
        )?;

        // Per mode: the SYN, the cached data, the new flow's SYN, the data after the lifetime;
        // and four replies.
        expect_forwarded(&lb, &vips, 4, 4)?;
        Ok(())
    });
}

/// `nexthop_cache = 0`: every packet looks up, so a neighbour change reaches established flows
/// (and NAT replies) with their very next packet.
#[test]
fn zero_lifetime_turns_the_cache_off() {
    bench(|ns, net| {
        let mut lb = lb_with_cache(net, Duration::ZERO)?;
        let vips = three_vips(&mut lb)?;
        let flows = Flow::open_each(&mut lb, &vips, 42000, &BACKEND1_MAC)?;
        flows[0].reply(&lb, &CLIENT_MAC, "first reply")?;
        set_neighbour(ns, BACKEND1, &NEW_BACKEND_MAC)?;
        set_neighbour(ns, CLIENT, &NEW_CLIENT_MAC)?;
        Flow::data_and_reply(&flows, &lb, &NEW_BACKEND_MAC, &NEW_CLIENT_MAC, "uncached")?;
        expect_forwarded(&lb, &vips, 2, 2)?;
        Ok(())
    });
}

/// The cache only vouches for packets up to the length its lookup let through: a bigger one looks
/// up again, and so learns that the MTU shrank (ICMP "fragmentation needed" for NAT and IPIP, a
/// drop for L2 DSR), while packets of the cached length still leave through the cache.
#[test]
fn bigger_packet_than_cached_looks_up_again() {
    bench(|ns, net| {
        // A long lifetime: nothing here may depend on the cache expiring.
        let mut lb = lb_with_cache(net, Duration::from_secs(60))?;
        let vips = three_vips(&mut lb)?;
        let flows = Flow::open_each(&mut lb, &vips, 43000, &BACKEND1_MAC)?;
        let cached_len = syn(sa(CLIENT, 1), NAT_VIP).ip_bytes().len();
        ns.ip(&["link", "set", "veth0", "mtu", "1400"])?;

        for f in &flows {
            // As long as the SYN: the cache answers.
            let small = sized(data(f.client, f.vip.addr), cached_len);
            f.send(&lb, &small, &BACKEND1_MAC, "packet as long as the SYN")?;
            // Bigger than the cache vouches for, and than the new MTU allows (DF).
            let (len, mtu) = match f.mode {
                Mode::Ipip => (1381, 1380),
                _ => (1401, 1400),
            };
            let big = sized(data(f.client, f.vip.addr), len);
            let run = lb.run(net.veth0, &big.build())?;
            let what = format!("{}-byte packet of the {} flow", len, f.mode);
            match f.mode {
                Mode::L2dsr => expect_action(&run, XDP_DROP, &what)?,
                _ => expect_frag_needed(&run, &big, mtu, &what)?,
            }
            // The largest that fits: looked up, passes, and raises the cached length.
            let fits = sized(data(f.client, f.vip.addr), len - 1);
            f.send(&lb, &fits, &BACKEND1_MAC, "largest packet that fits")?;
        }
        let mut reasons = tx_reasons(&vips, 3);
        reasons.push((R::LB_REASON_TX_ICMP_FRAG_NEEDED, 2));
        reasons.push((R::LB_REASON_DROP_TOO_BIG, 1));
        lb.expect_global(&reasons, &[(XDP_TX, 11), (XDP_DROP, 1)])?;
        Ok(())
    });
}

/// Failed lookups are never cached: a flow whose next hop was unresolved (no neighbour) or
/// blackholed gets the working next hop with its very next packet once it exists.
#[test]
fn failed_lookups_are_not_cached() {
    bench(|ns, net| {
        let mut lb = lb_with_cache(net, Duration::from_secs(60))?;
        // On veth0's subnet without a neighbour entry; and behind a blackhole route.
        let unresolved = Ipv4Addr::new(10, 1, 0, 9);
        let holed = Ipv4Addr::new(10, 66, 0, 5);
        let unresolved_mac: Mac = [0x02, 0, 0, 0, 0, 0x09];
        ns.ip(&["route", "add", "blackhole", "10.66.0.0/24"])?;

        let mut cases = Vec::new();
        let (mut reasons, mut verdicts) = (Vec::new(), Vec::new());
        for (i, (backend, nat_reason, dsr_reason)) in [
            (
                unresolved,
                R::LB_REASON_DROP_FIB_NO_NEIGH,
                R::LB_REASON_DROP_DSR_NO_NEXTHOP,
            ),
            (
                holed,
                R::LB_REASON_DROP_FIB_BLACKHOLE,
                R::LB_REASON_DROP_FIB_BLACKHOLE,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            for (j, mode) in [Mode::Nat, Mode::L2dsr].into_iter().enumerate() {
                let addr = sa(Ipv4Addr::new(10, 9, 8, (10 * i + j) as u8 + 1), 80);
                let port = if mode == Mode::Nat { 8080 } else { 80 };
                let vip =
                    lb.add_vip_mode(addr, Protocol::Tcp, mode, &[(sa(backend, port), 100)])?;
                let client = sa(CLIENT, 44000 + (10 * i + j) as u16);
                let flow = Flow::pick(&mut lb, mode, &vip, client)?;
                let run = lb.run(net.veth0, &syn(client, addr).build())?;
                // NAT drops too: the packet it would pass is rewritten from the SNAT address,
                // which the kernel drops as a martian.
                let (action, reason) = match mode {
                    Mode::Nat => (XDP_DROP, nat_reason),
                    _ => (XDP_DROP, dsr_reason),
                };
                expect_action(&run, action, &format!("SYN of {mode} to {backend}"))?;
                reasons.push((reason, 1));
                verdicts.push((action, 1));
                lb.expect_global(&reasons, &verdicts)
                    .with_context(|| format!("SYN of {mode} to {backend}"))?;
                cases.push(flow);
            }
        }

        // The next hops appear: the neighbour, and an on-link route with a neighbour instead of
        // the blackhole (L2 DSR only sends on the link).
        set_neighbour(ns, unresolved, &unresolved_mac)?;
        ns.ip(&["route", "del", "blackhole", "10.66.0.0/24"])?;
        ns.ip(&["route", "add", "10.66.0.0/24", "dev", "veth0"])?;
        set_neighbour(ns, holed, &BACKEND2_MAC)?;
        for flow in &cases {
            let (mode, backend) = (flow.mode, flow.backend);
            let mac = if *backend.ip() == unresolved {
                unresolved_mac
            } else {
                BACKEND2_MAC
            };
            let pkt = data(flow.client, flow.vip.addr);
            let run = lb.run(net.veth0, &pkt.build())?;
            expect_frame(
                &run,
                XDP_TX,
                &flow.expected(&pkt, &mac),
                &format!("{mode} to {backend} once its next hop exists"),
            )?;
        }
        reasons.extend([(R::LB_REASON_TX_NAT_FORWARD, 2), (R::LB_REASON_TX_L2DSR, 2)]);
        verdicts.push((XDP_TX, 4));
        lb.expect_global(&reasons, &verdicts)?;
        Ok(())
    });
}
