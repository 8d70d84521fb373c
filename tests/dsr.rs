//! DSR data-plane tests: L2 DSR and IPIP DSR frames through the loaded XDP program, the backend-side
//! decap program, ICMP "fragmentation needed" built in XDP, and per-VIP mode switching
//! (BPF_PROG_TEST_RUN, one private network namespace per test, the bench of `common::lab`).
//!
//! Every expected frame is built from scratch by `xdplb_testkit::packet` (outer IPv4 and ICMP checksums
//! computed per RFC 1071, never copied from the program's output), and every packet is one run.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::maps::RuntimeConfig;
use xdplb::maglev;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::state::{Mode, Protocol, VipKey};

use common::decap::{Decap, DecapStats, RFC6040_DECAP, RFC6040_OUTER};
use common::expect::*;
use common::lab::*;
use xdplb_testkit::netns::NetNs;
use xdplb_testkit::packet::*;

/// DSR cannot translate ports: the backends listen on the VIP port.
const BE1: SocketAddrV4 = SocketAddrV4::new(BACKEND1, 80);
const BE2: SocketAddrV4 = SocketAddrV4::new(BACKEND2, 80);

/// A router on veth2's segment towards the far backend subnet 10.5.0.0/24.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 254);
const ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0xfe];
/// A backend in another subnet, reached through ROUTER.
const FAR_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 5, 0, 7), 80);

/// The client's next segment of the same connection: ACK with 19 bytes of data, as received on veth0.
fn data(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    data_segment(neighbour_mac(*client.ip()), client, vip)
}

/// A SYN of the far client (behind veth2) to `vip`, as received on veth2.
fn far_syn(port: u16, vip: SocketAddrV4) -> Packet {
    Packet::tcp(
        FAR_CLIENT_MAC,
        VETH2_MAC,
        sa(FAR_CLIENT, port),
        vip,
        TCP_SYN,
    )
    .with_payload(b"syn")
}

/// The far client's data segment, as received on veth2.
fn far_data(port: u16, vip: SocketAddrV4) -> Packet {
    let mut p = data(sa(FAR_CLIENT, port), vip);
    p.eth_src = FAR_CLIENT_MAC;
    p.eth_dst = VETH2_MAC;
    p
}

/// The bench's program with the TCP VIP in `mode` over both backends.
fn lb_with_vip(net: Net, mode: Mode) -> Result<(Lb, VipKey)> {
    let mut lb = Lb::new(net, config(PORTS))?;
    let vip = lb.add_vip_mode(VIP, Protocol::Tcp, mode, &[(BE1, 100), (BE2, 100)])?;
    Ok((lb, vip))
}

