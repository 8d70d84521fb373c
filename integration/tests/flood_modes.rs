//! A SYN flood from spoofed sources in each forwarding mode (nat on the two-arm topology, l2dsr
//! and ipip on one-arm topologies whose backend `lbctl backend-setup` prepared), with small
//! tables, while
//! - (a) a long transfer (32 MiB through the VIP to an echo server, paced over 8 s) runs: it
//!   must finish with every byte back (lengths and CRC-32 of both directions equal);
//! - (b) 100 idle connections opened before the flood must each answer a line afterwards;
//! - (c) a client opening 50 new connections during the flood gets at least 45 through (the
//!   kernel's SYN retransmission allowed within each connection's 2 s).
//!
//! The flood: at most 200,000 SYNs for at most 5 s, from 65,536 sources of 10.201.0.0/16. The
//! figures (flood rate, counters, transfer time, answers) are printed. Written against
//! behaviour only (replies and lbctl's counters), so it runs on any flow-table layout; on
//! tables where the flood evicts established flows it fails, and says which part failed.
//! The three tests take turns (a lock): each alone on the machine. Run as root:
//! `cargo test -p xdplb-integration --test flood_modes -- --nocapture`. On the v1 flow tables
//! (one shared LRU for every flow) NAT failed: the flood evicted established flows (a 32 MiB
//! transfer stalled at 2 MB, 0 of 100 idle connections answered); the DSR modes passed, their
//! evicted flows chosen again by Maglev to the same backend.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xdplb_integration::dsr::LbCounters;
use xdplb_integration::flood::{
    connections_during, with_keys, BulkTransfer, IdleConnections, SynFlood,
};
use xdplb_integration::transfer::TransferLab;
use xdplb_integration::{vip_new_flows, Lbd, Proto, VIP};

/// Entries of the established table (today: each conntrack table) and of the embryonic one.
const TABLE: i64 = 4096;
const EMBRYONIC: i64 = 4096;
/// The DSR new-flow guard, per CPU and second: well below the flood's rate, so it engages.
const NEW_FLOWS_PER_CPU: i64 = 10_000;
const FLOOD_PACKETS: u64 = 200_000;
const FLOOD_TIME: Duration = Duration::from_secs(5);
const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 0);
const TRANSFER_BYTES: usize = 32 << 20;
const TRANSFER_TIME: Duration = Duration::from_secs(8);
const IDLE: usize = 100;
const NEW: usize = 50;
const NEW_OK: usize = 45;
/// The new connections start over this much of the flood.
const NEW_SPREAD: Duration = Duration::from_millis(1000);

/// One test at a time: the flood needs the machine's CPUs.
static SERIAL: Mutex<()> = Mutex::new(());

fn flood_in(mode: &'static str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = TransferLab::build(mode).expect("topology");
    let config = with_keys(
        lab.config(),
        &[
            ("tables", "conntrack_size", TABLE.into()),
            ("tables", "embryonic_size", EMBRYONIC.into()),
            ("tables", "new_flows_per_cpu", NEW_FLOWS_PER_CPU.into()),
            ("timeouts", "tcp_handshake", "3s".into()),
        ],
    )
    .expect("config");
    let lbd = Lbd::start(lab.lb(), &config).expect("lbd");
    let vip = SocketAddrV4::new(VIP, 80);
    lbd.add_vip_with(vip, Proto::Tcp, &["--mode", mode])
        .expect("vip add");
    lbd.add_backend(vip, Proto::Tcp, lab.backend())
        .expect("backend add");

    let idle = IdleConnections::open(lab.client(), vip, IDLE).expect("idle connections");
    let transfer = BulkTransfer::start(lab.client(), vip, TRANSFER_BYTES, TRANSFER_TIME)
        .expect("the transfer starts");
    let before = LbCounters::read(&lbd).expect("stats");
    let flows_before = vip_new_flows(&lbd.ctl_json(&["stats"]).expect("stats"), vip).unwrap_or(0);

    let at_start = transfer.received();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = SynFlood {
        target: vip,
        sources: SPOOFED,
        packets: FLOOD_PACKETS,
        time: FLOOD_TIME,
    };
    let started = Instant::now();
    let flooder = flood
        .spawn(lab.client(), stop.clone())
        .expect("flood thread");
    let fresh = connections_during(lab.client(), vip, NEW, NEW_SPREAD).expect("client thread");
    let fresh = fresh.join().expect("client thread");
    let fresh_done = started.elapsed();
    let flooded = flooder.join().expect("flood thread").expect("flood");
    let at_end = transfer.received();
    let running_after = !transfer.is_finished();

    let during = LbCounters::read(&lbd).expect("stats").since(&before);
    let flows_after = vip_new_flows(&lbd.ctl_json(&["stats"]).expect("stats"), vip).unwrap_or(0);
    let moved = transfer.finish();
    let answers = idle.answer_all();

    let fresh_ok = fresh.iter().filter(|r| r.is_ok()).count();
    let mut times: Vec<Duration> = fresh
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    times.sort();
    let idle_ok = answers.iter().filter(|r| r.is_ok()).count();
    eprintln!("{mode}: flood: {flooded}");
    eprintln!(
        "{mode}: VIP new flows during the flood: {} (lbctl stats); packets by reason: {:?}",
        flows_after.saturating_sub(flows_before),
        during
            .reasons
            .iter()
            .filter(|(_, n)| **n > 0)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "{mode}: transfer: {at_start} bytes back when the flood started, {at_end} when it ended \
         ({}); {}",
        if running_after {
            "still running"
        } else {
            "already over"
        },
        match &moved {
            Ok(o) => format!("{o:?}"),
            Err(e) => format!("{e:#}"),
        }
    );
    eprintln!(
        "{mode}: new connections during the flood: {fresh_ok}/{NEW} answered (all done {:.2?} \
         after the flood started; slowest {:?}); first errors: {:?}",
        fresh_done,
        times.last(),
        fresh
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .take(3)
            .collect::<Vec<_>>()
    );
    eprintln!(
        "{mode}: idle connections answering after the flood: {idle_ok}/{IDLE}; first errors: {:?}",
        answers
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .take(3)
            .collect::<Vec<_>>()
    );

    let mut failed = Vec::new();
    if flooded.sent < 20_000 {
        failed.push(format!("only {} SYNs sent", flooded.sent));
    }
    if at_start >= TRANSFER_BYTES {
        failed.push("the transfer was over before the flood started".to_string());
    }
    match &moved {
        Ok(o) if o.intact() => {}
        Ok(o) => failed.push(format!("(a) the transfer came back altered: {o:?}")),
        Err(e) => failed.push(format!("(a) the transfer broke: {e:#}")),
    }
    if idle_ok < IDLE {
        failed.push(format!(
            "(b) only {idle_ok} of {IDLE} idle connections answered after the flood"
        ));
    }
    if fresh_ok < NEW_OK {
        failed.push(format!(
            "(c) only {fresh_ok} of {NEW} new connections got through during the flood (want >= {NEW_OK})"
        ));
    }
    assert!(failed.is_empty(), "{mode}: {}", failed.join("; "));
}

#[test]
fn syn_flood_nat() {
    flood_in("nat");
}

#[test]
fn syn_flood_l2dsr() {
    flood_in("l2dsr");
}

#[test]
fn syn_flood_ipip() {
    flood_in("ipip");
}
