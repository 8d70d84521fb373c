//! Section 2: how the key paths scale with tracked flows, backends per VIP, firewall prefixes and
//! rate-limited clients. Each point is its own measurement (floor included, as in section 1),
//! on a load balancer filled the way production fills it: flows by the program itself (one SYN
//! each), backends and firewall rules through the State and the Reconciler.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use libbpf_rs::{MapCore, MapFlags};
use xdplb::dataplane::LoadOptions;
use xdplb::firewall::{Action, RuleBatch};
use xdplb::ratelimit::{clock_units, Policy, Scope};
use xdplb::skel::types;
use xdplb::skel::types::lb_reason as R;
use xdplb::state::Mode;

use crate::common::lab::{setup_net, Lb, Net, XDP_DROP, XDP_TX};
use crate::common::netns::TestNetns;
use crate::report::{Plot, Report, Section, Series};
use crate::setup::*;
use crate::testrun::{
    clear_map, measure, pod_bytes, program_maps, Case, Expect, Floor, Measured, Runner, Spread,
};

const TITLE: &str = "2. Scaling";

/// xorshift64*: reproducible pseudo-random numbers without a dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One measured point of a curve: x and the path's cost above the floor.
#[derive(Debug, Clone)]
struct Point {
    x: usize,
    above: Spread,
    absolute: Spread,
}

/// A curve per path of one dimension.
#[derive(Debug, Default)]
struct Curves {
    paths: Vec<(String, Vec<Point>)>,
}

impl Curves {
    fn add(&mut self, x: usize, m: &Measured) {
        for (name, _) in &m.cases {
            let (Some(above), Some(absolute)) = (m.above_floor(name), m.case(name)) else {
                continue;
            };
            let p = Point { x, above, absolute };
            match self.paths.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(p),
                None => self.paths.push((name.clone(), vec![p])),
            }
        }
    }
}

fn human(x: usize) -> String {
    match x {
        x if x >= 1_000_000 && x % 1_000_000 == 0 => format!("{}M", x / 1_000_000),
        x if x >= 1_000 && x % 1_000 == 0 => format!("{}k", x / 1_000),
        x => x.to_string(),
    }
}

/// Source `i` of a bulk range starting at `base` (a /10 or larger).
fn bulk_source(base: Ipv4Addr, i: usize) -> SocketAddrV4 {
    sa(Ipv4Addr::from(u32::from(base) + i as u32), 5000)
}

/// Established-flow probes: `n` packets of random flows among `count` opened from `base`.
fn probes(vip: SocketAddrV4, base: Ipv4Addr, count: usize, t: usize, n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
    (0..n)
        .map(|_| data(bulk_source(base, rng.below(count)), vip).build())
        .collect()
}

const NAT_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80);
const IPIP_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 11), 80);
const NAT_BASE: Ipv4Addr = Ipv4Addr::new(10, 128, 0, 0);
const IPIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 192, 0, 0);

