//! The bench's load balancers: loaded with `Dataplane::load`, configured with `write_config` and
//! the `Reconciler` (the way lbd fills its maps), inside the veth bench of `tests/common/lab.rs`;
//! plus the frames the cases send.

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::LoadOptions;
use xdplb_model::state::{Mode, Protocol, VipKey};

use crate::common::lab::{
    config, data_segment, neighbour_mac, Lb, Net, BACKEND1, BACKEND2, CLIENT, VETH0_MAC,
};
use crate::testrun::Runner;
use xdplb_testkit::packet::{endpoints, Packet, TCP_ACK, TCP_PSH, TCP_SYN};
use xdplb_testkit::NetNs;

/// SNAT ports of every bench LB: the whole unprivileged range.
pub const PORTS: (u16, u16) = (1024, 65535);

/// Backends "far away": 10.3.0.0/16 is routed via BACKEND1 (a gateway on veth0), so any number of
/// backends resolve to one neighbour.
pub const FAR_NET: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 0);

pub use crate::common::lab::sa;

/// The extra route of the bench (on top of `setup_net`).
pub fn add_routes(ns: &NetNs) -> Result<()> {
    // The far backends, and a default route (inside the bench's own namespace) for the made-up
    // clients of the new-flow, scaling and firewall cases, so that the replies to them have a
    // next hop, as on a real balancer (without a route the program drops a NAT reply:
    // drop_fib_failed).
    for net in [format!("{FAR_NET}/16"), "default".into()] {
        ns.ip(&[
            "route",
            "add",
            &net,
            "via",
            &BACKEND1.to_string(),
            "dev",
            "veth0",
        ])?;
    }
    Ok(())
}

/// Backend `i` of the far subnet (10.3.x.y, i < 65000).
pub fn far_backend(i: usize, port: u16) -> SocketAddrV4 {
    let n = u32::from(FAR_NET) + 1 + i as u32;
    sa(Ipv4Addr::from(n), port)
}

/// The two on-link backends of `common::lab` on `port`.
pub fn near_backends(port: u16) -> Vec<SocketAddrV4> {
    vec![sa(BACKEND1, port), sa(BACKEND2, port)]
}

/// Loads the program with `opts`, writes the run-time config (SNAT ports 1024-65535) and hands
/// it to a `Reconciler`, as lbd does.
pub fn load_lb(net: Net, opts: &LoadOptions) -> Result<Lb> {
    Lb::load(net, config(PORTS), opts)
}

/// Load options with flow tables of `ct` entries and small firewall/rate-limit tables.
pub fn opts(ct: u32) -> LoadOptions {
    LoadOptions {
        conntrack_size: ct,
        ..Lb::options()
    }
}

/// Adds a VIP in `mode` with `backends` (weight 100 each) through the State and the Reconciler.
pub fn add_vip(
    lb: &mut Lb,
    addr: SocketAddrV4,
    mode: Mode,
    backends: &[SocketAddrV4],
) -> Result<VipKey> {
    let key = VipKey {
        addr,
        proto: Protocol::Tcp,
    };
    lb.state.add_vip(key, mode).context("adding a VIP")?;
    for be in backends {
        lb.state
            .add_backend(&key, *be, 100)
            .with_context(|| format!("adding backend {be}"))?;
    }
    lb.reconcile()?;
    Ok(key)
}

/// A client's SYN to `vip`, as received on veth0.
pub fn syn(client: SocketAddrV4, vip: SocketAddrV4) -> Vec<u8> {
    Packet::tcp(mac_of(*client.ip()), VETH0_MAC, client, vip, TCP_SYN).build()
}

/// A client's data segment (ACK, 19 bytes) to `vip`, as received on veth0.
pub fn data(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    data_segment(mac_of(*client.ip()), client, vip)
}

/// The MAC a frame from `ip` carries: its static neighbour's, or a made-up one.
fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    if ip == CLIENT || ip == crate::common::lab::CLIENT_B {
        neighbour_mac(ip)
    } else {
        [0x02, 0, 0, 0, 0x77, 0x77]
    }
}

/// The `i`-th source of trial `t` of a new-flow case: never the same twice in a run of up to
/// 64 trials of 2^24 packets.
pub fn new_source(t: usize, i: usize) -> SocketAddrV4 {
    let addr = (10u32 << 24) | ((64 + (t as u32 % 64)) << 16) | (i as u32 & 0xffff);
    sa(Ipv4Addr::from(addr), 10000 + (i >> 16) as u16)
}

/// The backend's ISN in [`syn_ack`]s: `data()` segments acknowledge it + 1.
pub const BACKEND_ISN: u32 = 0x7000_0000;

