//! `lb_explain` (bpf/explain.bpf.c) through BPF_PROG_TEST_RUN on the loaded data plane, in a
//! private network namespace with the bench of `common::lab`: each decision it reports is the
//! one the real program (`xdplb`) takes with the same packet, and running it changes no map.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;

use anyhow::{ensure, Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use xdplb::dataplane::explain::{Explanation, FlowStep, Probe, Proto, Segment};
use xdplb::dataplane::maps::reason_name;
use xdplb::skel::types::lb_reason as R;
use xdplb_model::ratelimit::{Policy, Scope};
use xdplb_model::state::{Mode, Protocol};

use common::lab::*;
use xdplb_testkit::packet::*;

fn probe(
    net: &Net,
    client: SocketAddrV4,
    vip: SocketAddrV4,
    proto: Proto,
    segment: Segment,
) -> Probe {
    Probe {
        client,
        vip,
        proto,
        segment,
        ingress_ifindex: net.veth0,
        eth_dst: VETH0_MAC,
        eth_src: neighbour_mac(*client.ip()),
    }
}

fn explain(lb: &Lb, p: &Probe) -> Result<Explanation> {
    Ok(lb.rec.dataplane().explainer()?.explain(p)?)
}

fn expect_reason(ex: &Explanation, reason: R, action: u32, what: &str) -> Result<()> {
    ensure!(
        ex.reason == reason.0 as usize && ex.action == action,
        "{what}: explain says {} {}, expected {} {}\n{ex:#?}",
        action_name(ex.action),
        reason_name(ex.reason),
        action_name(action),
        reason_name(reason.0 as usize)
    );
    Ok(())
}

const CLIENT_SA: SocketAddrV4 = SocketAddrV4::new(CLIENT, 40000);

#[test]
fn frame_is_well_formed() {
    let net = Net { veth0: 1, veth2: 2 };
    for proto in [Proto::Tcp, Proto::Udp] {
        let frame = xdplb::dataplane::explain::build_frame(&probe(
            &net,
            CLIENT_SA,
            VIP,
            proto,
            Segment::Syn,
        ));
        verify_checksums(&frame, false).expect("checksums");
        let (src, dst) = endpoints(&frame).expect("endpoints");
        assert_eq!((src, dst), (CLIENT_SA, VIP));
        let want = match proto {
            Proto::Tcp => Packet::tcp(CLIENT_MAC, VETH0_MAC, CLIENT_SA, VIP, TCP_SYN),
            Proto::Udp => Packet::udp(CLIENT_MAC, VETH0_MAC, CLIENT_SA, VIP),
        }
        .with_payload(b"explain\n")
        .build();
        // The testkit's Ethernet header, and the same IPv4 protocol and addresses.
        assert_eq!(frame[..14], want[..14], "Ethernet header");
        assert_eq!(frame[23], want[23], "IPv4 protocol");
        assert_eq!(frame[26..34], want[26..34], "IPv4 addresses");
    }
}

/// A new NAT flow: the backend Maglev picks (hash, slot), a free SNAT port, the next hop of the
/// backend; then the real SYN goes to that backend from that port, and its ACK is explained as
/// tracked in the embryonic table.
#[test]
fn new_and_tracked_nat_flow() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        let pick = lb.pick(&vip, CLIENT_SA)?;
        let p = probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Syn);
        let ex = explain(&lb, &p)?;
        expect_reason(&ex, R::LB_REASON_TX_NAT_FORWARD, XDP_TX, "new SYN")?;
        ensure!(ex.vip_id == Some(lb.vip_id(&vip)?), "vip id: {ex:?}");
        ensure!(
            ex.flow
                == Some(FlowStep::New {
                    hash: pick.hash,
                    slot: pick.hash % RING_SIZE,
                    recorded: true
                }),
            "flow: {:?}, hash {:#x}",
            ex.flow,
            pick.hash
        );
        ensure!(
            ex.backend == Some((pick.backend_id, pick.backend)),
            "backend {:?} != {pick:?}",
            ex.backend
        );
        let port = ex.snat_port.context("a SNAT port")?;
        ensure!((PORTS.0..=PORTS.1).contains(&port), "port {port}");
        let nh = ex.next_hop.context("next hop")?;
        ensure!(!nh.cached && nh.fib_rc == Some(0), "{nh:?}");
        ensure!(
            nh.dmac == neighbour_mac(*pick.backend.ip()) && nh.smac == VETH0_MAC,
            "{nh:?}"
        );
        ensure!(
            nh.ifindex == net.veth0 && nh.egress_attached && nh.gateway == *pick.backend.ip(),
            "{nh:?}"
        );
        ensure!(nh.src == LB_ADDR && nh.dst == *pick.backend.ip(), "{nh:?}");
        ensure!(
            ex.firewall.is_some_and(|f| f.action == 0),
            "firewall: {:?}",
            ex.firewall
        );

        // The real SYN does what was explained.
        let run = lb.run(net.veth0, &xdplb::dataplane::explain::build_frame(&p))?;
        ensure!(
            run.action == XDP_TX,
            "real SYN: {}",
            action_name(run.action)
        );
        let (src, dst) = endpoints(&run.out)?;
        ensure!(
            dst == pick.backend && src == SocketAddrV4::new(LB_ADDR, port),
            "real SYN went {src} -> {dst}"
        );

        // Its next packet is tracked.
        let ack = explain(&lb, &probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Ack))?;
        expect_reason(
            &ack,
            R::LB_REASON_TX_NAT_FORWARD,
            XDP_TX,
            "ACK of the tracked flow",
        )?;
        match ack.flow {
            Some(FlowStep::Tracked {
                table: "embryonic", ..
            }) => {}
            f => anyhow::bail!("ACK: flow {f:?}"),
        }
        ensure!(
            ack.snat_port == Some(port) && ack.backend == ex.backend,
            "{ack:?}"
        );
        ensure!(
            ack.next_hop.is_some_and(|n| n.cached),
            "tracked flow: next hop from its cache: {ack:?}"
        );
        // A second SYN of the same tuple is not a new flow.
        Ok(())
    });
}