/// IP options of 4 bytes (ihl 6) and of 40 bytes (ihl 15: a timestamp option and NOPs).
fn ip_options() -> [Vec<u8>; 2] {
    let mut long = vec![68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    long.resize(40, 1);
    [vec![1, 1, 1, 0], long]
}

/// The same frame with only the MAC addresses replaced.
fn with_macs(frame: &[u8], dst: Mac, src: Mac) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

/// Field-by-field check of an outer IPv4 header (20 bytes), for readable failures.
fn check_outer(
    h: &[u8],
    inner_len: usize,
    df: bool,
    source: Ipv4Addr,
    backend: Ipv4Addr,
) -> Result<()> {
    ensure!(h.len() >= 20, "no room for an outer header");
    ensure!(
        h[0] == 0x45,
        "outer version/ihl {:#04x}, expected 0x45",
        h[0]
    );
    let tot = usize::from(get_be16(h, 2));
    ensure!(
        tot == inner_len + 20,
        "outer tot_len {tot}, expected {} (inner {inner_len} + 20)",
        inner_len + 20
    );
    // With DF the id is 0 (RFC 6864 atomic datagram); without, a per-packet id (tests/tunnel.rs).
    ensure!(
        !df || get_be16(h, 4) == 0,
        "outer id {:#06x} with DF, expected 0",
        get_be16(h, 4)
    );
    let frag = get_be16(h, 6);
    ensure!(
        frag == if df { IP_DF } else { 0 },
        "outer flags/offset {frag:#06x}, expected DF {} as in the inner header and nothing else",
        if df { "set" } else { "clear" }
    );
    ensure!(h[8] == 64, "outer TTL {}, expected 64", h[8]);
    ensure!(h[9] == IPPROTO_IPIP, "outer protocol {}, expected 4", h[9]);
    let mut zeroed = h[..20].to_vec();
    set_be16(&mut zeroed, 10, 0);
    let want = internet_checksum(&zeroed);
    ensure!(
        get_be16(h, 10) == want,
        "outer checksum {:#06x}, computed from scratch {want:#06x}",
        get_be16(h, 10)
    );
    ensure!(
        ip_at(h, 12) == source,
        "outer source {}, expected {source}",
        ip_at(h, 12)
    );
    ensure!(
        ip_at(h, 16) == backend,
        "outer destination {}, expected {backend}",
        ip_at(h, 16)
    );
    Ok(())
}

/// Checks that `run` is `pkt` IPIP-encapsulated towards `backend` from `source`: L2 header with
/// the next hop's and the egress interface's MACs, an outer header checked field by field, the
/// original IP packet byte for byte but for its TTL (one less, checksum from scratch), and nothing
/// else.
#[allow(clippy::too_many_arguments)]
fn expect_ipip(
    run: &Run,
    action: u32,
    pkt: &Packet,
    next_hop_mac: Mac,
    egress_mac: Mac,
    source: Ipv4Addr,
    backend: Ipv4Addr,
    what: &str,
) -> Result<()> {
    expect_action(run, action, what)?;
    let l3 = pkt.l3_offset();
    let inner = pkt.routed(pkt.eth_src, pkt.eth_dst).ip_bytes();
    ensure!(
        run.out.len() == l3 + 20 + inner.len(),
        "{what}: output of {} bytes, expected {} (L2 {l3} + outer 20 + inner {})",
        run.out.len(),
        l3 + 20 + inner.len(),
        inner.len()
    );
    check_outer(
        &run.out[l3..l3 + 20],
        inner.len(),
        pkt.frag & IP_DF != 0,
        source,
        backend,
    )
    .with_context(|| format!("{what}: outer header"))?;
    let d = diff(&run.out[l3 + 20..], &inner);
    ensure!(
        d.is_empty(),
        "{what}: the inner packet is not the original one: {d}"
    );
    let want = ipip_frame(
        &next_hop_mac,
        &egress_mac,
        &[],
        &ipip_outer_sent(pkt, source, backend, &run.out),
        &inner,
    );
    expect_frame(run, action, &want, what)
}

/// Runs `pkt` on `ingress` and checks that it leaves with `action` as L2 DSR sends it to
/// `backend`: the frame unchanged but for the MACs (the backend's and veth0's) and the TTL (one
/// less, checksum from scratch).
fn expect_l2dsr(
    lb: &Lb,
    ingress: u32,
    pkt: &Packet,
    action: u32,
    backend: SocketAddrV4,
    what: &str,
) -> Result<Run> {
    let run = lb.run(ingress, &pkt.build())?;
    let want = pkt.routed(VETH0_MAC, neighbour_mac(*backend.ip())).build();
    expect_frame(&run, action, &want, what)?;
    Ok(run)
}

/// Runs `pkt` on veth0 and checks that it leaves (XDP_TX) IPIP-encapsulated from `source` to
/// `backend` on veth0 ([`expect_ipip`]).
fn expect_ipip_tx(
    lb: &Lb,
    pkt: &Packet,
    backend: SocketAddrV4,
    source: Ipv4Addr,
    what: &str,
) -> Result<Run> {
    let run = lb.run(lb.net.veth0, &pkt.build())?;
    let (mac, addr) = (neighbour_mac(*backend.ip()), *backend.ip());
    expect_ipip(&run, XDP_TX, pkt, mac, VETH0_MAC, source, addr, what)?;
    Ok(run)
}

/// The IPIP outer source of a flow with `hash` for the prefix `source` (host bits from the hash).
fn ipip_source(source: ipnet::Ipv4Net, hash: u32) -> Ipv4Addr {
    let host = u32::from(source.hostmask());
    Ipv4Addr::from(u32::from(source.network()) | (hash & host))
}

/// The configuration of the tests with `ipip_source` as IPIP outer source prefix.
fn config_with_source(source: &str) -> Result<RuntimeConfig> {
    Ok(RuntimeConfig {
        ipip_source: source.parse().context("prefix")?,
        ..config(PORTS)
    })
}

#[test]
fn l2dsr_changes_only_the_macs() {
    bench(|_, net| {
        let (mut lb, vip) = lb_with_vip(net, Mode::L2dsr)?;
        let (mut tx, mut redirect, mut flows) = (0u64, 0u64, 0u64);

        // One-arm (clients on veth0): new flows until both backends have been picked.
        let mut seen = BTreeSet::new();
        for port in 40000..40064 {
            let client = sa(CLIENT, port);
            let pick = lb.pick(&vip, client)?;
            for (what, pkt) in [
                ("SYN", client_syn(client, VIP)),
                ("data", data(client, VIP)),
            ] {
                let what = format!("{what} of {client} (expected to {})", pick.backend);
                expect_l2dsr(&lb, net.veth0, &pkt, XDP_TX, pick.backend, &what)?;
                tx += 1;
            }
            flows += 1;
            seen.insert(pick.backend);
            if seen.len() == 2 {
                break;
            }
        }
        ensure!(seen.len() == 2, "64 flows all went to {seen:?}");

        // Tagged frames are the kernel's: tests/tunnel.rs.

        // Two-arm (client behind veth2, backends on veth0, veth0 a tx port): XDP_REDIRECT.
        lb.maps_mut().add_tx_port(net.veth0)?;
        let pick = lb.pick(&vip, sa(FAR_CLIENT, 40200))?;
        for (what, pkt) in [("SYN", far_syn(40200, VIP)), ("data", far_data(40200, VIP))] {
            let what = format!("two-arm {what}");
            expect_l2dsr(&lb, net.veth2, &pkt, XDP_REDIRECT, pick.backend, &what)?;
            redirect += 1;
        }
        flows += 1;

        lb.expect_global(
            &[(R::LB_REASON_TX_L2DSR, tx + redirect)],
            &[(XDP_TX, tx), (XDP_REDIRECT, redirect)],
        )?;
        let c = lb.vip_counters(&vip)?;
        ensure!(
            c.packets == tx + redirect && c.new_flows == flows,
            "vip counters {c:?}, expected {} packets and {flows} new flows",
            tx + redirect
        );
        lb.expect_flow_entries(flows as usize, "one entry per flow")?;
        Ok(())
    });
}

#[test]
fn ipip_output_is_outer_header_plus_original_packet() {
    bench(|ns, net| {
        let (mut lb, vip) = lb_with_vip(net, Mode::Ipip)?;
        let (mut tx, mut redirect) = (0u64, 0u64);

        // A /32 source: every flow leaves from it.
        ensure!(lb.cfg.ipip_source.prefix_len() == 32 && lb.cfg.ipip_source.addr() == LB_ADDR);
        let send = |lb: &Lb, pkt: &Packet, client: SocketAddrV4, what: &str| -> Result<()> {
            let pick = lb.pick(&vip, client)?;
            let source = ipip_source(lb.cfg.ipip_source, pick.hash);
            let what = format!(
                "{what} of {client} (expected to {} from {source})",
                pick.backend
            );
            expect_ipip_tx(lb, pkt, pick.backend, source, &what).map(drop)
        };
        let client = sa(CLIENT, 41000);
        send(&lb, &client_syn(client, VIP), client, "SYN with DF")?;
        let mut no_df = data(client, VIP);
        no_df.frag = 0;
        no_df.tos = 0xb8;
        send(&lb, &no_df, client, "data without DF, TOS 0xb8")?;
        tx += 2;

        // IP options in the inner packet (ihl 6 and 15) are carried untouched.
        for (i, opts) in ip_options().iter().enumerate() {
            let client = sa(CLIENT, 41010 + i as u16);
            send(
                &lb,
                &client_syn(client, VIP).with_ip_options(opts),
                client,
                &format!("SYN with {} bytes of IP options", opts.len()),
            )?;
            tx += 1;
        }

        // A backend in another subnet: the frame goes to the router (two-arm: redirect to veth2).
        ns.ip(&[
            "neigh",
            "replace",
            &ROUTER.to_string(),
            "lladdr",
            &mac_str(&ROUTER_MAC),
            "dev",
            "veth2",
            "nud",
            "permanent",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "10.5.0.0/24",
            "via",
            &ROUTER.to_string(),
            "dev",
            "veth2",
        ])?;
        let far_vip = sa(Ipv4Addr::new(10, 9, 9, 10), 80);
        lb.add_vip_mode(far_vip, Protocol::Tcp, Mode::Ipip, &[(FAR_BACKEND, 100)])?;
        lb.maps_mut().add_tx_port(net.veth2)?;
        for (what, pkt) in [
            ("SYN", client_syn(sa(CLIENT, 41020), far_vip)),
            ("data", data(sa(CLIENT, 41020), far_vip)),
        ] {
            let run = lb.run(net.veth0, &pkt.build())?;
            expect_ipip(
                &run,
                XDP_REDIRECT,
                &pkt,
                ROUTER_MAC,
                VETH2_MAC,
                LB_ADDR,
                *FAR_BACKEND.ip(),
                &format!("{what} to the routed backend {FAR_BACKEND}"),
            )?;
            redirect += 1;
        }
        lb.expect_global(
            &[(R::LB_REASON_TX_IPIP, tx + redirect)],
            &[(XDP_TX, tx), (XDP_REDIRECT, redirect)],
        )?;

        // A /24 source: the host byte is the flow hash's low byte, so flows get different sources.
        lb.set_config(config_with_source("10.3.0.0/24")?)?;
        let mut sources = BTreeSet::new();
        for port in 42000..42016 {
            let client = sa(CLIENT, port);
            let hash = maglev::flow_hash_v4(
                *client.ip(),
                *VIP.ip(),
                port,
                VIP.port(),
                Protocol::Tcp.number(),
            );
            let source = Ipv4Addr::new(10, 3, 0, (hash & 0xff) as u8);
            ensure!(ipip_source(lb.cfg.ipip_source, hash) == source);
            let pkt = client_syn(client, VIP);
            let pick = lb.pick(&vip, client)?;
            let what =
                format!("/24: SYN of {client} (hash {hash:#010x}, expected source {source})");
            expect_ipip_tx(&lb, &pkt, pick.backend, source, &what)?;
            // The flow keeps its source.
            send(&lb, &data(client, VIP), client, "/24: data")?;
            sources.insert(source);
            tx += 2;
        }
        ensure!(
            sources.len() >= 8,
            "16 flows got only {} different outer sources: {sources:?}",
            sources.len()
        );

        // A /22: ten host bits from the hash, across the byte boundary.
        lb.set_config(config_with_source("10.4.0.0/22")?)?;
        for port in 42100..42108 {
            let client = sa(CLIENT, port);
            send(&lb, &client_syn(client, VIP), client, "/22: SYN")?;
            tx += 1;
        }
        lb.expect_global(
            &[(R::LB_REASON_TX_IPIP, tx + redirect)],
            &[(XDP_TX, tx), (XDP_REDIRECT, redirect)],
        )?;
        Ok(())
    });
}

/// Fails with every one of `failures`, and with the decap counters when they are not `want`.
fn decap_checks_passed(decap: &Decap, want: DecapStats, mut failures: Vec<String>) -> Result<()> {
    let stats = decap.stats()?;
    if stats != want {
        failures.push(format!("decap_stats {stats:?}, expected {want:?}"));
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn decap_restores_the_original() {
    bench(|_, net| {
        let (mut lb, _) = lb_with_vip(net, Mode::Ipip)?;
        let other_vip = sa(Ipv4Addr::new(10, 9, 9, 10), 80);
        lb.add_vip_mode(other_vip, Protocol::Tcp, Mode::Ipip, &[(BE1, 100)])?;
        let decap = Decap::load()?;
        decap.add_vip(*VIP.ip())?;
        decap.add_source(*VIP.ip(), lb.cfg.ipip_source)?;
        let mut want = DecapStats::default();

        // Encapsulates `pkt` with the LB (one run) and returns (the client's frame as the LB
        // forwards it: TTL one less, LB output).
        let encapsulate = |pkt: &Packet| -> Result<(Vec<u8>, Vec<u8>)> {
            let frame = pkt.build();
            let run = lb.run(net.veth0, &frame)?;
            ensure!(
                run.action == XDP_TX && run.out.len() == frame.len() + 20,
                "the LB did not encapsulate: {} with {} bytes",
                action_name(run.action),
                run.out.len()
            );
            Ok((pkt.routed(pkt.eth_src, pkt.eth_dst).build(), run.out))
        };

        let mut no_df = data(sa(CLIENT, 44001), VIP);
        no_df.frag = 0;
        let [short_opts, long_opts] = ip_options();
        let cases = [
            ("SYN", client_syn(sa(CLIENT, 44000), VIP)),
            ("data without DF", no_df),
            (
                "SYN with 4 option bytes",
                client_syn(sa(CLIENT, 44004), VIP).with_ip_options(&short_opts),
            ),
            (
                "SYN with 40 option bytes",
                client_syn(sa(CLIENT, 44005), VIP).with_ip_options(&long_opts),
            ),
        ];
        // The LB passes tagged frames to the kernel (tests/tunnel.rs), but the backend may sit on
        // a VLAN: the same frames with an 802.1Q or 802.1ad tag on the wire.
        let tags: [Option<(u16, u16)>; 3] =
            [None, Some((ETH_P_8021Q, 100)), Some((ETH_P_8021AD, 0x2007))];
        for (what, pkt) in &cases {
            let (frame, encapsulated) = encapsulate(pkt)?;
            for tag in tags {
                let tagged = |f: &[u8]| -> Vec<u8> {
                    let mut f = f.to_vec();
                    if let Some((tpid, tci)) = tag {
                        let mut t = tpid.to_be_bytes().to_vec();
                        t.extend_from_slice(&tci.to_be_bytes());
                        f.splice(12..12, t);
                    }
                    f
                };
                // As the backend receives it, with the MACs the client's frame had.
                let received = tagged(&with_macs(&encapsulated, pkt.eth_dst, pkt.eth_src));
                let run = decap.run(0, &received)?;
                let what = format!("decap of the {what} (tag {tag:x?})");
                expect_frame(&run, XDP_PASS, &tagged(&frame), &what)?;
                want.decapsulated += 1;
                ensure!(
                    decap.stats()? == want,
                    "{what}: decap_stats {:?}, expected {want:?}",
                    decap.stats()?
                );
            }
        }
        // With the MACs the LB wrote: the same L2 header in front of the original IP packet.
        let pkt = client_syn(sa(CLIENT, 44010), VIP);
        let (frame, encapsulated) = encapsulate(&pkt)?;
        let run = decap.run(0, &encapsulated)?;
        let mut expected = encapsulated[..14].to_vec();
        expected.extend_from_slice(&frame[14..]);
        expect_frame(&run, XDP_PASS, &expected, "decap with the LB's MACs")?;
        want.decapsulated += 1;

        // Everything else passes byte for byte and is counted as passed.
        let (_, to_other) = encapsulate(&client_syn(sa(CLIENT, 44020), other_vip))?;
        let (full_frame, full) = encapsulate(&client_syn(sa(CLIENT, 44021), VIP))?;
        let untouched: Vec<(&str, Vec<u8>)> = vec![
            ("IPIP to a VIP not in decap_vips", to_other),
            ("plain TCP to the VIP", full_frame),
            (
                "IPIP cut inside the inner IPv4 header",
                full[..14 + 20 + 12].to_vec(),
            ),
            (
                "IPIP cut after the inner IPv4 header",
                full[..14 + 20 + 20 + 4].to_vec(),
            ),
            (
                "IPIP one byte short of its tot_len",
                full[..full.len() - 1].to_vec(),
            ),
            ("ARP", arp_request(CLIENT_MAC, CLIENT, BACKEND1)),
        ];
        // Every case runs (one run each) and every failure is reported.
        let mut failures = Vec::new();
        for (what, frame) in &untouched {
            let run = decap.run(0, frame)?;
            if let Err(e) = expect_frame(&run, XDP_PASS, frame, what) {
                failures.push(format!("{e:#}"));
            }
            want.passed += 1;
        }
        decap_checks_passed(&decap, want, failures)
    });
}

/// `inner` (a client's frame, as the LB received it) IPIP-encapsulated from `src` to BACKEND1
/// with outer TOS `tos`, its L2 header (VLAN tags too) kept.
fn ipip_from(src: Ipv4Addr, tos: u8, inner: &Packet) -> Vec<u8> {
    let outer = Ipv4Header {
        tos,
        id: 0,
        frag: IP_DF,
        ttl: 64,
        proto: IPPROTO_IPIP,
        src,
        dst: BACKEND1,
    };
    ipip_frame(
        &inner.eth_dst,
        &inner.eth_src,
        &inner.vlans,
        &outer,
        &inner.ip_bytes(),
    )
}

fn prefix(s: &str) -> ipnet::Ipv4Net {
    s.parse().expect("a test prefix")
}

/// The decap program takes IPIP to a VIP only from that VIP's `--lb-source` prefixes (both ends
/// of a /28 in, one address past each end out, another VIP's balancer out); the rest of IPIP to
/// a VIP is dropped and counted; IPIP to a non-VIP and non-IPIP pass byte for byte.
#[test]
fn decap_takes_ipip_only_from_allowed_outer_sources() {
    NetNs::within("decap-src", |_| {
        let decap = Decap::load()?;
        let vip = *VIP.ip();
        let other_vip = Ipv4Addr::new(10, 9, 9, 10);
        let other_lb = Ipv4Addr::new(10, 8, 0, 1);
        let stranger = Ipv4Addr::new(10, 66, 0, 1);
        decap.add_vip(vip)?;
        decap.add_vip(other_vip)?;
        decap.add_source(vip, ipnet::Ipv4Net::new(LB_ADDR, 32)?)?;
        decap.add_source(vip, prefix("10.7.0.16/28"))?;
        decap.add_source(other_vip, ipnet::Ipv4Net::new(other_lb, 32)?)?;

        let syn = |port: u16, to: Ipv4Addr| client_syn(sa(CLIENT, port), sa(to, 80));
        let a = Ipv4Addr::new;
        // (what, outer source, inner packet, decapsulated?)
        let cases: Vec<(&str, Ipv4Addr, Packet, bool)> = vec![
            ("the LB (a /32)", LB_ADDR, syn(46000, vip), true),
            (
                "the first address of the /28",
                a(10, 7, 0, 16),
                syn(46001, vip),
                true,
            ),
            (
                "the last address of the /28",
                a(10, 7, 0, 31),
                syn(46002, vip),
                true,
            ),
            (
                "the /28 under an 802.1Q tag",
                a(10, 7, 0, 20),
                syn(46003, vip).with_vlan(ETH_P_8021Q, 7),
                true,
            ),
            (
                "the address before the /28",
                a(10, 7, 0, 15),
                syn(46004, vip),
                false,
            ),
            (
                "the address after the /28",
                a(10, 7, 0, 32),
                syn(46005, vip),
                false,
            ),
            ("another VIP's balancer", other_lb, syn(46006, vip), false),
            ("a stranger", stranger, syn(46007, vip), false),
            (
                "a stranger under an 802.1ad tag",
                stranger,
                syn(46008, vip).with_vlan(ETH_P_8021AD, 9),
                false,
            ),
            (
                "the LB, to the other VIP",
                LB_ADDR,
                syn(46009, other_vip),
                false,
            ),
            (
                "the other VIP's balancer, to it",
                other_lb,
                syn(46010, other_vip),
                true,
            ),
        ];
        let mut want = DecapStats::default();
        let mut failures = Vec::new();
        for (what, src, inner, decapsulated) in &cases {
            let frame = ipip_from(*src, 0, inner);
            let run = decap.run(0, &frame)?;
            let what = format!("IPIP from {what} ({src} -> {})", inner.dst);
            let checked = if *decapsulated {
                want.decapsulated += 1;
                // Byte for byte the client's frame, its checksums computed from scratch.
                expect_frame(&run, XDP_PASS, &inner.build(), &what)
            } else {
                want.dropped_source += 1;
                expect_action(&run, XDP_DROP, &what)
            };
            if let Err(e) = checked {
                failures.push(format!("{e:#}"));
            }
        }
        // Not for the decapsulator: untouched, whoever sent them.
        let untouched = [
            (
                "IPIP from a stranger to a non-VIP",
                ipip_from(stranger, 0, &syn(46020, a(10, 9, 9, 99))),
            ),
            (
                "plain TCP from a stranger to the VIP",
                Packet::tcp(CLIENT_MAC, VETH0_MAC, sa(stranger, 46021), VIP, TCP_SYN).build(),
            ),
        ];
        for (what, frame) in &untouched {
            let run = decap.run(0, frame)?;
            if let Err(e) = expect_frame(&run, XDP_PASS, frame, what) {
                failures.push(format!("{e:#}"));
            }
            want.passed += 1;
        }
        decap_checks_passed(&decap, want, failures)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// All 16 (outer, inner) ECN combinations through the decap program: the decapsulated packet is
/// the client's with the ECN field RFC 6040 gives (DSCP untouched, the inner IPv4 checksum
/// computed from scratch for the expectation), and outer CE on a Not-ECT inner is dropped and
/// counted.
#[test]
fn decap_merges_ecn_per_rfc6040() {
    NetNs::within("decap-ecn", |_| {
        let decap = Decap::load()?;
        decap.add_vip(*VIP.ip())?;
        decap.add_source(*VIP.ip(), ipnet::Ipv4Net::new(LB_ADDR, 32)?)?;
        // DSCP 40 inside, 18 outside: only the ECN bits may ever change, and only inside.
        let (inner_dscp, outer_dscp) = (40u8 << 2, 18u8 << 2);
        let mut want = DecapStats::default();
        let mut failures = Vec::new();
        let mut port = 47000;
        for (inner_ecn, row) in RFC6040_DECAP {
            for (outer_ecn, result) in RFC6040_OUTER.into_iter().zip(row) {
                for vlan in [false, true] {
                    port += 1;
                    let mut inner = data(sa(CLIENT, port), VIP);
                    if vlan {
                        inner = inner.with_vlan(ETH_P_8021Q, 3);
                    }
                    inner.tos = inner_dscp | inner_ecn;
                    let frame = ipip_from(LB_ADDR, outer_dscp | outer_ecn, &inner);
                    let run = decap.run(0, &frame)?;
                    let what = format!(
                        "outer ECN {outer_ecn:#04b} on inner {inner_ecn:#04b}{}",
                        if vlan { " (802.1Q)" } else { "" }
                    );
                    let checked = match result {
                        Some(ecn) => {
                            want.decapsulated += 1;
                            let mut expected = inner.clone();
                            expected.tos = inner_dscp | ecn;
                            expect_frame(&run, XDP_PASS, &expected.build(), &what)
                        }
                        None => {
                            want.dropped_ce_not_ect += 1;
                            expect_action(&run, XDP_DROP, &what)
                        }
                    };
                    if let Err(e) = checked {
                        failures.push(format!("{e:#}"));
                    }
                }
            }
        }
        decap_checks_passed(&decap, want, failures)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn oversize_df_packet_gets_icmp_frag_needed() {
    bench(|ns, net| {
        ns.ip(&["link", "set", "veth0", "mtu", "1400"])?;
        let (lb, vip) = lb_with_vip(net, Mode::Ipip)?;
        // A data segment of exactly `tot_len` IP bytes (TCP header with options: 28 bytes).
        let sized = |pkt: Packet, tot_len: usize| -> Packet {
            let payload: Vec<u8> = (0..tot_len - 48).map(|i| (i * 7) as u8).collect();
            let p = pkt.with_payload(&payload);
            assert_eq!(p.ip_bytes().len(), tot_len);
            p
        };

        // DF, 1400 bytes: 1420 once encapsulated, over veth0's MTU -> ICMP with MTU 1400 - 20.
        let big = sized(data(sa(CLIENT, 45000), VIP), 1400);
        let run = lb.run(net.veth0, &big.build())?;
        expect_frag_needed(&run, &big, 1380, "DF packet of 1400 bytes")?;
        // One byte over.
        let big = sized(data(sa(CLIENT, 45001), VIP), 1381);
        let run = lb.run(net.veth0, &big.build())?;
        expect_frag_needed(&run, &big, 1380, "DF packet of 1381 bytes")?;
        // Two-arm: the client is behind veth2; the reply goes back out of veth2.
        let big = sized(far_data(45003, VIP), 1400);
        let run = lb.run(net.veth2, &big.build())?;
        expect_frag_needed(&run, &big, 1380, "two-arm DF packet of 1400 bytes")?;
        let icmp = 3;

        // Without DF: encapsulated and passed to the kernel to fragment (tests/tunnel.rs).
        let mut no_df = sized(data(sa(CLIENT, 45010), VIP), 1400);
        no_df.frag = 0;
        let run = lb.run(net.veth0, &no_df.build())?;
        expect_action(&run, XDP_PASS, "packet of 1400 bytes without DF")?;

        // 1380 bytes fit exactly (1400 once encapsulated).
        let client = sa(CLIENT, 45020);
        let fits = sized(data(client, VIP), 1380);
        let pick = lb.pick(&vip, client)?;
        expect_ipip_tx(&lb, &fits, pick.backend, LB_ADDR, "DF packet of 1380 bytes")?;

        lb.expect_global(
            &[
                (R::LB_REASON_TX_ICMP_FRAG_NEEDED, icmp),
                (R::LB_REASON_PASS_IPIP_TOO_BIG, 1),
                (R::LB_REASON_TX_IPIP, 1),
            ],
            &[(XDP_TX, icmp + 1), (XDP_PASS, 1)],
        )?;
        Ok(())
    });
}

/// A flow of [`mode_switch_keeps_tracked_flows`], in the mode it started in.
struct Tracked {
    name: char,
    client: SocketAddrV4,
    pick: Pick,
    mode: Mode,
    /// The SNAT address it claimed (NAT only).
    snat: Option<SocketAddrV4>,
}

impl Tracked {
    /// The flow of `client` through `vip` in `mode` (not yet sent): its pick and (NAT) its SNAT
    /// address.
    fn open(
        lb: &mut Lb,
        vip: &VipKey,
        name: char,
        client: SocketAddrV4,
        mode: Mode,
    ) -> Result<Self> {
        let pick = lb.pick(vip, client)?;
        let snat = if mode == Mode::Nat {
            let port = lb.claim_port(pick.hash, pick.backend);
            Some(sa(LB_ADDR, port.context("free SNAT port")?))
        } else {
            None
        };
        Ok(Tracked {
            name,
            client,
            pick,
            mode,
            snat,
        })
    }

    /// Runs `pkt` of this flow on veth0 and checks that it leaves (XDP_TX) as its mode sends it.
    fn expect(&self, lb: &Lb, pkt: &Packet, what: &str) -> Result<()> {
        let backend = self.pick.backend;
        match self.mode {
            Mode::Nat => {
                let snat = self.snat.context("a NAT flow without an SNAT address")?;
                let run = lb.run(lb.net.veth0, &pkt.build())?;
                let want = pkt.natted(VETH0_MAC, neighbour_mac(*backend.ip()), snat, backend);
                expect_frame(&run, XDP_TX, &want.build(), what)?;
                verify_checksums(&run.out, false).with_context(|| format!("{what}: checksums"))
            }
            Mode::Ipip => expect_ipip_tx(lb, pkt, backend, LB_ADDR, what).map(drop),
            Mode::L2dsr => expect_l2dsr(lb, lb.net.veth0, pkt, XDP_TX, backend, what).map(drop),
        }
    }
}

#[test]
fn mode_switch_keeps_tracked_flows() {
    bench(|_, net| {
        let (mut lb, vip) = lb_with_vip(net, Mode::Nat)?;
        let (mut nat, mut ipip, mut l2dsr) = (0u64, 0u64, 0u64);
        let mut count = |mode: Mode| match mode {
            Mode::Nat => nat += 1,
            Mode::Ipip => ipip += 1,
            Mode::L2dsr => l2dsr += 1,
        };

        // Flow A starts in NAT.
        let a = Tracked::open(&mut lb, &vip, 'A', sa(CLIENT, 46000), Mode::Nat)?;
        a.expect(&lb, &client_syn(a.client, VIP), "SYN of flow A (nat)")?;
        count(Mode::Nat);
        let mut flows = vec![a];

        // After each switch every tracked flow keeps its mode (A NAT with the same SNAT port,
        // both ways), and the new flow B, C, D takes the new one.
        for (i, mode) in [Mode::Ipip, Mode::L2dsr, Mode::Nat].into_iter().enumerate() {
            lb.set_mode(&vip, mode)?;
            for f in &flows {
                let what = format!(
                    "data of flow {} ({}) after the switch to {mode}",
                    f.name, f.mode
                );
                f.expect(&lb, &data(f.client, VIP), &what)?;
                count(f.mode);
            }
            if mode == Mode::Ipip {
                let a = &flows[0];
                let reply_a = Packet::tcp(
                    neighbour_mac(*a.pick.backend.ip()),
                    VETH0_MAC,
                    a.pick.backend,
                    a.snat.context("flow A has an SNAT address")?,
                    TCP_ACK,
                );
                let run = lb.run(net.veth0, &reply_a.build())?;
                let want = reply_a.natted(VETH0_MAC, CLIENT_MAC, VIP, a.client);
                expect_frame(
                    &run,
                    XDP_TX,
                    &want.build(),
                    "reply of flow A after the switch to ipip",
                )?;
            }
            let name = char::from(b'B' + i as u8);
            let f = Tracked::open(&mut lb, &vip, name, sa(CLIENT, 46001 + i as u16), mode)?;
            f.expect(
                &lb,
                &client_syn(f.client, VIP),
                &format!("SYN of new flow {name} ({mode})"),
            )?;
            count(mode);
            flows.push(f);
        }

        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, nat),
                (R::LB_REASON_TX_NAT_REPLY, 1),
                (R::LB_REASON_TX_IPIP, ipip),
                (R::LB_REASON_TX_L2DSR, l2dsr),
            ],
            &[(XDP_TX, nat + 1 + ipip + l2dsr)],
        )?;
        Ok(())
    });
}

#[test]
fn dsr_without_next_hop_drops() {
    bench(|ns, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        // On veth0's subnet but without a neighbour entry, and without any route at all.
        let unresolved = sa(Ipv4Addr::new(10, 1, 0, 9), 80);
        let unrouted = sa(Ipv4Addr::new(10, 77, 0, 5), 80);
        let neigh = ns.ip(&["neigh", "show", &unresolved.ip().to_string()])?;
        ensure!(
            neigh.trim().is_empty(),
            "{unresolved} has a neighbour entry: {neigh}"
        );

        let mut cases: Vec<(String, VipKey, u32, Packet, Packet)> = Vec::new();
        for (i, (mode, backend)) in [
            (Mode::L2dsr, unresolved),
            (Mode::Ipip, unresolved),
            (Mode::L2dsr, unrouted),
            (Mode::Ipip, unrouted),
        ]
        .into_iter()
        .enumerate()
        {
            let addr = sa(Ipv4Addr::new(10, 9, 9, 20 + i as u8), 80);
            let vip = lb.add_vip_mode(addr, Protocol::Tcp, mode, &[(backend, 100)])?;
            let client = sa(CLIENT, 47000 + i as u16);
            cases.push((
                format!("{mode} to {backend}"),
                vip,
                net.veth0,
                client_syn(client, addr),
                data(client, addr),
            ));
        }
        // Two-arm: the backend's neighbour is known but the egress (veth0) is not a tx port.
        for (i, mode) in [Mode::L2dsr, Mode::Ipip].into_iter().enumerate() {
            let addr = sa(Ipv4Addr::new(10, 9, 9, 30 + i as u8), 80);
            let vip = lb.add_vip_mode(addr, Protocol::Tcp, mode, &[(BE1, 100)])?;
            let port = 47100 + i as u16;
            cases.push((
                format!("two-arm {mode} to {BE1} (veth0 not a tx port)"),
                vip,
                net.veth2,
                far_syn(port, addr),
                far_data(port, addr),
            ));
        }
        let mut drops = 0;
        for (what, _vip, ingress, first, second) in &cases {
            for (which, pkt) in [("SYN", first), ("data", second)] {
                let run = lb.run(*ingress, &pkt.build())?;
                expect_action(&run, XDP_DROP, &format!("{which}: {what}"))?;
                drops += 1;
            }
        }
        lb.expect_global(
            &[(R::LB_REASON_DROP_DSR_NO_NEXTHOP, drops)],
            &[(XDP_DROP, drops)],
        )?;

        // The bench really lacks the next hop: a NAT VIP to the unresolved backend drops too,
        // before the packet is rewritten (the kernel would drop the rewritten one as a martian:
        // its source is the SNAT address), counted as such.
        let nat_vip = sa(Ipv4Addr::new(10, 9, 9, 40), 80);
        lb.add_vip(nat_vip, Protocol::Tcp, &[(unresolved, 100)])?;
        let run = lb.run(net.veth0, &client_syn(sa(CLIENT, 47200), nat_vip).build())?;
        expect_action(&run, XDP_DROP, "NAT to the unresolved backend")?;
        lb.expect_global(
            &[
                (R::LB_REASON_DROP_DSR_NO_NEXTHOP, drops),
                (R::LB_REASON_DROP_FIB_NO_NEIGH, 1),
            ],
            &[(XDP_DROP, drops + 1)],
        )?;
        Ok(())
    });
}

#[test]
fn no_reply_path_for_dsr() {
    bench(|_, net| {
        let (mut lb, vip) = lb_with_vip(net, Mode::L2dsr)?;
        let ipip_addr = sa(Ipv4Addr::new(10, 9, 9, 10), 80);
        let ipip_vip = lb.add_vip_mode(ipip_addr, Protocol::Tcp, Mode::Ipip, &[(BE1, 100)])?;
        let client = sa(CLIENT, 48000);
        let pick = lb.pick(&vip, client)?;
        let be_mac = neighbour_mac(*pick.backend.ip());

        let syn = client_syn(client, VIP);
        expect_l2dsr(
            &lb,
            net.veth0,
            &syn,
            XDP_TX,
            pick.backend,
            "SYN of the flow",
        )?;
        let run = lb.run(net.veth0, &client_syn(client, ipip_addr).build())?;
        expect_action(&run, XDP_TX, "SYN to the ipip VIP")?;

        let answers = [
            (
                "backend -> client (from its own address)",
                Packet::tcp(be_mac, VETH0_MAC, pick.backend, client, TCP_SYN | TCP_ACK)
                    .with_seq_ack(0x7000_0000, 0x1234_567c),
            ),
            (
                "backend -> client (from the VIP, as a DSR backend answers)",
                Packet::tcp(be_mac, VETH0_MAC, VIP, client, TCP_SYN | TCP_ACK)
                    .with_seq_ack(0x7000_0000, 0x1234_567c),
            ),
            (
                "IPIP backend -> client (from the ipip VIP)",
                Packet::tcp(
                    neighbour_mac(BACKEND1),
                    VETH0_MAC,
                    ipip_addr,
                    client,
                    TCP_SYN | TCP_ACK,
                ),
            ),
        ];
        for (what, pkt) in &answers {
            let frame = pkt.build();
            let run = lb.run(net.veth0, &frame)?;
            expect_frame(&run, XDP_PASS, &frame, what)?;
        }
        lb.expect_global(
            &[
                (R::LB_REASON_TX_L2DSR, 1),
                (R::LB_REASON_TX_IPIP, 1),
                (R::LB_REASON_PASS_NOT_VIP, answers.len() as u64),
            ],
            &[(XDP_TX, 2), (XDP_PASS, answers.len() as u64)],
        )?;
        // No reply traffic in the VIP and backend counters.
        for (v, be) in [(&vip, pick.backend), (&ipip_vip, BE1)] {
            let c = lb.vip_counters(v)?;
            ensure!(c.packets == 1 && c.new_flows == 1, "counters of {v}: {c:?}");
            let c = lb.backend_counters(v, be)?;
            ensure!(
                c.packets == 1 && c.new_flows == 1,
                "counters of {be} of {v}: {c:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn dsr_flows_stay_on_their_backend_when_a_backend_is_added() {
    bench(|ns, net| {
        let be3 = sa(Ipv4Addr::new(10, 1, 0, 4), 80);
        let be3_mac: Mac = [0x02, 0, 0, 0, 0, 0x04];
        ns.ip(&[
            "neigh",
            "replace",
            &be3.ip().to_string(),
            "lladdr",
            &mac_str(&be3_mac),
            "dev",
            "veth0",
            "nud",
            "permanent",
        ])?;
        let mac_of = |be: SocketAddrV4| {
            if be == be3 {
                be3_mac
            } else {
                neighbour_mac(*be.ip())
            }
        };
        let mut lb = Lb::new(net, config(PORTS))?;
        for (i, mode) in [Mode::L2dsr, Mode::Ipip].into_iter().enumerate() {
            let addr = sa(Ipv4Addr::new(10, 9, 9, 50 + i as u8), 80);
            let vip = lb.add_vip_mode(addr, Protocol::Tcp, mode, &[(BE1, 100), (BE2, 100)])?;
            let check = |lb: &Lb, pkt: &Packet, backend: SocketAddrV4, what: &str| -> Result<()> {
                let frame = pkt.build();
                let run = lb.run(net.veth0, &frame)?;
                match mode {
                    Mode::Ipip => expect_ipip(
                        &run,
                        XDP_TX,
                        pkt,
                        mac_of(backend),
                        VETH0_MAC,
                        LB_ADDR,
                        *backend.ip(),
                        what,
                    ),
                    _ => expect_frame(
                        &run,
                        XDP_TX,
                        &pkt.routed(VETH0_MAC, mac_of(backend)).build(),
                        what,
                    ),
                }
            };
            let clients: Vec<SocketAddrV4> = (0..24).map(|p| sa(CLIENT, 49000 + p)).collect();
            let mut before = Vec::new();
            for c in &clients {
                let pick = lb.pick(&vip, *c)?;
                check(
                    &lb,
                    &client_syn(*c, addr),
                    pick.backend,
                    &format!("{mode}: SYN of {c}"),
                )?;
                before.push(pick.backend);
            }
            lb.state
                .add_backend(&vip, be3, 100)
                .context("adding a third backend")?;
            lb.reconcile()?;
            let mut moved = 0;
            for (c, old) in clients.iter().zip(&before) {
                if lb.pick(&vip, *c)?.backend != *old {
                    moved += 1;
                }
                check(
                    &lb,
                    &data(*c, addr),
                    *old,
                    &format!("{mode}: data of {c} after adding {be3} (tracked to {old})"),
                )?;
            }
            ensure!(
                moved > 0,
                "{mode}: no flow's ring slot moved, the check proves nothing"
            );
            // A new flow whose slot moved goes to the new backend.
            let fresh = (0..200u16)
                .map(|p| sa(CLIENT_B, 49100 + p))
                .find(|c| lb.pick(&vip, *c).map(|p| p.backend == be3).unwrap_or(false))
                .context("no client port maps to the new backend")?;
            check(
                &lb,
                &client_syn(fresh, addr),
                be3,
                &format!("{mode}: new flow {fresh} to {be3}"),
            )?;
        }
        Ok(())
    });
}
