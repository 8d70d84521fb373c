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
use xdplb::skel::types;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::firewall::{Action, RuleBatch};
use xdplb_model::ratelimit::{clock_units, Policy, Scope};
use xdplb_model::state::Mode;

use crate::common::lab::{setup_net, Lb, Net, XDP_DROP, XDP_TX};
use crate::probes;
use crate::report::{Plot, Report, Section, Series};
use crate::setup::*;
use crate::testrun::{
    measure, pod_bytes, program_maps, Case, Expect, Floor, Measured, Runner, Spread,
};
use xdplb_testkit::gen::{block_list, Rng};
use xdplb_testkit::NetNs;

const TITLE: &str = "2. Scaling";

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
    // The IPIP flows all live in this CPU's DSR table (the thread is pinned), which holds the
    // established size divided by the CPUs.
    let cpus = libbpf_rs::num_possible_cpus()? as u32;
    let ct = ((flows + 2 * trials * packets) as u32)
        .next_power_of_two()
        .max(1 << 16)
        * cpus;
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
    let est = 256;
    let reopen = move |lb: &Lb, runner: &mut Runner| -> Result<()> {
        clear_flows(lb)?;
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

/// A random address inside a random rule of `nets`, `n` times.
fn sources_in(nets: &[Ipv4Net], n: usize, rng: &mut Rng) -> Vec<SocketAddrV4> {
    (0..n)
        .map(|_| {
            let net = nets[rng.below(nets.len())];
            let host = 32 - u32::from(net.prefix_len());
            let off = if host == 0 {
                0
            } else {
                (rng.next() as u32) & ((1u32 << host) - 1)
            };
            sa(Ipv4Addr::from(u32::from(net.network()) | off), 40000)
        })
        .collect()
}

/// The firewall's traffic, the same frames against every table.
struct FwTraffic {
    /// Blocked sources inside the rules that both tables hold (the ten of the small table).
    same: Vec<SocketAddrV4>,
    /// Allowed sources that no rule of the large table covers (so none of the small one).
    gaps: Vec<SocketAddrV4>,
    /// Blocked sources inside random rules of the large table (measured against it only).
    spread: Vec<SocketAddrV4>,
}

const FW_SAME: &str = "firewall block";
const FW_GAPS: &str = "NAT established, source between rules";
const FW_SPREAD: &str = "firewall block, sources over all rules";

/// The memory baseline of a blocked source's lookup, as cache lines of the probe array (page *
/// LINES + line): where the firewall's reads of `src` fall in 4 KiB pages, modelled on how the
/// kernel lays the maps out. Regions of the probe array, in pages: fw_l2 [0, 16384) at the
/// chunk's own offset (1 KiB chunks, four per page); for a source its slot's filter sends on the
/// fw_l3 bucket [16384, 20480) (16-byte buckets, 1M of them: pages by a hash of the address)
/// and its element if there is one [20480, 20512) (kmalloc'd, in the direct map's large pages:
/// a few pages);
/// fw_hits' per-CPU pointer [20512, 22560) and counter [22560, 24608) (8 bytes per rule id).
fn fw_lines(maps: &FwMaps, src: Ipv4Addr) -> Result<Vec<u32>> {
    const L: u32 = probes::LINES;
    let a = u32::from(src);
    let net16 = a >> 16;
    let chunk = maps
        .l2
        .lookup(&net16.to_ne_bytes(), MapFlags::ANY)
        .context("reading fw_l2")?
        .context("fw_l2 has no chunk")?;
    let slot = ((a >> 8) & 0xff) as usize;
    let mut word = u32::from_ne_bytes(chunk[slot * 4..slot * 4 + 4].try_into()?);
    let off = net16 * 1024 + slot as u32 * 4;
    let mut lines = vec![(off / 4096) * L + (off % 4096) / 64];
    if xdplb::dataplane::firewall::tables::goes_deeper(word, a) {
        let h = Rng(u64::from(a) | 1 << 40).next();
        lines.push((16384 + (h % 4096) as u32) * L + ((h >> 12) % 64) as u32);
        if let Some(v) = maps
            .l3
            .lookup(&src.octets(), MapFlags::ANY)
            .context("reading fw_l3")?
        {
            lines.push(20480 * L + ((h >> 20) % (32 * 64)) as u32);
            word = u32::from_ne_bytes(v[..4].try_into()?);
        } else {
            word &= !types::fw_verdict_bits::FW_VERDICT_DEEPER.0;
        }
    }
    ensure!(
        word >> types::fw_verdict_bits::FW_VERDICT_ACTION_SHIFT.0
            == u32::from(xdplb::dataplane::firewall::action_value(Action::Block)),
        "{src} is not blocked by the tables"
    );
    let id = word & types::fw_verdict_bits::FW_VERDICT_ID_MASK.0;
    let off = id * 8;
    lines.push((20512 + off / 4096) * L + (off % 4096) / 64);
    lines.push((22560 + off / 4096) * L + (off % 4096) / 64);
    Ok(lines)
}

/// The firewall tables of a loaded balancer, read back for [`fw_lines`].
struct FwMaps {
    l2: libbpf_rs::MapHandle,
    l3: libbpf_rs::MapHandle,
}

/// One firewall table loaded with `nets` (all block rules), a NAT VIP and the gaps' flows open.
struct FwTable {
    lb: Lb,
    nat: xdplb_model::state::VipKey,
    maps: FwMaps,
    prefixes: usize,
}

fn fw_table(net: Net, nets: &[Ipv4Net], capacity: u32, traffic: &FwTraffic) -> Result<FwTable> {
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
    open_flows(&lb, &mut Runner::default(), NAT_VIP, &traffic.gaps)?;
    let mut maps = program_maps(lb.rec.dataplane().program())?;
    let maps = FwMaps {
        l2: maps.remove("fw_l2").context("no fw_l2 map")?,
        l3: maps.remove("fw_l3").context("no fw_l3 map")?,
    };
    Ok(FwTable {
        lb,
        nat,
        maps,
        prefixes: nets.len(),
    })
}

/// The name of `case` measured against `t`.
fn fw_case(case: &str, t: &FwTable) -> String {
    format!("{case} ({} prefixes)", human(t.prefixes))
}

/// Both tables' cases in one interleaved measurement (same trials, same floor): the same
/// blocked sources and the same between-rules NAT flows against each, and against the last
/// (largest) table the sources over all its rules. Returns it with the memory baselines of the
/// blocked frames (named like their cases).
fn firewall_measure(
    net: Net,
    floor: &Floor,
    tables: &[FwTable],
    traffic: &FwTraffic,
    trials: usize,
    packets: usize,
) -> Result<(Measured, Vec<probes::PageReads>)> {
    let syns =
        |v: &[SocketAddrV4]| -> Vec<Vec<u8>> { v.iter().map(|c| syn(*c, NAT_VIP)).collect() };
    let ifx = net.veth0;
    let mut cases = Vec::new();
    let mut baselines = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let lines = |v: &[SocketAddrV4]| -> Result<Vec<Vec<u32>>> {
            v.iter().map(|c| fw_lines(&t.maps, *c.ip())).collect()
        };
        baselines.push(probes::PageReads {
            name: fw_case(FW_SAME, t),
            frames: lines(&traffic.same)?,
        });
        let same = syns(&traffic.same);
        cases.push(Case {
            name: fw_case(FW_SAME, t),
            lb: &t.lb,
            ifindex: ifx,
            frames: Box::new(move |_, _| same.clone()),
            before: None,
            expect: Expect::new(R::LB_REASON_DROP_FIREWALL, XDP_DROP),
        });
        let est: Vec<Vec<u8>> = traffic
            .gaps
            .iter()
            .map(|c| data(*c, NAT_VIP).build())
            .collect();
        cases.push(Case {
            name: fw_case(FW_GAPS, t),
            lb: &t.lb,
            ifindex: ifx,
            frames: Box::new(move |_, _| est.clone()),
            before: None,
            expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(t.nat, false),
        });
        if i + 1 == tables.len() {
            baselines.push(probes::PageReads {
                name: fw_case(FW_SPREAD, t),
                frames: lines(&traffic.spread)?,
            });
            let frames = syns(&traffic.spread);
            cases.push(Case {
                name: fw_case(FW_SPREAD, t),
                lb: &t.lb,
                ifindex: ifx,
                frames: Box::new(move |_, _| frames.clone()),
                before: None,
                expect: Expect::new(R::LB_REASON_DROP_FIREWALL, XDP_DROP),
            });
        }
    }
    let m = measure(floor, ifx, &mut cases, trials, packets)?;
    Ok((m, baselines))
}

