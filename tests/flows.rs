//! The flow-table bugs of issue 16, reproduced through BPF_PROG_TEST_RUN on the real program.
//! Each test failed on the v1 flow tables (one shared LRU per direction, 40-byte keys) and
//! passes on the v2 ones (bpf/flow.h); they use only what both have (verdicts, output frames,
//! counters), so they can be run against either.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdplb::maglev;
use xdplb_model::ratelimit::{Policy, Scope};
use xdplb_model::state::{Mode, Protocol};

use common::lab::*;
use xdplb_testkit::packet::{endpoints, Packet, IP_MF, TCP_ACK, TCP_RST, TCP_SYN};

/// The SNAT source a NAT packet left with.
fn snat_of(run: &Run, what: &str) -> Result<SocketAddrV4> {
    ensure!(run.action == XDP_TX, "{what}: {}", action_name(run.action));
    Ok(endpoints(&run.out).context(what.to_string())?.0)
}

/// The backend's packet `flags` to `snat` from `backend`, received on veth0.
fn from_backend(backend: SocketAddrV4, snat: SocketAddrV4, flags: u8) -> Packet {
    Packet::tcp(
        neighbour_mac(*backend.ip()),
        VETH0_MAC,
        backend,
        snat,
        flags,
    )
    .with_seq_ack(0x7000_0000, 0x1234_567c)
}

/// A full NAT TCP handshake through the program (SYN, the backend's SYN-ACK, the client's ACK
/// with data); returns the flow's SNAT address and port.
fn nat_handshake(lb: &Lb, client: SocketAddrV4, backend: SocketAddrV4) -> Result<SocketAddrV4> {
    let snat = snat_of(
        &lb.run(lb.net.veth0, &client_syn(client, VIP).build())?,
        "SYN",
    )?;
    let run = lb.run(
        lb.net.veth0,
        &from_backend(backend, snat, TCP_SYN | TCP_ACK).build(),
    )?;
    ensure!(run.action == XDP_TX, "SYN-ACK: {}", action_name(run.action));
    let ack = data_segment(neighbour_mac(*client.ip()), client, VIP);
    ensure!(snat_of(&lb.run(lb.net.veth0, &ack.build())?, "ACK")? == snat);
    Ok(snat)
}

/// A client port of `client`, from `from` up, whose first SNAT port candidate (the flow hash,
/// bpf/flow.h) is `port` of the range `ports`.
fn clashing_client(
    from: u16,
    client: Ipv4Addr,
    vip: SocketAddrV4,
    proto: Protocol,
    ports: (u16, u16),
    port: u16,
) -> Result<SocketAddrV4> {
    let range = u32::from(ports.1) - u32::from(ports.0) + 1;
    (from..=u16::MAX)
        .map(|p| sa(client, p))
        .find(|c| {
            let h = maglev::flow_hash_v4(*c.ip(), *vip.ip(), c.port(), vip.port(), proto.number());
            u32::from(ports.0) + h % range == u32::from(port)
        })
        .context("no client port clashes")
}

/// In full NAT only a SYN starts a flow: an ACK without one would claim an SNAT port the
/// backend never saw (it answers RST), so an ACK flood fills the tables and reflects RSTs.
#[test]
fn a_nat_flow_starts_only_with_a_syn() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let client = sa(CLIENT, 45000);
        let ack = data_segment(neighbour_mac(CLIENT), client, VIP);
        let run = lb.run(lb.net.veth0, &ack.build())?;
        ensure!(
            run.action == XDP_DROP,
            "an ACK without a flow got {}, expected a drop",
            action_name(run.action)
        );
        lb.expect_flow_entries(0, "after an ACK without a flow")?;
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 0,
            "the ACK made a new flow"
        );
        // The SYN of the same tuple does start the flow.
        let run = lb.run(lb.net.veth0, &client_syn(client, VIP).build())?;
        ensure!(
            run.action == XDP_TX,
            "the SYN got {}",
            action_name(run.action)
        );
        ensure!(
            lb.vip_counters(&vip)?.new_flows == 1,
            "the SYN made no flow"
        );
        Ok(())
    });
}

