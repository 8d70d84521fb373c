//! Firewall tests: frames through the loaded XDP program (BPF_PROG_TEST_RUN) with block and allow
//! rules applied the way lbd applies them (a `State` change, then the `Reconciler`).
//!
//! Blocked sources are dropped and counted on their rule; an allow hole in a block passes and is
//! NATed byte for byte; /32 and /0 behave; the trie keys are in network byte order (a /8 matches
//! 10.x.x.x, not x.x.x.10); both scopes; a list replace never leaves a gap, even seen by a
//! packet running concurrently with it. For random rule sets and addresses, the program's verdict
//! and the rule it counts equal a plain longest-prefix match; after any sequence of adds,
//! removes and replaces the maps hold exactly the tables of a fresh build; a list whose single
//! addresses would pass the capacity is refused and changes nothing.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use xdplb::dataplane::firewall::tables::Tables;
use xdplb::dataplane::firewall::RuleEntry;
use xdplb::dataplane::{Dataplane, LoadOptions};
use xdplb::skel::types::{self, lb_reason as R};
use xdplb_model::firewall::{Action, RuleBatch, Scope};
use xdplb_model::state::{Protocol, State, VipKey};

use common::lab::*;
use xdplb_testkit::packet::*;
use xdplb_testkit::run_xdp_fd;

/// Rules the test programs hold (small: the per-CPU hit counters are allocated up front).
const CAPACITY: u32 = 4096;

fn pfx(s: &str) -> Ipv4Net {
    s.parse().expect("test prefix")
}

/// A loaded program with firewall `scope` and `capacity`, configured like lbd configures it.
fn lb_with(net: Net, scope: Scope, capacity: u32) -> Result<Lb> {
    Lb::load(
        net,
        config(PORTS),
        &LoadOptions {
            firewall_capacity: capacity,
            firewall_scope: scope,
            ..Lb::options()
        },
    )
}

/// Scope "vips" and the TCP VIP 10.9.9.9:80 -> 10.1.0.2:8080, 10.1.0.3:8080.
fn vip_lb(net: Net) -> Result<(Lb, VipKey)> {
    let mut lb = lb_with(net, Scope::Vips, CAPACITY)?;
    let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
    Ok((lb, vip))
}

fn batch(rules: &[(&str, Action)]) -> RuleBatch {
    let mut b = RuleBatch::default();
    for (i, (n, a)) in rules.iter().enumerate() {
        b.push(i, pfx(n), *a).expect("test batch");
    }
    b
}

/// Adds rules through the state, as the AddRules handler does, and reconciles.
fn add_rules(lb: &mut Lb, rules: &[(&str, Action)]) -> Result<()> {
    lb.state
        .firewall
        .add(&batch(rules), CAPACITY as usize)
        .context("adding firewall rules")?;
    lb.reconcile()
}

fn remove_rules(lb: &mut Lb, rules: &[(&str, Action)]) -> Result<()> {
    lb.state
        .firewall
        .remove(&batch(rules))
        .context("removing firewall rules")?;
    lb.reconcile()
}

/// The rule the reconciler applied for exactly `prefix`.
fn applied(lb: &Lb, prefix: &str) -> Result<RuleEntry> {
    lb.rec
        .firewall()
        .rule(&pfx(prefix))
        .with_context(|| format!("no rule for {prefix} in the data plane"))
}

/// The hits of the rule for exactly `prefix`.
fn hits(lb: &Lb, prefix: &str) -> Result<u64> {
    let rule = applied(lb, prefix)?;
    Ok(lb.rec.dataplane().firewall().hits(rule.id)?)
}

/// The rule for exactly `prefix` counted `want` packets (`what` says why it should have).
fn expect_hits(lb: &Lb, prefix: &str, want: u64, what: &str) -> Result<()> {
    let got = hits(lb, prefix)?;
    ensure!(
        got == want,
        "{what}: {prefix} has {got} hits, expected {want}"
    );
    Ok(())
}

/// A block rule for `prefix`.
fn block(prefix: &str) -> (&str, Action) {
    (prefix, Action::Block)
}

/// An allow rule for `prefix`.
fn allow(prefix: &str) -> (&str, Action) {
    (prefix, Action::Allow)
}

/// A client's SYN to `vip`, as received on veth0.
fn syn(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::tcp(CLIENT_MAC, VETH0_MAC, client, vip, TCP_SYN).with_payload(b"syn")
}

/// Runs `pkt` and checks it is dropped untouched.
fn expect_dropped(lb: &Lb, pkt: &Packet, what: &str) -> Result<()> {
    let frame = pkt.build();
    let run = lb.run(lb.net.veth0, &frame)?;
    ensure!(
        run.action == XDP_DROP,
        "{what}: verdict {}, expected XDP_DROP",
        action_name(run.action)
    );
    ensure!(run.out == frame, "{what}: a dropped frame was modified");
    Ok(())
}

