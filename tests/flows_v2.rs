//! The flow tables v2 (bpf/flow.h, bpf/maps.h) through BPF_PROG_TEST_RUN on the real program:
//! compact keys in every mode, the embryonic -> established promotion (NAT: the client's ACK of
//! the backend's ISN; DSR: its first packet without SYN), embryonic entries expiring apart from
//! established ones, a full embryonic table never touching the established ones, the DSR
//! new-flow guard, and the sweep that ends the flows of removed backends (never of drained
//! ones). The bugs of the v1 tables are in tests/flows.rs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use libbpf_rs::MapCore;
use xdplb::dataplane::maps::FlowTable;
use xdplb::dataplane::LoadOptions;
use xdplb::skel::types::{self, ct_flags, lb_event as E, lb_reason as R};
use xdplb_model::state::{Mode, Protocol, VipKey};

use common::lab::*;
use xdplb_testkit::packet::{endpoints, Packet, TCP_ACK, TCP_PSH, TCP_SYN};

/// The backend's ISN in the SYN-ACKs of these tests; the client's ACK must carry it + 1.
const ISN: u32 = 0x7000_0000;

fn syn_ack(backend: SocketAddrV4, snat: SocketAddrV4) -> Packet {
    Packet::tcp(
        neighbour_mac(*backend.ip()),
        VETH0_MAC,
        backend,
        snat,
        TCP_SYN | TCP_ACK,
    )
    .with_seq_ack(ISN, 0x1234_5679)
}

fn ack(client: SocketAddrV4, vip: SocketAddrV4, ack_seq: u32) -> Packet {
    Packet::tcp(
        neighbour_mac(*client.ip()),
        VETH0_MAC,
        client,
        vip,
        TCP_ACK | TCP_PSH,
    )
    .with_seq_ack(0x1234_5679, ack_seq)
    .with_payload(b"data")
}

fn udp_query(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::udp(neighbour_mac(*client.ip()), VETH0_MAC, client, vip).with_payload(b"query")
}

/// Runs `pkt` (on veth0) and checks its verdict; returns the output's (source, destination).
fn send(lb: &Lb, pkt: &Packet, action: u32, what: &str) -> Result<(SocketAddrV4, SocketAddrV4)> {
    let run = lb.run(lb.net.veth0, &pkt.build())?;
    ensure!(
        run.action == action,
        "{what}: {} (expected {})",
        action_name(run.action),
        action_name(action)
    );
    endpoints(&run.out).context(what.to_string())
}

fn event(lb: &Lb, e: E) -> Result<u64> {
    Ok(lb.global()?.events[e.0 as usize])
}

fn reason(lb: &Lb, r: R) -> Result<u64> {
    Ok(lb.global()?.reasons[r.0 as usize])
}

/// The entry of `client` -> `vip` in `table` (any CPU's for the DSR tables).
fn entry(
    lb: &Lb,
    table: FlowTable,
    client: SocketAddrV4,
    vip: SocketAddrV4,
    proto: Protocol,
) -> Result<Option<types::flow4>> {
    let maps = lb.maps();
    if let FlowTable::Dsr(_) = table {
        for cpu in 0..libbpf_rs::num_possible_cpus()? {
            if let Some(e) = maps.flow_entry(FlowTable::Dsr(cpu), client, vip, proto)? {
                return Ok(Some(e));
            }
        }
        return Ok(None);
    }
    Ok(maps.flow_entry(table, client, vip, proto)?)
}

