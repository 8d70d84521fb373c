//! Rate-limit tests: frames through the loaded XDP program (BPF_PROG_TEST_RUN), one netns per test.
//!
//! Policies are set on the desired state and applied by the `Reconciler`, as lbd does. The
//! program's bucket clock is the real `bpf_ktime_get_ns()`, so the tests use rates low enough
//! (1 packet/s) that no token is earned while a burst is being sent, and sleep a bounded 1.1 s
//! where a refill is the point.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ipnet::Ipv4Net;
use xdplb::dataplane::ratelimit::{top_clients, PolicyCounters};
use xdplb::skel::types::{self, lb_reason as R};
use xdplb_model::firewall::{Action, RuleBatch};
use xdplb_model::ratelimit::{Policy, Scope};
use xdplb_model::state::{Protocol, VipKey};

use common::lab::*;
use xdplb_testkit::packet::*;
use xdplb_testkit::run_xdp_fd;

const VIP_TCP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80);
/// A VIP without backends: an allowed packet is dropped as "no backend", untouched.
const VIP_EMPTY: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 10), 53);

fn prefix(s: &str) -> Ipv4Net {
    s.parse().expect("test prefix")
}

/// An LB with a TCP VIP 10.9.9.9:80 and a UDP VIP 10.9.9.9:53, each with one backend.
fn lb(net: Net) -> Result<(Lb, VipKey, VipKey)> {
    let mut lb = Lb::new(net, config(PORTS))?;
    let tcp = lb.add_vip(VIP_TCP, Protocol::Tcp, &[(BE1, 100)])?;
    let udp = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
    Ok((lb, tcp, udp))
}

/// Sets the policy of `cidr` (None: the default) and applies it.
fn set(lb: &mut Lb, cidr: Option<&str>, rate: u64, burst: u64, scope: Scope) -> Result<()> {
    lb.state
        .ratelimit
        .set(cidr.map(prefix), Policy { rate, burst, scope })
        .context("setting a rate limit")?;
    lb.reconcile()
}

fn udp(client: SocketAddrV4, vip: SocketAddrV4) -> Vec<u8> {
    Packet::udp(neighbour_mac(*client.ip()), VETH0_MAC, client, vip)
        .with_payload(b"query")
        .build()
}

fn tcp(client: SocketAddrV4, vip: SocketAddrV4, flags: u8) -> Vec<u8> {
    Packet::tcp(neighbour_mac(*client.ip()), VETH0_MAC, client, vip, flags)
        .with_payload(b"data")
        .build()
}

/// Runs `frame` (received on veth0) `n` times and checks every verdict is `action`.
fn expect_n(lb: &Lb, frame: &[u8], n: usize, action: u32, what: &str) -> Result<()> {
    for i in 0..n {
        let run = lb.run(lb.net.veth0, frame)?;
        ensure!(
            run.action == action,
            "{what}, packet {} of {n}: verdict {}, expected {}",
            i + 1,
            action_name(run.action),
            action_name(action)
        );
    }
    Ok(())
}

/// The counters of the policy of `cidr` (None: the default).
fn counters(lb: &Lb, cidr: Option<&str>) -> Result<PolicyCounters> {
    let cidr = cidr.map(prefix);
    let id = lb
        .rec
        .ratelimit()
        .id_of(cidr.as_ref())
        .with_context(|| format!("no policy id for {cidr:?}"))?;
    Ok(lb.rec.dataplane().ratelimit().counters(id)?)
}

fn allowed_dropped(allowed: u64, dropped: u64) -> PolicyCounters {
    PolicyCounters { allowed, dropped }
}

fn reason(lb: &Lb, r: types::lb_reason) -> Result<u64> {
    Ok(lb.global()?.reasons[r.0 as usize])
}