/// Runs the first packet of a new flow `client` -> `vip` and checks it leaves NATed exactly as
/// the program must NAT it (Maglev pick, first free SNAT port, MACs of veth0 and the backend).
fn expect_natted(lb: &mut Lb, vip: &VipKey, client: SocketAddrV4, what: &str) -> Result<()> {
    let pkt = syn(client, vip.addr);
    let pick = lb.pick(vip, client)?;
    let port = lb
        .claim_port(pick.hash, pick.backend)
        .context("the test expects a free SNAT port")?;
    let run = lb.run(lb.net.veth0, &pkt.build())?;
    let want = pkt
        .natted(
            VETH0_MAC,
            neighbour_mac(*pick.backend.ip()),
            sa(LB_ADDR, port),
            pick.backend,
        )
        .build();
    ensure!(
        run.action == XDP_TX,
        "{what}: verdict {}, expected XDP_TX",
        action_name(run.action)
    );
    ensure!(
        run.out == want,
        "{what}: the output is not the NATed frame (via {} from port {port})",
        pick.backend
    );
    verify_checksums(&run.out, false).with_context(|| format!("{what}: checksums"))
}

/// With the rules block 10.1.0.0/24 and allow 10.1.0.50/32: 10.1.0.50 is NATed, 10.1.0.51
/// dropped, and each rule counts its one packet (`how`: what else the test set up).
fn expect_allow_hole(lb: &mut Lb, vip: &VipKey, how: &str) -> Result<()> {
    let allowed = format!("SYN from the allowed 10.1.0.50{how}");
    expect_natted(lb, vip, sa(CLIENT, 41000), &allowed)?;
    let blocked = format!("SYN from 10.1.0.51 in the block{how}");
    expect_dropped(lb, &syn(sa(CLIENT_B, 41000), VIP), &blocked)?;
    expect_hits(lb, "10.1.0.50/32", 1, &format!("allow rule hits{how}"))?;
    expect_hits(lb, "10.1.0.0/24", 1, &format!("block rule hits{how}"))?;
    Ok(())
}

/// The rules of the desired state, with their actions.
fn state_rules(lb: &Lb) -> Vec<(Ipv4Net, Action)> {
    lb.state
        .firewall
        .rules()
        .iter()
        .map(|(n, a)| (*n, *a))
        .collect()
}

#[test]
fn blocked_source_is_dropped_and_counted_on_its_rule() {
    bench(|_, net| {
        let (mut lb, vip) = vip_lb(net)?;
        add_rules(&mut lb, &[block("10.1.0.50/32")])?;

        for port in [40000, 40001, 40002] {
            expect_dropped(
                &lb,
                &syn(sa(CLIENT, port), VIP),
                "SYN from the blocked 10.1.0.50",
            )?;
        }
        expect_hits(&lb, "10.1.0.50/32", 3, "rule hits")?;
        expect_natted(&mut lb, &vip, sa(CLIENT_B, 40000), "SYN from 10.1.0.51")?;
        lb.expect_global(
            &[
                (R::LB_REASON_DROP_FIREWALL, 3),
                (R::LB_REASON_TX_NAT_FORWARD, 1),
            ],
            &[(XDP_DROP, 3), (XDP_TX, 1)],
        )?;
        ensure!(
            lb.vip_counters(&vip)?.packets == 1,
            "a dropped packet reached the VIP's counters"
        );

        // Removing the rule lets the client in again, without reloading anything.
        remove_rules(&mut lb, &[block("10.1.0.50/32")])?;
        expect_natted(
            &mut lb,
            &vip,
            sa(CLIENT, 40003),
            "SYN after the rule was removed",
        )
    });
}

#[test]
fn allow_hole_in_a_block_passes_and_is_natted() {
    bench(|_, net| {
        let (mut lb, vip) = vip_lb(net)?;
        add_rules(&mut lb, &[block("10.1.0.0/24"), allow("10.1.0.50/32")])?;
        expect_allow_hole(&mut lb, &vip, "")?;
        lb.expect_global(
            &[
                (R::LB_REASON_DROP_FIREWALL, 1),
                (R::LB_REASON_TX_NAT_FORWARD, 1),
            ],
            &[(XDP_DROP, 1), (XDP_TX, 1)],
        )
    });
}

