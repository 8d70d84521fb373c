//! Section 6, the flood row: 200 established flows per mode (opened through the program by
//! their handshake) under a SYN flood of spoofed sources at the generator's full rate (one
//! BPF_PROG_TEST_RUN per packet, each packet a 5-tuple never seen before), the established flows
//! sending a packet each (NAT: and receiving a backend's reply) between stretches of flood.
//!
//! Judged by behaviour only, never by map names or layouts, so that it measures the old and the
//! new flow tables alike: an established packet is lost when the program does not send it on to
//! the place its flow was set up with (same MACs, addresses and ports out: the same backend, the
//! same SNAT port; a NAT reply back to its client), and a flow is evicted when one of its
//! packets goes elsewhere, is dropped or makes the VIP count a new flow.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xdplb_model::state::{Mode, VipKey};

use crate::common::lab::{neighbour_mac, setup_net, Lb, CLIENT, VETH0_MAC, XDP_TX};
use crate::report::{Report, Section};
use crate::setup::*;
use crate::testrun::{floor_frame, Floor, Runner, Spread};
use xdplb_testkit::packet::{
    endpoints, layout, refresh_ip_checksum, set_be16, transport_checksum, IPPROTO_IPIP,
    IPPROTO_TCP, TCP_ACK,
};
use xdplb_testkit::{NetNs, Packet};

const TITLE: &str = "6. SYN flood against established flows (BPF_PROG_TEST_RUN)";
/// Established flows per mode.
const FLOWS: usize = 200;
/// Entries of the established flow table (`[tables] conntrack_size`); the other tables at
/// their defaults.
const TABLE: u32 = 16_384;
/// Flood packets between two rounds of the established flows: two tables' worth, so that a
/// table the SYNs share with established flows turns over twice while those flows are idle.
const STRETCH: usize = 2 * TABLE as usize;
/// Trials per mode (the flood's duration is split into them; a floor trial before each).
const TRIALS: usize = 5;
/// Floor calls per trial.
const FLOOR_PACKETS: usize = 20_000;
/// Spoofed sources: 10.128.0.0/9, one address after the other, the port stepping on wrap.
const SPOOFED: u32 = u32::from_be_bytes([10, 128, 0, 0]);

/// Where a frame is sent: destination MAC, outer addresses and protocol, and the ports of its
/// TCP header (the inner one of an IPIP frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    eth_dst: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ports: (u16, u16),
}

fn place(frame: &[u8]) -> Result<Place> {
    let lay = layout(frame)?;
    let addr = |o: usize| Ipv4Addr::new(frame[o], frame[o + 1], frame[o + 2], frame[o + 3]);
    let tcp = match lay.proto {
        IPPROTO_IPIP => {
            ensure!(frame.len() >= lay.l4 + 20, "truncated inner header");
            lay.l4 + usize::from(frame[lay.l4] & 0x0f) * 4
        }
        _ => lay.l4,
    };
    ensure!(frame.len() >= tcp + 4, "truncated transport header");
    let be16 = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    let mut eth_dst = [0u8; 6];
    eth_dst.copy_from_slice(&frame[..6]);
    Ok(Place {
        eth_dst,
        src: addr(lay.l3 + 12),
        dst: addr(lay.l3 + 16),
        proto: lay.proto,
        ports: (be16(tcp), be16(tcp + 2)),
    })
}

/// One established flow: the client's data segment and where it goes; for NAT also the
/// backend's reply and where that goes (back to the client).
struct Flow {
    data: Vec<u8>,
    to: Place,
    reply: Option<(Vec<u8>, Place)>,
    evicted: bool,
}

fn forwarded(action: u32) -> bool {
    action == XDP_TX || action == libbpf_sys::XDP_REDIRECT
}

/// Runs `frame`; where it went, or an error naming `what` if it was not sent on.
fn sent_on(lb: &Lb, runner: &mut Runner, frame: &[u8], what: &str) -> Result<Place> {
    let prog = lb.rec.dataplane().program();
    let (action, out) = runner.run_out(prog, lb.net.veth0, frame)?;
    ensure!(forwarded(action), "{what}: verdict {action}");
    place(&out).with_context(|| what.to_string())
}

