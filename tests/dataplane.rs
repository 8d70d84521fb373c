//! Data-plane tests: exact frames through the loaded XDP program (BPF_PROG_TEST_RUN), one netns per test.
//!
//! Every test builds the bench of `common::lab` (veths, addresses, static neighbours) in a fresh
//! namespace, loads the program, configures it the way lbd does (`write_config` + `Reconciler`),
//! runs hand-built frames through it and compares the output byte for byte with the frame it
//! should be, built from scratch with the NATed fields (so every checksum is recomputed by
//! `xdplb_testkit::packet`, never copied from the program's output).

mod common;

use xdplb::dataplane::maps::FlowTable;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::{Counters, Dataplane};
use xdplb::maglev;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::state::{Protocol, VipKey};

use common::expect::*;
use common::lab::*;
use xdplb_testkit::netns::{current_netns, NetNs};
use xdplb_testkit::packet::*;

/// An LB with the TCP VIP 10.9.9.9:80 -> 10.1.0.2:8080, 10.1.0.3:8080 and SNAT ports 20000..=20999.
fn tcp_lb(net: Net) -> Result<(Lb, VipKey)> {
    let mut lb = Lb::new(net, config(PORTS))?;
    let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
    Ok((lb, vip))
}

/// An LB with the UDP VIP 10.9.9.9:53 -> 10.1.0.2:5353, 10.1.0.3:5353.
fn udp_lb(net: Net) -> Result<(Lb, VipKey)> {
    let mut lb = Lb::new(net, config(PORTS))?;
    let vip = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100), (BE2_UDP, 100)])?;
    Ok((lb, vip))
}

/// The client's next segment of the same connection: ACK with 19 bytes of data.
fn ack(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    data_segment(neighbour_mac(*client.ip()), client, vip)
}

/// A DNS-looking UDP query to `vip`, as received on veth0.
fn query(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::udp(neighbour_mac(*client.ip()), VETH0_MAC, client, vip).with_payload(
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x00\x00\x01\x00\x01",
    )
}

/// The (source, destination) of a TCP/UDP packet description.
fn ends(p: &Packet) -> (SocketAddrV4, SocketAddrV4) {
    match p.l4 {
        Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport, .. } => {
            (sa(p.src, sport), sa(p.dst, dport))
        }
        Transport::Icmp { .. } => panic!("ICMP has no ports"),
    }
}

/// A flow the data plane tracks, as the tests predicted it.
#[derive(Debug, Clone, Copy)]
struct Flow {
    client: SocketAddrV4,
    vip: SocketAddrV4,
    backend: SocketAddrV4,
    backend_id: u32,
    /// SNAT address and port towards the backend.
    snat: SocketAddrV4,
}

/// Checks the verdict, that the output is exactly `want` (built from scratch) and, independently,
/// that the output's checksums are right.
fn expect_packet(run: &Run, action: u32, want: &Packet, what: &str) -> Result<()> {
    expect_frame(run, action, &want.build(), what)?;
    let zero_udp = matches!(
        want.l4,
        Transport::Udp {
            zero_checksum: true,
            ..
        }
    );
    verify_checksums(&run.out, zero_udp).with_context(|| format!("{what}: checksums of the output"))
}

/// Checks that a frame the data plane has no business with is passed on byte for byte.
fn expect_untouched(lb: &Lb, ingress: u32, frame: &[u8], what: &str) -> Result<()> {
    let run = lb.run(ingress, frame)?;
    expect_frame(&run, XDP_PASS, frame, what)
}

/// Runs the first packet of a new client flow and checks it leaves NATed towards the backend and
/// SNAT port the program must choose (Maglev ring slot of the flow hash, first free port candidate),
/// with the MACs of the egress interface (veth0) and of the backend's neighbour entry.
fn new_flow(
    lb: &mut Lb,
    vip: &VipKey,
    pkt: &Packet,
    ingress: u32,
    action: u32,
) -> Result<(Flow, Run)> {
    let (client, to) = ends(pkt);
    ensure!(to == vip.addr, "packet is not addressed to {vip}");
    let pick = lb.pick(vip, client)?;
    let port = lb
        .claim_port(pick.hash, pick.backend)
        .context("the test expects a free SNAT port")?;
    let flow = Flow {
        client,
        vip: vip.addr,
        backend: pick.backend,
        backend_id: pick.backend_id,
        snat: sa(LB_ADDR, port),
    };
    let run = lb.run(ingress, &pkt.build())?;
    let want = pkt.natted(
        VETH0_MAC,
        neighbour_mac(*pick.backend.ip()),
        flow.snat,
        flow.backend,
    );
    expect_packet(
        &run,
        action,
        &want,
        &format!(
            "new flow {client} -> {vip} (expected via {} from port {port})",
            flow.backend
        ),
    )?;
    Ok((flow, run))
}

/// [`new_flow`] of a packet received on veth0 that must leave with XDP_TX.
fn new_tx_flow(lb: &mut Lb, vip: &VipKey, pkt: &Packet) -> Result<(Flow, Run)> {
    let ingress = lb.net.veth0;
    new_flow(lb, vip, pkt, ingress, XDP_TX)
}

/// Runs a later client packet of `flow` and checks it is NATed exactly like the first one.
fn flow_packet(lb: &Lb, flow: &Flow, pkt: &Packet, ingress: u32, action: u32) -> Result<Run> {
    let run = lb.run(ingress, &pkt.build())?;
    let want = pkt.natted(
        VETH0_MAC,
        neighbour_mac(*flow.backend.ip()),
        flow.snat,
        flow.backend,
    );
    expect_packet(
        &run,
        action,
        &want,
        &format!("packet of the tracked flow {} -> {}", flow.client, flow.vip),
    )?;
    Ok(run)
}

/// [`flow_packet`] received on veth0 that must leave with XDP_TX.
fn tx_flow_packet(lb: &Lb, flow: &Flow, pkt: &Packet) -> Result<Run> {
    flow_packet(lb, flow, pkt, lb.net.veth0, XDP_TX)
}

/// The backend's reply (SYN-ACK or a UDP answer) to the SNAT address of `flow`, received on veth0.
fn reply(flow: &Flow, proto: Protocol) -> Packet {
    let mac = neighbour_mac(*flow.backend.ip());
    match proto {
        Protocol::Tcp => Packet::tcp(mac, VETH0_MAC, flow.backend, flow.snat, TCP_SYN | TCP_ACK)
            .with_seq_ack(0x7000_0000, 0x1234_567c),
        Protocol::Udp => Packet::udp(mac, VETH0_MAC, flow.backend, flow.snat)
            .with_payload(b"\x12\x34\x81\x80answer"),
    }
}

/// Runs a backend reply and checks it leaves restored (VIP -> client) towards the client's MAC,
/// from the MAC of `egress_mac` (the client side interface).
fn expect_restored(
    lb: &Lb,
    flow: &Flow,
    pkt: &Packet,
    egress_mac: Mac,
    action: u32,
) -> Result<Run> {
    let run = lb.run(lb.net.veth0, &pkt.build())?;
    let want = pkt.natted(
        egress_mac,
        neighbour_mac(*flow.client.ip()),
        flow.vip,
        flow.client,
    );
    expect_packet(
        &run,
        action,
        &want,
        &format!(
            "reply {} -> {} of the flow of {}",
            flow.backend, flow.snat, flow.client
        ),
    )?;
    Ok(run)
}

fn counters(packets: u64, bytes: u64, new_flows: u64) -> Counters {
    Counters {
        packets,
        bytes,
        new_flows,
    }
}