#[test]
fn slash_32_and_slash_0() {
    bench(|_, net| {
        let (mut lb, vip) = vip_lb(net)?;
        // A /32 is exactly one address: its neighbours are untouched.
        add_rules(&mut lb, &[block("10.1.0.51/32")])?;
        expect_natted(
            &mut lb,
            &vip,
            sa(CLIENT, 42000),
            "10.1.0.50 next to a blocked /32",
        )?;
        expect_dropped(&lb, &syn(sa(CLIENT_B, 42000), VIP), "the blocked /32")?;
        let above = syn(sa(Ipv4Addr::new(10, 1, 0, 52), 42000), VIP);
        let run = lb.run(lb.net.veth0, &above.build())?;
        ensure!(
            run.action == XDP_TX,
            "10.1.0.52 was {}",
            action_name(run.action)
        );

        // /0 blocks every source; a more specific allow still wins.
        add_rules(&mut lb, &[block("0.0.0.0/0"), allow("10.1.0.50/32")])?;
        for src in ["1.2.3.4", "255.255.255.254", "0.0.0.1", "10.1.0.52"] {
            let pkt = syn(sa(src.parse()?, 42001), VIP);
            expect_dropped(&lb, &pkt, &format!("{src} under 0.0.0.0/0"))?;
        }
        expect_hits(&lb, "0.0.0.0/0", 4, "/0 hits")?;
        expect_dropped(&lb, &syn(sa(CLIENT_B, 42002), VIP), "the /32 inside the /0")?;
        expect_hits(&lb, "10.1.0.51/32", 2, "the /32 keeps deciding its address")?;
        expect_natted(
            &mut lb,
            &vip,
            sa(CLIENT, 42003),
            "the allowed /32 inside the /0",
        )
    });
}

/// A trie key written in host order (little endian on x86) would make 10.0.0.0/8 match
/// sources ending in .10 (if the packet side is swapped too) or starting with 0 (if not).
#[test]
fn keys_are_in_network_byte_order() {
    bench(|_, net| {
        let (mut lb, _) = vip_lb(net)?;
        add_rules(&mut lb, &[block("10.0.0.0/8"), block("192.0.2.0/24")])?;
        for (src, blocked) in [
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("10.200.3.4", true),
            ("192.0.2.0", true),
            ("192.0.2.255", true),
            ("1.2.3.10", false),
            ("11.0.0.10", false),
            ("0.0.0.10", false),
            ("9.255.255.255", false),
            ("192.0.3.0", false),
            ("0.2.0.192", false),
            ("2.0.192.10", false),
        ] {
            let pkt = syn(sa(src.parse()?, 43000), VIP);
            let run = lb.run(lb.net.veth0, &pkt.build())?;
            let dropped = run.action == XDP_DROP;
            ensure!(
                dropped == blocked,
                "{src}: {} (blocked expected: {blocked})",
                action_name(run.action)
            );
        }
        let rule = lb
            .rec
            .dataplane()
            .firewall()
            .matching("10.77.0.1".parse()?)?
            .context("10.77.0.1 matches no rule")?;
        ensure!(
            Some(rule) == lb.rec.firewall().rule(&pfx("10.0.0.0/8")),
            "10.77.0.1 does not match 10.0.0.0/8"
        );
        Ok(())
    });
}

#[test]
fn scope_vips_leaves_other_traffic_to_the_kernel() {
    bench(|_, net| {
        let (mut lb, _) = vip_lb(net)?;
        add_rules(&mut lb, &[block("0.0.0.0/0")])?;
        let to_lb = syn(sa(CLIENT, 44000), sa(LB_ADDR, 22)).build();
        let run = lb.run(lb.net.veth0, &to_lb)?;
        ensure!(
            run.action == XDP_PASS && run.out == to_lb,
            "traffic to the LB itself: {}",
            action_name(run.action)
        );
        let ping = Packet::icmp_echo(CLIENT_MAC, VETH0_MAC, CLIENT, LB_ADDR).build();
        ensure!(lb.run(lb.net.veth0, &ping)?.action == XDP_PASS, "ping");
        expect_hits(&lb, "0.0.0.0/0", 0, "the firewall saw non-VIP traffic")?;
        lb.expect_global(&[(R::LB_REASON_PASS_NOT_VIP, 2)], &[(XDP_PASS, 2)])
    });
}

#[test]
fn scope_all_sees_every_ipv4_packet() {
    bench(|_, net| {
        let mut lb = lb_with(net, Scope::All, CAPACITY)?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        add_rules(&mut lb, &[block("10.1.0.50/32")])?;

        expect_dropped(
            &lb,
            &syn(sa(CLIENT, 45000), sa(LB_ADDR, 22)),
            "TCP to the LB",
        )?;
        expect_dropped(
            &lb,
            &Packet::icmp_echo(CLIENT_MAC, VETH0_MAC, CLIENT, LB_ADDR),
            "ping",
        )?;
        let mut fragment = syn(sa(CLIENT, 45001), sa(LB_ADDR, 22));
        fragment.frag = IP_MF;
        expect_dropped(&lb, &fragment, "first fragment")?;
        expect_dropped(&lb, &syn(sa(CLIENT, 45002), VIP), "SYN to the VIP")?;
        expect_hits(&lb, "10.1.0.50/32", 4, "rule hits")?;

        // Not IPv4: nothing to match. Other sources: as without a firewall.
        let arp = arp_request(CLIENT_MAC, CLIENT, LB_ADDR);
        ensure!(lb.run(lb.net.veth0, &arp)?.action == XDP_PASS, "ARP");
        let other = syn(sa(CLIENT_B, 45000), sa(LB_ADDR, 22)).build();
        let run = lb.run(lb.net.veth0, &other)?;
        ensure!(
            run.action == XDP_PASS && run.out == other,
            "10.1.0.51 to the LB"
        );
        lb.expect_global(
            &[
                (R::LB_REASON_DROP_FIREWALL, 4),
                (R::LB_REASON_PASS_NOT_IP, 1),
                (R::LB_REASON_PASS_NOT_VIP, 1),
            ],
            &[(XDP_DROP, 4), (XDP_PASS, 2)],
        )
    });
}