/// Every flow table of the program is keyed by the 16-byte struct flow_key4, and each mode's
/// flows land in the table of their state: TCP embryonic first, UDP established at once.
#[test]
fn compact_keys_for_tcp_and_udp_in_every_mode() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let maps = xdplb::dataplane::program_maps(lb.rec.dataplane().program().as_fd())?;
        let names = ["flows_syn_v2", "nat_fwd_v2", "nat_rev_v2", "nat_rev_syn_v2"];
        for name in names {
            let m = maps.get(name).with_context(|| format!("no map {name}"))?;
            ensure!(m.key_size() == 16, "{name}: {}-byte key", m.key_size());
            ensure!(
                m.value_size() == 64,
                "{name}: {}-byte value",
                m.value_size()
            );
        }
        ensure!(std::mem::size_of::<types::flow_key4>() == 16);
        let modes = [
            (Mode::Nat, BE1, BE1_UDP, 80, 53),
            (Mode::L2dsr, DSR1, sa(BACKEND1, 54), 81, 54),
            (Mode::Ipip, DSR1, sa(BACKEND1, 55), 82, 55),
        ];
        for (i, (mode, tcp_be, udp_be, tcp_port, udp_port)) in modes.into_iter().enumerate() {
            let tvip = sa(*VIP.ip(), tcp_port);
            let uvip = sa(*VIP.ip(), udp_port);
            let dsr_be = |be: SocketAddrV4| {
                if mode == Mode::Nat {
                    be
                } else {
                    sa(*be.ip(), tvip.port())
                }
            };
            lb.add_vip_mode(tvip, Protocol::Tcp, mode, &[(dsr_be(tcp_be), 100)])?;
            let ube = if mode == Mode::Nat {
                udp_be
            } else {
                sa(*udp_be.ip(), uvip.port())
            };
            lb.add_vip_mode(uvip, Protocol::Udp, mode, &[(ube, 100)])?;
            let client = sa(CLIENT, 30000 + i as u16);
            let run = lb.run(lb.net.veth0, &client_syn(client, tvip).build())?;
            ensure!(
                run.action == XDP_TX,
                "{mode} SYN: {}",
                action_name(run.action)
            );
            let e = entry(&lb, FlowTable::Embryonic, client, tvip, Protocol::Tcp)?
                .with_context(|| format!("{mode}: the SYN left no embryonic entry"))?;
            ensure!(
                u32::from(e.flags) & ct_flags::CT_F_EMBRYONIC.0 != 0
                    && e.mode == xdplb::dataplane::maps::mode_value(mode),
                "{mode}: embryonic entry {e:?}"
            );
            let run = lb.run(lb.net.veth0, &udp_query(client, uvip).build())?;
            ensure!(
                run.action == XDP_TX,
                "{mode} UDP: {}",
                action_name(run.action)
            );
            let table = if mode == Mode::Nat {
                FlowTable::NatEstablished
            } else {
                FlowTable::Dsr(0)
            };
            let e = entry(&lb, table, client, uvip, Protocol::Udp)?
                .with_context(|| format!("{mode}: the UDP flow is not established"))?;
            ensure!(
                e.flags == 0 && e.mode == xdplb::dataplane::maps::mode_value(mode),
                "{mode}: UDP entry {e:?}"
            );
            ensure!(
                entry(&lb, FlowTable::Embryonic, client, uvip, Protocol::Udp)?.is_none(),
                "{mode}: a UDP flow in the embryonic table"
            );
        }
        Ok(())
    });
}

/// NAT: the flow is promoted only by the client's ACK of the backend's ISN + 1, which only a
/// client that received the SYN-ACK knows; wrong ACKs are sent on but promote nothing.
#[test]
fn nat_promotion_needs_the_ack_of_the_backends_isn() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let c = sa(CLIENT, 31000);
        let (snat, _) = send(&lb, &client_syn(c, VIP), XDP_TX, "SYN")?;
        send(&lb, &ack(c, VIP, ISN + 1), XDP_TX, "ACK before the SYN-ACK")?;
        ensure!(
            event(&lb, E::LB_EV_PROMOTED)? == 0,
            "promoted without a SYN-ACK"
        );
        let (_, to) = send(&lb, &syn_ack(BE1, snat), XDP_TX, "SYN-ACK")?;
        ensure!(to == c, "SYN-ACK restored to {to}");
        let e = entry(&lb, FlowTable::Embryonic, c, VIP, Protocol::Tcp)?.context("embryonic")?;
        ensure!(
            u32::from(e.flags) & ct_flags::CT_F_SYNACK.0 != 0 && e.ack_seq_be == (ISN + 1).to_be(),
            "the SYN-ACK was not recorded: {e:?}"
        );
        send(&lb, &ack(c, VIP, ISN + 2), XDP_TX, "a wrong ACK")?;
        ensure!(
            event(&lb, E::LB_EV_PROMOTED)? == 0,
            "a wrong ACK promoted the flow"
        );
        ensure!(
            event(&lb, E::LB_EV_SYN_BAD_ACK)? == 2,
            "wrong ACKs not counted"
        );
        let (src, _) = send(&lb, &ack(c, VIP, ISN + 1), XDP_TX, "the right ACK")?;
        ensure!(src == snat, "the promoted flow left from {src}, not {snat}");
        ensure!(
            event(&lb, E::LB_EV_PROMOTED)? == 1,
            "the right ACK did not promote"
        );
        ensure!(entry(&lb, FlowTable::Embryonic, c, VIP, Protocol::Tcp)?.is_none());
        let est =
            entry(&lb, FlowTable::NatEstablished, c, VIP, Protocol::Tcp)?.context("established")?;
        ensure!(
            est.flags == 0 && est.snat_port_be == snat.port().to_be(),
            "{est:?}"
        );
        let rev = lb
            .maps()
            .nat_reply_entry(BE1, snat, Protocol::Tcp)?
            .context("reply entry")?;
        ensure!(rev.flags == 0, "reply entry still embryonic: {rev:?}");
        // Later packets both ways follow the established entries.
        send(&lb, &ack(c, VIP, ISN + 1), XDP_TX, "data")?;
        let reply = Packet::tcp(neighbour_mac(BACKEND1), VETH0_MAC, BE1, snat, TCP_ACK);
        let (_, to) = send(&lb, &reply, XDP_TX, "reply")?;
        ensure!(to == c, "reply restored to {to}");
        Ok(())
    });
}