/// A SYN (without ACK) on an entry that FIN or RST marked closing starts a fresh flow rather
/// than inheriting the closing entry's short life.
#[test]
fn a_syn_after_rst_starts_a_fresh_flow() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let client = sa(CLIENT, 45001);
        let mac = neighbour_mac(CLIENT);
        for (what, pkt) in [
            ("SYN", client_syn(client, VIP)),
            ("RST", Packet::tcp(mac, VETH0_MAC, client, VIP, TCP_RST)),
            ("SYN again", client_syn(client, VIP)),
        ] {
            let run = lb.run(lb.net.veth0, &pkt.build())?;
            ensure!(
                run.action == XDP_TX,
                "{what} got {}",
                action_name(run.action)
            );
        }
        let new = lb.vip_counters(&vip)?.new_flows;
        ensure!(
            new == 2,
            "{new} new flows: the second SYN did not start a fresh flow"
        );
        Ok(())
    });
}

/// No flow may ever share a live SNAT port with another, whatever is evicted: with the v1
/// tables, once flow A's reverse entry was evicted from its LRU (A's client keeps sending, its
/// backend is silent), a new flow C whose first candidate is A's port claimed it, and the
/// backend's packets for A were rewritten to C's client.
#[test]
fn an_evicted_reply_entry_never_hands_a_live_port_to_another_flow() {
    bench(|_, net| {
        let ports = (20000, 39999);
        let mut lb = Lb::new(net, config(ports))?;
        lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        // The other flows go to another VIP and backend: nothing of theirs ever looks A's
        // reply entry up (which would keep it recent in an LRU).
        let other = sa(*VIP_UDP.ip(), 54);
        lb.add_vip(other, Protocol::Udp, &[(BE2_UDP, 100)])?;
        let a = sa(CLIENT, 1111);
        let query_to = |c: SocketAddrV4, vip: SocketAddrV4| {
            Packet::udp(neighbour_mac(*c.ip()), VETH0_MAC, c, vip)
                .with_payload(b"query")
                .build()
        };
        let query = |c: SocketAddrV4| query_to(c, VIP_UDP);
        let pa = snat_of(&lb.run(lb.net.veth0, &query(a))?, "A's first packet")?;
        // Four times the tables' size (4096) of other flows; A's client keeps sending, its backend
        // does not answer (a one-way stream): A stays live, its reply side is never touched.
        for i in 0..16384u16 {
            let run = lb.run(lb.net.veth0, &query_to(sa(CLIENT_B, 10000 + i), other))?;
            ensure!(
                run.action == XDP_TX || run.action == XDP_DROP,
                "flow {i}: {}",
                action_name(run.action)
            );
            if i % 8 == 0 {
                ensure!(
                    snat_of(&lb.run(lb.net.veth0, &query(a))?, "A")? == pa,
                    "A changed port"
                );
            }
        }
        ensure!(
            snat_of(&lb.run(lb.net.veth0, &query(a))?, "A")? == pa,
            "A changed port"
        );
        // C: another client port of A's address.
        let c = clashing_client(
            a.port() + 1,
            CLIENT,
            VIP_UDP,
            Protocol::Udp,
            ports,
            pa.port(),
        )?;
        let run = lb.run(lb.net.veth0, &query(c))?;
        if run.action == XDP_TX {
            let pc = endpoints(&run.out)?.0;
            ensure!(pc != pa, "flow C ({c}) was given A's live SNAT port {pa}");
        }
        // The backend's answer to A's port goes to A's client.
        let answer = Packet::udp(neighbour_mac(BACKEND1), VETH0_MAC, BE1_UDP, pa)
            .with_payload(b"answer")
            .build();
        let run = lb.run(lb.net.veth0, &answer)?;
        ensure!(
            run.action == XDP_TX,
            "A's answer: {}",
            action_name(run.action)
        );
        let (_, to) = endpoints(&run.out)?;
        ensure!(
            to == a,
            "the backend's answer to A's port {pa} went to {to}, not to A ({a})"
        );
        Ok(())
    });
}

/// One flow, one life: an RST from the client ends both directions. With the v1 tables the
/// reply side stayed live for the full TCP timeout (300 s), holding the SNAT port.
#[test]
fn an_rst_closes_both_directions() {
    bench(|_, net| {
        let mut cfg = config(PORTS);
        cfg.tcp_closing_timeout = Duration::from_secs(1);
        let mut lb = Lb::new(net, cfg)?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let client = sa(CLIENT, 46000);
        let snat = nat_handshake(&lb, client, BE1)?;
        let rst = Packet::tcp(
            neighbour_mac(CLIENT),
            VETH0_MAC,
            client,
            VIP,
            TCP_RST | TCP_ACK,
        );
        ensure!(lb.run(lb.net.veth0, &rst.build())?.action == XDP_TX, "RST");
        sleep(Duration::from_millis(1600));
        let late = from_backend(BE1, snat, TCP_ACK).with_payload(b"late");
        let run = lb.run(lb.net.veth0, &late.build())?;
        ensure!(
            run.action == XDP_PASS,
            "a backend packet 1.6 s after the client's RST (closing timeout 1 s) got {}: the reply \
             side outlived the flow",
            action_name(run.action)
        );
        Ok(())
    });
}