#[test]
fn reused_rule_ids_start_with_zero_hits() {
    bench(|_, net| {
        let mut lb = lb_with(net, Scope::Vips, 2)?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let cap = 2;
        lb.state
            .firewall
            .add(&batch(&[block("10.1.0.50/32")]), cap)?;
        lb.reconcile()?;
        expect_dropped(&lb, &syn(sa(CLIENT, 46000), VIP), "blocked")?;
        let old = applied(&lb, "10.1.0.50/32")?;

        // Capacity 2: the second rule takes the last fresh id, the third one reuses the first.
        lb.state.firewall.remove(&batch(&[block("10.1.0.50/32")]))?;
        lb.state
            .firewall
            .add(&batch(&[block("192.0.2.0/24")]), cap)?;
        lb.reconcile()?;
        lb.state
            .firewall
            .add(&batch(&[block("198.51.100.0/24")]), cap)?;
        lb.reconcile()?;
        let reused = applied(&lb, "198.51.100.0/24")?;
        ensure!(
            reused.id == old.id,
            "id {} was not reused ({})",
            old.id,
            reused.id
        );
        expect_hits(&lb, "198.51.100.0/24", 0, "a reused id kept its hits")?;

        // Full: one more rule is refused by the state, and nothing changes.
        let e = lb
            .state
            .firewall
            .add(&batch(&[block("203.0.113.0/24")]), cap)
            .expect_err("over capacity");
        ensure!(e.to_string().contains("at most 2"), "{e}");

        // A replace at full capacity deletes just enough old rules first to make room.
        lb.state.firewall.replace(
            Some(Action::Block),
            &batch(&[block("203.0.113.0/24"), block("198.51.100.0/24")]),
            cap,
        )?;
        lb.reconcile()?;
        let fw = lb.rec.dataplane().firewall();
        ensure!(
            fw.get(pfx("192.0.2.0/24"))?.is_none(),
            "old rule still there"
        );
        ensure!(fw.get(pfx("203.0.113.0/24"))?.is_some(), "new rule missing");
        ensure!(
            fw.get(pfx("198.51.100.0/24"))? == lb.rec.firewall().rule(&pfx("198.51.100.0/24")),
            "kept rule changed"
        );
        Ok(())
    });
}

#[test]
fn flipping_a_rule_keeps_its_id_and_restarts_its_hits() {
    bench(|_, net| {
        let (mut lb, vip) = vip_lb(net)?;
        add_rules(&mut lb, &[block("10.1.0.50/32")])?;
        expect_dropped(&lb, &syn(sa(CLIENT, 47000), VIP), "blocked")?;
        let before = applied(&lb, "10.1.0.50/32")?;
        lb.state
            .firewall
            .replace(None, &batch(&[allow("10.1.0.50/32")]), CAPACITY as usize)?;
        lb.reconcile()?;
        let after = applied(&lb, "10.1.0.50/32")?;
        ensure!(
            after.id == before.id && after.action == Action::Allow,
            "{before:?} -> {after:?}"
        );
        expect_hits(
            &lb,
            "10.1.0.50/32",
            0,
            "hits of the block rule carried over",
        )?;
        expect_natted(&mut lb, &vip, sa(CLIENT, 47001), "now allowed")?;
        expect_hits(&lb, "10.1.0.50/32", 1, "allow rule hits")?;
        Ok(())
    });
}