#[test]
fn checksum_helper_matches_rfc1071() {
    // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert_eq!(
        fold(ones_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])),
        0xddf2
    );
    // A well-known IPv4 header (192.168.0.1 -> 192.168.0.199) has checksum 0xb861.
    let header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&header), 0xb861);
    // An odd length pads with a zero byte.
    assert_eq!(ones_sum(&[0xab]), 0xab00);
    // A built frame verifies, and any single flipped bit in a checksummed byte is caught.
    let frame = client_syn(sa(CLIENT, 1), VIP).build();
    verify_checksums(&frame, false).expect("a built frame has correct checksums");
    for i in 14..frame.len() {
        let mut bad = frame.clone();
        bad[i] ^= 0x01;
        if layout(&bad).is_ok() {
            assert!(
                verify_checksums(&bad, false).is_err(),
                "flipping a bit of byte {i} went unnoticed"
            );
        }
    }
}

#[test]
fn test_netns_is_private_and_released() {
    let host = current_netns().expect("host netns");
    let (inode, path) = NetNs::within("private", |ns| {
        let inode = ns.inode()?;
        ensure!(
            inode != host && current_netns()? == inode,
            "the thread is not in a new namespace"
        );
        let net = setup_net(ns)?;
        ensure!(net.veth0 != 0 && net.veth2 != 0, "no ifindex");
        Ok((inode, ns.path()))
    })
    .expect("running in a test namespace");
    assert_ne!(inode, host);
    assert_eq!(
        current_netns().expect("host netns"),
        host,
        "the test thread did not come back to its namespace"
    );
    assert!(
        !path.exists(),
        "the namespace {} was not removed",
        path.display()
    );
    // The bench's devices never appeared in this (the host's) namespace.
    let host_links = std::process::Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip -br link");
    let host_links = String::from_utf8_lossy(&host_links.stdout);
    assert!(
        !host_links.contains(&mac_str(&VETH0_MAC)),
        "the bench's veth0 is visible in the host namespace: {host_links}"
    );
}

#[test]
fn syn_to_vip_is_natted() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let client = sa(CLIENT, 12345);
        let pkt = client_syn(client, VIP);
        let frame = pkt.build();
        let (flow, run) = new_tx_flow(&mut lb, &vip, &pkt)?;

        // The same facts new_flow checked through the whole expected frame, spelled out.
        let out = &run.out;
        ensure!(
            out[0..6] == neighbour_mac(*flow.backend.ip()),
            "dst MAC is not the backend's neighbour MAC"
        );
        ensure!(out[6..12] == VETH0_MAC, "src MAC is not veth0's MAC");
        let (src, dst) = endpoints(out)?;
        ensure!(
            *src.ip() == LB_ADDR,
            "source address {src} is not the SNAT address"
        );
        ensure!(
            dst == flow.backend && (dst == BE1 || dst == BE2) && dst.port() == 8080,
            "destination {dst}"
        );
        ensure!(
            (PORTS.0..=PORTS.1).contains(&src.port()),
            "SNAT port {} outside {PORTS:?}",
            src.port()
        );
        ensure!(
            out[22] == 60 && get_be16(out, 18) == 0x1c46,
            "TTL {} (sent 61: one less, as a router), IP id {:#06x} (unchanged 0x1c46)",
            out[22],
            get_be16(out, 18)
        );
        ensure!(
            out[34 + 4..34 + 16] == frame[34 + 4..34 + 16],
            "seq/ack/flags/window changed"
        );
        ensure!(
            out[34 + 18..] == frame[34 + 18..],
            "urgent pointer, options or payload changed"
        );
        verify_checksums(out, false)?;

        let other = if flow.backend == BE1 { BE2 } else { BE1 };
        let one = counters(1, frame.len() as u64, 1);
        ensure!(
            lb.vip_counters(&vip)? == one,
            "vip counters {:?}",
            lb.vip_counters(&vip)?
        );
        ensure!(
            lb.backend_counters(&vip, flow.backend)? == one,
            "backend counters {:?}",
            lb.backend_counters(&vip, flow.backend)?
        );
        ensure!(
            lb.backend_counters(&vip, other)? == Counters::default(),
            "the other backend counted something"
        );
        ensure!(
            lb.maps().backend_counters(flow.backend_id)? == one,
            "counters by predicted backend id"
        );
        lb.expect_global(&[(R::LB_REASON_TX_NAT_FORWARD, 1)], &[(XDP_TX, 1)])?;
        lb.expect_flow_entries(1, "after the flow")?;
        Ok(())
    });
}

#[test]
fn established_flow_keeps_backend_and_port() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let client = sa(CLIENT, 12345);
        let first = client_syn(client, VIP);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &first)?;
        let second = ack(client, VIP);
        tx_flow_packet(&lb, &flow, &second)?;
        let bytes = (first.build().len() + second.build().len()) as u64;
        ensure!(
            lb.vip_counters(&vip)? == counters(2, bytes, 1),
            "vip counters {:?}",
            lb.vip_counters(&vip)?
        );
        ensure!(
            lb.backend_counters(&vip, flow.backend)? == counters(2, bytes, 1),
            "backend counters"
        );
        lb.expect_flow_entries(1, "after the flow")?;

        // Drain the flow's backend: new flows avoid it, the established flow stays (conntrack, not
        // the ring, decides).
        lb.set_weight(&vip, flow.backend, 0)?;
        let third = ack(client, VIP)
            .with_seq_ack(0x1234_5690, 0x7000_0100)
            .with_payload(b"more");
        tx_flow_packet(&lb, &flow, &third)?;
        let (other, _) = new_tx_flow(&mut lb, &vip, &client_syn(sa(CLIENT, 12346), VIP))?;
        ensure!(
            other.backend != flow.backend,
            "a new flow went to the drained backend {}",
            flow.backend
        );
        ensure!(
            lb.backend_counters(&vip, flow.backend)?.new_flows == 1,
            "drained backend new_flows"
        );
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 2 && lb.vip_counters(&vip)?.packets == 4,
            "vip counters"
        );
        lb.expect_global(&[(R::LB_REASON_TX_NAT_FORWARD, 4)], &[(XDP_TX, 4)])?;
        Ok(())
    });
}

#[test]
fn reply_is_restored() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let client = sa(CLIENT, 12345);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &client_syn(client, VIP))?;
        let synack = reply(&flow, Protocol::Tcp);
        let run = expect_restored(&lb, &flow, &synack, VETH0_MAC, XDP_TX)?;
        let (src, dst) = endpoints(&run.out)?;
        ensure!(
            src == VIP && dst == client,
            "reply restored as {src} -> {dst}"
        );
        ensure!(
            run.out[0..6] == CLIENT_MAC,
            "reply not sent to the client's MAC"
        );
        let bc = lb.backend_counters(&vip, flow.backend)?;
        ensure!(
            bc.packets == 2 && bc.new_flows == 1,
            "backend counters {bc:?}"
        );
        ensure!(
            lb.vip_counters(&vip)?.packets == 1,
            "the reply was counted on the VIP"
        );

        // Replies that no conntrack entry covers are left to the kernel, untouched.
        let other_port = if flow.snat.port() == PORTS.1 {
            PORTS.1 - 1
        } else {
            flow.snat.port() + 1
        };
        let other_backend = if flow.backend == BE1 { BE2 } else { BE1 };
        let stray = [
            (
                Flow {
                    snat: sa(LB_ADDR, other_port),
                    ..flow
                },
                Protocol::Tcp,
                "to an SNAT port without a flow",
            ),
            (
                Flow {
                    backend: other_backend,
                    ..flow
                },
                Protocol::Tcp,
                "from the other backend",
            ),
            (flow, Protocol::Udp, "UDP to the TCP flow's port"),
        ];
        for (f, proto, what) in stray {
            expect_untouched(&lb, net.veth0, &reply(&f, proto).build(), what)?;
        }
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 1),
                (R::LB_REASON_TX_NAT_REPLY, 1),
                (R::LB_REASON_PASS_NOT_TRACKED, 3),
            ],
            &[(XDP_TX, 2), (XDP_PASS, 3)],
        )?;
        Ok(())
    });
}

