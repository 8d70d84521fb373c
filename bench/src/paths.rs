//! Section 1: the per-packet cost of every path of the `lb` program (BPF_PROG_TEST_RUN, one
//! call per packet), against the floor program measured the same way in the same run.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::firewall::{Action, RuleBatch};
use xdplb_model::ratelimit::{Policy, Scope};
use xdplb_model::state::Mode;

use crate::common::lab::{setup_net, CLIENT, LB_ADDR, VETH0_MAC, XDP_DROP, XDP_PASS, XDP_TX};
use crate::report::{Report, Section};
use crate::setup::*;
use crate::testrun::{measure, program_size, Case, Expect, Floor, Measured, Runner};
use xdplb_testkit::packet::{Packet, TCP_ACK};
use xdplb_testkit::NetNs;

/// Flows of the established-flow cases (cycled through).
const FLOWS: usize = 256;

/// (path, target in ns above the floor).
pub const TARGETS: &[(&str, Option<f64>)] = &[
    ("non-VIP pass", Some(20.0)),
    ("firewall block", Some(30.0)),
    ("firewall block, ACK", Some(30.0)),
    ("rate-limit drop", None),
    ("NAT new flow", Some(350.0)),
    ("NAT established", Some(120.0)),
    ("NAT reply", None),
    ("L2 DSR new flow", None),
    ("L2 DSR established", Some(60.0)),
    ("IPIP new flow", Some(200.0)),
    ("IPIP established", Some(80.0)),
    ("ICMP too-big", None),
];

fn target(name: &str) -> Option<f64> {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, t)| *t)
}

/// What each case proves with the counters, for the table.
fn proof(name: &str) -> &'static str {
    match name {
        "non-VIP pass" => "pass_not_vip",
        "firewall block" => "drop_firewall",
        "firewall block, ACK" => "drop_firewall, before any flow lookup",
        "rate-limit drop" => "drop_ratelimit",
        "NAT new flow" => "tx_nat_forward, 1 new flow each",
        "NAT established" => "tx_nat_forward, 0 new flows",
        "NAT reply" => "tx_nat_reply",
        "L2 DSR new flow" => "tx_l2dsr, 1 new flow each",
        "L2 DSR established" => "tx_l2dsr, 0 new flows",
        "IPIP new flow" => "tx_ipip, 1 new flow each",
        "IPIP established" => "tx_ipip, 0 new flows",
        "ICMP too-big" => "tx_icmp_frag_needed",
        _ => "",
    }
}

pub struct Outcome {
    pub measured: Measured,
    /// Single operations above the floor (`probes`), measured in the same namespace and run.
    pub ops: Vec<crate::probes::OpCost>,
    /// Jited bytes and translated instructions of `lb` and of the floor.
    pub sizes: ((u32, u32), (u32, u32)),
}