/// Opens flow `i` to `vip` through the program: the client's SYN, for NAT the backend's SYN-ACK
/// to the SNAT address (it must reach the client), the client's ACK, then its first data.
fn open_flow(
    lb: &Lb,
    runner: &mut Runner,
    mode: Mode,
    vip: SocketAddrV4,
    i: usize,
) -> Result<Flow> {
    let client = sa(CLIENT, 30_000 + i as u16);
    let mac = neighbour_mac(CLIENT);
    let prog = lb.rec.dataplane().program();
    let (action, out) = runner.run_out(prog, lb.net.veth0, &syn(client, vip))?;
    ensure!(forwarded(action), "flow {i}: SYN got verdict {action}");
    let to = place(&out)?;
    let reply = if mode == Mode::Nat {
        let (snat, backend) = endpoints(&out)?;
        let synack = syn_ack(backend, snat);
        let back = sent_on(lb, runner, &synack, &format!("flow {i}: SYN-ACK"))?;
        ensure!(
            (back.dst, back.ports.1) == (*client.ip(), client.port()),
            "flow {i}: the SYN-ACK went to {back:?}, not to the client {client}"
        );
        let reply = reply_to(&out)?;
        let got = sent_on(lb, runner, &reply, &format!("flow {i}: reply"))?;
        ensure!(
            got == back,
            "flow {i}: a reply went to {got:?}, the SYN-ACK to {back:?}"
        );
        Some((reply, back))
    } else {
        None
    };
    // The ACK of the backend's ISN + 1, as the client's stack sends it.
    let ack = Packet::tcp(mac, VETH0_MAC, client, vip, TCP_ACK)
        .with_seq_ack(0x1234_5679, BACKEND_ISN + 1)
        .build();
    let data = data(client, vip).build();
    for (frame, what) in [(&ack, "ACK"), (&data, "data")] {
        let got = sent_on(lb, runner, frame, &format!("flow {i}: {what}"))?;
        ensure!(
            got == to,
            "flow {i}: the {what} went to {got:?}, the SYN to {to:?}"
        );
    }
    Ok(Flow {
        data,
        to,
        reply,
        evicted: false,
    })
}

/// The flood's frames: a SYN to `vip` from source `i`, patched into one buffer.
struct FloodFrames {
    frame: Vec<u8>,
    l3: usize,
    l4: usize,
    vip: SocketAddrV4,
}

impl FloodFrames {
    fn new(vip: SocketAddrV4) -> Result<FloodFrames> {
        let frame = syn(sa(Ipv4Addr::from(SPOOFED), 1024), vip);
        let lay = layout(&frame)?;
        Ok(FloodFrames {
            frame,
            l3: lay.l3,
            l4: lay.l4,
            vip,
        })
    }

    /// Source `i`: 10.128.0.0/9 + (i mod 2^23), port 1024 + i / 2^23.
    fn get(&mut self, i: u64) -> &[u8] {
        let src = Ipv4Addr::from(SPOOFED + (i as u32 & 0x7f_ffff));
        let port = 1024 + (i >> 23) as u16;
        let (l3, l4) = (self.l3, self.l4);
        self.frame[l3 + 12..l3 + 16].copy_from_slice(&src.octets());
        refresh_ip_checksum(&mut self.frame, l3);
        set_be16(&mut self.frame, l4, port);
        set_be16(&mut self.frame, l4 + 16, 0);
        let sum = transport_checksum(src, *self.vip.ip(), IPPROTO_TCP, &self.frame[l4..]);
        set_be16(&mut self.frame, l4 + 16, sum);
        &self.frame
    }
}

/// The figures of one mode.
#[derive(Debug, Default)]
struct Outcome {
    established: u64,
    lost: u64,
    evicted: usize,
    flood: u64,
    /// Flood packets the program forwarded, dropped, passed.
    verdicts: [u64; 3],
    wall: Duration,
    /// Mean ns per call of each trial: floor, flood, established packets.
    floor: Vec<f64>,
    flood_ns: Vec<f64>,
    est_ns: Vec<f64>,
}