#[test]
fn udp_zero_checksum_stays_zero() {
    bench(|_, net| {
        let (mut lb, vip) = udp_lb(net)?;
        let q = query(sa(CLIENT, 5000), VIP_UDP).with_zero_udp_checksum();
        ensure!(
            get_be16(&q.build(), 34 + 6) == 0,
            "test packet should carry no UDP checksum"
        );
        let (flow, run) = new_tx_flow(&mut lb, &vip, &q)?;
        ensure!(
            get_be16(&run.out, 34 + 6) == 0,
            "a zero UDP checksum became {:#06x}",
            get_be16(&run.out, 34 + 6)
        );
        ensure!(
            flow.backend.port() == 5353,
            "backend port {}",
            flow.backend.port()
        );
        let answer = reply(&flow, Protocol::Udp).with_zero_udp_checksum();
        let run = expect_restored(&lb, &flow, &answer, VETH0_MAC, XDP_TX)?;
        ensure!(
            get_be16(&run.out, 34 + 6) == 0,
            "a zero UDP checksum of a reply became {:#06x}",
            get_be16(&run.out, 34 + 6)
        );
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 1),
                (R::LB_REASON_TX_NAT_REPLY, 1),
            ],
            &[(XDP_TX, 2)],
        )?;
        Ok(())
    });
}

#[test]
fn udp_checksum_updated() {
    bench(|_, net| {
        let (mut lb, vip) = udp_lb(net)?;
        let (flow, run) = new_tx_flow(&mut lb, &vip, &query(sa(CLIENT, 5000), VIP_UDP))?;
        ensure!(
            get_be16(&run.out, 34 + 6) != 0,
            "UDP checksum dropped to zero"
        );
        expect_restored(&lb, &flow, &reply(&flow, Protocol::Udp), VETH0_MAC, XDP_TX)?;

        // A datagram whose NATed checksum computes to 0 must leave with 0xffff (RFC 768): make the
        // first payload word cancel the one's-complement sum of the NATed datagram.
        let client = sa(CLIENT, 5001);
        let pick = lb.pick(&vip, client)?;
        let port = lb
            .claim_port(pick.hash, pick.backend)
            .context("free port")?;
        let mut q = query(client, VIP_UDP);
        q.payload[0..2].copy_from_slice(&[0, 0]);
        let natted = q.natted(
            VETH0_MAC,
            neighbour_mac(*pick.backend.ip()),
            sa(LB_ADDR, port),
            pick.backend,
        );
        let f = natted.build();
        let lay = layout(&f)?;
        let mut seg = f[lay.l4..].to_vec();
        set_be16(&mut seg, 6, 0);
        let c = transport_checksum(LB_ADDR, *pick.backend.ip(), IPPROTO_UDP, &seg);
        q.payload[0..2].copy_from_slice(&c.to_be_bytes());
        let natted = q.natted(
            VETH0_MAC,
            neighbour_mac(*pick.backend.ip()),
            sa(LB_ADDR, port),
            pick.backend,
        );
        let mut seg = natted.build()[lay.l4..].to_vec();
        set_be16(&mut seg, 6, 0);
        ensure!(
            transport_checksum(LB_ADDR, *pick.backend.ip(), IPPROTO_UDP, &seg) == 0,
            "test construction: NATed checksum should compute to 0"
        );
        ensure!(
            get_be16(&q.build(), 34 + 6) != 0,
            "test construction: the query must carry a checksum"
        );
        let run = lb.run(net.veth0, &q.build())?;
        expect_packet(
            &run,
            XDP_TX,
            &natted,
            "datagram whose NATed checksum computes to 0",
        )?;
        ensure!(
            get_be16(&run.out, 34 + 6) == 0xffff,
            "computed UDP checksum 0 sent as {:#06x}, not 0xffff",
            get_be16(&run.out, 34 + 6)
        );
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 2),
                (R::LB_REASON_TX_NAT_REPLY, 1),
            ],
            &[(XDP_TX, 3)],
        )?;
        Ok(())
    });
}

#[test]
fn same_client_port_two_clients() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let a = sa(CLIENT, 40000);
        let b = sa(CLIENT_B, 40000);
        let (fa, _) = new_tx_flow(&mut lb, &vip, &client_syn(a, VIP))?;
        let (fb, _) = new_tx_flow(&mut lb, &vip, &client_syn(b, VIP))?;
        lb.expect_flow_entries(2, "two clients, one port")?;
        if fa.backend == fb.backend {
            ensure!(
                fa.snat.port() != fb.snat.port(),
                "two flows share backend {} and SNAT port {}",
                fa.backend,
                fa.snat.port()
            );
        }
        // Later packets keep their own translation; replies find their own client.
        tx_flow_packet(&lb, &fb, &ack(b, VIP))?;
        tx_flow_packet(&lb, &fa, &ack(a, VIP))?;
        expect_restored(&lb, &fb, &reply(&fb, Protocol::Tcp), VETH0_MAC, XDP_TX)?;
        expect_restored(&lb, &fa, &reply(&fa, Protocol::Tcp), VETH0_MAC, XDP_TX)?;

        // Force the clash: a one-backend VIP, and a second client whose first SNAT port candidate is
        // the port the first client got. It must get another port.
        let vip2 = lb.add_vip(
            sa(Ipv4Addr::new(10, 9, 9, 10), 80),
            Protocol::Tcp,
            &[(BE1, 100)],
        )?;
        let (fa2, _) = new_tx_flow(&mut lb, &vip2, &client_syn(a, vip2.addr))?;
        let clash = (1..=u16::MAX)
            .map(|p| sa(CLIENT_B, p))
            .find(|c| {
                let h = maglev::flow_hash_v4(
                    *c.ip(),
                    *vip2.addr.ip(),
                    c.port(),
                    vip2.addr.port(),
                    Protocol::Tcp.number(),
                );
                lb.candidate_port(h, 0) == fa2.snat.port()
            })
            .context("no client port clashes")?;
        let (fb2, _) = new_tx_flow(&mut lb, &vip2, &client_syn(clash, vip2.addr))?;
        ensure!(
            fa2.backend == fb2.backend && fa2.snat != fb2.snat,
            "clashing flows {fa2:?} and {fb2:?}"
        );
        expect_restored(&lb, &fb2, &reply(&fb2, Protocol::Tcp), VETH0_MAC, XDP_TX)?;
        expect_restored(&lb, &fa2, &reply(&fa2, Protocol::Tcp), VETH0_MAC, XDP_TX)?;
        lb.expect_flow_entries(4, "four flows")?;
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 6),
                (R::LB_REASON_TX_NAT_REPLY, 4),
            ],
            &[(XDP_TX, 10)],
        )?;
        Ok(())
    });
}

