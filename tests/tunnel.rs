//! Tunnels, MTU and VLANs through the loaded XDP program (BPF_PROG_TEST_RUN, one private network
//! namespace per test, the bench of `common::lab`):
//! - RFC 6864: an IPIP outer header without DF gets a per-packet ID (per-CPU counter), distinct
//!   for the packets of a flow on one CPU and across CPUs; with DF it stays 0;
//! - a DF-clear packet too big once encapsulated is encapsulated and passed to the kernel, which
//!   fragments the outer packet (integration/tests/ipip_fragments.rs sees it on the wire);
//! - VLAN-tagged frames are the kernel's, byte for byte, but the firewall still drops a tagged
//!   frame from a blocked source (scope "all"), or from one to a VIP address (scope "vips").
//!
//! Every expected frame is built from scratch by `xdplb_testkit::packet` (the outer IPv4 checksum
//! computed per RFC 1071 over the header with the ID the program chose).

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::LoadOptions;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::firewall::Scope;
use xdplb_model::state::{Mode, Protocol, VipKey};

use common::expect::*;
use common::lab::*;
use xdplb_testkit::packet::*;

/// The IPIP and L2 DSR VIPs of these tests (DSR backends listen on the VIP port).
const IPIP_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 11), 80);
const L2DSR_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 10), 80);
/// A router on veth0's segment that sends ICMP errors.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 254);
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
/// A blocked client prefix (firewall tests).
const BLOCKED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// A data segment of the client's flow to `vip` without DF, with `payload` bytes.
fn no_df_data(client: SocketAddrV4, vip: SocketAddrV4, payload: usize) -> Packet {
    let mut p = data_segment(neighbour_mac(*client.ip()), client, vip)
        .with_payload(&(0..payload).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
    p.frag = 0;
    p
}

/// The program with the TCP VIP `IPIP_VIP` in IPIP mode over both DSR backends.
fn ipip_lb(net: Net) -> Result<(Lb, VipKey)> {
    let mut lb = Lb::new(net, config(PORTS))?;
    let vip = lb.add_vip_mode(
        IPIP_VIP,
        Protocol::Tcp,
        Mode::Ipip,
        &[(DSR1, 100), (DSR2, 100)],
    )?;
    Ok((lb, vip))
}

/// The outer ID of an IPIP frame (untagged).
fn outer_id(frame: &[u8]) -> u16 {
    get_be16(frame, 14 + 4)
}

/// Runs `pkt` on veth0 and checks the output is `pkt` IPIP-encapsulated to the flow's backend
/// from LB_ADDR with `action`, MACs `dst`/`src`: the whole frame against one built from scratch
/// (the inner TTL one less; outer checksum over the ID the program chose; with DF that ID must be
/// 0). Returns the ID.
fn expect_encapsulated(
    lb: &Lb,
    pkt: &Packet,
    backend: Ipv4Addr,
    action: u32,
    (dst, src): (Mac, Mac),
    what: &str,
) -> Result<u16> {
    let run = lb.run(lb.net.veth0, &pkt.build())?;
    let outer = ipip_outer_sent(pkt, LB_ADDR, backend, &run.out);
    let inner = pkt.routed(pkt.eth_src, pkt.eth_dst).ip_bytes(); // the TTL one down
    let want = ipip_frame(&dst, &src, &[], &outer, &inner);
    expect_frame(&run, action, &want, what)?;
    Ok(outer_id(&run.out))
}

/// [`expect_encapsulated`] for a packet sent (XDP_TX) to `backend`'s MAC.
fn expect_ipip_tx(lb: &Lb, pkt: &Packet, backend: Ipv4Addr, what: &str) -> Result<u16> {
    let mac = neighbour_mac(backend);
    expect_encapsulated(lb, pkt, backend, XDP_TX, (mac, VETH0_MAC), what)
}

/// The backend Maglev gives `client`'s flow.
fn backend_of(lb: &Lb, vip: &VipKey, client: SocketAddrV4) -> Result<Ipv4Addr> {
    Ok(*lb.pick(vip, client)?.backend.ip())
}

/// Inserts `id` into `ids`, failing if a packet of `what` had it already.
fn fresh(ids: &mut BTreeSet<u16>, id: u16, what: &str) -> Result<()> {
    ensure!(
        ids.insert(id),
        "{what}: outer id {id:#06x} repeated after {} ids",
        ids.len()
    );
    Ok(())
}

#[test]
fn df_clear_ipip_packets_get_distinct_outer_ids() {
    bench(|_, net| {
        let (lb, vip) = ipip_lb(net)?;
        let cpus: Vec<usize> = {
            let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))?;
            (0..nix::sched::CpuSet::count())
                .filter(|c| set.is_set(*c).unwrap_or(false))
                .collect()
        };
        ensure!(!cpus.is_empty(), "no CPU to run on");
        let (a, b) = (sa(CLIENT, 42000), sa(CLIENT_B, 42001));
        // Per flow, and for both together (one outer (source, destination, protocol) when they go
        // to the same backend: RFC 6864 asks uniqueness per outer triple).
        let (mut ids_a, mut ids_b, mut all) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        const ROUNDS: usize = 3000;
        let (be_a, be_b) = (backend_of(&lb, &vip, a)?, backend_of(&lb, &vip, b)?);

        pin_to_cpu(cpus[0])?;
        expect_ipip_tx(&lb, &client_syn(a, IPIP_VIP), be_a, "SYN of flow a (DF)")?;
        expect_ipip_tx(&lb, &client_syn(b, IPIP_VIP), be_b, "SYN of flow b (DF)")?;
        for i in 0..ROUNDS {
            let what = format!("DF-clear packet {i} of flow a on CPU {}", cpus[0]);
            let id = expect_ipip_tx(&lb, &no_df_data(a, IPIP_VIP, i % 300), be_a, &what)?;
            fresh(&mut ids_a, id, &what)?;
            fresh(&mut all, id, &format!("{what} (both flows)"))?;
            let what = format!("DF-clear packet {i} of flow b on CPU {}", cpus[0]);
            let id = expect_ipip_tx(&lb, &no_df_data(b, IPIP_VIP, 40), be_b, &what)?;
            fresh(&mut ids_b, id, &what)?;
            fresh(&mut all, id, &format!("{what} (both flows)"))?;
            if i % 100 == 0 {
                // DF set: id 0 (checked by expect_encapsulated), and the counter does not care.
                let mut df = no_df_data(a, IPIP_VIP, 10);
                df.frag = IP_DF;
                expect_ipip_tx(&lb, &df, be_a, &format!("DF packet {i} of flow a"))?;
            }
        }
        // The flow moves to another CPU (queues reconfigured): its ids still do not repeat.
        for &cpu in cpus.iter().skip(1).take(3) {
            pin_to_cpu(cpu)?;
            for i in 0..ROUNDS {
                let what = format!("DF-clear packet {i} of flow a on CPU {cpu}");
                let id = expect_ipip_tx(&lb, &no_df_data(a, IPIP_VIP, 20), be_a, &what)?;
                fresh(&mut ids_a, id, &what)?;
            }
        }
        if cpus.len() < 2 {
            println!("only one CPU: the cross-CPU part did not run");
        }
        Ok(())
    });
}

