//! Standard test topologies: client, load balancer and backends in their own namespaces.
//!
//! `two_arm`: the client on one link, each backend on a link of its own, the LB routing between
//! them. `one_arm`: everyone on one bridge (in a namespace of its own), the LB answering on the
//! interface the packet came in on. See `integration/README.md` for pictures.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use xdplb_testkit::xdp::attach_xdp_pass;
use xdplb_testkit::{veth, NetNs};

/// The virtual IP of every test; configured on no interface, the client routes it to the LB.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 1);

/// Which shape a [`Topology`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Client link `eth0`, backend `i` on the LB's `eth<i>`.
    TwoArm,
    /// Everyone on one bridge; the LB has only `eth0`.
    OneArm,
}

/// One backend: its namespace, address and the LB interface that reaches it.
#[derive(Debug)]
pub struct Backend {
    /// 1-based index; the namespace role is `b<index>`.
    pub index: usize,
    /// The backend's namespace.
    pub ns: NetNs,
    /// The backend's address on its `eth0`.
    pub addr: Ipv4Addr,
}

impl Backend {
    /// `b<index>`, the name its test servers answer with.
    pub fn name(&self) -> String {
        format!("b{}", self.index)
    }
}

/// A built topology. Every namespace is removed when it is dropped (backends first, the LB
/// last), also when the test panics.
#[derive(Debug)]
pub struct Topology {
    shape: Shape,
    backends: Vec<Backend>,
    client: NetNs,
    bridge: Option<NetNs>,
    lb: NetNs,
}

impl Topology {
    /// Builds the two-arm topology with `n_backends` backends:
    ///
    /// - `client`: eth0 10.200.1.2/24 and 10.200.1.3/24, default via 10.200.1.1;
    /// - `lb`: eth0 10.200.1.1/24, eth<i> 10.200.(10+i).1/24, forwarding on, rp_filter off;
    /// - `b<i>`: eth0 10.200.(10+i).2/24, default via 10.200.(10+i).1.
    pub fn two_arm(n_backends: usize) -> Result<Topology> {
        let mut topo = Topology::with_lb(Shape::TwoArm, None)?;
        link_to_lb(&topo.lb, "eth0", &topo.client, "eth0")?;
        topo.lb
            .ip(&["addr", "add", "10.200.1.1/24", "dev", "eth0"])?;
        topo.setup_client("10.200.1.2/24", "10.200.1.3/24", "10.200.1.1")?;
        for _ in 0..n_backends {
            topo.add_backend_unprimed()?;
        }
        topo.prime_neighbours()?;
        Ok(topo)
    }

    /// Builds the one-arm topology with `n_backends` backends on 10.200.50.0/24: a bridge
    /// `br0` in namespace `br`, the LB .1 (eth0 only), the client .2 and .3, backends .11,
    /// .12, ... with default routes via the LB.
    pub fn one_arm(n_backends: usize) -> Result<Topology> {
        let mut topo = Topology::with_lb(Shape::OneArm, Some(NetNs::new("br")?))?;
        let br = topo.bridge_ns()?;
        br.ip(&["link", "add", "br0", "type", "bridge"])?;
        br.ip(&["link", "set", "br0", "up"])?;
        link_to_lb(&topo.lb, "eth0", br, "lb0")?;
        br.ip(&["link", "set", "lb0", "master", "br0"])?;
        topo.lb
            .ip(&["addr", "add", "10.200.50.1/24", "dev", "eth0"])?;
        veth(&topo.client, "eth0", br, "cli0")?;
        br.ip(&["link", "set", "cli0", "master", "br0"])?;
        topo.setup_client("10.200.50.2/24", "10.200.50.3/24", "10.200.50.1")?;
        for _ in 0..n_backends {
            topo.add_backend_unprimed()?;
        }
        topo.prime_neighbours()?;
        Ok(topo)
    }

    /// Adds one more backend (two-arm: a new LB interface `eth<i>`; one-arm: a new bridge port)
    /// and returns its index and address.
    ///
    /// lbd attaches only to the interfaces named in its configuration, so in a two-arm topology
    /// add the backend before starting lbd and register it with lbctl later.
    pub fn add_backend(&mut self) -> Result<(usize, Ipv4Addr)> {
        let (index, addr) = self.add_backend_unprimed()?;
        self.prime_neighbours()?;
        Ok((index, addr))
    }