/// DSR: the first packet without SYN promotes the flow into this CPU's DSR table; explain finds
/// it there. A UDP flow is established from its first packet.
#[test]
fn dsr_and_udp_flows() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let vip = lb.add_vip_mode(VIP, Protocol::Tcp, Mode::L2dsr, &[(DSR1, 100), (DSR2, 100)])?;
        let udp = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let pick = lb.pick(&vip, CLIENT_SA)?;
        let syn = probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Syn);
        let ex = explain(&lb, &syn)?;
        expect_reason(&ex, R::LB_REASON_TX_L2DSR, XDP_TX, "DSR SYN")?;
        ensure!(
            ex.mode == 2 && ex.backend.map(|b| b.1) == Some(pick.backend) && ex.snat_port.is_none(),
            "{ex:?}"
        );
        lb.run(net.veth0, &xdplb::dataplane::explain::build_frame(&syn))?;
        let ack = probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Ack);
        lb.run(net.veth0, &xdplb::dataplane::explain::build_frame(&ack))?;
        let ex = explain(&lb, &ack)?;
        ensure!(
            matches!(ex.flow, Some(FlowStep::Tracked { table: "dsr", .. })),
            "{ex:?}"
        );

        let u = probe(&net, CLIENT_SA, VIP_UDP, Proto::Udp, Segment::Syn);
        let ex = explain(&lb, &u)?;
        expect_reason(&ex, R::LB_REASON_TX_NAT_FORWARD, XDP_TX, "new UDP flow")?;
        ensure!(
            matches!(ex.flow, Some(FlowStep::New { recorded: true, .. })),
            "{ex:?}"
        );
        ensure!(ex.backend.map(|b| b.1) == Some(BE1_UDP), "{ex:?}");
        lb.run(net.veth0, &xdplb::dataplane::explain::build_frame(&u))?;
        let ex = explain(&lb, &u)?;
        ensure!(
            matches!(ex.flow, Some(FlowStep::Tracked { table: "nat", .. })),
            "{ex:?}"
        );
        let _ = udp;
        Ok(())
    });
}

#[test]
fn blocked_client_names_the_rule() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let rule: ipnet::Ipv4Net = "10.1.0.0/24".parse()?;
        lb.block(rule)?;
        let ex = explain(&lb, &probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Syn))?;
        expect_reason(&ex, R::LB_REASON_DROP_FIREWALL, XDP_DROP, "blocked client")?;
        let id = lb.rec.firewall().rule(&rule).context("rule applied")?.id;
        ensure!(
            ex.firewall
                .is_some_and(|f| f.action == 1 && f.rule_id == id),
            "{:?} (rule id {id})",
            ex.firewall
        );
        ensure!(
            ex.backend.is_none() && ex.flow.is_none(),
            "nothing after the firewall: {ex:?}"
        );
        Ok(())
    });
}