/// DSR: the client's first packet without SYN promotes the flow to this CPU's table.
#[test]
fn dsr_promotion_on_the_first_ack() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        lb.add_vip_mode(VIP, Protocol::Tcp, Mode::Ipip, &[(DSR1, 100)])?;
        let c = sa(CLIENT, 32000);
        let run = lb.run(lb.net.veth0, &client_syn(c, VIP).build())?;
        ensure!(run.action == XDP_TX, "SYN: {}", action_name(run.action));
        ensure!(entry(&lb, FlowTable::Embryonic, c, VIP, Protocol::Tcp)?.is_some());
        ensure!(entry(&lb, FlowTable::Dsr(0), c, VIP, Protocol::Tcp)?.is_none());
        let run = lb.run(lb.net.veth0, &ack(c, VIP, 1).build())?;
        ensure!(run.action == XDP_TX, "ACK: {}", action_name(run.action));
        ensure!(entry(&lb, FlowTable::Embryonic, c, VIP, Protocol::Tcp)?.is_none());
        let e = entry(&lb, FlowTable::Dsr(0), c, VIP, Protocol::Tcp)?.context("not promoted")?;
        ensure!(
            e.flags == 0 && e.backend_be == u32::from(BACKEND1).to_be(),
            "{e:?}"
        );
        ensure!(event(&lb, E::LB_EV_PROMOTED)? == 1);
        Ok(())
    });
}

/// An embryonic entry expires after `tcp_handshake` while an established flow of the same age
/// lives on.
#[test]
fn an_embryonic_entry_expires_while_an_established_one_stays() {
    bench(|_, net| {
        let mut cfg = config(PORTS);
        cfg.tcp_handshake_timeout = Duration::from_secs(1);
        let mut lb = Lb::new(net, cfg)?;
        lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let (half, full) = (sa(CLIENT, 33000), sa(CLIENT, 33001));
        send(&lb, &client_syn(half, VIP), XDP_TX, "half-open SYN")?;
        let (snat, _) = send(&lb, &client_syn(full, VIP), XDP_TX, "SYN")?;
        send(&lb, &syn_ack(BE1, snat), XDP_TX, "SYN-ACK")?;
        send(&lb, &ack(full, VIP, ISN + 1), XDP_TX, "ACK")?;
        sleep(Duration::from_millis(1600));
        let run = lb.run(lb.net.veth0, &ack(half, VIP, ISN + 1).build())?;
        ensure!(
            run.action == XDP_DROP && reason(&lb, R::LB_REASON_DROP_NAT_NO_FLOW)? == 1,
            "the half-open flow outlived its handshake timeout: {}",
            action_name(run.action)
        );
        let (src, _) = send(
            &lb,
            &ack(full, VIP, ISN + 1),
            XDP_TX,
            "established after 1.6 s",
        )?;
        ensure!(src == snat, "the established flow changed port");
        Ok(())
    });
}