/// Measures every path; runs in a private network namespace.
pub fn measure_paths(trials: usize, packets: usize) -> Result<Outcome> {
    NetNs::within("bench", |ns| {
        pin_to_this_cpu()?;
        let net = setup_net(ns)?;
        add_routes(ns)?;
        let floor = Floor::load()?;
        let mut runner = Runner::default();
        let nat_vip = sa(Ipv4Addr::new(10, 9, 9, 9), 80);
        let l2_vip = sa(Ipv4Addr::new(10, 9, 9, 10), 80);
        let ipip_vip = sa(Ipv4Addr::new(10, 9, 9, 11), 80);

        // Established flows, replies, non-VIP traffic, ICMP too-big.
        let mut main = load_lb(net, &opts(1 << 20))?;
        let nat = add_vip(&mut main, nat_vip, Mode::Nat, &near_backends(8080))?;
        let l2 = add_vip(&mut main, l2_vip, Mode::L2dsr, &near_backends(80))?;
        let ipip = add_vip(&mut main, ipip_vip, Mode::Ipip, &near_backends(80))?;
        let clients: Vec<_> = (0..FLOWS).map(|i| sa(CLIENT, 30000 + i as u16)).collect();
        let natted = open_flows(&main, &mut runner, nat_vip, &clients)?;
        open_flows(&main, &mut runner, l2_vip, &clients)?;
        open_flows(&main, &mut runner, ipip_vip, &clients)?;
        let replies = natted
            .iter()
            .map(|f| reply_to(f))
            .collect::<Result<Vec<_>>>()?;
        let est = |vip| {
            clients
                .iter()
                .map(|c| data(*c, vip).build())
                .collect::<Vec<_>>()
        };
        let (nat_est, l2_est, ipip_est) = (est(nat_vip), est(l2_vip), est(ipip_vip));
        // veth0's MTU is 1500: 1500 bytes with DF do not fit once encapsulated.
        let big = clients
            .iter()
            .map(|c| sized(data(*c, ipip_vip), 1500))
            .collect::<Result<Vec<_>>>()?;
        let not_vip = vec![not_vip_frame()];

        // New flows: the flow tables are emptied before each trial.
        let mut fresh = load_lb(net, &opts(1 << 20))?;
        let fnat = add_vip(&mut fresh, nat_vip, Mode::Nat, &near_backends(8080))?;
        let fl2 = add_vip(&mut fresh, l2_vip, Mode::L2dsr, &near_backends(80))?;
        let fipip = add_vip(&mut fresh, ipip_vip, Mode::Ipip, &near_backends(80))?;

        // Firewall: ten block rules through the library's firewall state and reconciler.
        let mut fw = load_lb(net, &opts(1 << 16))?;
        let fw_vip = add_vip(&mut fw, nat_vip, Mode::Nat, &near_backends(8080))?;
        let mut batch = RuleBatch::default();
        for i in 0..10u8 {
            batch.push(
                i as usize,
                Ipv4Net::new(Ipv4Addr::new(10, 70 + i, 0, 0), 16)?,
                Action::Block,
            )?;
        }
        let cap = fw.rec.firewall().capacity();
        fw.state.firewall.add(&batch, cap)?;
        fw.reconcile()?;
        let blocked_clients: Vec<SocketAddrV4> = (0..FLOWS)
            .map(|i| {
                sa(
                    Ipv4Addr::new(10, 70, (i / 200) as u8, (i % 200) as u8 + 1),
                    40000,
                )
            })
            .collect();
        let blocked: Vec<Vec<u8>> = blocked_clients.iter().map(|c| syn(*c, nat_vip)).collect();
        let _ = fw_vip;
        // The same sources' ACKs: a non-SYN would look its flow up first if the firewall did
        // not run before any flow lookup (issue 17).
        let blocked_acks: Vec<Vec<u8>> = blocked_clients
            .iter()
            .map(|c| data(*c, nat_vip).build())
            .collect();

        // Rate limiting: every client 1 packet/s, burst 1, all packets to VIPs charged. Each
        // trial has clients of its own, primed (one packet each, allowed: a new bucket) just
        // before it, so every trial packet is over the limit for the next second.
        let mut rl = load_lb(net, &opts(1 << 16))?;
        add_vip(&mut rl, nat_vip, Mode::Nat, &near_backends(8080))?;
        rl.state.ratelimit.set(
            None,
            Policy {
                rate: 1,
                burst: 1,
                scope: Scope::All,
            },
        )?;
        rl.reconcile()?;
        let limited = move |t: usize| -> Vec<Vec<u8>> {
            (0..FLOWS)
                .map(|i| {
                    let b = (t * 2 + i / 250) as u8;
                    syn(
                        sa(Ipv4Addr::new(10, 66, b, (i % 250) as u8 + 1), 40000),
                        nat_vip,
                    )
                })
                .collect()
        };
        let mut primed = 0usize;

        let new_frames = |vip| {
            move |t: usize, n: usize| {
                (0..n)
                    .map(|i| syn(new_source(t, i), vip))
                    .collect::<Vec<_>>()
            }
        };
        let clear =
            || move |lb: &crate::common::lab::Lb, _: &mut Runner| -> Result<()> { clear_flows(lb) };
        let fixed = |frames: Vec<Vec<u8>>| move |_: usize, _: usize| frames.clone();
        let ifx = net.veth0;
        let mut cases = vec![
            Case {
                name: "non-VIP pass".into(),
                lb: &main,
                ifindex: ifx,
                frames: Box::new(fixed(not_vip)),
                before: None,
                expect: Expect::new(R::LB_REASON_PASS_NOT_VIP, XDP_PASS),
            },
            Case {
                name: "firewall block".into(),
                lb: &fw,
                ifindex: ifx,
                frames: Box::new(fixed(blocked)),
                before: None,
                expect: Expect::new(R::LB_REASON_DROP_FIREWALL, XDP_DROP),
            },
            Case {
                name: "firewall block, ACK".into(),
                lb: &fw,
                ifindex: ifx,
                frames: Box::new(fixed(blocked_acks)),
                before: None,
                expect: Expect::new(R::LB_REASON_DROP_FIREWALL, XDP_DROP),
            },
            Case {
                name: "rate-limit drop".into(),
                lb: &rl,
                ifindex: ifx,
                frames: Box::new(move |t, _| limited(t)),
                before: Some(Box::new(move |lb, runner| {
                    let prog = lb.rec.dataplane().program();
                    for f in limited(primed) {
                        runner.run(prog, ifx, &f)?;
                    }
                    primed += 1;
                    Ok(())
                })),
                expect: Expect::new(R::LB_REASON_DROP_RATELIMIT, XDP_DROP),
            },
            Case {
                name: "NAT new flow".into(),
                lb: &fresh,
                ifindex: ifx,
                frames: Box::new(new_frames(nat_vip)),
                before: Some(Box::new(clear())),
                expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(fnat, true),
            },
            Case {
                name: "NAT established".into(),
                lb: &main,
                ifindex: ifx,
                frames: Box::new(fixed(nat_est)),
                before: None,
                expect: Expect::new(R::LB_REASON_TX_NAT_FORWARD, XDP_TX).flows(nat, false),
            },
            Case {
                name: "NAT reply".into(),
                lb: &main,
                ifindex: ifx,
                frames: Box::new(fixed(replies)),
                before: None,
                expect: Expect::new(R::LB_REASON_TX_NAT_REPLY, XDP_TX),
            },
            Case {
                name: "L2 DSR new flow".into(),
                lb: &fresh,
                ifindex: ifx,
                frames: Box::new(new_frames(l2_vip)),
                before: Some(Box::new(clear())),
                expect: Expect::new(R::LB_REASON_TX_L2DSR, XDP_TX).flows(fl2, true),
            },
            Case {
                name: "L2 DSR established".into(),
                lb: &main,
                ifindex: ifx,
                frames: Box::new(fixed(l2_est)),
                before: None,
                expect: Expect::new(R::LB_REASON_TX_L2DSR, XDP_TX).flows(l2, false),
            },
            Case {
                name: "IPIP new flow".into(),
                lb: &fresh,
                ifindex: ifx,
                frames: Box::new(new_frames(ipip_vip)),
                before: Some(Box::new(clear())),
                expect: Expect::new(R::LB_REASON_TX_IPIP, XDP_TX).flows(fipip, true),
            },
            Case {
                name: "IPIP established".into(),
                lb: &main,
                ifindex: ifx,
                frames: Box::new(fixed(ipip_est)),
                before: None,
                expect: Expect::new(R::LB_REASON_TX_IPIP, XDP_TX).flows(ipip, false),
            },
            Case {
                name: "ICMP too-big".into(),
                lb: &main,
                ifindex: ifx,
                frames: Box::new(fixed(big)),
                before: None,
                expect: Expect::new(R::LB_REASON_TX_ICMP_FRAG_NEEDED, XDP_TX),
            },
        ];
        let measured = measure(&floor, ifx, &mut cases, trials, packets)?;
        drop(cases);
        let ops = crate::probes::measure(net, &floor, trials, packets)?;
        let sizes = (
            program_size(main.rec.dataplane().program())?,
            program_size(floor.program())?,
        );
        Ok(Outcome {
            measured,
            ops,
            sizes,
        })
    })
}

