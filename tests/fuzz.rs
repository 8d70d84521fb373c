//! Fuzzing the data plane: generated and mutated frames through the loaded `lb` and `decap`
//! programs (BPF_PROG_TEST_RUN, in a private network namespace), every run checked against the
//! invariants of `common::fuzz::check_lb` / `check_decap`: never XDP_ABORTED; a frame sent out has
//! right IPv4 and L4 checksums (the inner packet's for IPIP) and lengths that agree with the frame;
//! a blocked source is never forwarded; the host's own traffic (and every VLAN-tagged frame) passes
//! byte for byte; decapsulated packets come only from the VIP's allowed outer sources, with ECN
//! merged per RFC 6040; no DF-clear IPIP outer ID of a flow repeats within 65,536 such packets
//! (RFC 6864).
//!
//! The program has VIPs in all three modes, a firewall block rule and a rate limit. `FUZZ_PACKETS`
//! sets the number of random frames (20,000 by default; `make fuzz` runs 1,000,000),
//! `FUZZ_SEED` the seed, `FUZZ_SECONDS` a time bound (the run stops early, and says so, when it is
//! reached). Besides the random frames, a few frames of every kind are cut at every offset.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use xdplb_model::ratelimit::{Policy, Scope};
use xdplb_model::state::{Mode, Protocol};

use common::decap::Decap;
use common::fuzz::*;
use common::lab::*;
use xdplb_testkit::netns::NetNs;
use xdplb_testkit::packet::*;

const NAT_TCP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80);
const NAT_UDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 53);
const L2DSR_TCP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 10), 80);
const IPIP_TCP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 11), 80);
const IPIP_UDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 11), 53);
/// A second VIP of the decap program (not one of the LB's), served for other balancers.
const DECAP_VIP2: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 12);
const PORTS: (u16, u16) = (20000, 20999);
/// A client the firewall blocks, and a rate-limited one.
const BLOCKED: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 66);
const LIMITED: Ipv4Addr = CLIENT_B;
/// The kernel refuses BPF_PROG_TEST_RUN frames shorter than an Ethernet header, and longer than
/// a page minus XDP headroom and tailroom (about 3.5 kB) for a program without frags support.
const TEST_RUN_MAX: usize = 3400;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The program under test: the VIPs, firewall and rate limit of the fuzz configuration.
fn configured_lb(net: Net) -> Result<(Lb, World)> {
    let mut lb = Lb::new(net, config(PORTS))?;
    let be = |port: u16| [(sa(BACKEND1, port), 100), (sa(BACKEND2, port), 100)];
    lb.add_vip_mode(NAT_TCP, Protocol::Tcp, Mode::Nat, &be(8080))?;
    lb.add_vip_mode(NAT_UDP, Protocol::Udp, Mode::Nat, &be(5353))?;
    lb.add_vip_mode(L2DSR_TCP, Protocol::Tcp, Mode::L2dsr, &be(80))?;
    lb.add_vip_mode(IPIP_TCP, Protocol::Tcp, Mode::Ipip, &be(80))?;
    lb.add_vip_mode(IPIP_UDP, Protocol::Udp, Mode::Ipip, &be(53))?;
    lb.block(ipnet::Ipv4Net::new(BLOCKED, 32)?)?;
    lb.block("198.51.100.0/24".parse()?)?;
    lb.state
        .ratelimit
        .set(
            Some(ipnet::Ipv4Net::new(LIMITED, 32)?),
            Policy {
                rate: 100,
                burst: 10,
                scope: Scope::All,
            },
        )
        .context("rate limit")?;
    lb.reconcile()?;
    lb.maps_mut().add_tx_port(net.veth0)?;
    lb.maps_mut().add_tx_port(net.veth2)?;
    let vip = |addr, proto| FuzzVip { addr, proto };
    let world = World {
        vips: vec![
            vip(NAT_TCP, IPPROTO_TCP),
            vip(NAT_UDP, IPPROTO_UDP),
            vip(L2DSR_TCP, IPPROTO_TCP),
            vip(IPIP_TCP, IPPROTO_TCP),
            vip(IPIP_UDP, IPPROTO_UDP),
        ],
        snat: LB_ADDR,
        snat_ports: PORTS,
        blocked: vec![(BLOCKED, 32), (Ipv4Addr::new(198, 51, 100, 0), 24)],
        clients: vec![
            CLIENT,
            CLIENT_B,
            FAR_CLIENT,
            BLOCKED,
            Ipv4Addr::new(198, 51, 100, 7),
            Ipv4Addr::new(203, 0, 113, 9),
        ],
        backends: vec![
            sa(BACKEND1, 8080),
            sa(BACKEND2, 8080),
            sa(BACKEND1, 5353),
            sa(BACKEND2, 5353),
        ],
        ipip_ids: Default::default(),
    };
    Ok((lb, world))
}