/// One mode: a fresh LB with one VIP, [`FLOWS`] flows, then the flood for `time`.
fn measure_mode(
    net: crate::common::lab::Net,
    floor: &Floor,
    mode: Mode,
    vip_addr: SocketAddrV4,
    backend_port: u16,
    time: Duration,
) -> Result<Outcome> {
    let mut lb = load_lb(net, &opts(TABLE))?;
    let vip: VipKey = add_vip(&mut lb, vip_addr, mode, &near_backends(backend_port))?;
    let mut runner = Runner::default();
    let mut flows = (0..FLOWS)
        .map(|i| open_flow(&lb, &mut runner, mode, vip_addr, i))
        .collect::<Result<Vec<_>>>()
        .context("opening the established flows")?;
    let prog = lb.rec.dataplane().program();
    let ifx = lb.net.veth0;
    let mut frames = FloodFrames::new(vip_addr)?;
    let ff = floor_frame();
    let mut out = Outcome::default();
    let mut i = 0u64;
    let start = Instant::now();
    for t in 0..TRIALS {
        let mut total = 0u64;
        for _ in 0..FLOOR_PACKETS {
            total += runner.run(floor.program(), ifx, &ff)?.1;
        }
        out.floor.push(total as f64 / FLOOR_PACKETS as f64);
        let until = start + time.mul_f64((t + 1) as f64 / TRIALS as f64);
        let (mut flood_ns, mut flood_n, mut est_ns, mut est_n) = (0u64, 0u64, 0u64, 0u64);
        // At least one stretch and round per trial, however late the trial starts.
        loop {
            for _ in 0..STRETCH {
                let (action, ns) = runner.run(prog, ifx, frames.get(i))?;
                i += 1;
                flood_ns += ns;
                flood_n += 1;
                let v = match action {
                    a if forwarded(a) => 0,
                    libbpf_sys::XDP_DROP => 1,
                    _ => 2,
                };
                out.verdicts[v] += 1;
            }
            let mut new_flows = lb.vip_counters(&vip)?.new_flows;
            for f in flows.iter_mut() {
                let mut ok = true;
                let packets = std::iter::once((&f.data, f.to))
                    .chain(f.reply.as_ref().map(|(frame, to)| (frame, *to)));
                for (frame, to) in packets {
                    let run = runner.run_frame(prog, ifx, frame, 1)?;
                    est_ns += run.duration.as_nanos() as u64;
                    est_n += 1;
                    out.established += 1;
                    let here = forwarded(run.action) && place(&run.out).ok() == Some(to);
                    if !here {
                        out.lost += 1;
                    }
                    ok &= here;
                }
                let now = lb.vip_counters(&vip)?.new_flows;
                f.evicted |= !ok || now != new_flows;
                new_flows = now;
            }
            if Instant::now() >= until {
                break;
            }
        }
        out.flood_ns.push(flood_ns as f64 / flood_n.max(1) as f64);
        out.est_ns.push(est_ns as f64 / est_n.max(1) as f64);
    }
    out.wall = start.elapsed();
    out.flood = i;
    out.evicted = flows.iter().filter(|f| f.evicted).count();
    Ok(out)
}