#[test]
fn burst_passes_next_dropped_then_refills() {
    bench(|_, net| {
        let (mut lb, _, _) = lb(net)?;
        set(&mut lb, None, 1, 5, Scope::All)?;
        let a = udp(sa(CLIENT, 3000), VIP_UDP);

        expect_n(&lb, &a, 5, XDP_TX, "the burst of 5")?;
        expect_n(&lb, &a, 1, XDP_DROP, "the 6th packet")?;
        ensure!(reason(&lb, R::LB_REASON_DROP_RATELIMIT)? == 1);
        // Every packet of the client counts, whatever its flow.
        expect_n(
            &lb,
            &udp(sa(CLIENT, 3001), VIP_UDP),
            1,
            XDP_DROP,
            "another flow",
        )?;
        // Another client has a bucket of its own.
        expect_n(
            &lb,
            &udp(sa(CLIENT_B, 3000), VIP_UDP),
            5,
            XDP_TX,
            "client B's burst",
        )?;

        let c = counters(&lb, None)?;
        ensure!(c == allowed_dropped(10, 2), "policy counters {c:?}");
        let bucket = lb.rec.dataplane().ratelimit().client(CLIENT)?;
        ensure!(
            bucket.map(|b| b.dropped) == Some(2),
            "client bucket {bucket:?}"
        );

        // One token is earned per second: after 1.1 s exactly one more packet passes.
        std::thread::sleep(Duration::from_millis(1100));
        expect_n(&lb, &a, 1, XDP_TX, "after a refill of one token")?;
        expect_n(&lb, &a, 1, XDP_DROP, "the packet after it")?;

        // The heaviest offender first; B has no drops and is not listed.
        let handle = lb.rec.dataplane().ratelimit().clients_handle()?;
        let top = top_clients(&handle, 10)?;
        ensure!(top.tracked == 2, "two buckets: {top:?}");
        ensure!(
            top.clients.len() == 1 && top.clients[0].addr == CLIENT && top.clients[0].dropped == 3,
            "top clients {top:?}"
        );
        lb.expect_global(
            &[
                (R::LB_REASON_TX_NAT_FORWARD, 11),
                (R::LB_REASON_DROP_RATELIMIT, 3),
            ],
            &[(XDP_TX, 11), (XDP_DROP, 3)],
        )
    });
}

#[test]
fn new_flows_limits_syns_not_established_flows() {
    bench(|_, net| {
        let (mut lb, _, _) = lb(net)?;
        set(&mut lb, None, 1, 2, Scope::NewFlows)?;

        // Two new TCP flows fit in the burst, the third SYN does not.
        expect_n(
            &lb,
            &tcp(sa(CLIENT, 1000), VIP_TCP, TCP_SYN),
            1,
            XDP_TX,
            "SYN 1",
        )?;
        expect_n(
            &lb,
            &tcp(sa(CLIENT, 1001), VIP_TCP, TCP_SYN),
            1,
            XDP_TX,
            "SYN 2",
        )?;
        expect_n(
            &lb,
            &tcp(sa(CLIENT, 1002), VIP_TCP, TCP_SYN),
            1,
            XDP_DROP,
            "SYN 3",
        )?;
        // The established flow is never charged: far more packets than the limit pass...
        let ack = tcp(sa(CLIENT, 1000), VIP_TCP, TCP_ACK | TCP_PSH);
        expect_n(&lb, &ack, 50, XDP_TX, "ACKs of the tracked flow")?;
        // ...a retransmitted SYN of it too, while new SYNs are still refused.
        expect_n(
            &lb,
            &tcp(sa(CLIENT, 1000), VIP_TCP, TCP_SYN),
            1,
            XDP_TX,
            "SYN again",
        )?;
        expect_n(
            &lb,
            &tcp(sa(CLIENT, 1003), VIP_TCP, TCP_SYN),
            1,
            XDP_DROP,
            "SYN 4",
        )?;
        expect_n(&lb, &ack, 5, XDP_TX, "ACKs after the refused SYNs")?;
        // A segment without SYN that finds no flow starts none in NAT mode (flow tables v2):
        // dropped as such, never charged to the limiter.
        let stray = tcp(sa(CLIENT, 1004), VIP_TCP, TCP_ACK);
        expect_n(&lb, &stray, 1, XDP_DROP, "ACK without a flow")?;
        ensure!(reason(&lb, R::LB_REASON_DROP_NAT_NO_FLOW)? == 1);

        // UDP: the first packet of a flow is charged, the rest of the flow is not.
        let q = udp(sa(CLIENT_B, 2000), VIP_UDP);
        expect_n(&lb, &q, 20, XDP_TX, "one UDP flow")?;
        expect_n(
            &lb,
            &udp(sa(CLIENT_B, 2001), VIP_UDP),
            1,
            XDP_TX,
            "UDP flow 2",
        )?;
        expect_n(
            &lb,
            &udp(sa(CLIENT_B, 2002), VIP_UDP),
            1,
            XDP_DROP,
            "UDP flow 3",
        )?;
        expect_n(&lb, &q, 5, XDP_TX, "the first UDP flow goes on")?;

        let c = counters(&lb, None)?;
        ensure!(
            c == allowed_dropped(4, 3),
            "only flow starts are counted: {c:?}"
        );
        ensure!(reason(&lb, R::LB_REASON_DROP_RATELIMIT)? == 3);
        Ok(())
    });
}

