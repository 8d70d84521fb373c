//! Packet tracing (`bpf/trace.h`) through the loaded XDP program (BPF_PROG_TEST_RUN, the bench of
//! `common::lab`), read from the real perf buffer: with the switch off nothing is sent; with it
//! on, exactly the packets that match the filter produce a record, with the 5-tuple they arrived
//! with, the reason and verdict the program counted, and the frame bytes the program left (the
//! rewritten frame of a forwarded packet, the untouched one of a drop); the count, the deadline
//! and the snap length bound what is sent.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::maps::reason_name;
use xdplb::dataplane::trace::{TraceFilter, TraceRecord, TraceSession};
use xdplb::skel::types::lb_reason as R;
use xdplb_model::state::Protocol;

use common::expect::*;
use common::lab::*;
use xdplb_testkit::packet::*;

/// Everything the session has, waiting until nothing more comes for 200 ms.
fn drain(s: &mut TraceSession<'_>) -> Result<Vec<TraceRecord>> {
    let mut all = Vec::new();
    loop {
        let got = s.poll(Duration::from_millis(200))?;
        if got.is_empty() {
            return Ok(all);
        }
        all.extend(got);
    }
}

fn expect_record(
    r: &TraceRecord,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    run: &Run,
    reason: R,
    what: &str,
) -> Result<()> {
    ensure!(
        (r.src, r.dst, r.proto) == (src, dst, 6),
        "{what}: record of {} -> {} proto {}, expected {src} -> {dst} tcp",
        r.src,
        r.dst,
        r.proto
    );
    ensure!(
        r.reason == reason.0 as u8 && u32::from(r.verdict) == run.action,
        "{what}: record says {} {}, the program answered {} {}",
        reason_name(r.reason as usize),
        action_name(u32::from(r.verdict)),
        reason_name(reason.0 as usize),
        action_name(run.action)
    );
    ensure!(
        r.frame == run.out && r.frame_len as usize == run.out.len(),
        "{what}: the record's frame ({} of {} bytes) is not the frame the program left ({} bytes):\n{}",
        r.frame.len(),
        r.frame_len,
        run.out.len(),
        diff(&r.frame, &run.out)
    );
    ensure!(r.ifindex != 0, "{what}: no ingress ifindex");
    Ok(())
}

/// Off: a reader is listening and packets of every kind go through, nothing is sent; the
/// switch reads off before a session, after `stop()` and after the session is dropped.
#[test]
fn nothing_is_sent_while_the_switch_is_off() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        lb.block("10.1.0.51/32".parse()?)?;
        let tap = lb.rec.dataplane_mut().trace_tap()?;
        ensure!(!tap.is_on()?, "a fresh program traces");
        let mut s = tap.start(&TraceFilter::default(), 1000, Duration::from_secs(60), 1518)?;
        ensure!(tap.is_on()?, "the switch is not on during a session");
        s.stop()?;
        ensure!(!tap.is_on()?, "stop() left the switch on");
        let frames = [
            client_syn(sa(CLIENT, 40000), VIP).build(),
            client_syn(sa(CLIENT_B, 40000), VIP).build(),
            Packet::udp(CLIENT_MAC, VETH0_MAC, sa(CLIENT, 5000), sa(LB_ADDR, 53)).build(),
        ];
        for f in &frames {
            lb.run(lb.net.veth0, f)?;
        }
        let got = drain(&mut s)?;
        ensure!(got.is_empty(), "{} records with the switch off", got.len());
        drop(s);
        ensure!(!tap.is_on()?, "the switch is on after the session");
        Ok(())
    });
}

/// On, filtered by VIP (address, port, protocol) and client prefix: only the matching packets
/// are sent, each once, with the reason and verdict the program gave them and the frame it left
/// (a NAT-rewritten SYN, a blocked client's drop as it came).
#[test]
fn a_filtered_trace_sends_exactly_the_matching_packets() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        lb.block("10.1.0.51/32".parse()?)?;
        let tap = lb.rec.dataplane_mut().trace_tap()?;
        let filter = TraceFilter {
            vip: Some(*VIP.ip()),
            port: Some(VIP.port()),
            proto: Some(6),
            client: Some("10.1.0.48/29".parse()?),
        };
        let mut s = tap.start(&filter, 100, Duration::from_secs(60), 1518)?;
        // Matching: a forwarded SYN from CLIENT (.50) and a dropped one from the blocked
        // CLIENT_B (.51), both in 10.1.0.48/29.
        let syn = client_syn(sa(CLIENT, 40001), VIP).build();
        let fwd = lb.run(lb.net.veth0, &syn)?;
        expect_action(&fwd, XDP_TX, "the client's SYN")?;
        let blocked = client_syn(sa(CLIENT_B, 40002), VIP).build();
        let dropped = lb.run(lb.net.veth0, &blocked)?;
        expect_frame(&dropped, XDP_DROP, &blocked, "the blocked client's SYN")?;
        // Not matching: another port or protocol of the VIP's address, a client outside the
        // prefix (FAR_CLIENT, 10.2.0.50), the host's own traffic.
        let others = [
            (
                "UDP to the VIP's address",
                Packet::udp(CLIENT_MAC, VETH0_MAC, sa(CLIENT, 5000), VIP_UDP).build(),
                lb.net.veth0,
            ),
            (
                "TCP to another port",
                Packet::tcp(
                    CLIENT_MAC,
                    VETH0_MAC,
                    sa(CLIENT, 5000),
                    sa(*VIP.ip(), 81),
                    TCP_SYN,
                )
                .build(),
                lb.net.veth0,
            ),
            (
                "a client outside the prefix",
                Packet::tcp(
                    FAR_CLIENT_MAC,
                    VETH2_MAC,
                    sa(FAR_CLIENT, 40003),
                    VIP,
                    TCP_SYN,
                )
                .build(),
                lb.net.veth2,
            ),
            (
                "to the host",
                Packet::tcp(
                    CLIENT_MAC,
                    VETH0_MAC,
                    sa(CLIENT, 5000),
                    sa(LB_ADDR, 22),
                    TCP_SYN,
                )
                .build(),
                lb.net.veth0,
            ),
        ];
        for (what, f, ifindex) in &others {
            lb.run(*ifindex, f).with_context(|| what.to_string())?;
        }
        let got = drain(&mut s)?;
        ensure!(
            got.len() == 2,
            "{} records, expected 2 (the client's SYN, the blocked client's): {:?}",
            got.len(),
            got.iter()
                .map(|r| format!("{} -> {} {}", r.src, r.dst, reason_name(r.reason as usize)))
                .collect::<Vec<_>>()
        );
        expect_record(
            &got[0],
            sa(CLIENT, 40001),
            VIP,
            &fwd,
            R::LB_REASON_TX_NAT_FORWARD,
            "the client's SYN",
        )?;
        expect_record(
            &got[1],
            sa(CLIENT_B, 40002),
            VIP,
            &dropped,
            R::LB_REASON_DROP_FIREWALL,
            "the blocked client's SYN",
        )?;
        ensure!(
            got[0].frame != syn,
            "the forwarded SYN's record holds the frame as it came, not as it left"
        );
        ensure!(
            got[0].ts_ns <= got[1].ts_ns && got[0].tcp_flags == TCP_SYN,
            "timestamps out of order or TCP flags lost"
        );
        drop(s);
        ensure!(!tap.is_on()?, "the switch is on after the session");
        Ok(())
    });
}