/// Swaps two block lists back and forth while another thread keeps sending a packet from a
/// source that both lists block (through different prefixes): it must be dropped every time.
#[test]
fn replace_never_leaves_a_gap() {
    bench(|_, net| {
        let mut lb = lb_with(net, Scope::All, CAPACITY)?;
        // Old list: 10.0.0.0/8 and 1,000 filler /32s; new list: 10.1.0.0/16 and 1,000 others.
        let list = |cover: &str, base: u32| -> Vec<(String, Action)> {
            let mut rules = vec![(cover.to_string(), Action::Block)];
            rules.extend(
                (0..1000u32).map(|i| (format!("{}/32", Ipv4Addr::from(base + i)), Action::Block)),
            );
            rules
        };
        let old = list("10.0.0.0/8", 0xc633_6400);
        let new = list("10.1.0.0/16", 0xcb00_7100);
        let to_batch = |rules: &[(String, Action)]| {
            let refs: Vec<(&str, Action)> = rules.iter().map(|(n, a)| (n.as_str(), *a)).collect();
            batch(&refs)
        };
        let (old, new) = (to_batch(&old), to_batch(&new));
        lb.state
            .firewall
            .replace(Some(Action::Block), &old, CAPACITY as usize)?;
        lb.reconcile()?;

        let prog = lb.rec.dataplane().program().as_fd().try_clone_to_owned()?;
        let frame = syn(sa(CLIENT, 48000), sa(LB_ADDR, 22)).build();
        let ifindex = lb.net.veth0;
        let stop = Arc::new(AtomicBool::new(false));
        let prober = {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut runs = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let action = run_xdp_fd(prog.as_fd(), ifindex, &frame, 1)?;
                    ensure!(action == XDP_DROP, "run {runs}: {}", action_name(action));
                    runs += 1;
                }
                Ok(runs)
            })
        };
        let swaps = (|| -> Result<()> {
            for i in 0..40 {
                let next = if i % 2 == 0 { &new } else { &old };
                lb.state
                    .firewall
                    .replace(Some(Action::Block), next, CAPACITY as usize)?;
                lb.reconcile()?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let runs = prober
            .join()
            .map_err(|_| anyhow::anyhow!("the probing thread panicked"))??;
        swaps?;
        ensure!(runs > 0, "the probe never ran");
        eprintln!("{runs} probes during 40 list swaps, all dropped");
        ensure!(
            lb.rec
                .dataplane()
                .firewall()
                .get(pfx("10.0.0.0/8"))?
                .is_some()
                && lb
                    .rec
                    .dataplane()
                    .firewall()
                    .get(pfx("10.1.0.0/16"))?
                    .is_none(),
            "after an even number of swaps the old list is back, alone"
        );
        Ok(())
    });
}

/// A restarted lbd reuses the pinned maps: the rules stay in force throughout, keep their ids
/// and hits, and the first reconcile changes only what differs.
#[test]
fn pinned_rules_are_adopted_after_a_restart() {
    bench(|_, net| {
        let pins = PinDir::new("fwtest");
        let opts = LoadOptions {
            firewall_capacity: CAPACITY,
            ..Lb::pinned_options(&pins)
        };
        let mut first = Lb::load(net, config(PORTS), &opts)?;
        first.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        add_rules(
            &mut first,
            &[
                block("10.1.0.50/32"),
                allow("10.1.0.51/32"),
                block("192.0.2.0/24"),
            ],
        )?;
        expect_dropped(&first, &syn(sa(CLIENT, 49000), VIP), "before the restart")?;
        let id = applied(&first, "10.1.0.50/32")?.id;
        let mut second = first.restart()?;
        expect_dropped(
            &second,
            &syn(sa(CLIENT, 49001), VIP),
            "after the restart, before any reconcile",
        )?;
        // The restored state (as lbd reads it from its state file), applied in one go.
        second.state.firewall.add(
            &batch(&[block("10.1.0.50/32"), block("198.51.100.0/24")]),
            CAPACITY as usize,
        )?;
        second.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let kept = applied(&second, "10.1.0.50/32")?;
        ensure!(
            kept.id == id,
            "the adopted rule changed id ({id} -> {})",
            kept.id
        );
        expect_hits(&second, "10.1.0.50/32", 2, "the adopted rule lost its hits")?;
        let fw = second.rec.dataplane().firewall();
        ensure!(
            fw.get(pfx("10.1.0.51/32"))?.is_none(),
            "a rule no longer wanted survived"
        );
        ensure!(
            fw.get(pfx("192.0.2.0/24"))?.is_none(),
            "a rule no longer wanted survived"
        );
        let new = fw
            .get(pfx("198.51.100.0/24"))?
            .context("new rule missing")?;
        ensure!(
            new.id != kept.id,
            "a new rule took the id of an adopted one"
        );
        expect_hits(&second, "198.51.100.0/24", 0, "a new rule starts with hits")?;
        second.rec.into_dataplane().shutdown(true)?;
        Ok(())
    });
}

