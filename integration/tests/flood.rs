//! A SYN flood from many spoofed sources against a VIP (two-arm NAT topology, small tables):
//! a raw-socket generator in the client namespace, bounded in packets and time, sends SYNs from
//! 65,536 different source addresses while
//! - a real client, under its rate limit, keeps making TCP requests through the VIP;
//! - lbctl keeps asking lbd for its VIPs (the control plane must stay responsive);
//!
//! and afterwards the conntrack and rate-limit tables are full but never above their size (LRU
//! eviction), and the counters show the flood.
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
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use xdplb_integration::{tcp_name_server, tcp_request, NetNs, Topology, VIP};

/// Entries of each conntrack table and of the rate limiter's client table.
const TABLE: u64 = 4096;
/// The flood: at most this many SYNs, for at most [`FLOOD_TIME`].
const FLOOD_PACKETS: u64 = 400_000;
const FLOOD_TIME: Duration = Duration::from_secs(8);
/// Spoofed sources: 10.201.0.0/16.
const SPOOF_NET: u32 = u32::from_be_bytes([10, 201, 0, 0]);
/// The real client's requests during the flood (one every 100 ms).
const CLIENT_REQUESTS: usize = 40;
const VIP_PORT: u16 = 80;
const BACKEND_PORT: u16 = 8080;

fn csum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A 40-byte IPv4 + TCP SYN from `src:sport` to `dst:dport` with valid checksums.
fn syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = csum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = 0u32;
    for w in [src.octets(), dst.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        pseudo += u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + 20;
    let tcp_sum = csum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

/// Sends spoofed SYNs to the VIP until `FLOOD_PACKETS`, `FLOOD_TIME` or `stop`; (sent, time).
fn flood(stop: Arc<AtomicBool>) -> Result<(u64, Duration)> {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .context("raw socket (needs root)")?;
    let dst = SockAddr::from(SocketAddrV4::new(VIP, 0));
    let start = Instant::now();
    let mut sent = 0u64;
    let mut i = 0u32;
    while sent < FLOOD_PACKETS && start.elapsed() < FLOOD_TIME && !stop.load(Ordering::Relaxed) {
        // A different source per packet (a permutation of the /16), ports from the counter.
        let host = i.wrapping_mul(40503) & 0xffff;
        let src = Ipv4Addr::from(SPOOF_NET | host);
        let pkt = syn(
            src,
            1024 + (i % 60000) as u16,
            VIP,
            VIP_PORT,
            i.wrapping_mul(2654435761),
        );
        match sock.send_to(&pkt, &dst) {
            Ok(_) => sent += 1,
            // The qdisc is full: let it drain.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) => return Err(e).context("sending a SYN"),
        }
        i = i.wrapping_add(1);
    }
    Ok((sent, start.elapsed()))
}

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

/// The value of the first sample of `metric` whose labels contain `labels`.
fn sample(text: &str, metric: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(labels))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
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
        topo.client()
            .spawn("syn-flood", move || flood(stop))
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
    let (sent, took) = flooder.join().expect("flood thread").expect("flood");
    let (outcomes, busy) = client_thread;

    // Counters and occupancy after the flood.
    let stats = lbd.ctl_json(&["stats"]).expect("stats");
    let new_flows = xdplb_integration::vip_new_flows(&stats, vip).unwrap_or(0);
    let metrics = scrape(topo.lb()).expect("metrics");
    let entries = |map: &str| sample(&metrics, "xdplb_map_entries", &format!("map=\"{map}\""));
    let capacity = |map: &str| sample(&metrics, "xdplb_map_capacity", &format!("map=\"{map}\""));
    let top = lbd.ctl_json(&["ratelimit", "top"]).expect("ratelimit top");
    let buckets = top["tracked"].as_u64().unwrap_or(0);

    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    let mut quiet_sorted = quiet.clone();
    quiet_sorted.sort();
    let mut flood_lat: Vec<Duration> = busy.iter().map(|(d, _)| *d).collect();
    flood_lat.sort();
    eprintln!(
        "flood: {sent} spoofed SYNs in {took:.2?} ({:.0} pps offered, sender side)",
        sent as f64 / took.as_secs_f64()
    );
    eprintln!("VIP new flows counted by XDP: {new_flows}");
    for map in ["ct_fwd", "ct_rev", "rl_clients"] {
        eprintln!("{map}: {:?} entries of {:?}", entries(map), capacity(map));
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
    // Tables full but bounded: LRU eviction, not growth.
    for map in ["ct_fwd", "rl_clients"] {
        let (n, cap) = (
            entries(map).expect("entries"),
            capacity(map).expect("capacity"),
        );
        assert_eq!(cap, TABLE as f64, "{map} capacity");
        assert!(n <= cap, "{map}: {n} entries above its capacity {cap}");
        assert!(
            n >= cap / 2.0,
            "{map}: only {n} of {cap} entries: the flood did not fill it"
        );
    }
    assert!(buckets <= TABLE, "{buckets} rate-limit buckets");
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