/// A client whose SNAT port candidates are all taken gets other ports on its next attempt: with
/// the v1 tables the 8 candidates came from the tuple alone, so every SYN retransmission failed
/// the same way.
#[test]
fn port_candidates_vary_per_attempt() {
    bench(|_, net| {
        let ports = (20000, 20008);
        let mut lb = Lb::new(net, config(ports))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let x = sa(CLIENT, 47000);
        let hx = maglev::flow_hash_v4(
            *x.ip(),
            *VIP.ip(),
            x.port(),
            VIP.port(),
            Protocol::Tcp.number(),
        );
        let range = 9u32;
        // X's 8 candidates, taken one by one by flows whose first candidate each is.
        for i in 0..8u32 {
            let port = (20000 + (hx % range + i * 65537) % range) as u16;
            let c = clashing_client(1, CLIENT_B, VIP, Protocol::Tcp, ports, port)?;
            let got = snat_of(
                &lb.run(lb.net.veth0, &client_syn(c, VIP).build())?,
                "filler",
            )?;
            ensure!(
                got.port() == port,
                "filler {c} got port {} not {port}",
                got.port()
            );
        }
        // One port of nine is free: some attempt of X must find it.
        let attempts = 30;
        let won = (0..attempts).find_map(|_| {
            let run = lb.run(lb.net.veth0, &client_syn(x, VIP).build()).ok()?;
            (run.action == XDP_TX).then_some(run)
        });
        let run = won.with_context(|| {
            format!("{attempts} SYNs of {x} all refused with one SNAT port of nine free")
        })?;
        let port = endpoints(&run.out)?.0.port();
        let taken: Vec<u16> = (0..8)
            .map(|i| (20000 + (hx % range + i * 65537) % range) as u16)
            .collect();
        ensure!(!taken.contains(&port), "{x} got the taken port {port}");
        Ok(())
    });
}

/// The host's own packets to the SNAT address pass untouched unless a flow owns the port: with
/// the v1 tables a first fragment to a port of the SNAT range was dropped as a NAT reply's.
#[test]
fn a_first_fragment_to_an_unowned_snat_port_is_the_hosts() {
    bench(|_, net| {
        let lb = Lb::new(net, config(PORTS))?;
        let mut frag = Packet::udp(
            neighbour_mac(BACKEND1),
            VETH0_MAC,
            sa(BACKEND1, 53),
            sa(LB_ADDR, 20500),
        )
        .with_payload(&[7u8; 64]);
        frag.frag = IP_MF;
        let frame = frag.build();
        let run = lb.run(lb.net.veth0, &frame)?;
        ensure!(
            run.action == XDP_PASS && run.out == frame,
            "a first fragment to SNAT port 20500, no flow owning it: {}",
            action_name(run.action)
        );
        Ok(())
    });
}

/// An established DSR flow whose entry is gone (another CPU's table after an RSS change, an
/// eviction) is chosen again by Maglev and is never charged to the new-flows limiter: with the
/// v1 tables its next packet counted as a new flow and was dropped once the client was over.
#[test]
fn a_dsr_flow_that_lost_its_entry_is_not_charged_as_new() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip_mode(VIP, Protocol::Tcp, Mode::L2dsr, &[(DSR1, 100)])?;
        lb.state
            .ratelimit
            .set(
                None,
                Policy {
                    rate: 1,
                    burst: 1,
                    scope: Scope::NewFlows,
                },
            )
            .context("setting a rate limit")?;
        lb.reconcile()?;
        let mac = neighbour_mac(CLIENT);
        ensure!(
            lb.run(lb.net.veth0, &client_syn(sa(CLIENT, 48000), VIP).build())?
                .action
                == XDP_TX
        );
        // Segments of flows the tables no longer hold: all sent on to the backend.
        for p in 48001..48011u16 {
            let seg = data_segment(mac, sa(CLIENT, p), VIP).build();
            let run = lb.run(lb.net.veth0, &seg)?;
            ensure!(
                run.action == XDP_TX,
                "a segment of an established flow without entry ({p}) got {}",
                action_name(run.action)
            );
        }
        Ok(())
    });
}