#[test]
fn non_vip_passes_unchanged() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let client = sa(CLIENT, 12345);
        let not_vip = [
            (
                Packet::tcp(CLIENT_MAC, VETH0_MAC, client, sa(LB_ADDR, 22), TCP_SYN).build(),
                "TCP to the LB's own port 22",
            ),
            (
                Packet::tcp(CLIENT_MAC, VETH0_MAC, client, sa(*VIP.ip(), 81), TCP_SYN).build(),
                "TCP to the VIP address, other port",
            ),
            (
                Packet::tcp(
                    CLIENT_MAC,
                    VETH0_MAC,
                    client,
                    sa(Ipv4Addr::new(10, 9, 9, 8), 80),
                    TCP_SYN,
                )
                .build(),
                "TCP to another address",
            ),
            (
                Packet::udp(CLIENT_MAC, VETH0_MAC, client, VIP).build(),
                "UDP to the TCP VIP's port",
            ),
            (
                Packet::tcp(CLIENT_MAC, VETH0_MAC, client, VIP_UDP, TCP_SYN).build(),
                "TCP to the UDP VIP's port",
            ),
            (
                Packet::icmp_echo(CLIENT_MAC, VETH0_MAC, CLIENT, *VIP.ip()).build(),
                "ICMP echo to the VIP address",
            ),
        ];
        let not_ip = [
            (arp_request(CLIENT_MAC, CLIENT, LB_ADDR), "ARP"),
            (ipv6_tcp_syn(CLIENT_MAC, VETH0_MAC), "IPv6 TCP SYN"),
        ];
        for (frame, what) in not_vip.iter().chain(&not_ip) {
            expect_untouched(&lb, net.veth0, frame, what)?;
        }
        // Into the SNAT port range of the SNAT address, but no flow: not tracked.
        let stray = Packet::tcp(CLIENT_MAC, VETH0_MAC, client, sa(LB_ADDR, 20500), TCP_SYN).build();
        expect_untouched(&lb, net.veth0, &stray, "TCP to an unused SNAT port")?;
        lb.expect_flow_entries(0, "packets that are not to a VIP")?;
        ensure!(
            lb.vip_counters(&vip)? == Counters::default(),
            "the VIP counted something"
        );
        lb.expect_global(
            &[
                (R::LB_REASON_PASS_NOT_VIP, not_vip.len() as u64),
                (R::LB_REASON_PASS_NOT_IP, 2),
                (R::LB_REASON_PASS_NOT_TRACKED, 1),
            ],
            &[(XDP_PASS, not_vip.len() as u64 + 3)],
        )?;
        Ok(())
    });
}

/// Runs a malformed `frame` and checks it is not forwarded: PASS (untouched) or DROP only. The
/// kernel refuses test runs of less than an Ethernet header.
fn never_forwarded(lb: &Lb, frame: &[u8], what: &str) -> Result<()> {
    let run = match lb.run(lb.net.veth0, frame) {
        Ok(run) => run,
        Err(_) if frame.len() < 14 => return Ok(()),
        Err(e) => return Err(e.context(what.to_string())),
    };
    if run.action == XDP_TX || run.action == XDP_REDIRECT {
        let sums = verify_checksums(&run.out, false)
            .err()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        anyhow::bail!("{what}: forwarded with {}{sums}", action_name(run.action));
    }
    ensure!(
        run.action == XDP_PASS || run.action == XDP_DROP,
        "{what}: verdict {}",
        action_name(run.action)
    );
    if run.action == XDP_PASS {
        let d = diff(&run.out, frame);
        ensure!(d.is_empty(), "{what}: passed to the kernel modified: {d}");
    }
    Ok(())
}

#[test]
fn truncated_packets_never_forwarded() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let udp_vip = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let plain = client_syn(sa(CLIENT, 23456), VIP);
        let tagged = client_syn(sa(CLIENT, 23457), VIP).with_vlan(ETH_P_8021Q, 100);
        let optioned = client_syn(sa(CLIENT, 23458), VIP).with_ip_options(&[1, 1, 1, 0]);
        let udp = query(sa(CLIENT, 23459), VIP_UDP);

        // Every prefix of each valid frame.
        for (pkt, name) in [
            (&plain, "SYN"),
            (&tagged, "VLAN SYN"),
            (&optioned, "SYN with IP options"),
            (&udp, "UDP query"),
        ] {
            let frame = pkt.build();
            for len in 0..frame.len() {
                never_forwarded(
                    &lb,
                    &frame[..len],
                    &format!("{name} cut to {len} of {} bytes", frame.len()),
                )?;
            }
        }

        // Header fields that lie. The IP checksum is fixed up so that the lie is the only defect.
        let l3 = 14;
        let l4 = 34;
        let base = plain.build();
        let tot_len = get_be16(&base, l3 + 2);
        let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = base.clone();
            f(&mut b);
            refresh_ip_checksum(&mut b, l3);
            b
        };
        let cases: Vec<(Vec<u8>, String)> = vec![
            (
                mutate(&|b| set_be16(b, l3 + 2, tot_len + 1)),
                "tot_len one byte beyond the frame".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 2, tot_len + 1000)),
                "tot_len far beyond the frame".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 2, 19)),
                "tot_len below the IP header".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 2, 20 + 20)),
                "tot_len cutting the TCP options".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 2, 20 + 10)),
                "tot_len cutting the TCP header".into(),
            ),
            (mutate(&|b| b[l3] = 0x44), "ihl 4".into()),
            (mutate(&|b| b[l3] = 0x40), "ihl 0".into()),
            (mutate(&|b| b[l3] = 0x4f), "ihl 15, beyond tot_len".into()),
            (
                mutate(&|b| b[l3] = 0x65),
                "IP version 6 in an IPv4 frame".into(),
            ),
            (mutate(&|b| b[l4 + 12] = 0x40), "TCP doff 4".into()),
            (mutate(&|b| b[l4 + 12] = 0x00), "TCP doff 0".into()),
            (
                mutate(&|b| b[l4 + 12] = 0xf0),
                "TCP doff 15, beyond tot_len".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 6, IP_MF)),
                "first fragment (MF)".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 6, 1)),
                "last fragment (offset 8)".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 6, IP_MF | 185)),
                "middle fragment".into(),
            ),
            (
                mutate(&|b| set_be16(b, l3 + 6, IP_DF | 1)),
                "DF with an offset".into(),
            ),
        ];
        for (frame, what) in &cases {
            never_forwarded(&lb, frame, what)?;
        }
        let ubase = udp.build();
        for (set, what) in [
            ((l3 + 2, 20 + 4), "UDP cut by tot_len"),
            ((l3 + 6, IP_MF), "UDP first fragment"),
            ((l3 + 6, 3), "UDP later fragment"),
        ] {
            let mut b = ubase.clone();
            set_be16(&mut b, set.0, set.1);
            refresh_ip_checksum(&mut b, l3);
            never_forwarded(&lb, &b, what)?;
        }
        lb.expect_flow_entries(0, "malformed packets")?;
        let g = lb.global()?;
        ensure!(
            g.verdicts[XDP_TX as usize] == 0 && g.verdicts[XDP_REDIRECT as usize] == 0,
            "verdict counters {:?}",
            g.verdicts
        );
        ensure!(
            lb.vip_counters(&vip)? == Counters::default(),
            "the VIP counted malformed packets"
        );

        // Controls: the whole frames are forwarded, correctly (a tagged one is the kernel's,
        // untouched: tests/tunnel.rs); Ethernet padding after tot_len is fine.
        for pkt in [&plain, &optioned] {
            new_flow(&mut lb, &vip, pkt, net.veth0, XDP_TX)?;
        }
        expect_untouched(&lb, net.veth0, &tagged.build(), "whole VLAN SYN")?;
        new_tx_flow(&mut lb, &udp_vip, &udp)?;
        let padded = client_syn(sa(CLIENT, 23460), VIP);
        let pick = lb.pick(&vip, sa(CLIENT, 23460))?;
        let port = lb
            .claim_port(pick.hash, pick.backend)
            .context("free port")?;
        let mut frame = padded.build();
        frame.extend_from_slice(&[0; 7]);
        let run = lb.run(net.veth0, &frame)?;
        let mut want = padded
            .natted(
                VETH0_MAC,
                neighbour_mac(*pick.backend.ip()),
                sa(LB_ADDR, port),
                pick.backend,
            )
            .build();
        want.extend_from_slice(&[0; 7]);
        expect_frame(&run, XDP_TX, &want, "SYN with Ethernet padding")?;
        verify_checksums(&run.out, false)?;
        Ok(())
    });
}