/// One read per frame, 4096 frames in random order: `lines` distinct cache lines spread evenly
/// over `pages` pages of the probe array (pages chosen at random among all of them).
fn page_probe(pages: u32, lines: u32, rng: &mut Rng) -> probes::PageReads {
    let mut chosen = BTreeSet::new();
    while chosen.len() < pages as usize {
        chosen.insert((rng.next() % u64::from(probes::PAGES)) as u32);
    }
    let chosen: Vec<u32> = chosen.into_iter().collect();
    let all: Vec<u32> = (0..lines)
        .map(|i| {
            let page = chosen[(i % pages) as usize];
            page * probes::LINES + (i / pages) % probes::LINES
        })
        .collect();
    let mut frames: Vec<Vec<u32>> = (0..4096).map(|i| vec![all[i % all.len()]]).collect();
    for i in (1..frames.len()).rev() {
        frames.swap(i, rng.below(i + 1));
    }
    probes::PageReads {
        name: format!("memory only: 1 read, {lines} lines over {pages} pages"),
        frames,
    }
}

/// A row of the firewall's spread comparison: what, its cost above the floor and absolute, and
/// how many distinct 4 KiB pages its frames touch (by the model of [`fw_lines`]).
struct SpreadRow {
    what: String,
    /// The set it measures (a firewall case or a page probe).
    set: String,
    /// Prefixes in the table (0: a page probe of no table).
    x: usize,
    above: Spread,
    absolute: Spread,
    pages: usize,
    lines: usize,
    /// For a firewall row: its memory baseline (the next row).
    memory: Option<Spread>,
    /// Share of the frames whose lookup goes on to fw_l3 (firewall rows).
    deeper: f64,
}