#[test]
fn oversize_df_clear_packet_is_encapsulated_and_passed() {
    bench(|ns, net| {
        ns.ip(&["link", "set", "veth0", "mtu", "1400"])?;
        let (lb, vip) = ipip_lb(net)?;
        pin_to_this_cpu()?;
        let mut ids = BTreeSet::new();
        // 1400 bytes (1420 once encapsulated, over veth0's MTU) and one byte over (1381): the
        // kernel gets the encapsulated packet, MACs as received (to this host), to fragment it.
        for (i, payload) in [1352usize, 1333, 1352].into_iter().enumerate() {
            let client = sa(CLIENT, 46000 + i as u16);
            let pkt = no_df_data(client, IPIP_VIP, payload);
            let what = format!("DF-clear packet of {} bytes", pkt.ip_bytes().len());
            let macs = (pkt.eth_dst, pkt.eth_src);
            let id = expect_encapsulated(
                &lb,
                &pkt,
                backend_of(&lb, &vip, client)?,
                XDP_PASS,
                macs,
                &what,
            )?;
            fresh(&mut ids, id, &what)?;
        }
        // The same size with DF: ICMP "fragmentation needed" as before.
        let mut df = no_df_data(sa(CLIENT, 46010), IPIP_VIP, 1352);
        df.frag = IP_DF;
        let run = lb.run(net.veth0, &df.build())?;
        expect_frag_needed(&run, &df, 1380, "DF packet of 1400 bytes")?;
        // 1380 bytes fit: sent, with an id the passed ones did not have.
        let client = sa(CLIENT, 46020);
        let fits = no_df_data(client, IPIP_VIP, 1332);
        let id = expect_ipip_tx(
            &lb,
            &fits,
            backend_of(&lb, &vip, client)?,
            "DF-clear packet of 1380 bytes",
        )?;
        fresh(&mut ids, id, "DF-clear packet of 1380 bytes")?;
        lb.expect_global(
            &[
                (R::LB_REASON_PASS_IPIP_TOO_BIG, 3),
                (R::LB_REASON_TX_ICMP_FRAG_NEEDED, 1),
                (R::LB_REASON_TX_IPIP, 1),
            ],
            &[(XDP_PASS, 3), (XDP_TX, 2)],
        )?;
        Ok(())
    });
}