    fn add_backend_unprimed(&mut self) -> Result<(usize, Ipv4Addr)> {
        let index = self.backends.len() + 1;
        let ns = NetNs::new(&format!("b{index}"))?;
        let (addr, gateway) = match self.shape {
            Shape::TwoArm => {
                let net = u8::try_from(10 + index).context("too many backends")?;
                let lb_if = format!("eth{index}");
                link_to_lb(&self.lb, &lb_if, &ns, "eth0")?;
                self.lb
                    .ip(&["addr", "add", &format!("10.200.{net}.1/24"), "dev", &lb_if])?;
                self.lb
                    .sysctl(&format!("net.ipv4.conf.{lb_if}.rp_filter"), "0")?;
                (
                    Ipv4Addr::new(10, 200, net, 2),
                    Ipv4Addr::new(10, 200, net, 1),
                )
            }
            Shape::OneArm => {
                let host = u8::try_from(10 + index).context("too many backends")?;
                let br = self.bridge_ns()?;
                let port = format!("b{index}");
                veth(br, &port, &ns, "eth0")?;
                br.ip(&["link", "set", &port, "master", "br0"])?;
                (
                    Ipv4Addr::new(10, 200, 50, host),
                    Ipv4Addr::new(10, 200, 50, 1),
                )
            }
        };
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        self.backends.push(Backend { index, ns, addr });
        Ok((index, addr))
    }

    /// The LB and client namespaces (the LB forwarding), no links yet.
    fn with_lb(shape: Shape, bridge: Option<NetNs>) -> Result<Topology> {
        let topo = Topology {
            shape,
            backends: Vec::new(),
            client: NetNs::new("cli")?,
            bridge,
            lb: NetNs::new("lb")?,
        };
        forwarding(&topo.lb)?;
        Ok(topo)
    }

    fn setup_client(&self, addr1: &str, addr2: &str, gateway: &str) -> Result<()> {
        self.client.ip(&["addr", "add", addr1, "dev", "eth0"])?;
        self.client.ip(&["addr", "add", addr2, "dev", "eth0"])?;
        self.client
            .ip(&["route", "add", "default", "via", gateway])?;
        Ok(())
    }

    fn bridge_ns(&self) -> Result<&NetNs> {
        self.bridge
            .as_ref()
            .context("this topology has no bridge namespace")
    }

    /// Resolves the LB's neighbour entries for the client addresses and every backend (and
    /// theirs for the LB) so the first test packet does not depend on ARP timing.
    ///
    /// From inside the LB namespace, a UDP datagram goes to port 9 of each neighbour; the ICMP
    /// port-unreachable answer (seen as ECONNREFUSED) proves the round trip. Bounded: 5 tries of
    /// 500 ms per neighbour.
    pub fn prime_neighbours(&self) -> Result<()> {
        let mut targets = self.client_addrs().to_vec();
        targets.extend(self.backends.iter().map(|b| b.addr));
        self.lb
            .run(|| targets.iter().try_for_each(|t| udp_probe(*t)))?
    }

    /// The topology's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The client namespace.
    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The load balancer namespace.
    pub fn lb(&self) -> &NetNs {
        &self.lb
    }

    /// The bridge namespace (one-arm only).
    pub fn bridge(&self) -> Option<&NetNs> {
        self.bridge.as_ref()
    }

    /// All backends, in index order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Every backend's address with `port`, in backend order.
    pub fn backend_addrs(&self, port: u16) -> Vec<SocketAddrV4> {
        self.backends
            .iter()
            .map(|b| SocketAddrV4::new(b.addr, port))
            .collect()
    }

    /// [`Topology::name_servers`], each in an `Option` so that a test can stop one (set it to
    /// `None`) and start it again.
    pub fn stoppable_name_servers(
        &self,
        port: u16,
        start: fn(&NetNs, SocketAddrV4, &str) -> Result<crate::peers::ServerHandle>,
    ) -> Result<Vec<Option<crate::peers::ServerHandle>>> {
        Ok(self
            .name_servers(port, start)?
            .into_iter()
            .map(Some)
            .collect())
    }

    /// A server named `b<index>` on every backend at `port`, started by `start`
    /// ([`crate::tcp_name_server`] or [`crate::udp_name_server`]), in backend order.
    pub fn name_servers(
        &self,
        port: u16,
        start: fn(&NetNs, SocketAddrV4, &str) -> Result<crate::peers::ServerHandle>,
    ) -> Result<Vec<crate::peers::ServerHandle>> {
        self.on_each_backend(|b| start(&b.ns, SocketAddrV4::new(b.addr, port), &b.name()))
    }