/// A SYN flood that overflows the embryonic tables many times over never evicts an
/// established flow of any mode: afterwards each goes on with its backend (and SNAT port), and
/// no new flow is counted for it.
#[test]
fn a_full_embryonic_table_never_touches_the_established_ones() {
    bench(|_, net| {
        let opts = LoadOptions {
            embryonic_size: 256,
            ..Lb::options()
        };
        let mut lb = Lb::load(net, config((20000, 60000)), &opts)?;
        let nat = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        let dsr_vip = sa(*VIP.ip(), 81);
        let dsr = lb.add_vip_mode(
            dsr_vip,
            Protocol::Tcp,
            Mode::L2dsr,
            &[(sa(BACKEND1, 81), 100), (sa(BACKEND2, 81), 100)],
        )?;
        let mut nat_flows = BTreeMap::new();
        for p in 0..50u16 {
            let c = sa(CLIENT, 34000 + p);
            let (snat, to) = send(&lb, &client_syn(c, VIP), XDP_TX, "SYN")?;
            send(&lb, &syn_ack(to, snat), XDP_TX, "SYN-ACK")?;
            send(&lb, &ack(c, VIP, ISN + 1), XDP_TX, "ACK")?;
            nat_flows.insert(c, (snat, to));
        }
        let mut dsr_flows = Vec::new();
        for p in 0..50u16 {
            let c = sa(CLIENT, 35000 + p);
            let run = lb.run(lb.net.veth0, &client_syn(c, dsr_vip).build())?;
            ensure!(run.action == XDP_TX);
            let dmac = run.out[0..6].to_vec();
            let run = lb.run(lb.net.veth0, &ack(c, dsr_vip, 1).build())?;
            ensure!(run.action == XDP_TX && run.out[0..6] == dmac[..]);
            dsr_flows.push((c, dmac));
        }
        ensure!(
            event(&lb, E::LB_EV_PROMOTED)? == 100,
            "not all 100 flows promoted"
        );
        let before = (
            lb.vip_counters(&nat)?.new_flows,
            lb.vip_counters(&dsr)?.new_flows,
        );
        // 40 times the embryonic table, from never-seen sources, to both VIPs.
        for i in 0..10_240u32 {
            let src = sa(
                std::net::Ipv4Addr::from(0x0a64_0000 + i),
                1024 + (i % 60000) as u16,
            );
            let to = if i % 2 == 0 { VIP } else { dsr_vip };
            let syn = Packet::tcp(CLIENT_B_MAC, VETH0_MAC, src, to, TCP_SYN);
            let run = lb.run(lb.net.veth0, &syn.build())?;
            ensure!(
                run.action == XDP_TX || run.action == XDP_DROP,
                "flood: {}",
                action_name(run.action)
            );
        }
        let flood = (
            lb.vip_counters(&nat)?.new_flows,
            lb.vip_counters(&dsr)?.new_flows,
        );
        for (c, (snat, be)) in &nat_flows {
            let (src, dst) = send(
                &lb,
                &ack(*c, VIP, ISN + 1),
                XDP_TX,
                "NAT flow after the flood",
            )?;
            ensure!(
                src == *snat && dst == *be,
                "{c}: {src} -> {dst}, was {snat} -> {be}"
            );
        }
        for (c, dmac) in &dsr_flows {
            let run = lb.run(lb.net.veth0, &ack(*c, dsr_vip, 1).build())?;
            ensure!(
                run.action == XDP_TX && run.out[0..6] == dmac[..],
                "{c}: another backend"
            );
            ensure!(entry(&lb, FlowTable::Dsr(0), *c, dsr_vip, Protocol::Tcp)?.is_some());
        }
        let after = (
            lb.vip_counters(&nat)?.new_flows,
            lb.vip_counters(&dsr)?.new_flows,
        );
        ensure!(
            after == flood,
            "established flows counted as new after the flood: {before:?} {flood:?} {after:?}"
        );
        ensure!(
            event(&lb, E::LB_EV_DSR_RECHOSEN)? == 0,
            "a DSR flow lost its entry"
        );
        Ok(())
    });
}

