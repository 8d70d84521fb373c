//! Firewall figures (numbers, never assertions): program load time and map memory by capacity
//! (0: the firewall off), how long the reconciler takes to apply 10, 100,000 and 1,000,000
//! prefixes, how much kernel memory the tables take and how long the metrics' map walk takes, and the per-packet cost of the XDP program (BPF_PROG_TEST_RUN) with
//! 10 vs 1,000,000 prefixes, for sources that a rule blocks, that a rule allows, and that match
//! no rule. Both programs are loaded side by side and measured in alternating trials (min and
//! median over the trials). A few sources per case, so this is the lookups' own cost; the cost
//! of sources spread over a million rules (mostly TLB misses) is `make bench`'s. Needs root: `cargo bench --bench firewall` (or
//! `scripts/bench-firewall.sh`, which adds the lbctl path).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use xdplb::dataplane::maps::RuntimeConfig;
use xdplb::dataplane::{Dataplane, LoadOptions};
use xdplb::reconcile::Reconciler;
use xdplb_model::firewall::{Action, RuleBatch, Scope};
use xdplb_model::state::{Protocol, State};

use common::lab::{config, setup_net, Lb, Net, BE1, BE2, CLIENT_MAC, LB_ADDR, VETH0_MAC, VIP};
use xdplb_testkit::gen::{block_list, Rng};
use xdplb_testkit::packet::{Packet, TCP_SYN};
use xdplb_testkit::{NetNs, Runner};

const MILLION: u32 = 1_000_000;
/// Repeats of each frame in one BPF_PROG_TEST_RUN (the verdicts measured leave it untouched).
const REPEAT: u32 = 500;
/// Distinct source addresses per measurement.
const SOURCES: usize = 64;
/// Trials per figure (alternating between the rule sets).
const TRIALS: usize = 9;

fn batch(nets: &[Ipv4Net]) -> Result<RuleBatch> {
    let mut b = RuleBatch::default();
    for (i, n) in nets.iter().enumerate() {
        b.push(i, *n, Action::Block)?;
    }
    Ok(b)
}

fn load(capacity: u32) -> Result<Dataplane> {
    let mut dp = Dataplane::load(&LoadOptions {
        conntrack_size: 4096,
        firewall_capacity: capacity,
        firewall_scope: Scope::All,
        ..LoadOptions::default()
    })
    .context("loading the XDP program")?;
    dp.maps_mut().write_config(&RuntimeConfig {
        snat_addr: Ipv4Addr::new(10, 1, 0, 1),
        snat_ports: (20000, 20999),
        tcp_timeout: Duration::from_secs(300),
        tcp_closing_timeout: Duration::from_secs(10),
        udp_timeout: Duration::from_secs(30),
        ipip_source: Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 1), 32)?,
        tcp_handshake_timeout: Duration::from_secs(5),
        new_flows_per_cpu: 0,
        nexthop_cache: Duration::from_secs(1),
        ..RuntimeConfig::default()
    })?;
    Ok(dp)
}