/// NAT and IPIP, established and new, with `flows` flows in the table (half of each mode).
fn flows_point(
    net: Net,
    floor: &Floor,
    flows: usize,
    trials: usize,
    packets: usize,
) -> Result<Measured> {
    let ct = ((flows + 2 * trials * packets) as u32)
        .next_power_of_two()
        .max(1 << 16);
    let mut lb = load_lb(net, &opts(ct))?;
    let backends: Vec<_> = (0..100).map(|i| far_backend(i, 8080)).collect();
    let nat = add_vip(&mut lb, NAT_VIP, Mode::Nat, &backends)?;
    let backends: Vec<_> = (0..100).map(|i| far_backend(i, 80)).collect();
    let ipip = add_vip(&mut lb, IPIP_VIP, Mode::Ipip, &backends)?;
    let each = (flows / 2).max(1);
    let mut runner = Runner::default();
    fill_flows(&lb, &mut runner, NAT_VIP, each, |i| {
        bulk_source(NAT_BASE, i)
    })?;
    fill_flows(&lb, &mut runner, IPIP_VIP, each, |i| {
        bulk_source(IPIP_BASE, i)
    })?;
    let ifx = net.veth0;
    let new_frames = |vip| {
        move |t: usize, n: usize| {
            (0..n)
                .map(|i| syn(new_source(t, i), vip))
                .collect::<Vec<_>>()
        }
    };
    let mut cases = vec![
        Case {
            name: "NAT established".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(move |t, n| probes(NAT_VIP, NAT_BASE, each, t, n)),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(nat, false),
        },
        Case {
            name: "NAT new flow".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(new_frames(NAT_VIP)),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(nat, true),
        },
        Case {
            name: "IPIP established".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(move |t, n| probes(IPIP_VIP, IPIP_BASE, each, t, n)),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_IPIP, XDP_TX).flows(ipip, false),
        },
        Case {
            name: "IPIP new flow".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(new_frames(IPIP_VIP)),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_IPIP, XDP_TX).flows(ipip, true),
        },
    ];
    let m = measure(floor, ifx, &mut cases, trials, packets)?;
    let tracked = lb.maps().conntrack_entries();
    ensure!(
        tracked >= 2 * each,
        "the flow table holds {tracked} flows, fewer than the {} opened",
        2 * each
    );
    Ok(m)
}

/// NAT and IPIP, new and established, with `k` backends per VIP.
fn backends_point(
    net: Net,
    floor: &Floor,
    k: usize,
    trials: usize,
    packets: usize,
) -> Result<Measured> {
    let mut lb = load_lb(net, &opts(1 << 20))?;
    let backends: Vec<_> = (0..k).map(|i| far_backend(i, 8080)).collect();
    let nat = add_vip(&mut lb, NAT_VIP, Mode::Nat, &backends)?;
    let backends: Vec<_> = (0..k).map(|i| far_backend(i, 80)).collect();
    let ipip = add_vip(&mut lb, IPIP_VIP, Mode::Ipip, &backends)?;
    let maps = program_maps(lb.rec.dataplane().program())?;
    let ct_fwd = maps.get("ct_fwd").context("no ct_fwd map")?;
    let ct_rev = maps.get("ct_rev").context("no ct_rev map")?;
    let est = 256;
    let reopen = move |lb: &Lb, runner: &mut Runner| -> Result<()> {
        clear_map(ct_fwd)?;
        clear_map(ct_rev)?;
        fill_flows(lb, runner, NAT_VIP, est, |i| bulk_source(NAT_BASE, i))?;
        fill_flows(lb, runner, IPIP_VIP, est, |i| bulk_source(IPIP_BASE, i))
    };
    reopen(&lb, &mut Runner::default())?;
    let ifx = net.veth0;
    let new_frames = |vip| {
        move |t: usize, n: usize| {
            (0..n)
                .map(|i| syn(new_source(t, i), vip))
                .collect::<Vec<_>>()
        }
    };
    let mut cases = vec![
        Case {
            name: "NAT new flow".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(new_frames(NAT_VIP)),
            before: Some(Box::new(reopen)),
            expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(nat, true),
        },
        Case {
            name: "NAT established".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(move |t, n| probes(NAT_VIP, NAT_BASE, est, t, n)),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(nat, false),
        },
        Case {
            name: "IPIP new flow".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(new_frames(IPIP_VIP)),
            before: Some(Box::new(reopen)),
            expect: Expect::new(R::LB_REASON_TX_IPIP, XDP_TX).flows(ipip, true),
        },
        Case {
            name: "IPIP established".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(move |t, n| probes(IPIP_VIP, IPIP_BASE, est, t, n)),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_IPIP, XDP_TX).flows(ipip, false),
        },
    ];
    measure(floor, ifx, &mut cases, trials, packets)
}