/// Above `new_flows_per_cpu` new flows in a second, DSR VIPs stop recording flows (still sent
/// by Maglev) and count it; NAT VIPs are not guarded (a NAT flow needs its state).
#[test]
fn the_new_flow_guard_counts_what_it_leaves_unrecorded() {
    bench(|_, net| {
        let mut cfg = config(PORTS);
        cfg.new_flows_per_cpu = 5;
        let mut lb = Lb::new(net, cfg)?;
        lb.add_vip_mode(VIP, Protocol::Tcp, Mode::L2dsr, &[(DSR1, 100)])?;
        for p in 0..12u16 {
            let run = lb.run(
                lb.net.veth0,
                &client_syn(sa(CLIENT, 36000 + p), VIP).build(),
            )?;
            ensure!(run.action == XDP_TX, "SYN {p}: {}", action_name(run.action));
        }
        let recorded = (0..12u16)
            .filter(|p| {
                entry(
                    &lb,
                    FlowTable::Embryonic,
                    sa(CLIENT, 36000 + p),
                    VIP,
                    Protocol::Tcp,
                )
                .ok()
                .flatten()
                .is_some()
            })
            .count();
        let skipped = event(&lb, E::LB_EV_GUARD_SKIPPED)?;
        ensure!(
            recorded == 5 && skipped == 7,
            "{recorded} flows recorded, {skipped} counted unrecorded (limit 5 per second)"
        );
        Ok(())
    });
}

fn sweep(lb: &Lb) -> Result<xdplb::dataplane::flows::SweepReport> {
    Ok(lb.rec.dataplane().sweeper()?.run()?)
}

/// A removed backend's flows end at the next sweep: its NAT flows are dropped (the client
/// reconnects), its DSR flows chosen again by Maglev. A drained one (weight 0) keeps them.
#[test]
fn flows_of_a_removed_backend_end_and_of_a_drained_one_stay() {
    bench(|_, net| {
        let mut lb = Lb::new(net, config(PORTS))?;
        let nat = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100), (BE2, 100)])?;
        let dsr_vip = sa(*VIP.ip(), 81);
        let (d1, d2) = (sa(BACKEND1, 81), sa(BACKEND2, 81));
        let dsr = lb.add_vip_mode(dsr_vip, Protocol::Tcp, Mode::Ipip, &[(d1, 100), (d2, 100)])?;
        // One NAT and one DSR flow to each backend.
        let mut nat_flows = BTreeMap::new();
        let mut dsr_flows = BTreeMap::new();
        for p in 0..64u16 {
            let c = sa(CLIENT, 37000 + p);
            if nat_flows.len() < 2 {
                let (snat, be) = send(&lb, &client_syn(c, VIP), XDP_TX, "SYN")?;
                if nat_flows.values().all(|(_, b)| *b != be) {
                    send(&lb, &syn_ack(be, snat), XDP_TX, "SYN-ACK")?;
                    send(&lb, &ack(c, VIP, ISN + 1), XDP_TX, "ACK")?;
                    nat_flows.insert(c, (snat, be));
                }
            }
            let pick = lb.pick(&dsr, c)?;
            if dsr_flows.values().all(|b| *b != pick.backend) {
                lb.run(lb.net.veth0, &client_syn(c, dsr_vip).build())?;
                lb.run(lb.net.veth0, &ack(c, dsr_vip, 1).build())?;
                dsr_flows.insert(c, pick.backend);
            }
        }
        ensure!(
            nat_flows.len() == 2 && dsr_flows.len() == 2,
            "one flow per backend"
        );
        // Drain backend 2 of both VIPs: nothing ends.
        lb.set_weight(&nat, BE2, 0)?;
        lb.set_weight(&dsr, d2, 0)?;
        let r = sweep(&lb)?;
        ensure!(r.ended == 0, "draining ended flows: {r:?}");
        for (c, (snat, be)) in &nat_flows {
            let (src, dst) = send(&lb, &ack(*c, VIP, ISN + 1), XDP_TX, "drained NAT flow")?;
            ensure!(src == *snat && dst == *be);
        }
        // Back from the drain, then remove backend 1 of both VIPs: its flows end at the sweep.
        lb.set_weight(&nat, BE2, 100)?;
        lb.set_weight(&dsr, d2, 100)?;
        lb.state.remove_backend(&nat, BE1)?;
        lb.state.remove_backend(&dsr, d1)?;
        lb.reconcile()?;
        let r = sweep(&lb)?;
        // NAT: forward and reply entries; DSR: the established entry.
        ensure!(r.ended >= 3, "sweep: {r:?}");
        for (c, (snat, be)) in &nat_flows {
            let run = lb.run(lb.net.veth0, &ack(*c, VIP, ISN + 1).build())?;
            if *be == BE1 {
                ensure!(
                    run.action == XDP_DROP,
                    "a flow of the removed backend: {}",
                    action_name(run.action)
                );
            } else {
                ensure!(
                    run.action == XDP_TX && endpoints(&run.out)?.0 == *snat,
                    "the drained backend's flow"
                );
            }
        }
        for (c, be) in &dsr_flows {
            let run = lb.run(lb.net.veth0, &ack(*c, dsr_vip, 1).build())?;
            ensure!(
                run.action == XDP_TX,
                "DSR flow: {}",
                action_name(run.action)
            );
            let outer_dst =
                std::net::Ipv4Addr::new(run.out[30], run.out[31], run.out[32], run.out[33]);
            let want = if *be == d1 { BACKEND2 } else { *be.ip() };
            ensure!(
                outer_dst == want,
                "DSR flow of {be} went to {outer_dst}, expected {want}"
            );
        }
        Ok(())
    });
}