fn mib(b: Option<u64>) -> String {
    b.map_or("?".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

/// Mean ns per packet of `frames` (each run `REPEAT` times in one BPF_PROG_TEST_RUN: the
/// kernel times the program alone), and the verdicts.
fn per_packet(lb: &Lb, ifindex: u32, frames: &[Vec<u8>]) -> Result<(f64, BTreeSet<u32>)> {
    let mut total = Duration::ZERO;
    let mut actions = BTreeSet::new();
    let mut runner = Runner::default();
    for frame in frames {
        let run = runner.run_frame(lb.rec.dataplane().program(), ifindex, frame, REPEAT)?;
        // The kernel reports the mean over the repeats.
        total += run.duration;
        actions.insert(run.action);
    }
    Ok((total.as_nanos() as f64 / frames.len() as f64, actions))
}

/// SYNs from `sources` to the LB's own address (scope "all": the firewall sees them; passed to
/// the kernel or dropped, never rewritten, so one test run can repeat them).
fn syns(sources: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    sources
        .iter()
        .map(|s| {
            Packet::tcp(
                CLIENT_MAC,
                VETH0_MAC,
                SocketAddrV4::new(*s, 40000),
                SocketAddrV4::new(LB_ADDR, 22),
                TCP_SYN,
            )
            .build()
        })
        .collect()
}

/// Sources inside 100.64.0.0/10, which no generated prefix covers.
fn missing_sources(rng: &mut Rng) -> Vec<Ipv4Addr> {
    (0..SOURCES)
        .map(|_| Ipv4Addr::from(0x6440_0000 + (rng.next() as u32) % (1 << 22)))
        .collect()
}

/// Sources in the gaps between the rules: in the prefixes' range, matching no rule.
fn gap_sources(lb: &Lb, rng: &mut Rng) -> Result<Vec<Ipv4Addr>> {
    let fw = lb.rec.dataplane().firewall();
    let mut out = Vec::with_capacity(SOURCES);
    while out.len() < SOURCES {
        let src = Ipv4Addr::from(0x0100_0000 + (rng.next() as u32) % (99 << 24));
        if fw.matching(src)?.is_none() {
            out.push(src);
        }
    }
    Ok(out)
}

/// `SOURCES` addresses inside prefixes picked from `nets` (those longer than /24 if `long`, the
/// others if not) that the picked prefix decides in the data plane with `action` (a block /16
/// may hold allow /24s and /32s). A rule longer than /24 costs an `fw_l3` lookup more whatever
/// the number of rules, so the two kinds are measured apart.
fn sources_in(
    lb: &Lb,
    nets: &[Ipv4Net],
    action: Action,
    long: bool,
    rng: &mut Rng,
) -> Result<Vec<Ipv4Addr>> {
    let fw = lb.rec.dataplane().firewall();
    let nets: Vec<Ipv4Net> = nets
        .iter()
        .filter(|n| (n.prefix_len() > 24) == long)
        .copied()
        .collect();
    ensure!(!nets.is_empty(), "no {action} rule (long: {long})");
    let mut out = Vec::with_capacity(SOURCES);
    while out.len() < SOURCES {
        let n = nets[(rng.next() as usize) % nets.len()];
        let host_bits = 32 - u32::from(n.prefix_len());
        let offset = if host_bits == 0 {
            0
        } else {
            (rng.next() as u32) & ((1u32 << host_bits) - 1)
        };
        let src = Ipv4Addr::from(u32::from(n.network()) | offset);
        let decided = fw.matching(src)?;
        if decided.is_some() && decided == lb.rec.firewall().rule(&n) {
            ensure!(
                decided.is_some_and(|r| r.action == action),
                "{n}: {decided:?}"
            );
            out.push(src);
        }
    }
    Ok(out)
}

/// The per-packet cases, in the order `Setup::frames` holds them.
const CASES: [&str; 6] = [
    "blocked by a /16../24",
    "blocked by a /32",
    "allowed by a /16../24",
    "allowed by a /32",
    "no match, between rules",
    "no match, empty region",
];

/// A loaded program holding `nets` (some allow rules, the rest block rules) and the frames of
/// each case.
struct Setup {
    lb: Lb,
    frames: [Vec<Vec<u8>>; 6],
    expected: [u32; 6],
}

fn setup(net: Net, nets: &[Ipv4Net], rng: &mut Rng) -> Result<Setup> {
    let cfg = config((20000, 29999));
    let opts = LoadOptions {
        conntrack_size: 4096,
        firewall_capacity: MILLION,
        firewall_scope: Scope::All,
        ..LoadOptions::default()
    };
    let mut lb = Lb::load(net, cfg, &opts)?;
    lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
    // Every k-th prefix is an allow rule (k = 2 for 10 prefixes, 1,000 for a million).
    let k = (nets.len() / 1000).max(2);
    let mut b = RuleBatch::default();
    let (mut allowed, mut blocked) = (Vec::new(), Vec::new());
    for (i, n) in nets.iter().enumerate() {
        let action = if i % k == 0 {
            Action::Allow
        } else {
            Action::Block
        };
        b.push(i, *n, action)?;
        match action {
            Action::Allow => allowed.push(*n),
            Action::Block => blocked.push(*n),
        }
    }
    lb.state.firewall.add(&b, MILLION as usize)?;
    lb.reconcile()?;
    let frames = [
        syns(&sources_in(&lb, &blocked, Action::Block, false, rng)?),
        syns(&sources_in(&lb, &blocked, Action::Block, true, rng)?),
        syns(&sources_in(&lb, &allowed, Action::Allow, false, rng)?),
        syns(&sources_in(&lb, &allowed, Action::Allow, true, rng)?),
        syns(&gap_sources(&lb, rng)?),
        syns(&missing_sources(rng)),
    ];
    let (drop, pass) = (libbpf_sys::XDP_DROP, libbpf_sys::XDP_PASS);
    Ok(Setup {
        lb,
        frames,
        expected: [drop, drop, pass, pass, pass, pass],
    })
}

/// One trial of every case on `s` (ns per packet).
fn trial(s: &Setup) -> Result<[f64; 6]> {
    let mut out = [0.0; 6];
    for (i, frames) in s.frames.iter().enumerate() {
        let (ns, actions) = per_packet(&s.lb, s.lb.net.veth0, frames)?;
        ensure!(
            actions == BTreeSet::from([s.expected[i]]),
            "{}: verdicts {actions:?}",
            CASES[i]
        );
        out[i] = ns;
    }
    Ok(out)
}

fn min_median(v: &[f64]) -> (f64, f64) {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() -> Result<()> {
    ensure!(
        nix_is_root(),
        "the firewall bench loads BPF programs: run it as root"
    );
    let cpus = libbpf_rs::num_possible_cpus()?;
    println!("firewall bench: {cpus} possible CPUs");

    // Load time and up-front memory by capacity.
    for capacity in [0, 4096, MILLION] {
        let t = Instant::now();
        let dp = load(capacity)?;
        let took = t.elapsed();
        let shown: Vec<String> = dp
            .firewall()
            .memory()
            .iter()
            .map(|(m, b)| format!("{m} {}", mib(Some(*b))))
            .collect();
        println!(
            "load, capacity {capacity:>7}: {:>7.1} ms; empty maps: {}",
            took.as_secs_f64() * 1e3,
            shown.join(", "),
        );
        drop(dp);
    }

    let million = block_list(MILLION as usize, 7);
    // Ten spread over the range, five /16../24 and five /32 in an order that gives each action
    // both kinds (every other one is an allow rule: see `setup`).
    let (mut short, mut long) = (Vec::new(), Vec::new());
    for n in million.iter().step_by(20_011) {
        match n.prefix_len() {
            32 if long.len() < 5 => long.push(*n),
            16..=24 if short.len() < 5 => short.push(*n),
            _ => {}
        }
    }
    let ten: Vec<Ipv4Net> = [0, 0, 1, 1, 0, 0, 1, 1, 0, 1]
        .iter()
        .map(|kind| {
            if *kind == 0 {
                short.remove(0)
            } else {
                long.remove(0)
            }
        })
        .collect();
    let hundred_k: Vec<Ipv4Net> = million.iter().step_by(10).copied().collect();

    // Bulk apply: State change + reconcile, as one AddRules / ReplaceRules does (no gRPC).
    for nets in [&ten, &hundred_k, &million] {
        let mut rec = Reconciler::new(load(MILLION)?, 4099);
        let mut state = State::default();
        let b = batch(nets)?;
        let t = Instant::now();
        state.firewall.add(&b, MILLION as usize)?;
        rec.reconcile(&state)?;
        let applied = t.elapsed();
        let memory = rec.dataplane().firewall().memory();
        // Replace half of the list: the path of `lbctl block load --replace`.
        let old: BTreeSet<Ipv4Net> = nets.iter().copied().collect();
        let mut next: Vec<Ipv4Net> = nets[nets.len() / 2..].to_vec();
        next.extend(
            block_list(nets.len() / 2, 99)
                .into_iter()
                .filter(|n| !old.contains(n)),
        );
        let t = Instant::now();
        state
            .firewall
            .replace(Some(Action::Block), &batch(&next)?, MILLION as usize)?;
        rec.reconcile(&state)?;
        let replaced = t.elapsed();
        let t = Instant::now();
        let hits = rec
            .dataplane()
            .firewall()
            .all_hits(rec.firewall().id_limit())?;
        let read = t.elapsed();
        let tables = rec.firewall().tables();
        // The metrics' map walk (occupancy, flows, the top rules), as a scrape runs it.
        let walk = rec
            .dataplane()
            .telemetry()?
            .with_firewall_ids(rec.firewall().id_bound())
            .walk()?;
        println!(
            "           metrics map walk: {:.1} ms (conntrack of 4096, rate-limit buckets of 1,000,000)",
            walk.took.as_secs_f64() * 1e3
        );
        println!(
            "{:>9} prefixes: applied in {:>7.1} ms, half replaced in {:>7.1} ms; {} hit counters read in {:.1} ms; {} chunks, {} single addresses",
            nets.len(),
            applied.as_secs_f64() * 1e3,
            replaced.as_secs_f64() * 1e3,
            hits.len(),
            read.as_secs_f64() * 1e3,
            tables.chunks.len(),
            tables.exact_len(),
        );
        let shown: Vec<String> = memory
            .iter()
            .map(|(m, b)| format!("{m} {}", mib(Some(*b))))
            .collect();
        println!(
            "           kernel memory after the apply: {}",
            shown.join(", ")
        );
    }

    // Per packet: both programs loaded side by side, trials alternating between them.
    let sets: Vec<(String, Vec<Ipv4Net>)> = vec![("10".into(), ten), ("1,000,000".into(), million)];
    NetNs::within("bench", |ns| {
        let net = setup_net(ns)?;
        let mut rng = Rng(0x5eed_f12e_3a11);
        let setups: Vec<Setup> = sets
            .iter()
            .map(|(_, nets)| setup(net, nets, &mut rng))
            .collect::<Result<_>>()?;
        let mut figures = vec![vec![Vec::new(); CASES.len()]; setups.len()];
        for _ in 0..TRIALS {
            for (s, f) in setups.iter().zip(figures.iter_mut()) {
                for (case, ns) in trial(s)?.into_iter().enumerate() {
                    f[case].push(ns);
                }
            }
        }
        println!(
            "per packet (ns, min / median of {TRIALS} trials x {SOURCES} sources x {REPEAT} repeats; scope all, SYN to the LB's own address):"
        );
        for (i, case) in CASES.iter().enumerate() {
            let (a_min, a_med) = min_median(&figures[0][i]);
            let (b_min, b_med) = min_median(&figures[1][i]);
            println!(
                "  {case:<24} {:>9}: {a_min:6.1} / {a_med:6.1}   {:>9}: {b_min:6.1} / {b_med:6.1}   ratio min {:.2}x, median {:.2}x",
                sets[0].0,
                sets[1].0,
                b_min / a_min,
                b_med / a_med,
            );
        }
        println!(
            "  ({SOURCES} sources per case stay in the caches and the TLB, whatever the table; `make bench` section 2 sends 4,096 sources over random rules of a million, next to a memory baseline of the same reads)"
        );
        Ok(())
    })?;
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