#[test]
fn ip_options_are_kept() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let nops = [1, 1, 1, 0];
        let (flow, run) = new_tx_flow(
            &mut lb,
            &vip,
            &client_syn(sa(CLIENT, 12345), VIP).with_ip_options(&nops),
        )?;
        ensure!(run.out[14] == 0x46, "ihl changed: {:#04x}", run.out[14]);
        ensure!(
            run.out[34..38] == nops,
            "IP options changed: {:02x?}",
            &run.out[34..38]
        );
        ensure!(
            get_be16(&run.out, 38) == flow.snat.port()
                && get_be16(&run.out, 40) == flow.backend.port(),
            "TCP ports not at offset 38"
        );
        // The longest header (ihl 15, 40 option bytes: a timestamp option and NOPs), both ways.
        let mut long = vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        long.resize(40, 1);
        let (flow, run) = new_tx_flow(
            &mut lb,
            &vip,
            &client_syn(sa(CLIENT, 12346), VIP).with_ip_options(&long),
        )?;
        ensure!(
            run.out[34..74] == long[..],
            "40 bytes of IP options changed"
        );
        ensure!(
            get_be16(&run.out, 74) == flow.snat.port(),
            "TCP source port not at offset 74"
        );
        expect_restored(
            &lb,
            &flow,
            &reply(&flow, Protocol::Tcp).with_ip_options(&long),
            VETH0_MAC,
            XDP_TX,
        )?;
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 2),
                (R::LB_REASON_TX_NAT_REPLY, 1),
            ],
            &[(XDP_TX, 3)],
        )?;
        Ok(())
    });
}

#[test]
fn no_backend_drops() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let empty = lb.add_vip(sa(Ipv4Addr::new(10, 9, 9, 20), 80), Protocol::Tcp, &[])?;
        let drained = lb.add_vip(
            sa(Ipv4Addr::new(10, 9, 9, 21), 80),
            Protocol::Tcp,
            &[(BE1, 0), (BE2, 0)],
        )?;
        for vip in [&empty, &drained] {
            let run = lb.run(net.veth0, &client_syn(sa(CLIENT, 1000), vip.addr).build())?;
            ensure!(
                run.action == XDP_DROP,
                "SYN to {vip} without usable backend: {}",
                action_name(run.action)
            );
        }
        lb.expect_flow_entries(0, "dropped flows")?;
        lb.expect_global(&[(R::LB_REASON_DROP_NO_BACKEND, 2)], &[(XDP_DROP, 2)])?;

        // Draining the last backend drops new flows only.
        let vip = lb.add_vip(
            sa(Ipv4Addr::new(10, 9, 9, 22), 80),
            Protocol::Tcp,
            &[(BE2, 100)],
        )?;
        let client = sa(CLIENT, 1001);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &client_syn(client, vip.addr))?;
        lb.set_weight(&vip, BE2, 0)?;
        tx_flow_packet(&lb, &flow, &ack(client, vip.addr))?;
        let run = lb.run(net.veth0, &client_syn(sa(CLIENT, 1002), vip.addr).build())?;
        ensure!(
            run.action == XDP_DROP,
            "new flow to a drained VIP: {}",
            action_name(run.action)
        );
        lb.expect_global(
            &[
                (R::LB_REASON_DROP_NO_BACKEND, 3),
                (R::LB_REASON_TX_NAT_FORWARD, 2),
            ],
            &[(XDP_DROP, 3), (XDP_TX, 2)],
        )?;
        Ok(())
    });
}

#[test]
fn two_arm_redirects() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let far_syn = |port: u16| {
            Packet::tcp(
                FAR_CLIENT_MAC,
                VETH2_MAC,
                sa(FAR_CLIENT, port),
                VIP,
                TCP_SYN,
            )
            .with_payload(b"syn")
        };
        // Egress veth0 is not a tx port yet: bpf_redirect_map fails. The rewritten packet is
        // dropped and counted (the kernel would drop it as a martian: its source is ours).
        let first = far_syn(33333);
        let pick = lb.pick(&vip, sa(FAR_CLIENT, 33333))?;
        let port = lb
            .claim_port(pick.hash, pick.backend)
            .context("free port")?;
        let run = lb.run(net.veth2, &first.build())?;
        ensure!(
            run.action == XDP_DROP,
            "egress not in tx_ports: {}, expected XDP_DROP",
            action_name(run.action)
        );
        // Once it is, the retransmitted SYN of that flow and a new flow are redirected.
        lb.maps_mut().add_tx_port(net.veth0)?;
        let flow = Flow {
            client: sa(FAR_CLIENT, 33333),
            vip: VIP,
            backend: pick.backend,
            backend_id: pick.backend_id,
            snat: sa(LB_ADDR, port),
        };
        let run = flow_packet(&lb, &flow, &first, net.veth2, XDP_REDIRECT)?;
        ensure!(
            run.out[6..12] == VETH0_MAC && run.out[0..6] == neighbour_mac(*flow.backend.ip()),
            "MACs of the redirected frame"
        );
        let (flow2, _) = new_flow(&mut lb, &vip, &far_syn(33334), net.veth2, XDP_REDIRECT)?;
        // The replies go back out of veth2: redirects too, once veth2 is a tx port.
        lb.maps_mut().add_tx_port(net.veth2)?;
        for f in [&flow, &flow2] {
            let run = expect_restored(&lb, f, &reply(f, Protocol::Tcp), VETH2_MAC, XDP_REDIRECT)?;
            ensure!(
                run.out[0..6] == FAR_CLIENT_MAC && run.out[6..12] == VETH2_MAC,
                "MACs of the redirected reply"
            );
        }
        let g = lb.global()?;
        ensure!(
            g.verdicts[XDP_REDIRECT as usize] == 4 && g.verdicts[XDP_DROP as usize] == 1,
            "verdict counters {:?}",
            g.verdicts
        );
        ensure!(
            g.reasons[R::LB_REASON_TX_NAT_REPLY.0 as usize] == 2
                && g.reasons[R::LB_REASON_DROP_EGRESS_NOT_ATTACHED.0 as usize] == 1
                && g.reasons[R::LB_REASON_PASS_EGRESS_NOT_ATTACHED.0 as usize] == 0,
            "reason counters {:?}",
            g.reasons
        );
        Ok(())
    });
}

#[test]
fn port_range_exhaustion_is_counted() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config((20000, 20000)))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let a = sa(CLIENT, 1111);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &client_syn(a, VIP))?;
        ensure!(flow.snat.port() == 20000, "SNAT port {}", flow.snat.port());
        let second = client_syn(sa(CLIENT_B, 2222), VIP).build();
        let run = lb.run(net.veth0, &second)?;
        ensure!(
            run.action == XDP_DROP,
            "second flow with no free port: {}",
            action_name(run.action)
        );
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 1),
                (R::LB_REASON_DROP_PORT_EXHAUSTED, 1),
            ],
            &[(XDP_TX, 1), (XDP_DROP, 1)],
        )?;
        lb.expect_flow_entries(1, "after the flow")?;
        ensure!(
            lb.backend_counters(&vip, BE1)?
                == counters(1, client_syn(a, VIP).build().len() as u64, 1),
            "backend counted the dropped flow"
        );
        // The first flow is unaffected, and the port is per backend: another backend has it free.
        tx_flow_packet(&lb, &flow, &ack(a, VIP))?;
        let vip2 = lb.add_vip(
            sa(Ipv4Addr::new(10, 9, 9, 10), 80),
            Protocol::Tcp,
            &[(BE2, 100)],
        )?;
        let (f2, _) = new_tx_flow(&mut lb, &vip2, &client_syn(sa(CLIENT_B, 2222), vip2.addr))?;
        ensure!(
            f2.snat.port() == 20000,
            "SNAT port towards the other backend {}",
            f2.snat.port()
        );
        Ok(())
    });
}