/// Section 6 of the report.
pub fn run(report: &mut Report, quick: bool) -> Result<()> {
    let time = if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let modes = [
        ("NAT", Mode::Nat, sa(Ipv4Addr::new(10, 9, 9, 9), 80), 8080),
        (
            "L2 DSR",
            Mode::L2dsr,
            sa(Ipv4Addr::new(10, 9, 9, 10), 80),
            80,
        ),
        ("IPIP", Mode::Ipip, sa(Ipv4Addr::new(10, 9, 9, 11), 80), 80),
    ];
    let results = NetNs::within("bench-flood", |ns| {
        crate::setup::pin_to_this_cpu()?;
        let net = setup_net(ns)?;
        add_routes(ns)?;
        let floor = Floor::load()?;
        modes
            .iter()
            .map(|(name, mode, vip, port)| {
                measure_mode(net, &floor, *mode, *vip, *port, time)
                    .with_context(|| format!("{name} under the flood"))
            })
            .collect::<Result<Vec<_>>>()
    })
    .context("section 6: SYN flood")?;

    let mut s = Section::new(
        TITLE,
        &[
            "mode",
            "established packets lost",
            "flows evicted",
            "flood packets",
            "flood rate (calls/s)",
            "flood above floor (min)",
            "flood above floor (median)",
            "established above floor (median)",
            "flood forwarded / dropped / passed",
            "target",
        ],
    );
    let mut closing = Vec::new();
    for ((name, mode, ..), o) in modes.iter().zip(&results) {
        let (floor, flood, est) = (
            Spread::of(&o.floor),
            Spread::of(&o.flood_ns),
            Spread::of(&o.est_ns),
        );
        s.row(
            vec![
                name.to_string(),
                format!("{} of {}", o.lost, o.established),
                format!("{} of {FLOWS}", o.evicted),
                o.flood.to_string(),
                format!("{:.0}", o.flood as f64 / o.wall.as_secs_f64()),
                format!("{:+.1}", flood.min - floor.min),
                format!("{:+.1}", flood.median - floor.median),
                format!("{:+.1}", est.median - floor.median),
                format!("{} / {} / {}", o.verdicts[0], o.verdicts[1], o.verdicts[2]),
                "0 lost, 0 evicted".into(),
            ],
            Some(o.lost == 0 && o.evicted == 0),
        );
        if o.lost > 0 || o.evicted > 0 {
            let consequence = if *mode == Mode::Nat {
                "an evicted NAT flow loses its SNAT port: the next client packet is re-created \
                 as a new flow with another port (the backend sees a stranger) and the \
                 backend's replies to the old port find no flow"
            } else {
                "an evicted DSR flow is re-created by its next packet: charged as a new flow and \
                 re-chosen by Maglev (the same backend only because the backend set did not \
                 change)"
            };
            closing.push(format!(
                "SYN flood, {name}: {} of {} established packets lost, {} of {FLOWS} flows \
                 evicted by {} spoofed SYNs: the SYNs go into the same LRU table as the \
                 established flows ({TABLE} entries), which evicts the least recently used, \
                 i.e. the idle established flows; {consequence}. Closing it needs new flows \
                 kept in a table of their own (embryonic), promoted to the established table \
                 only once the handshake shows the flow is real (issue 16).",
                o.lost, o.established, o.evicted, o.flood
            ));
        }
    }
    s.note(format!(
        "Per mode: a fresh load balancer (established table of {TABLE} entries, the other tables \
         at their defaults) with one TCP VIP and two backends; {FLOWS} flows opened through the \
         program by their handshake (SYN; for NAT the backend's SYN-ACK to the SNAT address, \
         which must reach the client; the client's ACK and first data segment). Then for {} s \
         a flood of SYNs at the generator's full rate, one BPF_PROG_TEST_RUN call per packet, \
         each from a source never seen before (10.128.0.0/9); after every {STRETCH} flood \
         packets (two tables' worth) each established flow sends one data segment and, for \
         NAT, gets one reply from its backend.",
        time.as_secs()
    ));
    s.note(
        "A packet is lost when the program does not send it to the place its flow was set up \
         with (same MACs, addresses and ports out: the same backend and SNAT port; a reply to \
         its client); a flow is evicted when one of its packets is lost or makes the VIP count \
         a new flow (re-created: charged as new, re-chosen by Maglev; DSR may still reach the \
         same backend, which is why it can be evicted without losses). Nothing here reads the \
         flow tables themselves."
            .to_string(),
    );
    s.note(format!(
        "Costs: the mean per call of each of the {TRIALS} trials (the flood split into equal \
         parts, a floor trial of {FLOOR_PACKETS} calls before each), above the floor's min or \
         median, like section 1. The flood rate is wall-clock calls per second of the bench \
         itself (frame patching and counter reads included)."
    ));
    report.sections.push(s);
    report.closing.extend(closing);
    Ok(())
}