/// Section 1 of the report.
pub fn run(report: &mut Report, quick: bool) -> Result<Outcome> {
    let (trials, packets) = if quick { (5, 2_000) } else { (7, 20_000) };
    let out = measure_paths(trials, packets).context("section 1: per-path cost")?;
    let m = &out.measured;
    let f = m.floor();
    let mut s = Section::new(
        "1. Per-packet cost of each path (BPF_PROG_TEST_RUN)",
        &[
            "path",
            "min ns",
            "median ns",
            "above floor (median)",
            "above floor (min)",
            "target (above floor)",
            "proven by (per trial)",
        ],
    );
    s.row(
        vec![
            "floor: swap MACs, XDP_TX".into(),
            format!("{:.1}", f.min),
            format!("{:.1}", f.median),
            "0".into(),
            "0".into(),
            String::new(),
            "XDP_TX every call".into(),
        ],
        None,
    );
    for (name, _) in &m.cases {
        let (Some(c), Some(a)) = (m.case(name), m.above_floor(name)) else {
            continue;
        };
        let t = target(name);
        s.row(
            vec![
                name.clone(),
                format!("{:.1}", c.min),
                format!("{:.1}", c.median),
                format!("{:+.1}", a.median),
                format!("{:+.1}", a.min),
                t.map(|t| format!("<= +{t:.0}")).unwrap_or_default(),
                format!("{} = {packets}, nothing else", proof(name)),
            ],
            t.map(|t| a.min <= t),
        );
    }
    s.note(format!(
        "{trials} trials of {packets} packets per path, one BPF_PROG_TEST_RUN call per packet \
         (repeat = 1: with repeat > 1 the program would run again on its own rewritten frame); \
         the kernel's per-call time includes two clock reads and the XDP dispatch, which the \
         floor program pays too. Trials are interleaved (floor, then every path, per round). \
         Targets are judged on the best trial (min above the floor's min): the VM's two CPUs are \
         shared with other work, which inflates medians, never minimums."
    ));
    s.note(
        "Every trial is checked against the program's own per-CPU counters: exactly one \
         reason and one verdict counted per packet, no other counter moved, and the VIP's \
         new-flow counter grew by one per packet on new-flow paths and not at all on \
         established ones. New-flow paths use a source never seen before for every packet and \
         start each trial with empty flow tables (1,048,576 entries, never near full); \
         established paths cycle over 256 flows."
            .to_string(),
    );
    s.note(format!(
        "Program size: lb {} bytes jited ({} BPF instructions), floor {} bytes ({} instructions).",
        out.sizes.0 .0, out.sizes.0 .1, out.sizes.1 .0, out.sizes.1 .1
    ));
    report.sections.push(s);
    Ok(out)
}

