//! A SYN flood from many spoofed sources against a VIP (two-arm NAT topology, small tables):
//! a raw-socket generator in the client namespace, bounded in packets and time, sends SYNs from
//! 65,536 different source addresses while
//! - a real client, under its rate limit, keeps making TCP requests through the VIP;
//! - lbctl keeps asking lbd for its VIPs (the control plane must stay responsive);
//!
//! and afterwards no table is above its size, the rate limiter's client table is full but
//! bounded (LRU eviction), and the counters show the flood. Written against what lbctl and
//! `/metrics` report, not against the flow tables' names: it holds for any flow-table layout.
//! The generator is [`SynFlood`] (`integration/src/flood.rs`); `flood_modes.rs` floods every
//! forwarding mode under a transfer and idle connections.
//!
//! The figures (flood rate, table occupancy, client success ratio, RPC latency) are printed;
//! nothing is asserted about speed. Run as root:
//! `cargo test -p xdplb-integration --test flood -- --test-threads=1 --nocapture`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xdplb_integration::flood::SynFlood;
use xdplb_integration::{tcp_name_server, tcp_request, NetNs, Topology, VIP};

/// Entries of each conntrack table and of the rate limiter's client table.
const TABLE: u64 = 4096;
/// The flood: at most this many SYNs, for at most [`FLOOD_TIME`].
const FLOOD_PACKETS: u64 = 400_000;
const FLOOD_TIME: Duration = Duration::from_secs(8);
/// Spoofed sources: 10.201.0.0/16.
const SPOOF_NET: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 0);
/// The real client's requests during the flood (one every 100 ms).
const CLIENT_REQUESTS: usize = 40;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

/// `GET /metrics` from lbd's default endpoint inside the LB namespace.
fn scrape(lb: &NetNs) -> Result<String> {
    lb.run(|| -> Result<String> {
        let addr = "127.0.0.1:9469".parse().context("address")?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lbd\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })?
}