/// Runs and checks one frame; returns the run, or None when the kernel refuses its size.
fn run_one(lb: &Lb, world: &World, case: &Case, tally: &mut Tally) -> Result<Option<Run>> {
    let ingress = if case.on_veth2 {
        lb.net.veth2
    } else {
        lb.net.veth0
    };
    let run = match lb.run(ingress, &case.frame) {
        Ok(run) => run,
        Err(_) if case.frame.len() < 14 || case.frame.len() > TEST_RUN_MAX => {
            tally.refused += 1;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    check_lb(world, case, &run).map_err(|e| {
        anyhow!(
            "{e}\n  kind {:?}, mutations {:?}, verdict {}\n  in:  {}\n  out: {}",
            case.kind,
            case.mutations,
            action_name(run.action),
            hex(&case.frame),
            hex(&run.out)
        )
    })?;
    tally.packets += 1;
    *tally.verdicts.entry(action_name(run.action)).or_default() += 1;
    *tally.kinds.entry(format!("{:?}", case.kind)).or_default() += 1;
    Ok(Some(run))
}

/// Frames of every kind, each cut at every offset.
fn truncations(lb: &Lb, world: &World, tally: &mut Tally) -> Result<()> {
    let client = sa(CLIENT, 40000);
    let quoted =
        Packet::tcp(VETH0_MAC, CLIENT_MAC, NAT_TCP, client, TCP_ACK).with_payload(&[1; 40]);
    let bases = [
        Packet::tcp(CLIENT_MAC, VETH0_MAC, client, NAT_TCP, TCP_SYN).with_payload(b"syn"),
        Packet::tcp(CLIENT_MAC, VETH0_MAC, client, L2DSR_TCP, TCP_SYN)
            .with_vlan(ETH_P_8021Q, 10)
            .with_ip_options(&[1, 1, 1, 0]),
        Packet::tcp(CLIENT_MAC, VETH0_MAC, client, IPIP_TCP, TCP_ACK).with_payload(&[2; 30]),
        Packet::udp(CLIENT_MAC, VETH0_MAC, client, NAT_UDP).with_payload(b"query"),
        Packet::udp(
            CLIENT_MAC,
            VETH0_MAC,
            sa(BACKEND1, 5353),
            sa(LB_ADDR, 20001),
        ),
        Packet::icmp(
            CLIENT_MAC,
            VETH0_MAC,
            Ipv4Addr::new(192, 0, 2, 1),
            *NAT_TCP.ip(),
            3,
            4,
            [0, 0, 5, 0x78],
            &quoted.ip_bytes()[..48],
        ),
    ];
    for base in &bases {
        // First the whole frame (creating the flow), then every cut of it.
        let frame = base.build();
        for cut in (0..=frame.len()).rev() {
            let case = Case {
                kind: Kind::Truncated,
                frame: frame[..cut].to_vec(),
                on_veth2: false,
                mutations: vec!["truncate"],
            };
            run_one(lb, world, &case, tally)
                .with_context(|| format!("{} bytes of {base:?}", cut))?;
        }
    }
    Ok(())
}

#[test]
fn fuzz_lb_and_decap() {
    let packets = env_u64("FUZZ_PACKETS", 20_000);
    let seed = env_u64("FUZZ_SEED", 0x5eed_f00d);
    let limit = Duration::from_secs(env_u64("FUZZ_SECONDS", 600));
    NetNs::within("fuzz", move |ns| {
        // One CPU, as an RSS queue's packets: per-CPU state (DSR tables, IPIP outer ids) holds.
        pin_to_this_cpu()?;
        let net = setup_net(ns).context("setting up the bench")?;
        let (lb, world) = configured_lb(net)?;
        // The decap program of a backend of both IPIP VIPs: the LB's IPIP source for IPIP_TCP, a
        // /28 of other balancers for DECAP_VIP2.
        let dworld = DecapWorld {
            vips: vec![*IPIP_TCP.ip(), DECAP_VIP2],
            sources: vec![
                (*IPIP_TCP.ip(), lb.cfg.ipip_source),
                (DECAP_VIP2, "10.7.0.16/28".parse()?),
            ],
        };
        let decap = Decap::load()?;
        for vip in &dworld.vips {
            decap.add_vip(*vip)?;
        }
        for (vip, prefix) in &dworld.sources {
            decap.add_source(*vip, *prefix)?;
        }
        let mut tally = Tally::default();
        truncations(&lb, &world, &mut tally)?;

        let mut gen = Generator::new(seed, world.clone());
        let mut drng = Rng::new(seed ^ 0xdeca_9000);
        let (mut decap_runs, mut decapsulated, mut decap_drops) = (0u64, 0u64, 0u64);
        let start = Instant::now();
        let mut stopped_early = false;
        // FUZZ_PACKETS counts frames the program ran (not those the kernel refused for their size).
        let mut i = 0u64;
        while tally.packets < packets {
            i += 1;
            if i % 4096 == 0 && start.elapsed() > limit {
                stopped_early = true;
                break;
            }
            let case = gen.next_case();
            let run = run_one(&lb, &world, &case, &mut tally)
                .with_context(|| format!("seed {seed:#x}, packet {i}"))?;
            let Some(run) = run else { continue };
            if run.action == XDP_TX || run.action == XDP_REDIRECT {
                gen.learn(&case, &run.out);
                // What the LB encapsulates, the backend's decapsulator must take apart.
                if parse(&run.out).map(|o| o.proto) == Some(IPPROTO_IPIP)
                    && parse(&case.frame).map(|p| p.dst) == Some(*IPIP_TCP.ip())
                {
                    let back = decap.run(0, &run.out)?;
                    check_decap(&dworld, &run.out, &back)
                        .with_context(|| format!("seed {seed:#x}, packet {i}: decap of the LB's output"))?;
                    ensure!(back.out != run.out, "packet {i}: the LB's IPIP output was not decapsulated");
                    decap_runs += 1;
                    decapsulated += 1;
                }
            }
            if i % 4 == 0 {
                let frame = ipip_case(&mut drng, &dworld);
                if frame.len() < 14 {
                    continue;
                }
                let back = decap.run(0, &frame)?;
                check_decap(&dworld, &frame, &back).with_context(|| {
                    format!("seed {seed:#x}, decap packet {i}: in {}", hex(&frame))
                })?;
                decap_runs += 1;
                if back.action == XDP_DROP {
                    decap_drops += 1;
                } else if back.out != frame {
                    decapsulated += 1;
                }
            }
        }

        let g = lb.global()?;
        let reasons: BTreeMap<String, u64> = g
            .reasons
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (xdplb::dataplane::maps::reason_name(i), *n))
            .collect();
        println!(
            "fuzz: seed {seed:#x}: {} frames through lb in {:.1}s{} ({} refused by the kernel for their size), {decap_runs} through decap ({decapsulated} decapsulated, {decap_drops} dropped)",
            tally.packets,
            start.elapsed().as_secs_f64(),
            if stopped_early { " (time bound reached)" } else { "" },
            tally.refused
        );
        println!("fuzz: verdicts {:?}", tally.verdicts);
        println!("fuzz: kinds {:?}", tally.kinds);
        println!("fuzz: reasons {reasons:?}");
        ensure!(
            g.verdicts[XDP_ABORTED as usize] == 0,
            "the program's own counters show XDP_ABORTED"
        );
        // The run reached every way out, or the generator is not doing its job.
        for v in ["XDP_DROP", "XDP_PASS", "XDP_TX"] {
            ensure!(tally.verdicts.contains_key(v), "no frame got {v}: {:?}", tally.verdicts);
        }
        // And the decapsulator's: decapsulated, dropped for its source, dropped for CE on Not-ECT.
        let ds = decap.stats()?;
        println!("fuzz: decap_stats {ds:?}");
        ensure!(
            ds.decapsulated > 0 && ds.dropped_source > 0 && ds.dropped_ce_not_ect > 0 && ds.passed > 0,
            "the decap frames did not reach every way out: {ds:?}"
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}