/// The sweep gives back the ports of flows expired in both directions (nat_rev_v2 is not an
/// LRU), and leaves live ones.
#[test]
fn the_sweep_frees_the_ports_of_expired_flows() {
    bench(|_, net| {
        let mut cfg = config(PORTS);
        cfg.udp_timeout = Duration::from_secs(1);
        let mut lb = Lb::new(net, cfg)?;
        let _vip: VipKey = lb.add_vip(VIP_UDP, Protocol::Udp, &[(BE1_UDP, 100)])?;
        for p in 0..10u16 {
            send(
                &lb,
                &udp_query(sa(CLIENT, 38000 + p), VIP_UDP),
                XDP_TX,
                "query",
            )?;
        }
        ensure!(lb.maps().nat_rev_entries() == 10);
        let r = sweep(&lb)?;
        ensure!(
            r.rev_swept == 0 && lb.maps().nat_rev_entries() == 10,
            "live flows swept: {r:?}"
        );
        sleep(Duration::from_millis(1600));
        let r = sweep(&lb)?;
        ensure!(
            r.rev_swept == 10 && lb.maps().nat_rev_entries() == 0,
            "expired flows not swept: {r:?}"
        );
        Ok(())
    });
}

/// A pinned v1 flow table (`ct_fwd`/`ct_rev` layout) at `dir/name` holding `entries`.
fn pin_v1_table(dir: &std::path::Path, name: &str, key: &[u8], value: &[u8]) -> Result<()> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut map = libbpf_rs::MapHandle::create(
        libbpf_rs::MapType::LruHash,
        Some(name),
        key.len() as u32,
        value.len() as u32,
        4096,
        &opts,
    )?;
    map.update(key, value, libbpf_rs::MapFlags::ANY)?;
    map.pin(dir.join(name))?;
    Ok(())
}