/// A client exhausts its burst with real packets; explain then says limited, with the policy
/// and the wait, and the real packet is dropped as explained.
#[test]
fn ratelimited_client_names_the_policy() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        lb.state.ratelimit.set(
            None,
            Policy {
                rate: 1,
                burst: 3,
                scope: Scope::All,
            },
        )?;
        lb.reconcile()?;
        let p = probe(&net, CLIENT_SA, VIP_UDP, Proto::Udp, Segment::Syn);
        let frame = xdplb::dataplane::explain::build_frame(&p);
        let ex = explain(&lb, &p)?;
        let rl = ex.ratelimit.context("a policy applies")?;
        ensure!(
            rl.policy_id == 0 && !rl.new_flows && rl.allowed == Some(true),
            "{rl:?}"
        );
        for _ in 0..3 {
            ensure!(
                lb.run(net.veth0, &frame)?.action == XDP_TX,
                "within the burst"
            );
        }
        let ex = explain(&lb, &p)?;
        expect_reason(
            &ex,
            R::LB_REASON_DROP_RATELIMIT,
            XDP_DROP,
            "after the burst",
        )?;
        let rl = ex.ratelimit.context("a policy applies")?;
        ensure!(rl.allowed == Some(false) && rl.tokens == Some(0), "{rl:?}");
        let wait = rl.wait_ns.context("a wait")?;
        ensure!(wait > 0 && wait <= 1_000_000_000, "wait {wait} ns at 1/s");
        ensure!(
            lb.run(net.veth0, &frame)?.action == XDP_DROP,
            "the real packet is dropped"
        );
        Ok(())
    });
}

/// A backend on the link that has no neighbour entry: the lookup's NO_NEIGH, the address and
/// the device named; a VIP without usable backend: drop_no_backend.
#[test]
fn no_neighbour_and_no_backend() {
    bench(|ns, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let silent = SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, 77), 8080);
        lb.add_vip(VIP, Protocol::Tcp, &[(silent, 100)])?;
        let _ = ns;
        let ex = explain(&lb, &probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Syn))?;
        expect_reason(
            &ex,
            R::LB_REASON_DROP_FIB_NO_NEIGH,
            XDP_DROP,
            "no neighbour",
        )?;
        let nh = ex.next_hop.context("next hop")?;
        ensure!(
            nh.fib_rc == Some(libbpf_sys::BPF_FIB_LKUP_RET_NO_NEIGH as i32)
                && nh.gateway == *silent.ip()
                && nh.ifindex == net.veth0,
            "{nh:?}"
        );
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 20), 80);
        let key = lb.add_vip(other, Protocol::Tcp, &[(BE1, 100)])?;
        lb.set_weight(&key, BE1, 0)?;
        let ex = explain(
            &lb,
            &probe(&net, CLIENT_SA, other, Proto::Tcp, Segment::Syn),
        )?;
        expect_reason(&ex, R::LB_REASON_DROP_NO_BACKEND, XDP_DROP, "no backend")?;
        Ok(())
    });
}

/// Every map of the data plane, keys and values (every CPU's of per-CPU maps, the inner maps of
/// map-in-maps by content), by name.
/// Every map's entries by name: (key, value of each CPU).
type Dump = BTreeMap<String, Vec<(Vec<u8>, Vec<Vec<u8>>)>>;

fn dump(lb: &Lb) -> Result<Dump> {
    let maps = xdplb::dataplane::program_maps(lb.rec.dataplane().program().as_fd())?;
    let mut out = BTreeMap::new();
    for (name, map) in &maps {
        dump_map(name, map, &mut out)?;
    }
    Ok(out)
}

fn dump_map(name: &str, map: &MapHandle, out: &mut Dump) -> Result<()> {
    let percpu = matches!(
        map.map_type(),
        MapType::PercpuArray | MapType::PercpuHash | MapType::LruPercpuHash
    );
    let outer = matches!(map.map_type(), MapType::ArrayOfMaps | MapType::HashOfMaps);
    if map.map_type() == MapType::PerfEventArray {
        // Its values are perf event fds, not readable (ENOTSUPP); the trace hook that writes to
        // it is not in lb_explain at all (bpf/lb.bpf.c: xdplb() is outside the explain build).
        out.insert(name.to_string(), Vec::new());
        return Ok(());
    }
    let mut entries = Vec::new();
    for key in map.keys() {
        let values = if percpu {
            map.lookup_percpu(&key, MapFlags::ANY)?.unwrap_or_default()
        } else {
            map.lookup(&key, MapFlags::ANY)?.into_iter().collect()
        };
        if outer {
            for v in &values {
                let id = u32::from_ne_bytes(v[..4].try_into()?);
                let inner = MapHandle::from_map_id(id)
                    .with_context(|| format!("inner map {id} of {name}"))?;
                dump_map(&format!("{name}[{}]", hex(&key)), &inner, out)?;
            }
            entries.push((key, Vec::new())); // ids are not content
        } else {
            entries.push((key, values));
        }
    }
    out.insert(name.to_string(), entries);
    Ok(())
}