/// An fw_l2 slot as an lbd older than the per-address filter wrote it (bit 29 alone: "this /24
/// holds longer rules") still sends every address of the /24 on to fw_l3: the program adopted
/// across an upgrade reads the old lbd's words right until they are rewritten.
#[test]
fn slot_words_without_a_filter_send_every_address_on() {
    use libbpf_rs::{MapCore as _, MapFlags, MapHandle};
    use types::fw_verdict_bits as B;
    bench(|_, net| {
        let pins = PinDir::new("fwlegacy");
        let mut lb = Lb::load(
            net,
            config(PORTS),
            &LoadOptions {
                firewall_capacity: CAPACITY,
                ..Lb::pinned_options(&pins)
            },
        )?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        add_rules(&mut lb, &[block("10.1.0.0/24"), allow("10.1.0.50/32")])?;
        // Rewrite slot 10.1.0.0/24 of chunk 10.1/16 the old way: the filter bits cleared,
        // bit 29 kept. 10.1.0.50's own filter bit (50 % 5 = 0) is then clear too, so a
        // program that trusted the filter alone would take the block for it.
        let l2 = MapHandle::from_pinned_path(pins.path().join("fw_l2")).context("opening fw_l2")?;
        let key = 0x0a01u32.to_ne_bytes();
        let mut chunk = l2
            .lookup(&key, MapFlags::ANY)?
            .context("no chunk for 10.1/16")?;
        let filter = B::FW_VERDICT_DEEPER.0 & !B::FW_VERDICT_DEEPER_ANY.0;
        let mut w = u32::from_ne_bytes(chunk[..4].try_into()?);
        ensure!(
            w & B::FW_VERDICT_DEEPER_ANY.0 != 0 && w & filter != 0,
            "slot 0 was written without its filter: {w:#x}"
        );
        w &= !filter;
        chunk[..4].copy_from_slice(&w.to_ne_bytes());
        l2.update(&key, &chunk, MapFlags::EXIST)?;
        // 10.1.0.51 has no fw_l3 entry: the /24's block applies.
        expect_allow_hole(&mut lb, &vip, " behind a legacy slot")?;
        lb.rec.into_dataplane().shutdown(true)?;
        Ok(())
    });
}

/// The rules' tables built afresh from what the reconciler applied, the reconciler's own copy,
/// and what the maps hold, all equal; the maps' record of rules equals the applied rules.
fn check_tables(lb: &Lb) -> Result<()> {
    let applied = lb.rec.firewall().rules();
    let fresh = Tables::build(applied);
    let maps = lb.rec.dataplane().firewall();
    ensure!(
        lb.rec.firewall().tables() == &fresh,
        "the reconciler's tables are not those of a fresh build"
    );
    ensure!(
        maps.tables()? == fresh,
        "the maps do not hold the tables of a fresh build"
    );
    let mut record: Vec<(Ipv4Net, u32, Action)> = maps
        .rules()?
        .into_iter()
        .map(|(id, n, a)| (n, id, a))
        .collect();
    record.sort();
    let want: Vec<(Ipv4Net, u32, Action)> =
        applied.iter().map(|(n, r)| (*n, r.id, r.action)).collect();
    ensure!(record == want, "fw_rules: {record:?}, applied {want:?}");
    Ok(())
}

/// Longest-prefix match the obvious way: (prefix, action) of the longest rule containing `addr`.
fn lpm(rules: &[(Ipv4Net, Action)], addr: Ipv4Addr) -> Option<(Ipv4Net, Action)> {
    rules
        .iter()
        .filter(|(n, _)| n.contains(&addr))
        .max_by_key(|(n, _)| n.prefix_len())
        .copied()
}

/// A prefix of any length 0..32, most of them bunched in 10.0.0.0/14 and 10.8.0.0/14 so that
/// they overlap.
fn arb_net() -> impl Strategy<Value = Ipv4Net> {
    (0u32..4, any::<u16>(), 0u8..=32, 0u8..8).prop_map(|(hi, lo, len, far)| {
        let addr = if far == 0 {
            u32::from(lo) << 16 | u32::from(lo)
        } else {
            0x0a00_0000 | ((hi & 2) << 18) | ((hi & 1) << 16) | u32::from(lo)
        };
        Ipv4Net::new(Ipv4Addr::from(addr), len)
            .expect("len <= 32")
            .trunc()
    })
}

/// One step of a sequence: replace everything, add, or remove some of what is there.
#[derive(Debug, Clone)]
enum Step {
    Replace(Vec<(Ipv4Net, bool)>),
    Add(Vec<(Ipv4Net, bool)>),
    Remove(Vec<prop::sample::Index>),
}

fn arb_step() -> impl Strategy<Value = Step> {
    let rules = || prop::collection::vec((arb_net(), any::<bool>()), 0..24);
    prop_oneof![
        rules().prop_map(Step::Replace),
        rules().prop_map(Step::Add),
        prop::collection::vec(any::<prop::sample::Index>(), 0..8).prop_map(Step::Remove),
    ]
}

fn to_batch(rules: &[(Ipv4Net, bool)], skip: &BTreeSet<Ipv4Net>) -> RuleBatch {
    let mut b = RuleBatch::default();
    for (i, (n, block)) in rules.iter().enumerate() {
        if skip.contains(n) {
            continue;
        }
        let action = if *block { Action::Block } else { Action::Allow };
        // A prefix twice with both actions: the first one counts.
        let _ = b.push(i, *n, action);
    }
    b
}