/// `n` distinct prefixes shaped like a large block list (half /24, a third /32, the rest
/// /16../23) in 1.0.0.0-99.255.255.255 (the generator of `benches/firewall.rs`).
fn prefixes(n: usize, seed: u64) -> Vec<Ipv4Net> {
    let mut rng = Rng(seed);
    let mut out = BTreeSet::new();
    while out.len() < n {
        let r = rng.next();
        let addr = 0x0100_0000 + (r as u32) % (99 << 24);
        let len = match (r >> 32) % 6 {
            0..=2 => 24,
            3 | 4 => 32,
            _ => 16 + ((r >> 40) % 8) as u8,
        };
        if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(addr), len) {
            out.insert(net.trunc());
        }
    }
    out.into_iter().collect()
}

/// Whether `addr` is inside any of `nets` (sorted by network address; intervals merged first).
struct Cover(Vec<(u32, u32)>);

impl Cover {
    fn new(nets: &[Ipv4Net]) -> Cover {
        let mut iv: Vec<(u32, u32)> = nets
            .iter()
            .map(|n| (u32::from(n.network()), u32::from(n.broadcast())))
            .collect();
        iv.sort();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(iv.len());
        for (a, b) in iv {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Cover(merged)
    }

    fn contains(&self, addr: Ipv4Addr) -> bool {
        let a = u32::from(addr);
        let i = self.0.partition_point(|(start, _)| *start <= a);
        i > 0 && self.0[i - 1].1 >= a
    }
}

/// Firewall block and NAT established (sources between the rules) with `nets` in the trie.
fn firewall_point(
    net: Net,
    floor: &Floor,
    nets: &[Ipv4Net],
    capacity: u32,
    trials: usize,
    packets: usize,
) -> Result<Measured> {
    let mut lb = load_lb(
        net,
        &LoadOptions {
            firewall_capacity: capacity,
            ..opts(1 << 16)
        },
    )?;
    let nat = add_vip(&mut lb, NAT_VIP, Mode::Nat, &near_backends(8080))?;
    let mut batch = RuleBatch::default();
    for (i, n) in nets.iter().enumerate() {
        batch.push(i, *n, Action::Block)?;
    }
    lb.state.firewall.add(&batch, capacity as usize)?;
    lb.reconcile()?;
    let cover = Cover::new(nets);
    let mut rng = Rng(0x5eed_f12e_3a11);
    // Blocked: a random address inside a random rule (every rule blocks).
    let blocked: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let n = nets[rng.below(nets.len())];
            let host = 32 - u32::from(n.prefix_len());
            let off = if host == 0 {
                0
            } else {
                (rng.next() as u32) & ((1u32 << host) - 1)
            };
            syn(
                sa(Ipv4Addr::from(u32::from(n.network()) | off), 40000),
                NAT_VIP,
            )
        })
        .collect();
    // Allowed: addresses in the rules' range that no rule covers, each with an open flow.
    let mut gaps = Vec::new();
    while gaps.len() < 256 {
        let a = Ipv4Addr::from(0x0100_0000 + (rng.next() as u32) % (99 << 24));
        if !cover.contains(a) {
            gaps.push(sa(a, 40000));
        }
    }
    let mut runner = Runner::default();
    open_flows(&lb, &mut runner, NAT_VIP, &gaps)?;
    let est: Vec<Vec<u8>> = gaps.iter().map(|c| data(*c, NAT_VIP).build()).collect();
    let ifx = net.veth0;
    let mut cases = vec![
        Case {
            name: "firewall block".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(move |_, _| blocked.clone()),
            before: None,
            expect: Expect::new(R::LB_REASON_DROP_FIREWALL, XDP_DROP),
        },
        Case {
            name: "NAT established, source between rules".into(),
            lb: &lb,
            ifindex: ifx,
            frames: Box::new(move |_, _| est.clone()),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(nat, false),
        },
    ];
    measure(floor, ifx, &mut cases, trials, packets)
}