// Behaviour beyond the list above, each found while reading the C code.

/// With two arms, a packet whose egress interface is not in tx_ports is handed to the kernel
/// (XDP_PASS, per bpf/nexthop.h). The kernel only looks at a frame addressed to the receiving
/// interface: one rewritten to the next hop's MAC is PACKET_OTHERHOST and dropped by ip_rcv.
#[test]
fn frame_passed_to_the_kernel_is_addressed_to_the_ingress_interface() {
    bench(|_, net| {
        let (lb, _vip) = tcp_lb(net)?;
        let pkt = Packet::tcp(
            FAR_CLIENT_MAC,
            VETH2_MAC,
            sa(FAR_CLIENT, 33333),
            VIP,
            TCP_SYN,
        );
        let run = lb.run(net.veth2, &pkt.build())?;
        ensure!(
            run.action != XDP_REDIRECT && run.action != XDP_TX,
            "forwarded to an interface missing from tx_ports"
        );
        if run.action == XDP_PASS {
            ensure!(
                run.out[0..6] == VETH2_MAC,
                "XDP_PASS of a frame whose destination MAC is {} (not veth2's {}): the kernel drops it as PACKET_OTHERHOST",
                mac_str(&run.out[0..6].try_into()?),
                mac_str(&VETH2_MAC)
            );
        }
        Ok(())
    });
}

/// An active flow (packets every 0.6 s) under a 1 s idle timeout (the smallest lbd accepts) must
/// keep its backend even after the backend is drained.
#[test]
fn active_flow_within_timeout_keeps_its_backend() {
    bench(|_, net| {
        let mut cfg = config(PORTS);
        cfg.udp_timeout = Duration::from_secs(1);
        let mut lb = Lb::new(net, cfg)?;
        let vip = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100), (BE2_UDP, 100)])?;
        let client = sa(CLIENT, 7000);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &query(client, VIP_UDP))?;
        lb.set_weight(&vip, flow.backend, 0)?;
        for i in 1..=2 {
            sleep(Duration::from_millis(600));
            let run = lb.run(net.veth0, &query(client, VIP_UDP).build())?;
            let (_, dst) = endpoints(&run.out)?;
            ensure!(
                run.action == XDP_TX && dst == flow.backend,
                "packet {i} (0.6 s after the previous one, timeout 1 s): {} to {dst}, the flow was on {}",
                action_name(run.action),
                flow.backend
            );
        }
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 1,
            "one active flow counted as {} new flows",
            lb.vip_counters(&vip)?.new_flows
        );
        Ok(())
    });
}

/// A one-way flow (client -> backend, no replies, e.g. syslog) is live; its SNAT port must not
/// be handed to another flow to the same backend.
#[test]
fn one_way_flow_keeps_its_snat_port() {
    bench(|_, net| {
        let mut cfg = config((20000, 20000));
        cfg.udp_timeout = Duration::from_secs(2);
        let mut lb = Lb::new(net, cfg)?;
        let vip = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let a = sa(CLIENT, 1111);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &query(a, VIP_UDP))?;
        for _ in 0..3 {
            sleep(Duration::from_millis(800));
            tx_flow_packet(&lb, &flow, &query(a, VIP_UDP))?;
        }
        // 2.4 s after the flow began, 0 s after its last packet.
        sleep(Duration::from_millis(100));
        let run = lb.run(net.veth0, &query(sa(CLIENT_B, 2222), VIP_UDP).build())?;
        let taken = endpoints(&run.out)
            .map(|(s, _)| s.port() == 20000)
            .unwrap_or(false);
        ensure!(
            run.action == XDP_DROP,
            "a second flow got {}{} while the first flow (last packet 0.1 s ago, timeout 2 s) still uses SNAT port 20000 to {BE1_UDP}",
            action_name(run.action),
            if taken { " with SNAT port 20000" } else { "" }
        );
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 4),
                (R::LB_REASON_DROP_PORT_EXHAUSTED, 1),
            ],
            &[(XDP_TX, 4), (XDP_DROP, 1)],
        )?;
        Ok(())
    });
}

/// With 3 SNAT ports and 2 of them free, a new flow whose first candidate is taken must get a
/// free one (ct_create tries LB_PORT_RETRIES candidates).
#[test]
fn port_retries_try_other_ports() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config((20000, 20002)))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let (fa, _) = new_tx_flow(&mut lb, &vip, &client_syn(sa(CLIENT, 1111), VIP))?;
        let clash = (1..=u16::MAX)
            .map(|p| sa(CLIENT_B, p))
            .find(|c| {
                let h = maglev::flow_hash_v4(
                    *c.ip(),
                    *VIP.ip(),
                    c.port(),
                    VIP.port(),
                    Protocol::Tcp.number(),
                );
                lb.candidate_port(h, 0) == fa.snat.port()
            })
            .context("no clashing client port")?;
        let run = lb.run(net.veth0, &client_syn(clash, VIP).build())?;
        let tried: Vec<u16> = {
            let h = maglev::flow_hash_v4(
                *clash.ip(),
                *VIP.ip(),
                clash.port(),
                VIP.port(),
                Protocol::Tcp.number(),
            );
            (0..8).map(|i| lb.candidate_port(h, i)).collect()
        };
        ensure!(
            run.action == XDP_TX,
            "a flow was refused ({}) with 2 of 3 SNAT ports free; the candidates it tried were {tried:?}",
            action_name(run.action)
        );
        let (src, _) = endpoints(&run.out)?;
        ensure!(
            src.port() != fa.snat.port() && (20000..=20002).contains(&src.port()),
            "SNAT port {}",
            src.port()
        );
        verify_checksums(&run.out, false)?;
        Ok(())
    });
}

/// `pkt` padded with payload to exactly `tot_len` IP bytes.
fn sized(pkt: Packet, tot_len: usize) -> Packet {
    let header = pkt.clone().with_payload(&[]).ip_bytes().len();
    let payload: Vec<u8> = (0..tot_len - header).map(|i| (i * 7) as u8).collect();
    let p = pkt.with_payload(&payload);
    assert_eq!(p.ip_bytes().len(), tot_len);
    p
}