/// Every sample of `metric` (no `_suffix`): (its labels, its value).
fn samples(text: &str, metric: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(metric)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn syn_flood_from_spoofed_sources() {
    let topo = Topology::two_arm(1).expect("topology");
    let config = format!(
        "{}\n[tables]\nconntrack_size = {TABLE}\n\n[ratelimit]\nclients = {TABLE}\n",
        topo.lbd_config()
    );
    let lbd = xdplb_integration::Lbd::start(topo.lb(), &config).expect("lbd");
    let b = topo.backend(1);
    let _server =
        tcp_name_server(&b.ns, SocketAddrV4::new(b.addr, BACKEND_PORT), "b1").expect("server");
    let vip = SocketAddrV4::new(VIP, VIP_PORT);
    lbd.add_vip(vip, xdplb_integration::Proto::Tcp)
        .expect("vip");
    lbd.add_backend(
        vip,
        xdplb_integration::Proto::Tcp,
        SocketAddrV4::new(b.addr, BACKEND_PORT),
    )
    .expect("backend");
    // Every client may open 50 new flows a second (burst 20): each spoofed source sends one
    // SYN and stays under it, like the real client (10 a second).
    lbd.ctl(&[
        "ratelimit",
        "set",
        "--rate",
        "50",
        "--burst",
        "20",
        "--scope",
        "new-flows",
    ])
    .expect("rate limit");
    let client = topo.client_addrs()[0];
    let timeout = Duration::from_secs(2);
    tcp_request(
        topo.client(),
        Some(SocketAddrV4::new(client, 0)),
        vip,
        timeout,
    )
    .expect("a request before the flood");

    // RPC latency before the flood.
    let mut quiet = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        lbd.ctl(&["vip", "list"]).expect("vip list");
        quiet.push(t.elapsed());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = Arc::clone(&stop);
        SynFlood {
            target: SocketAddrV4::new(VIP, VIP_PORT),
            sources: SPOOF_NET,
            packets: FLOOD_PACKETS,
            time: FLOOD_TIME,
        }
        .spawn(topo.client(), stop)
        .expect("flood thread")
    };
    // The real client, during the flood.
    let client_thread = {
        let client_ns = topo.client();
        let mut outcomes = Vec::new();
        let deadline = Instant::now() + FLOOD_TIME + Duration::from_secs(5);
        // lbctl calls interleaved with the client's requests, both bounded.
        let mut busy = Vec::new();
        for _ in 0..CLIENT_REQUESTS {
            if Instant::now() > deadline {
                break;
            }
            outcomes.push(tcp_request(
                client_ns,
                Some(SocketAddrV4::new(client, 0)),
                vip,
                timeout,
            ));
            let t = Instant::now();
            let listed = lbd.ctl(&["vip", "list"]);
            busy.push((t.elapsed(), listed.is_ok()));
            std::thread::sleep(Duration::from_millis(100));
        }
        (outcomes, busy)
    };
    stop.store(true, Ordering::Relaxed);
    let flooded = flooder.join().expect("flood thread").expect("flood");
    let sent = flooded.sent;
    let (outcomes, busy) = client_thread;

    // Counters and occupancy after the flood.
    let stats = lbd.ctl_json(&["stats"]).expect("stats");
    let new_flows = xdplb_integration::vip_new_flows(&stats, vip).unwrap_or(0);
    let metrics = scrape(topo.lb()).expect("metrics");
    let entries = samples(&metrics, "xdplb_map_entries");
    let capacity = samples(&metrics, "xdplb_map_capacity");
    let top = lbd.ctl_json(&["ratelimit", "top"]).expect("ratelimit top");
    let buckets = top["tracked"].as_u64().unwrap_or(0);

    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    let mut quiet_sorted = quiet.clone();
    quiet_sorted.sort();
    let mut flood_lat: Vec<Duration> = busy.iter().map(|(d, _)| *d).collect();
    flood_lat.sort();
    eprintln!("flood: {flooded}");
    eprintln!("VIP new flows counted by XDP: {new_flows}");
    for (labels, n) in &entries {
        let cap = capacity.iter().find(|(l, _)| l == labels).map(|(_, c)| *c);
        eprintln!("{labels}: {n} entries of {cap:?}");
    }
    eprintln!("rate-limit buckets (lbctl ratelimit top): {buckets}");
    eprintln!(
        "real client during the flood: {ok}/{} requests answered",
        outcomes.len()
    );
    eprintln!(
        "lbctl vip list: quiet p50 {:?} max {:?}; during the flood p50 {:?} p90 {:?} max {:?} ({} of {} answered)",
        percentile(&quiet_sorted, 0.5),
        percentile(&quiet_sorted, 1.0),
        percentile(&flood_lat, 0.5),
        percentile(&flood_lat, 0.9),
        percentile(&flood_lat, 1.0),
        busy.iter().filter(|(_, ok)| *ok).count(),
        busy.len()
    );

    // The flood happened and was seen.
    assert!(sent >= 10_000, "only {sent} SYNs sent");
    assert!(
        new_flows >= TABLE * 2,
        "the XDP program counted only {new_flows} new flows"
    );
    // Every table bounded: eviction or refusal, never growth.
    assert!(!entries.is_empty(), "no xdplb_map_entries in /metrics");
    for (labels, n) in &entries {
        if let Some((_, cap)) = capacity.iter().find(|(l, _)| l == labels) {
            assert!(n <= cap, "{labels}: {n} entries above its capacity {cap}");
        }
    }
    // The rate limiter's client table: full (one bucket per spoofed source) but bounded.
    assert!(buckets <= TABLE, "{buckets} rate-limit buckets");
    assert!(
        buckets >= TABLE / 2,
        "only {buckets} rate-limit buckets of {TABLE}: the flood did not fill the table"
    );
    // lbd answered every call during the flood.
    assert!(
        busy.iter().all(|(_, ok)| *ok),
        "lbctl failed during the flood"
    );
    // The real client, under its limit, still got through (most requests: a flow of its may
    // lose its conntrack entry to the LRU in the middle of a flood that turns the table over
    // several times a second).
    assert!(
        ok * 4 >= outcomes.len() * 3,
        "only {ok}/{} client requests answered",
        outcomes.len()
    );
}