/// A SYN `src` -> `dst` through the router, with VLAN `tags` (outermost first).
fn tagged_syn(src: SocketAddrV4, dst: SocketAddrV4, tags: &[(u16, u16)]) -> Packet {
    let mut p = Packet::tcp(ROUTER_MAC, VETH0_MAC, src, dst, TCP_SYN);
    p.vlans = tags.to_vec();
    p
}

/// The program with firewall scope "all" (a block rule for BLOCKED/24) and a VIP of every mode:
/// NAT TCP (VIP) and UDP (VIP_UDP), IPIP and L2 DSR.
fn vlan_lb(net: Net) -> Result<(Lb, VipKey)> {
    let opts = LoadOptions {
        firewall_scope: Scope::All,
        ..Lb::options()
    };
    let mut lb = Lb::load(net, config(PORTS), &opts)?;
    let nat = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
    lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
    lb.add_vip_mode(IPIP_VIP, Protocol::Tcp, Mode::Ipip, &[(DSR1, 100)])?;
    lb.add_vip_mode(L2DSR_VIP, Protocol::Tcp, Mode::L2dsr, &[(DSR1, 100)])?;
    lb.block(ipnet::Ipv4Net::new(BLOCKED, 24)?)?;
    Ok((lb, nat))
}

#[test]
fn tagged_frames_pass_untouched() {
    bench(|_, net| {
        let (lb, _) = vlan_lb(net)?;
        // An untagged SYN opens a NAT flow, so that a tagged reply to its SNAT port would be a
        // tracked one.
        let client = sa(CLIENT, 47000);
        let run = lb.run(net.veth0, &client_syn(client, VIP).build())?;
        expect_action(&run, XDP_TX, "untagged SYN to the NAT VIP")?;
        let (snat, backend) = endpoints(&run.out)?;
        let backend_mac = neighbour_mac(*backend.ip());

        let synack = Packet::tcp(backend_mac, VETH0_MAC, backend, snat, TCP_SYN | TCP_ACK);
        let frag_needed = Packet::icmp(
            ROUTER_MAC,
            VETH0_MAC,
            ROUTER,
            *VIP.ip(),
            3,
            4,
            [0, 0, 0x05, 0x78],
            &Packet::tcp(VETH0_MAC, ROUTER_MAC, VIP, client, TCP_ACK).ip_bytes()[..28],
        );
        let big = no_df_data(sa(CLIENT, 47005), IPIP_VIP, 1400);
        let cases = [
            ("TCP SYN to the NAT VIP", client_syn(sa(CLIENT, 47001), VIP)),
            (
                "UDP to the NAT VIP",
                Packet::udp(CLIENT_MAC, VETH0_MAC, sa(CLIENT, 47002), VIP_UDP).with_payload(b"q"),
            ),
            ("NAT reply of a tracked flow", synack),
            ("ICMP error about a NAT flow", frag_needed),
            (
                "TCP SYN to the IPIP VIP",
                client_syn(sa(CLIENT, 47003), IPIP_VIP),
            ),
            (
                "TCP SYN to the L2 DSR VIP",
                client_syn(sa(CLIENT, 47004), L2DSR_VIP),
            ),
            ("DF-clear data to the IPIP VIP", big),
            (
                "ICMP echo to the VIP",
                Packet::icmp_echo(CLIENT_MAC, VETH0_MAC, CLIENT, *VIP.ip()),
            ),
        ];
        let tags: [&[(u16, u16)]; 3] = [
            &[(ETH_P_8021Q, 100)],
            &[(ETH_P_8021AD, 0x2007)],
            &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
        ];
        let mut passed = 0u64;
        for tag in tags {
            for (what, pkt) in &cases {
                let mut p = pkt.clone();
                p.vlans = tag.to_vec();
                let frame = p.build();
                let run = lb.run(net.veth0, &frame)?;
                expect_frame(&run, XDP_PASS, &frame, &format!("{what}, tags {tag:x?}"))?;
                passed += 1;
            }
            // A cut tag, and a tag with no whole IPv4 header behind it: passed as well.
            let frame = client_syn(sa(CLIENT, 47010), VIP)
                .with_vlan(tag[0].0, tag[0].1)
                .build();
            for cut in [14 + 2, 14 + 4 * tag.len() + 19] {
                let run = lb.run(net.veth0, &frame[..cut])?;
                let what = format!("tagged SYN cut to {cut} bytes, tags {tag:x?}");
                expect_frame(&run, XDP_PASS, &frame[..cut], &what)?;
                passed += 1;
            }
        }
        // Only the untagged SYN made a flow.
        lb.expect_flow_entries(1, "the untagged SYN's flow only")?;

        // Scope "all": a tagged frame from a blocked source is dropped like an untagged one.
        let mut dropped = 0u64;
        for tag in tags {
            let p = tagged_syn(sa(BLOCKED, 47020), VIP, tag);
            let run = lb.run(net.veth0, &p.build())?;
            expect_action(
                &run,
                XDP_DROP,
                &format!("tagged SYN from blocked {BLOCKED}, tags {tag:x?}"),
            )?;
            dropped += 1;
        }
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 1),
                (R::LB_REASON_PASS_VLAN, passed),
                (R::LB_REASON_DROP_FIREWALL, dropped),
            ],
            &[(XDP_TX, 1), (XDP_PASS, passed), (XDP_DROP, dropped)],
        )?;
        Ok(())
    });
}