/// The program keeps the bounds itself: at most `count` records, nothing after the deadline,
/// at most `snaplen` frame bytes each (the frame's whole length still given).
#[test]
fn count_deadline_and_snap_length_bound_what_is_sent() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let tap = lb.rec.dataplane_mut().trace_tap()?;
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|i| client_syn(sa(CLIENT, 41000 + i), VIP).build())
            .collect();

        let mut s = tap.start(&TraceFilter::default(), 3, Duration::from_secs(60), 64)?;
        let mut runs = Vec::new();
        for f in &frames {
            runs.push(lb.run(lb.net.veth0, f)?);
        }
        let got = drain(&mut s)?;
        ensure!(got.len() == 3, "{} records with count 3", got.len());
        for (r, run) in got.iter().zip(&runs) {
            ensure!(
                r.frame.len() == 64 && r.frame[..] == run.out[..64],
                "snap length 64: a record of {} bytes, or not the frame's first 64",
                r.frame.len()
            );
            ensure!(
                r.frame_len as usize == run.out.len(),
                "frame length {} != {}",
                r.frame_len,
                run.out.len()
            );
        }
        drop(s);

        let mut s = tap.start(&TraceFilter::default(), 100, Duration::from_millis(1), 1518)?;
        std::thread::sleep(Duration::from_millis(20));
        for f in &frames {
            lb.run(lb.net.veth0, f)?;
        }
        let got = drain(&mut s)?;
        ensure!(got.is_empty(), "{} records after the deadline", got.len());
        Ok(())
    });
}

/// `trace_events` is pinned like every map: a restarted program adopts it (an upgrade keeps
/// every map, the trace's included), starts with the switch off, and traces through it.
#[test]
fn a_restarted_program_adopts_the_trace_map_and_starts_switched_off() {
    bench(|_, net| {
        let pins = PinDir::new("trace");
        let mut lb = Lb::load(net, config(PORTS), &Lb::pinned_options(&pins))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let syn = client_syn(sa(CLIENT, 40100), VIP).build();
        let first_map = {
            let tap = lb.rec.dataplane_mut().trace_tap()?;
            let mut s = tap.start(&TraceFilter::default(), 10, Duration::from_secs(60), 1518)?;
            // Left on, as by an lbd killed mid-trace.
            lb.run(lb.net.veth0, &syn)?;
            ensure!(
                drain(&mut s)?.len() == 1,
                "the first program sent no record"
            );
            std::mem::forget(s);
            ensure!(tap.is_on()?, "the switch went off");
            maps_of(&lb)?
        };
        let mut lb = lb.restart()?;
        lb.reconcile()?;
        ensure!(
            maps_of(&lb)? == first_map,
            "trace_events was not adopted: {first_map} -> {}",
            maps_of(&lb)?
        );
        let tap = lb.rec.dataplane_mut().trace_tap()?;
        ensure!(!tap.is_on()?, "the new program starts tracing");
        let mut s = tap.start(&TraceFilter::default(), 10, Duration::from_secs(60), 1518)?;
        let run = lb.run(lb.net.veth0, &client_syn(sa(CLIENT, 40101), VIP).build())?;
        let got = drain(&mut s)?;
        ensure!(got.len() == 1, "{} records after the restart", got.len());
        ensure!(got[0].frame == run.out, "the record is not the frame");
        Ok(())
    });
}

/// The id of the trace_events map the loaded program uses.
fn maps_of(lb: &Lb) -> Result<u32> {
    let maps =
        xdplb::dataplane::program_maps(std::os::fd::AsFd::as_fd(lb.rec.dataplane().program()))?;
    let m = maps.get("trace_events").context("no trace_events map")?;
    Ok(libbpf_rs::MapCore::info(m)?.info.id)
}