/// The bytes of a skeleton type (no padding in the ones used here).
fn raw<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: any T is readable as size_of::<T>() bytes; the types used have no padding.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The guarantee: a series of explains (a new SYN, the ACK of a tracked flow, a rate-limited
/// client, a blocked client, UDP, DSR, a closing flow's new SYN) leaves every map byte for byte
/// as it was. The same packets through xdplb change them (the dump can see a change).
#[test]
fn explain_writes_no_map() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        let dsr_vip = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 10), 80);
        lb.add_vip_mode(dsr_vip, Protocol::Tcp, Mode::L2dsr, &[(DSR1, 100)])?;
        lb.block("10.1.0.51/32".parse()?)?;
        lb.state.ratelimit.set(
            "10.2.0.0/16".parse().ok(),
            Policy {
                rate: 1,
                burst: 1,
                scope: Scope::All,
            },
        )?;
        lb.reconcile()?;
        // State to explain against: a tracked NAT flow, a tracked DSR flow, an exhausted bucket.
        let tracked = probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Syn);
        lb.run(net.veth0, &xdplb::dataplane::explain::build_frame(&tracked))?;
        let dsr = probe(&net, CLIENT_SA, dsr_vip, Proto::Tcp, Segment::Syn);
        lb.run(net.veth0, &xdplb::dataplane::explain::build_frame(&dsr))?;
        let far = Probe {
            ingress_ifindex: net.veth2,
            eth_dst: VETH2_MAC,
            ..probe(
                &net,
                SocketAddrV4::new(FAR_CLIENT, 5000),
                VIP_UDP,
                Proto::Udp,
                Segment::Syn,
            )
        };
        // Load the explain program first (its load is not an explain).
        let explainer = lb.rec.dataplane().explainer()?;
        explainer.explain(&tracked)?;
        let far_frame = xdplb::dataplane::explain::build_frame(&far);
        let probes = [
            far.clone(),
            probe(
                &net,
                SocketAddrV4::new(CLIENT, 40001),
                VIP,
                Proto::Tcp,
                Segment::Syn,
            ),
            probe(&net, CLIENT_SA, VIP, Proto::Tcp, Segment::Ack),
            tracked.clone(),
            probe(&net, CLIENT_SA, dsr_vip, Proto::Tcp, Segment::Ack),
            probe(
                &net,
                SocketAddrV4::new(CLIENT_B, 1234),
                VIP,
                Proto::Tcp,
                Segment::Syn,
            ),
            probe(&net, CLIENT_SA, VIP_UDP, Proto::Udp, Segment::Syn),
        ];
        // The far client's bucket (1/s, burst 1), made by a real packet, is pushed 100 s
        // ahead (as if it had sent 100 s worth at once): limited for the whole test, whatever
        // the dumps cost.
        lb.run(net.veth2, &far_frame)?;
        let key = xdplb::dataplane::ratelimit::client_key(FAR_CLIENT);
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec to write.
        ensure!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } == 0);
        let now_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let bucket = xdplb::skel::types::rl_client {
            tat: (now_ns + 100_000_000_000) << xdplb::skel::types::rl_limits::RL_TIME_SHIFT.0,
            dropped: 0,
        };
        lb.rec.dataplane().ratelimit().clients_handle()?.update(
            raw(&key),
            raw(&bucket),
            MapFlags::EXIST,
        )?;
        let before = dump(&lb)?;
        let mut reasons = Vec::new();
        for p in &probes {
            reasons.push(reason_name(explainer.explain(p)?.reason));
        }
        ensure!(before.len() > 20, "only {} maps dumped", before.len());
        ensure!(reasons[0] == "drop_ratelimit", "{reasons:?}");
        ensure!(
            reasons.contains(&"drop_firewall".to_string()),
            "{reasons:?}"
        );
        ensure!(reasons.contains(&"tx_l2dsr".to_string()), "{reasons:?}");
        let after = dump(&lb)?;
        for (name, entries) in &before {
            ensure!(
                after.get(name) == Some(entries),
                "map {name} changed under explain"
            );
        }
        ensure!(before.len() == after.len(), "maps appeared or vanished");

        // The dump sees what the real program writes.
        lb.run(
            net.veth0,
            &xdplb::dataplane::explain::build_frame(&probes[1]),
        )?;
        let real = dump(&lb)?;
        let changed: Vec<&String> = before
            .keys()
            .filter(|n| real.get(*n) != before.get(*n))
            .collect();
        ensure!(
            changed.iter().any(|n| n.as_str() == "flows_syn_v2"),
            "xdplb changed only {changed:?}"
        );
        ensure!(
            changed.iter().any(|n| n.as_str() == "global_stats"),
            "xdplb changed only {changed:?}"
        );
        Ok(())
    });
}