/// A NATed packet too big for the egress MTU is answered with ICMP "fragmentation needed" from the
/// address its sender used (the VIP towards a client, the SNAT address towards a backend) before
/// anything is rewritten, so path MTU discovery works through the balancer in both directions;
/// without DF it is dropped and counted. Nothing rewritten is ever handed to the kernel.
#[test]
fn oversize_nat_packets_get_icmp_frag_needed() {
    bench(|ns, net| {
        ns.ip(&["link", "set", "veth0", "mtu", "1400"])?;
        let (mut lb, vip) = tcp_lb(net)?;
        let client = sa(CLIENT, 23456);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &client_syn(client, VIP))?;

        // Client -> VIP, 1401 bytes with DF: ICMP from the VIP with next-hop MTU 1400.
        let big = sized(ack(client, VIP), 1401);
        let run = lb.run(net.veth0, &big.build())?;
        expect_frag_needed(&run, &big, 1400, "client packet of 1401 bytes")?;
        // Exactly 1400 bytes fit and are NATed as usual.
        tx_flow_packet(&lb, &flow, &sized(ack(client, VIP), 1400))?;
        // Without DF: dropped, counted as too big.
        let mut no_df = sized(ack(client, VIP), 1500);
        no_df.frag = 0;
        let run = lb.run(net.veth0, &no_df.build())?;
        expect_action(&run, XDP_DROP, "client packet of 1500 bytes without DF")?;

        // Backend -> SNAT address, 1401 bytes: ICMP from the SNAT address to the backend.
        let big_reply = sized(reply(&flow, Protocol::Tcp), 1401);
        let run = lb.run(net.veth0, &big_reply.build())?;
        expect_frag_needed(&run, &big_reply, 1400, "backend reply of 1401 bytes")?;
        expect_restored(
            &lb,
            &flow,
            &sized(reply(&flow, Protocol::Tcp), 1400),
            VETH0_MAC,
            XDP_TX,
        )?;

        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 2),
                (R::LB_REASON_TX_NAT_REPLY, 1),
                (R::LB_REASON_TX_ICMP_FRAG_NEEDED, 2),
                (R::LB_REASON_DROP_TOO_BIG, 1),
            ],
            &[(XDP_TX, 5), (XDP_DROP, 1)],
        )?;
        Ok(())
    });
}

/// Whether the destination prefilter (`vip_filter`) has the bit of `ip` set.
fn filter_has(maps: &xdplb::dataplane::maps::Maps<'_>, ip: Ipv4Addr) -> Result<bool> {
    let words = maps.read_vip_filter()?;
    let bit = xdplb::dataplane::maps::vip_filter_bit(ip) as usize;
    Ok(words[bit / 64] >> (bit % 64) & 1 == 1)
}

/// Bits set in the prefilter.
fn filter_bits(lb: &Lb) -> Result<u32> {
    Ok(lb
        .maps()
        .read_vip_filter()?
        .iter()
        .map(|w| w.count_ones())
        .sum())
}

/// The prefilter holds exactly the VIP addresses through VIP additions and removals; packets to
/// a removed VIP pass untouched, the remaining and re-added VIPs are balanced as before, and
/// replies to the SNAT ports (the SNAT address is in no VIP's bit here) are still restored.
#[test]
fn prefilter_follows_vips() {
    bench(|_, net| {
        use xdplb::dataplane::maps::vip_filter_bit;
        let (mut lb, vip) = tcp_lb(net)?;
        let other = sa(Ipv4Addr::new(10, 9, 9, 20), 80);
        let bits = [*VIP.ip(), *other.ip(), LB_ADDR].map(vip_filter_bit);
        ensure!(
            bits.iter().collect::<BTreeSet<_>>().len() == bits.len(),
            "the test's addresses share prefilter bits: {bits:?}"
        );
        ensure!(
            filter_has(&lb.maps(), *VIP.ip())? && filter_bits(&lb)? == 1,
            "after one VIP: the prefilter should hold the VIP's address only ({} bits)",
            filter_bits(&lb)?
        );
        let (flow, _) = new_tx_flow(&mut lb, &vip, &client_syn(sa(CLIENT, 41000), VIP))?;
        let run = lb.run(net.veth0, &reply(&flow, Protocol::Tcp).build())?;
        ensure!(
            run.action == XDP_TX,
            "reply to the SNAT address (not in the prefilter): {}",
            action_name(run.action)
        );

        let other_vip = lb.add_vip(other, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        ensure!(
            filter_has(&lb.maps(), *other.ip())? && filter_bits(&lb)? == 2,
            "the second VIP's address is not in the prefilter"
        );
        new_tx_flow(&mut lb, &other_vip, &client_syn(sa(CLIENT, 41001), other))?;

        lb.state.remove_vip(&vip)?;
        lb.reconcile()?;
        ensure!(
            !filter_has(&lb.maps(), *VIP.ip())? && filter_bits(&lb)? == 1,
            "the removed VIP's address is still in the prefilter"
        );
        let to_removed = client_syn(sa(CLIENT, 41002), VIP).build();
        expect_untouched(&lb, net.veth0, &to_removed, "SYN to a removed VIP")?;
        new_tx_flow(&mut lb, &other_vip, &client_syn(sa(CLIENT, 41003), other))?;

        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        ensure!(
            filter_has(&lb.maps(), *VIP.ip())?,
            "the re-added VIP is not in the prefilter"
        );
        new_tx_flow(&mut lb, &vip, &client_syn(sa(CLIENT, 41004), VIP))?;
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 4),
                (R::LB_REASON_TX_NAT_REPLY, 1),
                (R::LB_REASON_PASS_NOT_VIP, 1),
            ],
            &[(XDP_TX, 5), (XDP_PASS, 1)],
        )?;
        Ok(())
    });
}

/// An address that shares the VIP's prefilter bit (a false positive) goes on to the VIP lookup
/// and passes untouched; the VIP next to it is still balanced.
#[test]
fn prefilter_false_positive_passes_untouched() {
    bench(|_, net| {
        use xdplb::dataplane::maps::vip_filter_bit;
        let (mut lb, vip) = tcp_lb(net)?;
        let want = vip_filter_bit(*VIP.ip());
        let twin = (0u32..1 << 24)
            .map(|i| Ipv4Addr::from(0x0b00_0000 | i))
            .find(|ip| vip_filter_bit(*ip) == want)
            .context("no address in 11.0.0.0/8 shares the VIP's prefilter bit")?;
        let frame = client_syn(sa(CLIENT, 42000), sa(twin, 80)).build();
        expect_untouched(
            &lb,
            net.veth0,
            &frame,
            &format!("SYN to {twin} (the VIP's bit)"),
        )?;
        new_tx_flow(&mut lb, &vip, &client_syn(sa(CLIENT, 42001), VIP))?;
        lb.expect_global(
            &[
                (R::LB_REASON_PASS_NOT_VIP, 1),
                (R::LB_REASON_TX_NAT_FORWARD, 1),
            ],
            &[(XDP_PASS, 1), (XDP_TX, 1)],
        )?;
        Ok(())
    });
}

/// Packets of a tracked flow skip the vips lookup only while their VIP is there with the id
/// their entry recorded: once the VIP is removed they pass untouched, also when another VIP
/// has taken over its id; when the VIP comes back, the flow carries on with its backend and port.
#[test]
fn tracked_flows_follow_their_vip_and_its_id() {
    bench(|_, net| {
        let (mut lb, vip) = tcp_lb(net)?;
        let client = sa(CLIENT, 45000);
        let (flow, _) = new_tx_flow(&mut lb, &vip, &client_syn(client, VIP))?;
        tx_flow_packet(&lb, &flow, &ack(client, VIP))?;
        let id = lb.vip_id(&vip)?;
        ensure!(
            lb.maps().vip_of_id(id)? == Some((VIP, Protocol::Tcp.number())),
            "vip_ids[{id}] does not name the VIP"
        );

        lb.state.remove_vip(&vip)?;
        lb.reconcile()?;
        expect_untouched(
            &lb,
            net.veth0,
            &ack(client, VIP).build(),
            "ACK of a removed VIP's flow",
        )?;

        // Another VIP on the same address takes the id over (the reconciler hands ids out again
        // once all are used; written here the way it writes a VIP).
        let other = sa(*VIP.ip(), 8443);
        lb.maps_mut().put_vip(
            other,
            Protocol::Tcp,
            id,
            xdplb_model::state::Mode::Nat,
            RING_SIZE,
        )?;
        ensure!(
            lb.maps().vip_of_id(id)? == Some((other, Protocol::Tcp.number())),
            "vip_ids[{id}] does not name the VIP that took the id over"
        );
        expect_untouched(
            &lb,
            net.veth0,
            &ack(client, VIP).build(),
            "ACK of a removed VIP's flow, its id now another VIP's",
        )?;
        lb.maps_mut().delete_vip(other, Protocol::Tcp)?;
        ensure!(
            lb.maps().vip_of_id(id)?.is_none(),
            "vip_ids[{id}] still names a deleted VIP"
        );

        let back = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        ensure!(back == vip, "re-added VIP key");
        tx_flow_packet(&lb, &flow, &ack(client, VIP))?;
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 3),
                (R::LB_REASON_PASS_NOT_VIP, 2),
            ],
            &[(XDP_TX, 3), (XDP_PASS, 2)],
        )?;
        Ok(())
    });
}