/// Applies `step` to the state as the gRPC handlers do, and reconciles.
fn play(lb: &mut Lb, step: &Step) -> Result<()> {
    let cap = CAPACITY as usize;
    match step {
        Step::Replace(rules) => {
            lb.state
                .firewall
                .replace(None, &to_batch(rules, &BTreeSet::new()), cap)?;
        }
        Step::Add(rules) => {
            // Prefixes already there with the other action would be refused: leave them out.
            let there: BTreeSet<Ipv4Net> = lb.state.firewall.rules().keys().copied().collect();
            lb.state.firewall.add(&to_batch(rules, &there), cap)?;
        }
        Step::Remove(picks) => {
            let rules = state_rules(lb);
            if rules.is_empty() {
                return Ok(());
            }
            let mut b = RuleBatch::default();
            for (i, p) in picks.iter().enumerate() {
                let (n, a) = rules[p.index(rules.len())];
                b.push(i, n, a)?;
            }
            lb.state.firewall.remove(&b)?;
        }
    }
    lb.reconcile()
}

/// The addresses worth probing: each rule's first and last address and their outside
/// neighbours, and random ones.
fn probes(rules: &[(Ipv4Net, Action)], random: &[u32]) -> Vec<Ipv4Addr> {
    let mut out: BTreeSet<u32> = random.iter().copied().collect();
    for (n, _) in rules {
        let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
        out.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
    }
    out.into_iter().map(Ipv4Addr::from).collect()
}

/// For random sequences of adds, removes and replaces of overlapping block and allow rules of
/// every length, and for addresses on and around every rule's edges: the program drops exactly
/// the sources whose longest matching rule is a block rule, counts the packet on that rule
/// alone, and the maps hold exactly the tables of a fresh build.
#[test]
fn verdicts_and_hits_equal_a_longest_prefix_match() {
    bench(|_, net| {
        // The runner takes an Fn: one program for every case, borrowed per case.
        let cell = std::cell::RefCell::new(lb_with(net, Scope::All, CAPACITY)?);
        let mut runner = TestRunner::new(PtConfig {
            cases: 40,
            failure_persistence: None,
            ..PtConfig::default()
        });
        let strategy = (
            prop::collection::vec(arb_step(), 1..5),
            prop::collection::vec(any::<u32>(), 16),
        );
        let packets = std::cell::Cell::new(0u64);
        let outcome = runner.run(&strategy, |(steps, random)| {
            let mut lb = cell.borrow_mut();
            let mut check = || -> Result<()> {
                for step in &steps {
                    play(&mut lb, step)?;
                    check_tables(&lb)?;
                }
                let rules = state_rules(&lb);
                let fw = lb.rec.dataplane().firewall();
                let limit = lb.rec.firewall().id_limit();
                for (i, src) in probes(&rules, &random).into_iter().enumerate() {
                    let want = lpm(&rules, src);
                    let before = fw.all_hits(limit)?;
                    let frame = syn(sa(src, 40000 + (i % 1000) as u16), sa(LB_ADDR, 22)).build();
                    let run = lb.run(lb.net.veth0, &frame)?;
                    packets.set(packets.get() + 1);
                    let blocked = matches!(want, Some((_, Action::Block)));
                    ensure!(
                        (run.action == XDP_DROP) == blocked,
                        "{src}: {} but its longest match is {want:?}",
                        action_name(run.action)
                    );
                    let after = fw.all_hits(limit)?;
                    let moved: Vec<(u32, u64)> = before
                        .iter()
                        .zip(&after)
                        .enumerate()
                        .filter(|(_, (b, a))| b != a)
                        .map(|(id, (b, a))| (id as u32, a - b))
                        .collect();
                    let expected: Vec<(u32, u64)> = match want {
                        Some((n, _)) => {
                            let id = lb.rec.firewall().rule(&n).context("applied rule")?.id;
                            vec![(id, 1)]
                        }
                        None => Vec::new(),
                    };
                    ensure!(
                        moved == expected,
                        "{src} (longest match {want:?}): hits moved {moved:?}, expected {expected:?}"
                    );
                    let seen = fw.matching(src)?.map(|r| r.id);
                    ensure!(
                        seen == expected.first().map(|(id, _)| *id),
                        "{src}: matching() says {seen:?}"
                    );
                }
                Ok(())
            };
            check().map_err(|e| TestCaseError::fail(format!("{e:#}")))
        });
        outcome.map_err(|e| anyhow::anyhow!("{e}"))?;
        eprintln!(
            "{} packets checked against a longest-prefix match",
            packets.get()
        );
        Ok(())
    });
}