#[test]
fn longest_prefix_override_beats_the_default() {
    bench(|_, net| {
        let (mut lb, _, _) = lb(net)?;
        set(&mut lb, None, 1, 1, Scope::All)?;
        set(&mut lb, Some("10.1.0.0/24"), 1, 3, Scope::All)?;
        set(&mut lb, Some("10.1.0.50/32"), 0, 0, Scope::All)?;

        // 10.1.0.50: the /32 says "no limit" (and no bucket is made for it).
        expect_n(
            &lb,
            &udp(sa(CLIENT, 4000), VIP_UDP),
            20,
            XDP_TX,
            "exempt client",
        )?;
        ensure!(lb.rec.dataplane().ratelimit().client(CLIENT)?.is_none());
        // 10.1.0.51: the /24, burst 3.
        let b = udp(sa(CLIENT_B, 4000), VIP_UDP);
        expect_n(&lb, &b, 3, XDP_TX, "client under the /24")?;
        expect_n(&lb, &b, 1, XDP_DROP, "client under the /24, 4th")?;
        // 10.2.0.50 (behind veth2): the default, burst 1. Redirected out of veth0.
        let veth0 = lb.net.veth0;
        lb.maps_mut().add_tx_port(veth0)?;
        let far = Packet::udp(FAR_CLIENT_MAC, VETH2_MAC, sa(FAR_CLIENT, 4000), VIP_UDP)
            .with_payload(b"query")
            .build();
        let first = lb.run(lb.net.veth2, &far)?;
        ensure!(
            first.action == XDP_REDIRECT,
            "far client: {}",
            action_name(first.action)
        );
        let second = lb.run(lb.net.veth2, &far)?;
        ensure!(
            second.action == XDP_DROP,
            "far client: {}",
            action_name(second.action)
        );

        ensure!(counters(&lb, None)? == allowed_dropped(1, 1));
        ensure!(counters(&lb, Some("10.1.0.0/24"))? == allowed_dropped(3, 1));
        ensure!(counters(&lb, Some("10.1.0.50/32"))? == allowed_dropped(0, 0));

        // Without the /32, 10.1.0.50 falls under the /24.
        lb.state.ratelimit.remove(Some(prefix("10.1.0.50/32")))?;
        lb.reconcile()?;
        let prefixes = lb.rec.dataplane().ratelimit().prefixes()?;
        ensure!(
            prefixes.len() == 1 && prefixes[0].0 == prefix("10.1.0.0/24"),
            "rl_v4 holds {prefixes:?}"
        );
        let a = udp(sa(CLIENT, 4001), VIP_UDP);
        expect_n(&lb, &a, 3, XDP_TX, "formerly exempt client")?;
        expect_n(&lb, &a, 1, XDP_DROP, "formerly exempt client, 4th")?;

        // Without any policy nothing is limited, and counting stops.
        lb.state.ratelimit.remove(Some(prefix("10.1.0.0/24")))?;
        lb.state.ratelimit.remove(None)?;
        lb.reconcile()?;
        ensure!(lb.rec.dataplane().ratelimit().prefixes()?.is_empty());
        expect_n(&lb, &b, 10, XDP_TX, "no policy")?;
        ensure!(counters(&lb, None)? == allowed_dropped(1, 1));
        Ok(())
    });
}