/// A program loaded on the pinned maps of an earlier lbd whose build had neither vip_filter nor
/// vip_ids fills both from the adopted VIPs at load, before anything is written or reconciled:
/// the adopted VIP and its flows are balanced at once.
#[test]
fn vip_index_is_rebuilt_from_adopted_vips() {
    bench(|_, net| {
        let pins = PinDir::new("vipindex-test");
        let opts = Lb::pinned_options(&pins);
        let mut first = Lb::load(net, config(PORTS), &opts)?;
        let vip = first.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let id = first.vip_id(&vip)?;
        let client = sa(CLIENT, 43000);
        let (flow, _) = new_tx_flow(&mut first, &vip, &client_syn(client, VIP))?;
        drop(first); // like a stopped lbd that leaves its pins for the next one
        for map in ["vip_filter", "vip_ids"] {
            std::fs::remove_file(pins.path().join(map))
                .with_context(|| format!("unpinning {map}"))?;
        }

        let second = Dataplane::load(&opts)?;
        ensure!(second.adopted(), "the pinned maps were not reused");
        ensure!(
            filter_has(&second.maps(), *VIP.ip())?,
            "the adopted VIP is not in the new prefilter"
        );
        ensure!(
            second.maps().vip_of_id(id)? == Some((VIP, Protocol::Tcp.number())),
            "vip_ids[{id}] does not name the adopted VIP"
        );
        let run = run_xdp(second.program(), net.veth0, &ack(client, VIP).build())?;
        let want = ack(client, VIP).natted(
            VETH0_MAC,
            neighbour_mac(*flow.backend.ip()),
            flow.snat,
            flow.backend,
        );
        expect_packet(
            &run,
            XDP_TX,
            &want,
            "ACK of the adopted flow, before any reconcile",
        )
    });
}

/// `last_seen_ns` of the established NAT entry (`nat_fwd_v2`) of the UDP flow `client` -> `vip`.
fn last_seen(lb: &Lb, client: SocketAddrV4, vip: SocketAddrV4) -> Result<u64> {
    let fwd = lb
        .maps()
        .flow_entry(FlowTable::NatEstablished, client, vip, Protocol::Udp)?
        .context("the flow has no nat_fwd_v2 entry")?;
    Ok(fwd.last_seen_ns)
}

/// Flows are stamped with the data plane's clock (bpf/clock.h), the one lbd reads through
/// `lb_clock`: a new flow's stamp lies between two readings taken around its first packet. And
/// the control plane's liveness view (the telemetry walk) agrees with the data plane's expiry:
/// live while the data plane keeps the flow, expired once the data plane starts a new one.
#[test]
fn flow_stamps_and_liveness_follow_the_data_plane_clock() {
    bench(|_, net| {
        let mut cfg = config(PORTS);
        cfg.udp_timeout = Duration::from_secs(1);
        let mut lb = Lb::new(net, cfg)?;
        let vip = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let id = lb.vip_id(&vip)?;
        let clock = lb.rec.dataplane().clock()?;
        let client = sa(CLIENT, 7100);

        let before = clock.now()?;
        new_tx_flow(&mut lb, &vip, &query(client, VIP_UDP))?;
        let after = clock.now()?;
        let stamp = last_seen(&lb, client, VIP_UDP)?;
        ensure!(
            before <= stamp && stamp <= after,
            "flow stamped {stamp}, outside the clock's readings {before}..={after} around its packet"
        );
        // Ticks since boot: close to CLOCK_MONOTONIC_COARSE, the clock of the stamps of builds
        // before bpf/clock.h, which an upgraded program must still read as about the same age
        // (the kernel starts counting jiffies a little before the monotonic clock: 0.3 s apart
        // on the test VM).
        let coarse = xdplb::dataplane::telemetry::clock_ns(libc::CLOCK_MONOTONIC_COARSE);
        let ours = clock.now()?;
        ensure!(
            ours.abs_diff(coarse) < 5_000_000_000,
            "the data plane's clock reads {ours} ns, CLOCK_MONOTONIC_COARSE {coarse} ns"
        );
        // The clock advances (one tick at most 10 ms at HZ >= 100).
        sleep(Duration::from_millis(50));
        ensure!(clock.now()? > after, "the data plane's clock stands still");

        let live = |lb: &Lb| -> Result<xdplb::dataplane::telemetry::Flows> {
            Ok(lb.rec.dataplane().telemetry()?.live_flows()?)
        };
        let flows = live(&lb)?;
        ensure!(
            flows.by_vip.get(&id) == Some(&1) && flows.expired == 0,
            "just after its packet: {flows:?}"
        );
        sleep(Duration::from_millis(1500));
        let flows = live(&lb)?;
        ensure!(
            !flows.by_vip.contains_key(&id) && flows.expired == 1,
            "1.5 s after its last packet (timeout 1 s), lbd should see the flow expired: {flows:?}"
        );
        // The data plane agrees: the next packet starts a new flow.
        let run = lb.run(net.veth0, &query(client, VIP_UDP).build())?;
        ensure!(run.action == XDP_TX, "{}", action_name(run.action));
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 2,
            "the data plane kept the flow that lbd sees expired ({} new flows)",
            lb.vip_counters(&vip)?.new_flows
        );
        let flows = live(&lb)?;
        ensure!(
            flows.by_vip.get(&id) == Some(&1) && flows.expired == 0,
            "after the new flow's packet: {flows:?}"
        );
        Ok(())
    });
}

/// An lbd restarted on the pinned maps of the previous one (a new program, the same maps) loads
/// (libbpf's internal maps, .kconfig included, are never pinned and reused) and carries the
/// flows on: a flow stamped by the first program is live for the second one's clock and for the
/// control plane's view, and keeps its backend and SNAT port.
#[test]
fn flows_stay_live_across_a_restart_on_pinned_maps() {
    bench(|_, net| {
        let pins = PinDir::new("clock-test");
        let mut first = Lb::load(net, config(PORTS), &Lb::pinned_options(&pins))?;
        let vip = first.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        let client = sa(CLIENT, 44000);
        let (flow, _) = new_tx_flow(&mut first, &vip, &client_syn(client, VIP))?;
        let id = first.vip_id(&vip)?;
        let mut second = first.restart()?;
        let flows = second.rec.dataplane().telemetry()?.live_flows()?;
        ensure!(
            flows.by_vip.get(&id) == Some(&1) && flows.expired == 0,
            "after the restart, lbd's view of the flow: {flows:?}"
        );
        second.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        // A flow started anew would have claimed another SNAT port (the flow's own is held
        // by its live reverse entry): the same port and backend mean the same flow.
        tx_flow_packet(&second, &flow, &ack(client, VIP))?;
        second.expect_flow_entries(1, "after the restart")?;
        Ok(())
    });
}