/// Rules longer than /24 take one table entry per address: a change that would take them past
/// the capacity is refused naming the rule, and neither the state nor the maps change.
#[test]
fn single_addresses_past_the_capacity_are_refused() {
    bench(|_, net| {
        let mut lb = lb_with(net, Scope::All, 200)?;
        lb.state
            .firewall
            .add(&batch(&[block("10.1.0.0/25")]), 200)?;
        lb.reconcile()?;
        let state = lb.state.clone();
        let tables = lb.rec.dataplane().firewall().tables()?;
        let e = lb
            .state
            .firewall
            .add(
                &batch(&[block("192.0.2.7/32"), block("198.51.100.0/25")]),
                200,
            )
            .expect_err("past the capacity");
        ensure!(
            e.to_string()
                .contains("rules[1] (198.51.100.0/25) takes the firewall past its capacity"),
            "{e}"
        );
        ensure!(lb.state == state, "a refused add changed the state");
        lb.reconcile()?;
        ensure!(
            lb.rec.dataplane().firewall().tables()? == tables,
            "a refused add changed the maps"
        );
        // The rules in force still decide.
        expect_dropped(&lb, &syn(sa(CLIENT, 50000), sa(LB_ADDR, 22)), "10.1.0.50")?;
        let other = syn(sa("198.51.100.9".parse()?, 50000), sa(LB_ADDR, 22)).build();
        ensure!(
            lb.run(lb.net.veth0, &other)?.action == XDP_PASS,
            "198.51.100.9"
        );
        Ok(())
    });
}

/// `[firewall] capacity = 0`: the firewall is off. Its maps take one entry each (not the 64 MiB
/// of `fw_l2`), rules are refused with a clear error and change nothing, a restored state that
/// holds rules is refused by the reconciler, and traffic flows as without a firewall.
#[test]
fn capacity_zero_turns_the_firewall_off() {
    bench(|_, net| {
        let mut lb = lb_with(net, Scope::All, 0)?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        let fw = lb.rec.dataplane().firewall();
        ensure!(fw.capacity() == 0, "capacity {}", fw.capacity());
        for (map, bytes) in fw.memory() {
            ensure!(
                bytes < 1 << 20,
                "{map} takes {bytes} bytes with the firewall off"
            );
        }
        ensure!(
            lb.rec.firewall().capacity() == 0,
            "the reconciler's capacity"
        );

        let state = lb.state.clone();
        let e = lb
            .state
            .firewall
            .add(&batch(&[block("10.1.0.50/32")]), 0)
            .expect_err("rules with the firewall off");
        ensure!(
            matches!(e, xdplb_model::state::StateError::FailedPrecondition(_))
                && e.to_string()
                    .contains("the firewall is off ([firewall] capacity = 0)"),
            "{e}"
        );
        ensure!(lb.state == state, "a refused add changed the state");
        // A saved state with rules, restored into an lbd whose firewall is off.
        let mut restored = State::default();
        restored.firewall.add(&batch(&[block("10.1.0.50/32")]), 1)?;
        let e = lb
            .rec
            .reconcile(&restored)
            .expect_err("a state with rules into a firewall that is off");
        ensure!(
            format!("{e:#}").contains("holds at most 0 ([firewall] capacity = 0: off)"),
            "{e:#}"
        );
        // Scope "all" but no stage: the SYN from any source is NATed, nothing counted.
        lb.reconcile()?;
        expect_natted(
            &mut lb,
            &vip,
            sa(CLIENT, 51000),
            "SYN with the firewall off",
        )?;
        lb.expect_global(&[(R::LB_REASON_TX_NAT_FORWARD, 1)], &[(XDP_TX, 1)])
    });
}

/// Maps pinned by an lbd with the earlier firewall layout (`fw_l2` a hash of chunks) are
/// refused, naming the map, rather than read as the new array.
#[test]
fn pinned_maps_of_the_hash_layout_are_refused() {
    let dir = PinDir::new("fwold");
    let pins = dir.path();
    let result = (|| -> Result<()> {
        xdplb::dataplane::remove_pins(pins)?;
        std::fs::create_dir_all(pins)?;
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_NO_PREALLOC,
            ..Default::default()
        };
        let mut old = libbpf_rs::MapHandle::create(
            libbpf_rs::MapType::Hash,
            Some("fw_l2"),
            4,
            1024,
            65536,
            &opts,
        )?;
        old.pin(pins.join("fw_l2"))?;
        let e = match Dataplane::load(&LoadOptions {
            firewall_capacity: CAPACITY,
            ..Lb::pinned_options(&dir)
        }) {
            Ok(_) => anyhow::bail!("the old fw_l2 was taken over"),
            Err(e) => e,
        };
        ensure!(
            matches!(&e, xdplb::dataplane::DataplaneError::Incompatible { map, .. } if map == "fw_l2"),
            "{e}"
        );
        Ok(())
    })();
    result.unwrap_or_else(|e| panic!("{e:#}"));
}