/// Rate-limit drop with `clients` buckets, every one over its limit.
fn ratelimit_point(
    net: Net,
    floor: &Floor,
    clients: usize,
    trials: usize,
    packets: usize,
) -> Result<Measured> {
    let mut lb = load_lb(
        net,
        &LoadOptions {
            ratelimit_clients: (clients as u32 * 2).next_power_of_two(),
            ..opts(1 << 16)
        },
    )?;
    add_vip(&mut lb, NAT_VIP, Mode::Nat, &near_backends(8080))?;
    lb.state.ratelimit.set(
        None,
        Policy {
            rate: 1,
            burst: 1,
            scope: Scope::All,
        },
    )?;
    lb.reconcile()?;
    // The buckets as the program leaves them after a client went over its limit, with the
    // theoretical arrival time an hour ahead so that none refills during the run.
    let handle = lb.rec.dataplane().ratelimit().clients_handle()?;
    let now = xdplb::dataplane::telemetry::clock_ns(libc::CLOCK_MONOTONIC);
    let value = types::rl_client {
        tat: clock_units(now + 3_600_000_000_000),
        dropped: 1,
    };
    const BATCH: usize = 65536;
    let base = Ipv4Addr::new(10, 128, 0, 0);
    for start in (0..clients).step_by(BATCH) {
        let end = (start + BATCH).min(clients);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for i in start..end {
            let k = xdplb::dataplane::ratelimit::client_key(*bulk_source(base, i).ip());
            keys.extend_from_slice(pod_bytes(&k));
            values.extend_from_slice(pod_bytes(&value));
        }
        handle
            .update_batch(
                &keys,
                &values,
                (end - start) as u32,
                MapFlags::ANY,
                MapFlags::ANY,
            )
            .context("filling rl_clients")?;
    }
    let ifx = net.veth0;
    let mut cases = vec![Case {
        name: "rate-limit drop".into(),
        lb: &lb,
        ifindex: ifx,
        frames: Box::new(move |t, n| {
            let mut rng = Rng(0x7a7e_11b1 ^ (t as u64 + 1));
            (0..n)
                .map(|_| syn(bulk_source(base, rng.below(clients)), NAT_VIP))
                .collect()
        }),
        before: None,
        expect: Expect::new(R::LB_REASON_DROP_RATELIMIT, XDP_DROP),
    }];
    measure(floor, ifx, &mut cases, trials, packets)
}

/// All curves, measured in one private network namespace.
struct Scaling {
    flows: Curves,
    backends: Curves,
    firewall: Curves,
    ratelimit: Curves,
}

fn measure_all(quick: bool) -> Result<Scaling> {
    TestNetns::run(move |ns| {
        let net = setup_net(ns)?;
        add_routes(ns)?;
        let floor = Floor::load()?;
        let (trials, packets) = if quick { (5, 2_000) } else { (5, 10_000) };
        let flow_points: &[usize] = if quick {
            &[1, 10_000, 100_000]
        } else {
            &[1, 10_000, 100_000, 1_000_000]
        };
        let mut s = Scaling {
            flows: Curves::default(),
            backends: Curves::default(),
            firewall: Curves::default(),
            ratelimit: Curves::default(),
        };
        for &n in flow_points {
            eprintln!("  scaling: {n} tracked flows");
            let m = flows_point(net, &floor, n, trials, packets)
                .with_context(|| format!("{n} tracked flows"))?;
            s.flows.add(n, &m);
        }
        for k in [2usize, 100, 1000] {
            eprintln!("  scaling: {k} backends");
            let m = backends_point(net, &floor, k, trials, packets)
                .with_context(|| format!("{k} backends"))?;
            s.backends.add(k, &m);
        }
        let big = if quick { 100_000 } else { 1_000_000 };
        eprintln!("  scaling: generating {big} firewall prefixes");
        let all = prefixes(big, 7);
        let ten: Vec<Ipv4Net> = all.iter().step_by(big / 10).copied().collect();
        for nets in [&ten, &all] {
            eprintln!("  scaling: {} firewall prefixes", nets.len());
            let m = firewall_point(net, &floor, nets, big as u32, trials, packets)
                .with_context(|| format!("{} firewall prefixes", nets.len()))?;
            s.firewall.add(nets.len(), &m);
        }
        let clients: &[usize] = if quick {
            &[1_000, 100_000]
        } else {
            &[1_000, 1_000_000]
        };
        for &c in clients {
            eprintln!("  scaling: {c} rate-limited clients");
            let m = ratelimit_point(net, &floor, c, trials, packets)
                .with_context(|| format!("{c} rate-limited clients"))?;
            s.ratelimit.add(c, &m);
        }
        Ok(s)
    })
}