/// An upgrade from the v1 flow tables: lbd copies the flows of the pinned `ct_fwd`/`ct_rev`
/// into the v2 tables, and they go on exactly as before (NAT: same SNAT port, backend, reply
/// restored; DSR: the recorded backend, not a new Maglev choice); then the v1 pins go.
#[test]
fn flows_of_pinned_v1_tables_carry_on_in_the_v2_tables() {
    use xdplb::dataplane::maps::addr_v4;
    bench(|_, net| {
        let pins = xdplb_testkit::PinDir::new("migrate");
        let mut lb = Lb::load(net, config(PORTS), &Lb::pinned_options(&pins))?;
        let nat = lb.add_vip(VIP, Protocol::Tcp, &[(BE1, 100)])?;
        let dsr_vip = sa(*VIP.ip(), 81);
        let dsr = lb.add_vip_mode(
            dsr_vip,
            Protocol::Tcp,
            Mode::Ipip,
            &[(sa(BACKEND2, 81), 100)],
        )?;
        let now = lb.rec.dataplane().clock()?.now()?;
        let (nc, dc) = (sa(CLIENT, 39000), sa(CLIENT, 39001));
        let snat = sa(LB_ADDR, 20777);
        let v1_key = |src: SocketAddrV4, dst: SocketAddrV4| types::flow_key {
            src: addr_v4(*src.ip()),
            dst: addr_v4(*dst.ip()),
            sport_be: src.port().to_be(),
            dport_be: dst.port().to_be(),
            proto: 6,
            family: 4,
            ..Default::default()
        };
        let nat_fwd = types::ct_fwd {
            backend_addr: addr_v4(BACKEND1),
            snat_addr: addr_v4(LB_ADDR),
            backend_port_be: BE1.port().to_be(),
            snat_port_be: snat.port().to_be(),
            backend_id: lb.backend_id(&nat, BE1)?,
            vip_id: lb.vip_id(&nat)?,
            mode: types::lb_mode::LB_MODE_NAT.0 as u8,
            last_seen_ns: now,
            ..Default::default()
        };
        // The DSR flow names backend 1, which is no longer in the VIP: only the copied entry
        // can send it there.
        let dsr_fwd = types::ct_fwd {
            backend_addr: addr_v4(BACKEND1),
            snat_addr: addr_v4(LB_ADDR),
            backend_port_be: 81u16.to_be(),
            backend_id: lb.backend_id(&dsr, sa(BACKEND2, 81))?,
            vip_id: lb.vip_id(&dsr)?,
            mode: types::lb_mode::LB_MODE_IPIP.0 as u8,
            last_seen_ns: now,
            ..Default::default()
        };
        let rev = types::ct_rev {
            client_addr: addr_v4(CLIENT),
            vip_addr: addr_v4(*VIP.ip()),
            client_port_be: nc.port().to_be(),
            vip_port_be: VIP.port().to_be(),
            backend_id: nat_fwd.backend_id,
            vip_id: nat_fwd.vip_id,
            last_seen_ns: now,
            ..Default::default()
        };
        // SAFETY (bytes of repr(C) integer structs with explicit padding, built from Default).
        let bytes = |p: *const u8, n: usize| unsafe { std::slice::from_raw_parts(p, n) }.to_vec();
        let kb = |k: &types::flow_key| {
            bytes(
                (k as *const types::flow_key).cast(),
                std::mem::size_of_val(k),
            )
        };
        let fb =
            |v: &types::ct_fwd| bytes((v as *const types::ct_fwd).cast(), std::mem::size_of_val(v));
        let rb =
            |v: &types::ct_rev| bytes((v as *const types::ct_rev).cast(), std::mem::size_of_val(v));
        pin_v1_table(pins.path(), "ct_fwd", &kb(&v1_key(nc, VIP)), &fb(&nat_fwd))?;
        {
            let fwd = libbpf_rs::MapHandle::from_pinned_path(pins.path().join("ct_fwd"))?;
            fwd.update(
                &kb(&v1_key(dc, dsr_vip)),
                &fb(&dsr_fwd),
                libbpf_rs::MapFlags::ANY,
            )?;
        }
        pin_v1_table(pins.path(), "ct_rev", &kb(&v1_key(BE1, snat)), &rb(&rev))?;

        let m = lb
            .rec
            .dataplane()
            .migrate_v1_flows()?
            .context("no v1 tables found")?;
        ensure!(
            (m.nat_flows, m.dsr_flows, m.replies, m.skipped) == (1, 1, 1, 0),
            "copied {m:?}"
        );
        let (src, dst) = send(
            &lb,
            &ack(nc, VIP, ISN + 1),
            XDP_TX,
            "the NAT flow after the copy",
        )?;
        ensure!(src == snat && dst == BE1, "NAT flow left {src} -> {dst}");
        let reply = Packet::tcp(neighbour_mac(BACKEND1), VETH0_MAC, BE1, snat, TCP_ACK);
        let (from, to) = send(&lb, &reply, XDP_TX, "its reply")?;
        ensure!(from == VIP && to == nc, "reply restored as {from} -> {to}");
        let run = lb.run(lb.net.veth0, &ack(dc, dsr_vip, 1).build())?;
        ensure!(
            run.action == XDP_TX,
            "the DSR flow: {}",
            action_name(run.action)
        );
        let outer = std::net::Ipv4Addr::new(run.out[30], run.out[31], run.out[32], run.out[33]);
        ensure!(
            outer == BACKEND1,
            "the DSR flow went to {outer}, not its recorded backend"
        );
        ensure!(lb.vip_counters(&nat)?.new_flows == 0 && lb.vip_counters(&dsr)?.new_flows == 0);
        lb.rec.dataplane().retire_v1_tables()?;
        for name in ["ct_fwd", "ct_rev"] {
            ensure!(!pins.path().join(name).exists(), "{name} still pinned");
        }
        ensure!(lb.rec.dataplane().migrate_v1_flows()?.is_none());
        Ok(())
    });
}