fn op(out: &Outcome, prefix: &str) -> f64 {
    out.ops
        .iter()
        .find(|o| o.name.starts_with(prefix))
        .map(|o| o.above.min)
        .unwrap_or(0.0)
}

/// Where the time of section 1's paths goes: the single-operation probes, and each key path's
/// figure set against the operations it performs (the rest is parsing, rewriting, checksums and
/// branches).
pub fn analysis(report: &mut Report, out: &Outcome) {
    let mut s = Section::new(
        "1b. Where the time goes: single operations above the floor",
        &["operation", "above floor (min)", "above floor (median)"],
    );
    for o in &out.ops {
        s.row(
            vec![
                o.name.to_string(),
                format!("{:+.1}", o.above.min),
                format!("{:+.1}", o.above.median),
            ],
            None,
        );
    }
    let fib = op(out, "bpf_fib_lookup");
    let hash = op(out, "HASH lookup");
    let lru = op(out, "LRU_HASH lookup");
    let ins = op(out, "LRU_HASH insert");
    let lpm = op(out, "LPM_TRIE");
    let clock = op(out, "bpf_ktime");
    let pcpu = op(out, "PERCPU");
    let m = &out.measured;
    let path = |n: &str| m.above_floor(n).map(|a| a.min).unwrap_or(0.0);
    // (path, the operations it performs, their estimated sum)
    let models: Vec<(&str, String, f64)> = vec![
        (
            "non-VIP pass",
            "lb_config + destination prefilter (an inlined ARRAY: the packet goes to the \
             host's own address, no VIP's) + 1 per-CPU counter"
                .into(),
            pcpu,
        ),
        (
            "firewall block",
            "prefilter + the firewall's verdict word (fw_l2, an inlined ARRAY) + vip_addrs HASH \
             lookup (only for a blocked source: is the destination a VIP address?) + rule hit \
             counter + 1 per-CPU counter, all before any VIP or flow lookup"
                .into(),
            hash + 2.0 * pcpu,
        ),
        (
            "firewall block, ACK",
            "the same as a blocked SYN: no flow lookup first (before issue 17 a non-SYN looked \
             its flow up, an LRU miss, before the firewall dropped it)"
                .into(),
            hash + 2.0 * pcpu,
        ),
        (
            "NAT established",
            "prefilter + ct_fwd LRU lookup + vip_ids check (an inlined ARRAY: a tracked \
             flow's VIP needs no HASH lookup) + LPM (empty firewall) + 3 per-CPU counters + \
             bpf_fib_lookup"
                .into(),
            lpm + lru + 3.0 * pcpu + fib,
        ),
        (
            "L2 DSR established",
            "the same operations as NAT established, without the port rewrite".into(),
            lpm + lru + 3.0 * pcpu + fib,
        ),
        (
            "IPIP established",
            "as L2 DSR, plus bpf_xdp_adjust_head and a new outer header".into(),
            lpm + lru + 3.0 * pcpu + fib,
        ),
        (
            "NAT new flow",
            "NAT established's operations with the lookup missing and without the vip_ids \
             check, plus the VIP HASH lookup (a SYN), Maglev (map-in-map lookup), backend \
             lookup, ct_rev insert (BPF_NOEXIST) and ct_fwd insert"
                .into(),
            lpm + lru + 3.0 * pcpu + fib + 2.0 * ins + 3.0 * hash,
        ),
        (
            "IPIP new flow",
            "IPIP established's operations with the lookup missing and without the vip_ids \
             check, plus the VIP HASH lookup (a SYN), Maglev, backend lookup and one ct_fwd \
             insert"
                .into(),
            lpm + lru + 3.0 * pcpu + fib + ins + 3.0 * hash,
        ),
    ];
    s.note(format!(
        "The flow paths read the data plane's clock (bpf/clock.h: jiffies, one load inlined by \
         the verifier), not bpf_ktime_get_coarse_ns (a helper call, {clock:+.0} ns by its probe), \
         so no clock appears in their operations below."
    ));
    s.note(
        "Each probe is a program of its own (bench/bpf/probes.bpf.c) doing one operation and \
         then the floor's work; measured like the floor (one call per packet, interleaved \
         trials) in the same namespace, it gives the price of that operation on this machine."
            .to_string(),
    );
    for (name, ops, sum) in &models {
        let p = path(name);
        let target = target(name);
        let gap = target
            .map(|t| format!("; target +{t:.0}, missed by {:+.0} ns", p - t))
            .unwrap_or_default();
        s.note(format!(
            "{name}: {p:+.0} ns above the floor (min); its operations ({ops}) cost about {sum:.0} ns \
             by the probes, {:.0}% of it; the other {:+.0} ns are parsing, rewriting, checksums \
             and branches{gap}.",
            if p > 0.0 { 100.0 * sum / p } else { 0.0 },
            p - sum
        ));
    }
    // Right after section 1.
    let at = report
        .sections
        .iter()
        .position(|x| x.title.starts_with("1."))
        .map_or(report.sections.len(), |i| i + 1);
    report.sections.insert(at, s);
    let met = |n: &str| target(n).is_some_and(|t| path(n) <= t);
    let mut closing = Vec::new();
    if !met("NAT established") || !met("L2 DSR established") || !met("IPIP established") {
        closing.push(format!(
            "Established flows: bpf_fib_lookup alone costs {fib:+.0} ns on this machine, more \
             than the whole L2 DSR target (+60) and most of the IPIP one (+80); the flow-table \
             LRU lookup adds {lru:+.0} ns and the empty firewall trie {lpm:+.0} ns. Closing the \
             gap needs a cached next hop per backend (resolved by lbd or on the first packet of \
             the flow and stored in the flow entry, refreshed on neighbour changes) instead of a \
             FIB lookup per packet, skipping the firewall lookup when the trie is empty (a flag \
             in lb_config, as the rate limiter already does for its overrides), and a smaller \
             flow key (the 40-byte IPv6-ready key hashes 40 bytes per lookup)."
        ));
    }
    if !met("NAT new flow") || !met("IPIP new flow") {
        closing.push(format!(
            "New flows: an LRU_HASH insert costs {ins:+.0} ns here and NAT does two (ct_rev with \
             BPF_NOEXIST, then ct_fwd), on top of the established path's work. Options: \
             per-CPU LRU lists (BPF_F_NO_COMMON_LRU) to avoid the shared LRU lock, a smaller \
             value, or claiming SNAT ports from a per-CPU pool instead of probing ct_rev."
        ));
    }
    if !met("non-VIP pass") || !met("firewall block") {
        closing.push(format!(
            "Short paths: a 20-byte HASH lookup costs {hash:+.0} ns and an LPM lookup {lpm:+.0} \
             ns; the non-VIP pass path skips the VIP lookup through the destination prefilter \
             (an inlined ARRAY bitmap of VIP addresses) and pays the per-CPU reason and verdict \
             counters ({pcpu:+.0} ns each) and parsing; a blocked SYN or ACK pays no VIP or \
             flow lookup, but one vip_addrs HASH lookup ({hash:+.0} ns) to tell a VIP address \
             from a prefilter false positive (the host's own traffic, never blocked under scope \
             \"vips\")."
        ));
    }
    report.closing.extend(closing);
}

/// An ACK from the client to the LB's own SSH port: not for a VIP, passed to the kernel.
pub(crate) fn not_vip_frame() -> Vec<u8> {
    Packet::tcp(
        [0x02, 0, 0, 0, 0, 0x50],
        VETH0_MAC,
        sa(CLIENT, 40000),
        sa(LB_ADDR, 22),
        TCP_ACK,
    )
    .build()
}