/// How a curve compares with its target: `flat` within a ratio, or at most `+ns` at the last
/// point over the first.
enum Target {
    Flat(f64),
    Growth(f64),
    None,
}

fn rows(
    s: &mut Section,
    report_plots: &mut Vec<Plot>,
    dim: &str,
    x_label: &str,
    file: &str,
    c: &Curves,
    target: Target,
) {
    let mut series = Vec::new();
    for (path, points) in &c.paths {
        let cells: Vec<String> = points
            .iter()
            .map(|p| format!("{}: {:+.0}", human(p.x), p.above.min))
            .collect();
        let abs: Vec<String> = points
            .iter()
            .map(|p| format!("{}: {:.0}", human(p.x), p.absolute.min))
            .collect();
        let lo = points.iter().map(|p| p.above.min).fold(f64::MAX, f64::min);
        let hi = points.iter().map(|p| p.above.min).fold(f64::MIN, f64::max);
        let first = points.first().map(|p| p.above.min).unwrap_or(0.0);
        let last = points.last().map(|p| p.above.min).unwrap_or(0.0);
        let (change, tcell, met) = match target {
            Target::Flat(r) => {
                let ratio = if lo > 0.0 { hi / lo } else { f64::INFINITY };
                (
                    format!("max/min {ratio:.2}x ({:+.0} ns)", hi - lo),
                    format!("flat within {:.0}%", (r - 1.0) * 100.0),
                    Some(ratio <= r),
                )
            }
            Target::Growth(ns) => (
                format!("{:+.0} ns last vs first", last - first),
                format!("<= +{ns:.0} ns at the last point"),
                Some(last - first <= ns),
            ),
            Target::None => (
                format!("{:+.0} ns last vs first", last - first),
                String::new(),
                None,
            ),
        };
        s.row(
            vec![
                dim.into(),
                path.clone(),
                cells.join(" · "),
                abs.join(" · "),
                change,
                tcell,
            ],
            met,
        );
        series.push(Series {
            label: path.clone(),
            points: points.iter().map(|p| (p.x as f64, p.above.min)).collect(),
        });
    }
    report_plots.push(Plot {
        file: file.into(),
        section: TITLE.into(),
        title: format!("Cost above the floor vs {dim}"),
        x_label: x_label.into(),
        y_label: "ns per packet above the floor (best trial)".into(),
        log_x: true,
        series,
    });
}