/// The firewall's points: the same traffic against 10 and against all prefixes (the
/// flatness criterion), and against the large table the sources spread over all its rules, next
/// to memory baselines of the same reads.
fn firewall_all(
    net: Net,
    floor: &Floor,
    quick: bool,
    trials: usize,
    packets: usize,
) -> Result<(Curves, Vec<SpreadRow>)> {
    let big = if quick { 100_000 } else { 1_000_000 };
    eprintln!("  scaling: generating {big} firewall prefixes");
    let all = block_list(big, 7);
    let ten: Vec<Ipv4Net> = all.iter().step_by(big / 10).copied().collect();
    let cover = Cover::new(&all);
    let mut rng = Rng(0x5eed_f12e_3a11);
    let same = sources_in(&ten, 4096, &mut rng);
    let spread = sources_in(&all, 4096, &mut rng);
    let mut gaps = Vec::new();
    while gaps.len() < 256 {
        let a = Ipv4Addr::from(0x0100_0000 + (rng.next() as u32) % (99 << 24));
        if !cover.contains(a) {
            gaps.push(sa(a, 40000));
        }
    }
    let traffic = FwTraffic { same, gaps, spread };
    let mut tables = Vec::new();
    for nets in [&ten, &all] {
        eprintln!("  scaling: loading {} firewall prefixes", nets.len());
        tables.push(
            fw_table(net, nets, big as u32, &traffic)
                .with_context(|| format!("loading {} firewall prefixes", nets.len()))?,
        );
    }
    eprintln!("  scaling: firewall, both tables");
    let (m, mut sets) = firewall_measure(net, floor, &tables, &traffic, trials, packets)
        .context("firewall prefixes")?;
    let mut curves = Curves::default();
    for case in [FW_SAME, FW_GAPS] {
        let points = tables
            .iter()
            .filter_map(|t| {
                let name = fw_case(case, t);
                Some(Point {
                    x: t.prefixes,
                    above: m.above_floor(&name)?,
                    absolute: m.case(&name)?,
                })
            })
            .collect();
        curves.paths.push((case.to_string(), points));
    }
    drop(tables);
    let mut prng = Rng(0x9a9e_5eed);
    sets.push(page_probe(64, 4096, &mut prng));
    sets.push(page_probe(4096, 4096, &mut prng));
    sets.push(page_probe(16, 1024, &mut prng));
    eprintln!("  scaling: firewall memory baselines");
    let mb = probes::page_reads(net, floor, &sets, trials, packets)
        .context("firewall memory baselines")?;
    let mut rows = Vec::new();
    for set in &sets {
        let mut lines: Vec<u32> = set.frames.iter().flatten().copied().collect();
        lines.sort_unstable();
        lines.dedup();
        let (Some(above), Some(absolute)) = (mb.above_floor(&set.name), mb.case(&set.name)) else {
            continue;
        };
        let memory = SpreadRow {
            what: set.name.clone(),
            set: set.name.clone(),
            x: 0,
            above,
            absolute,
            pages: set.pages(),
            lines: lines.len(),
            memory: None,
            deeper: 0.0,
        };
        // A firewall case's name ends in "(N prefixes)"; its baseline follows it.
        let Some((case, x)) = [FW_SAME, FW_SPREAD].iter().find_map(|c| {
            [10, big]
                .iter()
                .find(|x| set.name == format!("{c} ({} prefixes)", human(**x)))
                .map(|x| (*c, *x))
        }) else {
            rows.push(memory);
            continue;
        };
        let (Some(fa), Some(fabs)) = (m.above_floor(&set.name), m.case(&set.name)) else {
            continue;
        };
        rows.push(SpreadRow {
            what: set.name.clone(),
            set: case.to_string(),
            x,
            above: fa,
            absolute: fabs,
            pages: memory.pages,
            lines: memory.lines,
            memory: Some(above),
            deeper: set.frames.iter().filter(|f| f.len() > 3).count() as f64
                / set.frames.len().max(1) as f64,
        });
        rows.push(SpreadRow {
            what: format!("memory only: the reads of {}", set.name),
            set: format!("memory only: the reads of {case}"),
            x,
            ..memory
        });
    }
    Ok((curves, rows))
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
    fw_spread: Vec<SpreadRow>,
    ratelimit: Curves,
}