/// Scope "vips": blocked means blocked for everything to a VIP address, tagged frames included;
/// a tagged frame from a blocked source to another address is the kernel's, untouched.
#[test]
fn tagged_frame_from_blocked_source_to_a_vip_address_is_dropped() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        lb.block(ipnet::Ipv4Net::new(BLOCKED, 24)?)?;
        let blocked = sa(BLOCKED, 47030);
        let mut other = 0u64;
        for tag in [
            &[(ETH_P_8021Q, 100)][..],
            &[(ETH_P_8021AD, 10), (ETH_P_8021Q, 20)],
        ] {
            let run = lb.run(net.veth0, &tagged_syn(blocked, VIP, tag).build())?;
            expect_action(
                &run,
                XDP_DROP,
                &format!("tagged SYN from blocked {BLOCKED} to the VIP, tags {tag:x?}"),
            )?;
            let frame = tagged_syn(blocked, sa(LB_ADDR, 22), tag).build();
            let run = lb.run(net.veth0, &frame)?;
            expect_frame(
                &run,
                XDP_PASS,
                &frame,
                &format!("tagged SYN from blocked {BLOCKED} to the host, tags {tag:x?}"),
            )?;
            other += 1;
        }
        lb.expect_global(
            &[
                (R::LB_REASON_DROP_FIREWALL, 2),
                (R::LB_REASON_PASS_VLAN, other),
            ],
            &[(XDP_DROP, 2), (XDP_PASS, other)],
        )
    });
}

/// The SYNs of the tagged cases, untagged, are forwarded: what the tagged test sees passed is
/// the tag's doing.
#[test]
fn untagged_counterparts_are_forwarded() {
    bench(|_, net| {
        let (lb, _) = vlan_lb(net)?;
        let client = sa(CLIENT, 47100);
        for (what, vip) in [("NAT", VIP), ("IPIP", IPIP_VIP), ("L2 DSR", L2DSR_VIP)] {
            let run = lb.run(net.veth0, &client_syn(client, vip).build())?;
            expect_action(&run, XDP_TX, &format!("untagged SYN to the {what} VIP"))
                .context("the tagged cases of tagged_frames_pass_untouched would prove nothing")?;
        }
        Ok(())
    });
}