pub fn run(report: &mut Report, quick: bool) -> Result<()> {
    let sc = measure_all(quick).context("section 2: scaling")?;
    let mut s = Section::new(
        TITLE,
        &[
            "dimension",
            "path",
            "ns above floor (min) per point",
            "absolute ns (min)",
            "change",
            "target",
        ],
    );
    let mut plots = Vec::new();
    rows(
        &mut s,
        &mut plots,
        "tracked flows",
        "flows in the flow table (log)",
        "scaling-flows.png",
        &sc.flows,
        Target::Growth(250.0),
    );
    rows(
        &mut s,
        &mut plots,
        "backends per VIP",
        "backends (log)",
        "scaling-backends.png",
        &sc.backends,
        Target::Flat(1.2),
    );
    rows(
        &mut s,
        &mut plots,
        "firewall prefixes",
        "prefixes in the trie (log)",
        "scaling-firewall.png",
        &sc.firewall,
        Target::Flat(1.2),
    );
    rows(
        &mut s,
        &mut plots,
        "rate-limited clients",
        "client buckets (log)",
        "scaling-ratelimit.png",
        &sc.ratelimit,
        Target::None,
    );
    s.note(
        "Each point is a measurement of its own with its own floor (5 trials, one call per \
         packet, counters checked as in section 1); figures are the best trial above the \
         floor's best (medians are inflated by other work on the shared CPUs)."
            .to_string(),
    );
    s.note(
        "Tracked flows: half NAT and half IPIP flows (one of each for 1), opened by the program \
         itself from one SYN each, VIPs of 100 backends (backends in 10.3.0.0/16 behind one \
         gateway); established probes hit random flows of the whole table, new flows are added \
         on top (tables sized so LRU eviction never starts)."
            .to_string(),
    );
    s.note(
        "Backends: VIPs with 2, 100 and 1,000 backends through the State and Reconciler \
         (Maglev ring of 4,099 slots); flow tables emptied before each new-flow trial, 256 \
         established flows per VIP re-opened."
            .to_string(),
    );
    s.note(
        "Firewall: block rules through the library's firewall state and reconciler, shaped like \
         a real block list (half /24, a third /32, the rest /16-/23); blocked sources fall in a \
         random rule, allowed sources in the gaps between rules (a deep walk of the trie)."
            .to_string(),
    );
    s.note(
        "Rate-limited clients: default policy 1 packet/s, burst 1, scope all; the client \
         buckets are written through the rl_clients map as the program leaves them for a client \
         over its limit (TAT an hour ahead, so none refills mid-run); probes hit random clients."
            .to_string(),
    );
    report.sections.push(s);
    report.plots.extend(plots);
    report.closing.extend(closing(&sc));
    Ok(())
}

/// First and last point (min above floor) of `path` in `c`, with their x.
fn ends(c: &Curves, path: &str) -> Option<((usize, f64), (usize, f64))> {
    let (_, pts) = c.paths.iter().find(|(n, _)| n == path)?;
    let (a, b) = (pts.first()?, pts.last()?);
    Some(((a.x, a.above.min), (b.x, b.above.min)))
}

/// Why the scaling targets are missed, from the curves.
fn closing(sc: &Scaling) -> Vec<String> {
    let mut out = Vec::new();
    let growth: Vec<String> = [
        "NAT established",
        "IPIP established",
        "NAT new flow",
        "IPIP new flow",
    ]
    .iter()
    .filter_map(|p| ends(&sc.flows, p).map(|((x0, a), (x1, b))| (p, x0, a, x1, b)))
    .filter(|(_, _, a, _, b)| b - a > 250.0)
    .map(|(p, x0, a, x1, b)| {
        format!(
            "{p} {:+.0} ns ({} -> {} flows)",
            b - a,
            human(x0),
            human(x1)
        )
    })
    .collect();
    if !growth.is_empty() {
        out.push(format!(
            "Tracked flows: {}. A lookup of a random flow in a table far larger than the 32 MiB \
             L3 cache misses twice (the hash bucket, then the element: 40-byte key, 64-byte \
             value, LRU node), and a NAT flow has a second entry in ct_rev; most of the step is \
             already there at 10k flows, where the entries leave L1/L2. What would close it: \
             smaller entries (an IPv4 key of 16 bytes instead of the IPv6-ready 40; a value \
             without the 16-byte SNAT address for DSR flows), a per-CPU flow table for DSR \
             (no shared cache lines), and measuring on hardware with a larger cache before \
             resizing.",
            growth.join(", ")
        ));
    }
    if let Some(((x0, a), (x1, b))) = ends(&sc.firewall, "firewall block") {
        if a > 0.0 && b / a > 1.2 {
            out.push(format!(
                "Firewall prefixes: a blocked source costs {a:+.0} ns with {} prefixes and \
                 {b:+.0} ns with {} ({:.1}x): the LPM trie walks one node per prefix length on \
                 the way to the match, and in a million-prefix trie every node is a cache miss. \
                 Sources between the rules: {}. The firewall's data \
                 structure is being replaced (issue 4); this is the figure to beat.",
                human(x0),
                human(x1),
                b / a,
                ends(&sc.firewall, "NAT established, source between rules")
                    .map(|((_, c), (_, d))| format!("{c:+.0} ns -> {d:+.0} ns on the NAT path"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}