    /// `start(backend)` for every backend, in backend order (a server on each, usually).
    pub fn on_each_backend<T>(&self, start: impl FnMut(&Backend) -> Result<T>) -> Result<Vec<T>> {
        self.backends.iter().map(start).collect()
    }

    /// Backend `index` (1-based). Panics on a bad index: that is a bug in the test.
    pub fn backend(&self, index: usize) -> &Backend {
        match index.checked_sub(1).and_then(|i| self.backends.get(i)) {
            Some(b) => b,
            None => panic!(
                "no backend {index}; the topology has {}",
                self.backends.len()
            ),
        }
    }

    /// The client's primary and secondary address.
    pub fn client_addrs(&self) -> [Ipv4Addr; 2] {
        match self.shape {
            Shape::TwoArm => [Ipv4Addr::new(10, 200, 1, 2), Ipv4Addr::new(10, 200, 1, 3)],
            Shape::OneArm => [Ipv4Addr::new(10, 200, 50, 2), Ipv4Addr::new(10, 200, 50, 3)],
        }
    }

    /// The LB's own address towards the client, which is also the SNAT address.
    pub fn lb_addr(&self) -> Ipv4Addr {
        match self.shape {
            Shape::TwoArm => Ipv4Addr::new(10, 200, 1, 1),
            Shape::OneArm => Ipv4Addr::new(10, 200, 50, 1),
        }
    }

    /// The SNAT address lbd is configured with (the LB's own address).
    pub fn snat_addr(&self) -> Ipv4Addr {
        self.lb_addr()
    }

    /// The VIP ([`VIP`]).
    pub fn vip(&self) -> Ipv4Addr {
        VIP
    }

    /// The data-plane interfaces inside the LB namespace: `eth0`, and `eth1..ethN` (two-arm).
    pub fn lb_interfaces(&self) -> Vec<String> {
        match self.shape {
            Shape::TwoArm => (0..=self.backends.len())
                .map(|i| format!("eth{i}"))
                .collect(),
            Shape::OneArm => vec!["eth0".to_string()],
        }
    }

    /// An lbd configuration for this topology with a fresh, unique pin path.
    pub fn lbd_config(&self) -> String {
        lbd_config(&self.lb_interfaces(), &unique_pin_path(), self.snat_addr())
    }
}

/// A veth pair between the LB's `lb_if` and `peer_if` in `peer`, with an XDP_PASS program on
/// the peer end so that frames the LB sends back with XDP_TX are delivered at once (see
/// [`xdplb_testkit::xdp`]).
pub(crate) fn link_to_lb(lb: &NetNs, lb_if: &str, peer: &NetNs, peer_if: &str) -> Result<()> {
    veth(peer, peer_if, lb, lb_if)?;
    attach_xdp_pass(peer, peer_if)
}

/// Sends one datagram to `addr:9` and waits for the ICMP port unreachable that proves the
/// neighbour is resolved in both directions.
pub(crate) fn udp_probe(addr: Ipv4Addr) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("binding probe socket")?;
    sock.connect(SocketAddrV4::new(addr, 9))
        .with_context(|| format!("connecting probe socket to {addr}:9"))?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = [0u8; 16];
    for _ in 0..5 {
        // A send error (e.g. a refusal reported from the previous try) is fine: retry.
        let _ = sock.send(b"probe");
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            _ => continue,
        }
    }
    bail!("neighbour {addr} did not answer a UDP probe within 5 tries")
}

/// `/sys/fs/bpf/xdplb-<pid>-<counter>`: unique per test in this process.
pub fn unique_pin_path() -> String {
    xdplb_testkit::pins::unique_pin_path().display().to_string()
}

/// The lbd configuration (TOML) the tests use: native XDP on `interfaces`, full NAT with
/// `snat` and ports 20000-29999, short timeouts.
pub fn lbd_config(interfaces: &[String], pin_path: &str, snat: Ipv4Addr) -> String {
    let ifaces = interfaces
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[dataplane]
interfaces = [{ifaces}]
xdp_mode = "native"
pin_path = "{pin_path}"

[nat]
snat_address = "{snat}"
port_range = [20000, 29999]

[timeouts]
tcp = "300s"
tcp_closing = "10s"
udp = "30s"
"#
    )
}

/// Turns `ns` into a router that forwards whatever arrives: IPv4 forwarding on, reverse-path
/// filtering off (replies from a VIP it has no route for must pass).
pub(crate) fn forwarding(ns: &NetNs) -> Result<()> {
    ns.sysctl("net.ipv4.ip_forward", "1")?;
    ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
    Ok(())
}