fn measure_all(quick: bool) -> Result<Scaling> {
    NetNs::within("bench", |ns| {
        crate::setup::pin_to_this_cpu()?;
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
            fw_spread: Vec::new(),
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
        (s.firewall, s.fw_spread) = firewall_all(net, &floor, quick, 4 * trials, packets)?;
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
        "prefixes in the tables (log)",
        "scaling-firewall.png",
        &sc.firewall,
        Target::Flat(1.2),
    );
    spread_rows(&mut s, &mut plots, &sc.fw_spread);
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
        "Firewall prefixes: block rules through the library's firewall state and reconciler, \
         shaped like a real block list (half /24, a third /32, the rest /16-/23); the small table \
         is ten rules of the large one. Both tables are loaded side by side and measured in one \
         run of 20 trials, with the same frames: 4,096 blocked sources \
         inside those ten rules, and 256 allowed sources (each with an open NAT flow) in gaps \
         that no rule of the large table covers. A source costs one fw_l2 read (a preallocated \
         64 MiB array indexed by /16 and /24), one fw_l3 hash lookup when its /24 holds rules \
         longer than /24, and one per-CPU hit counter: the same lookups at any rule count, so \
         this like-with-like pair is the flatness criterion."
            .to_string(),
    );
    s.note(
        "Firewall spread (large table only): 4,096 blocked sources, each in a random rule of the \
         whole table, so each packet reads its own fw_l2 page, its own rule's hit counter and, \
         for a /25-/32 rule, its own fw_l3 bucket. Next to each firewall row, its memory \
         baseline: probe_page_reads (bench/bpf/probes.bpf.c) doing nothing but a chain of \
         dependent reads of the same pattern in a 128 MiB BPF array of 4 KiB pages, one frame \
         per packet (per source: the fw_l2 chunk's own page and line; for a deeper slot a \
         hashed bucket page and an element in a few pages, as kmalloc'd elements sit in the \
         direct map's large pages; the per-CPU pointer and the counter, 8 bytes per rule id); \
         pages and lines count the distinct 4 KiB pages and cache lines of those reads. The \
         memory-only rows with one read per frame put the same 4,096 lines in 64 or in 4,096 \
         pages: their difference is the price of a TLB miss alone (the lines fit in L2 either \
         way; this is a KVM guest, so a miss is a two-dimensional page walk)."
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

/// The firewall's spread comparison: each firewall row with its cost over its memory
/// baseline, and the memory-only rows; the plot of the firewall dimension gets them as points.
fn spread_rows(s: &mut Section, plots: &mut [Plot], rows: &[SpreadRow]) {
    for r in rows {
        let change = match r.memory {
            Some(m) => format!(
                "{:.0}% of sources on to fw_l3; {:+.0} ns over its memory baseline",
                r.deeper * 100.0,
                r.above.min - m.min
            ),
            None => String::new(),
        };
        s.row(
            vec![
                "firewall spread".into(),
                r.what.clone(),
                format!("{:+.0}", r.above.min),
                format!("{:.0}", r.absolute.min),
                format!("{} pages, {} lines; {change}", r.pages, r.lines),
                String::new(),
            ],
            None,
        );
    }
    let Some(plot) = plots.iter_mut().find(|p| p.file == "scaling-firewall.png") else {
        return;
    };
    for r in rows.iter().filter(|r| r.x > 0) {
        let p = (r.x as f64, r.above.min);
        match plot.series.iter_mut().find(|s| s.label == r.set) {
            Some(s) => s.points.push(p),
            None => plot.series.push(Series {
                label: r.set.clone(),
                points: vec![p],
            }),
        }
    }
}

/// What the firewall's spread rows say: how much of the spread sources' extra cost the memory
/// baselines explain, and the price of a TLB miss alone.
fn spread_closing(rows: &[SpreadRow]) -> Option<String> {
    let big = rows.iter().map(|r| r.x).max()?;
    let find = |set: &str, x: usize| rows.iter().find(|r| r.set == set && r.x == x);
    let spread = find(FW_SPREAD, big)?;
    let same = find(FW_SAME, big)?;
    let (ms, mh) = (spread.memory?, same.memory?);
    let probe = |pages: usize| {
        rows.iter()
            .find(|r| r.x == 0 && r.pages == pages && r.lines == 4096)
    };
    let tlb = match (probe(64), probe(4096)) {
        (Some(d), Some(w)) => format!(
            " One read per packet of 4,096 lines costs {:+.0} ns in 64 pages and {:+.0} ns in \
             4,096 pages: {:+.0} ns per packet is the TLB miss alone (the lines fit in L2 either \
             way; a guest's miss is a two-dimensional page walk).",
            d.above.min,
            w.above.min,
            w.above.min - d.above.min
        ),
        _ => String::new(),
    };
    Some(format!(
        "Firewall spread: against {} prefixes, sources in random rules of the whole table cost \
         {:+.0} ns and the same number of sources in ten of its rules {:+.0} ns ({:+.0} ns). \
         The memory baselines of their reads alone (the same pages and lines, no lookup: {} vs \
         {} pages) cost {:+.0} and {:+.0} ns ({:+.0} ns); net of them the firewall's own cost is \
         {:+.0} ns spread and {:+.0} ns hot. The lookups are the same at any rule count; what a \
         million rules change is how many distinct pages real traffic reads.{tlb}",
        human(big),
        spread.above.min,
        same.above.min,
        spread.above.min - same.above.min,
        spread.pages,
        same.pages,
        ms.min,
        mh.min,
        ms.min - mh.min,
        spread.above.min - ms.min,
        same.above.min - mh.min,
    ))
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
    if let Some(((x0, a), (x1, b))) = ends(&sc.firewall, FW_SAME) {
        if a > 0.0 && b / a > 1.2 {
            out.push(format!(
                "Firewall prefixes: the same blocked sources cost {a:+.0} ns against {} \
                 prefixes and {b:+.0} ns against {} ({:.2}x), with the same lookups per packet; \
                 see their memory baselines in the spread rows for how much of it the reads \
                 themselves explain.",
                human(x0),
                human(x1),
                b / a,
            ));
        }
    }
    out.extend(spread_closing(&sc.fw_spread));
    out
}