#[test]
fn allow_listed_sources_are_exempt() {
    bench(|_, net| {
        let (mut lb, _, _) = lb(net)?;
        let mut allow = RuleBatch::default();
        allow
            .push(0, prefix("10.1.0.50/32"), Action::Allow)
            .context("batch")?;
        lb.state
            .firewall
            .add(&allow, 1024)
            .context("firewall allow")?;
        set(&mut lb, None, 1, 1, Scope::All)?;

        expect_n(
            &lb,
            &udp(sa(CLIENT, 5000), VIP_UDP),
            10,
            XDP_TX,
            "allow-listed client",
        )?;
        let b = udp(sa(CLIENT_B, 5000), VIP_UDP);
        expect_n(&lb, &b, 1, XDP_TX, "other client")?;
        expect_n(&lb, &b, 1, XDP_DROP, "other client, 2nd")?;
        ensure!(counters(&lb, None)? == allowed_dropped(1, 1));
        ensure!(lb.rec.dataplane().ratelimit().client(CLIENT)?.is_none());
        Ok(())
    });
}

#[test]
fn one_client_on_two_cpus_never_spends_a_token_twice() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        // No backend: an allowed packet ends as drop_no_backend and is not rewritten, so the
        // same frame can be run thousands of times in a row.
        lb.add_vip(VIP_EMPTY, Protocol::Udp, &[])?;
        set(&mut lb, None, 1, BURST, Scope::All)?;
        let frame = udp(sa(CLIENT, 6000), VIP_EMPTY);
        let fd = lb.rec.dataplane().program().as_fd();
        let ifindex = lb.net.veth0;
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        // Long enough (tens of ms per CPU) that the runs overlap for most of their length.
        const REPEAT: u32 = 200_000;
        const BURST: u64 = 100_000;

        let start = Arc::new(Barrier::new(cpus));
        let verdicts = std::thread::scope(|s| {
            let runs: Vec<_> = (0..cpus)
                .map(|cpu| {
                    let (start, frame) = (start.clone(), &frame);
                    // Threads inherit the test namespace of the thread that spawns them.
                    s.spawn(move || -> Result<u32> {
                        let mut set = nix::sched::CpuSet::new();
                        set.set(cpu).context("cpu set")?;
                        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                            .context("pinning the thread")?;
                        start.wait();
                        run_xdp_fd(fd, ifindex, frame, REPEAT)
                    })
                })
                .collect();
            runs.into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect::<Result<Vec<u32>>>()
        })?;
        ensure!(
            verdicts.iter().all(|v| *v == XDP_DROP),
            "verdicts {verdicts:?}"
        );

        let total = u64::from(REPEAT) * cpus as u64;
        let c = counters(&lb, None)?;
        ensure!(c.allowed + c.dropped == total, "{c:?} of {total} packets");
        // The burst, plus one per second the runs took (at most one or two).
        ensure!(
            (BURST..=BURST + 2).contains(&c.allowed),
            "{} packets allowed on {cpus} CPUs with a burst of {BURST}: {c:?}",
            c.allowed
        );
        ensure!(reason(&lb, R::LB_REASON_DROP_NO_BACKEND)? == c.allowed);
        ensure!(reason(&lb, R::LB_REASON_DROP_RATELIMIT)? == c.dropped);
        let bucket = lb.rec.dataplane().ratelimit().client(CLIENT)?;
        ensure!(bucket.map(|b| b.dropped) == Some(c.dropped), "{bucket:?}");
        Ok(())
    });
}