/// The SYN-ACK of `backend` to the SNAT address and port `snat` (ISN [`BACKEND_ISN`]), as
/// received on veth0.
pub fn syn_ack(backend: SocketAddrV4, snat: SocketAddrV4) -> Vec<u8> {
    Packet::tcp(
        [0x02, 0, 0, 0, 0, 0x02],
        VETH0_MAC,
        backend,
        snat,
        TCP_SYN | TCP_ACK,
    )
    .with_seq_ack(BACKEND_ISN, 0)
    .build()
}

/// Opens one established flow `client` -> `vip` as a real handshake does through the program:
/// the SYN (embryonic), for NAT the backend's SYN-ACK, then the client's first data segment,
/// which promotes it to its established table. Returns the frame the SYN left as.
pub fn establish(
    lb: &Lb,
    runner: &mut Runner,
    client: SocketAddrV4,
    vip: SocketAddrV4,
) -> Result<Vec<u8>> {
    let prog = lb.rec.dataplane().program();
    let (action, out) = runner.run_out(prog, lb.net.veth0, &syn(client, vip))?;
    ensure!(
        action == libbpf_sys::XDP_TX || action == libbpf_sys::XDP_REDIRECT,
        "opening a flow {client} -> {vip}: verdict {action}; counters {:?}",
        lb.global()?.reasons
    );
    if let Ok((snat, backend)) = endpoints(&out) {
        if *snat.ip() == crate::common::lab::LB_ADDR {
            // Only what the program records matters here (the ack number the client's ACK must
            // carry): the reply itself goes to the default route's router.
            let (action, _) = runner.run(prog, lb.net.veth0, &syn_ack(backend, snat))?;
            ensure!(
                action != libbpf_sys::XDP_ABORTED && action != libbpf_sys::XDP_DROP,
                "the SYN-ACK of {client}: verdict {action}; counters {:?}",
                lb.global()?.reasons
            );
        }
    }
    let (action, _) = runner.run(prog, lb.net.veth0, &data(client, vip).build())?;
    ensure!(
        action == libbpf_sys::XDP_TX || action == libbpf_sys::XDP_REDIRECT,
        "the first data segment of {client} -> {vip}: verdict {action}"
    );
    Ok(out)
}

/// Empties every flow table of `lb` (new-flow trials start from empty tables).
pub fn clear_flows(lb: &Lb) -> Result<()> {
    for table in lb.maps().flow_tables()? {
        crate::testrun::clear_map(&table)?;
    }
    Ok(())
}

/// Pins the calling thread to the CPU it runs on, as an RSS queue's packets are: the DSR flow
/// tables are per CPU, and a BPF_PROG_TEST_RUN thread that moved would find none of its flows.
pub use crate::common::lab::pin_to_this_cpu;

/// Creates established flows from `clients` to `vip` ([`establish`]); returns the frames their
/// SYNs left as (NAT: their source is the SNAT address and port).
pub fn open_flows(
    lb: &Lb,
    runner: &mut Runner,
    vip: SocketAddrV4,
    clients: &[SocketAddrV4],
) -> Result<Vec<Vec<u8>>> {
    clients
        .iter()
        .map(|c| establish(lb, runner, *c, vip))
        .collect()
}

/// Opens `count` established flows from `source(i)` ([`establish`]).
pub fn fill_flows(
    lb: &Lb,
    runner: &mut Runner,
    vip: SocketAddrV4,
    count: usize,
    source: impl Fn(usize) -> SocketAddrV4,
) -> Result<()> {
    for i in 0..count {
        establish(lb, runner, source(i), vip)?;
    }
    Ok(())
}

/// The reply a backend sends to the SNAT address and port of a NATed frame `natted`.
pub fn reply_to(natted: &[u8]) -> Result<Vec<u8>> {
    let (snat, backend) = endpoints(natted)?;
    Ok(Packet::tcp(
        [0x02, 0, 0, 0, 0, 0x02],
        VETH0_MAC,
        backend,
        snat,
        TCP_ACK | TCP_PSH,
    )
    .with_payload(b"HTTP/1.0 200 OK\r\n\r\n")
    .build())
}

/// A data segment of exactly `tot_len` IP bytes (DF set), for the ICMP "too big" path.
pub fn sized(pkt: Packet, tot_len: usize) -> Result<Vec<u8>> {
    let header = pkt.ip_bytes().len() - pkt.payload.len();
    ensure!(tot_len > header, "{tot_len} bytes cannot hold the headers");
    let payload: Vec<u8> = (0..tot_len - header).map(|i| (i * 7) as u8).collect();
    let p = pkt.with_payload(&payload);
    ensure!(
        p.ip_bytes().len() == tot_len,
        "sized packet has the wrong length"
    );
    Ok(p.build())
}
