//! The test bench of the data-plane tests: veth interfaces, addresses, routes and static neighbours
//! in a [`NetNs`] the test thread enters, and a loaded, configured xdplb program that frames are run through with
//! BPF_PROG_TEST_RUN.
//!
//! ```text
//!   clients 10.1.0.50/.51, backends 10.1.0.2/.3 (static neighbours)     far client 10.2.0.50
//!                    |                                                          |
//!   veth1 --- veth0 10.1.0.1/24 (LB, SNAT address) ---- LB ---- veth2 10.2.0.1/24 --- veth3
//! ```

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use xdplb::dataplane::maps::RuntimeConfig;
use xdplb::dataplane::{Counters, Dataplane, GlobalCounters, LoadOptions};
use xdplb::maglev;
use xdplb::reconcile::Reconciler;
use xdplb::skel::types;
use xdplb_model::state::{Mode, Protocol, State, VipKey};

use xdplb_testkit::packet::{mac_str, Mac, Packet, TCP_ACK, TCP_PSH, TCP_SYN};
pub use xdplb_testkit::{run_xdp, NetNs, PinDir, Run};

pub const XDP_ABORTED: u32 = libbpf_sys::XDP_ABORTED;
pub const XDP_DROP: u32 = libbpf_sys::XDP_DROP;
pub const XDP_PASS: u32 = libbpf_sys::XDP_PASS;
pub const XDP_TX: u32 = libbpf_sys::XDP_TX;
pub const XDP_REDIRECT: u32 = libbpf_sys::XDP_REDIRECT;

/// Name of an XDP action, for messages.
pub fn action_name(action: u32) -> &'static str {
    xdplb::dataplane::maps::verdict_name(action as usize)
}

pub const VETH0_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const VETH1_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
pub const VETH2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x21];
pub const VETH3_MAC: Mac = [0x02, 0, 0, 0, 0, 0x31];

/// The LB's address on veth0, also the SNAT address.
pub const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
/// The LB's address on veth2 (two-arm side).
pub const LB2_ADDR: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

pub const BACKEND1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
pub const BACKEND1_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];
pub const BACKEND2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 3);
pub const BACKEND2_MAC: Mac = [0x02, 0, 0, 0, 0, 0x03];
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 50);
pub const CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0, 0x50];
pub const CLIENT_B: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 51);
pub const CLIENT_B_MAC: Mac = [0x02, 0, 0, 0, 0, 0x51];
/// A client behind veth2.
pub const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 50);
pub const FAR_CLIENT_MAC: Mac = [0x02, 0, 0, 0, 0x02, 0x50];

/// The VIP of the suites (TCP port 80, UDP port 53) and its backends: NAT backends listen on
/// 8080 (TCP) and 5353 (UDP); DSR backends, which cannot translate ports, on the VIP port.
pub const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 80);
pub const VIP_UDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 53);
pub const BE1: SocketAddrV4 = SocketAddrV4::new(BACKEND1, 8080);
pub const BE2: SocketAddrV4 = SocketAddrV4::new(BACKEND2, 8080);
pub const BE1_UDP: SocketAddrV4 = SocketAddrV4::new(BACKEND1, 5353);
pub const BE2_UDP: SocketAddrV4 = SocketAddrV4::new(BACKEND2, 5353);
pub const DSR1: SocketAddrV4 = SocketAddrV4::new(BACKEND1, 80);
pub const DSR2: SocketAddrV4 = SocketAddrV4::new(BACKEND2, 80);
/// The SNAT port range of the suites' configurations.
pub const PORTS: (u16, u16) = (20000, 20999);

/// The static neighbours of the bench: (address, MAC, device).
const NEIGHBOURS: [(Ipv4Addr, Mac, &str); 5] = [
    (BACKEND1, BACKEND1_MAC, "veth0"),
    (BACKEND2, BACKEND2_MAC, "veth0"),
    (CLIENT, CLIENT_MAC, "veth0"),
    (CLIENT_B, CLIENT_B_MAC, "veth0"),
    (FAR_CLIENT, FAR_CLIENT_MAC, "veth2"),
];

/// The static neighbour MAC of `addr` (panics for an address without one).
pub fn neighbour_mac(addr: Ipv4Addr) -> Mac {
    NEIGHBOURS
        .iter()
        .find(|(a, _, _)| *a == addr)
        .map(|(_, m, _)| *m)
        .unwrap_or_else(|| panic!("{addr} has no static neighbour"))
}

/// A client's SYN carrying 3 bytes of data (as with TCP Fast Open) to `vip`, from the client's
/// static neighbour MAC, as received on veth0.
pub fn client_syn(client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::tcp(neighbour_mac(*client.ip()), VETH0_MAC, client, vip, TCP_SYN).with_payload(b"syn")
}

/// The next segment of a client's connection to `vip` from `eth_src`: ACK with 19 bytes of
/// data, as received on veth0.
pub fn data_segment(eth_src: Mac, client: SocketAddrV4, vip: SocketAddrV4) -> Packet {
    Packet::tcp(eth_src, VETH0_MAC, client, vip, TCP_ACK | TCP_PSH)
        .with_seq_ack(0x1234_567c, 0x7000_0001)
        .with_payload(b"GET /x HTTP/1.0\r\n\r\n")
}

/// The interfaces of the bench.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    pub veth0: u32,
    pub veth2: u32,
}

/// Builds the bench in `ns` (see the module documentation).
pub fn setup_net(ns: &NetNs) -> Result<Net> {
    for (a, a_mac, b, b_mac) in [
        ("veth0", VETH0_MAC, "veth1", VETH1_MAC),
        ("veth2", VETH2_MAC, "veth3", VETH3_MAC),
    ] {
        ns.ip(&[
            "link",
            "add",
            a,
            "address",
            &mac_str(&a_mac),
            "type",
            "veth",
            "peer",
            "name",
            b,
            "address",
            &mac_str(&b_mac),
        ])?;
    }
    for dev in ["veth0", "veth1", "veth2", "veth3"] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", &format!("{LB_ADDR}/24"), "dev", "veth0"])?;
    ns.ip(&["addr", "add", &format!("{LB2_ADDR}/24"), "dev", "veth2"])?;
    // bpf_fib_lookup answers FWD_DISABLED for an ingress device without IPv4 forwarding.
    ns.sysctl("net.ipv4.conf.all.forwarding", "1")?;
    ns.sysctl("net.ipv4.conf.veth0.forwarding", "1")?;
    ns.sysctl("net.ipv4.conf.veth2.forwarding", "1")?;
    for (addr, mac, dev) in NEIGHBOURS {
        ns.ip(&[
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            &mac_str(&mac),
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    // The MACs really are what the expected frames say (veth0 is the XDP_TX source MAC).
    let link = ns.ip(&["-br", "link", "show", "veth0"])?;
    ensure!(
        link.contains(&mac_str(&VETH0_MAC)),
        "veth0 does not have MAC {}: {link}",
        mac_str(&VETH0_MAC)
    );
    Ok(Net {
        veth0: ns.ifindex("veth0")?,
        veth2: ns.ifindex("veth2")?,
    })
}

/// The run-time configuration of most tests: SNAT to 10.1.0.1 from `ports`, long timeouts, the
/// default next-hop cache (1 s).
pub fn config(ports: (u16, u16)) -> RuntimeConfig {
    RuntimeConfig {
        snat_addr: LB_ADDR,
        snat_ports: ports,
        tcp_timeout: Duration::from_secs(300),
        tcp_closing_timeout: Duration::from_secs(10),
        udp_timeout: Duration::from_secs(30),
        ipip_source: ipnet::Ipv4Net::new(LB_ADDR, 32).expect("a /32 is valid"),
        // Long enough that a flow left embryonic by a test (a SYN alone) outlives a slow step
        // (a restart on a loaded machine); the handshake timeout is tested on its own.
        tcp_handshake_timeout: Duration::from_secs(60),
        new_flows_per_cpu: 0,
        nexthop_cache: Duration::from_secs(1),
        // The ICMP budgets are tested on their own (tests/hardening.rs): unlimited here.
        icmp_source: LB_ADDR,
        icmp_errors: None,
        time_exceeded: None,
    }
}

/// Maglev ring size of the tests (a prime).
pub const RING_SIZE: u32 = 4099;

/// Where the data plane should send a new flow, computed the way the program does it.
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    pub hash: u32,
    pub backend: SocketAddrV4,
    pub backend_id: u32,
}

/// A loaded and configured xdplb program, driven like lbd drives it (write_config + Reconciler).
pub struct Lb {
    pub rec: Reconciler,
    pub state: State,
    pub net: Net,
    pub cfg: RuntimeConfig,
    /// (backend, SNAT port) pairs handed out so far, as the tests predict them.
    pub claimed: BTreeSet<(SocketAddrV4, u16)>,
    /// What the program was loaded with ([`Lb::restart`] loads with them again).
    pub opts: LoadOptions,
}

/// `ip:port`.
pub fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// Runs `body` on the calling thread inside a private network namespace with the bench
/// (veths, neighbours, routes: [`setup_net`]) set up, removed afterwards; any error fails the
/// test.
pub fn bench<F>(body: F)
where
    F: FnOnce(&NetNs, Net) -> Result<()>,
{
    NetNs::within("dp", |ns| {
        let net = setup_net(ns).context("setting up the bench")?;
        body(ns, net)
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
}

impl Lb {
    /// The load options of the test programs: small tables (conntrack and rate-limit clients of
    /// 4096 entries; the firewall's per-CPU hit counters are allocated at load, and a million
    /// takes a second), nothing pinned.
    pub fn options() -> LoadOptions {
        LoadOptions {
            conntrack_size: 4096,
            pin_dir: None,
            ratelimit_clients: 4096,
            firewall_capacity: 4096,
            ..LoadOptions::default()
        }
    }

    /// [`Lb::options`] with the maps pinned in `pins` (a second load adopts them, like a
    /// restarted lbd).
    pub fn pinned_options(pins: &PinDir) -> LoadOptions {
        LoadOptions {
            pin_dir: Some(pins.path().to_path_buf()),
            ..Lb::options()
        }
    }

    /// Loads the program with [`Lb::options`] and writes `cfg`.
    pub fn new(net: Net, cfg: RuntimeConfig) -> Result<Lb> {
        Lb::load(net, cfg, &Lb::options())
    }

    /// Loads the program with `opts` (adopting what is pinned in their pin directory, as lbd
    /// does) and writes `cfg`.
    pub fn load(net: Net, cfg: RuntimeConfig, opts: &LoadOptions) -> Result<Lb> {
        let dp = Dataplane::load(opts).context("loading the XDP program")?;
        let mut rec = Reconciler::new(dp, RING_SIZE);
        rec.set_runtime_config(&cfg).context("writing lb_config")?;
        Ok(Lb {
            rec,
            state: State::default(),
            net,
            cfg,
            claimed: BTreeSet::new(),
            opts: opts.clone(),
        })
    }

    /// Drops this program like a stopped lbd that leaves its pins for the next one, and loads
    /// it again with the same options and configuration: the new one must adopt the pinned maps.
    /// The state starts empty, as lbd's before it reads its state file.
    pub fn restart(self) -> Result<Lb> {
        let (net, cfg, opts) = (self.net, self.cfg.clone(), self.opts.clone());
        drop(self);
        let second = Lb::load(net, cfg, &opts).context("loading again on the pinned maps")?;
        ensure!(
            second.rec.dataplane().adopted(),
            "the pinned maps were not reused"
        );
        Ok(second)
    }

    /// Adds a NAT VIP with `backends` (address, weight) and reconciles.
    pub fn add_vip(
        &mut self,
        addr: SocketAddrV4,
        proto: Protocol,
        backends: &[(SocketAddrV4, u32)],
    ) -> Result<VipKey> {
        self.add_vip_mode(addr, proto, Mode::Nat, backends)
    }

    /// Adds a VIP in `mode` with `backends` (address, weight) and reconciles.
    pub fn add_vip_mode(
        &mut self,
        addr: SocketAddrV4,
        proto: Protocol,
        mode: Mode,
        backends: &[(SocketAddrV4, u32)],
    ) -> Result<VipKey> {
        let key = VipKey { addr, proto };
        self.state
            .add_vip(key, mode)
            .with_context(|| format!("adding vip {key} ({mode})"))?;
        for (be, weight) in backends {
            self.state
                .add_backend(&key, *be, *weight)
                .with_context(|| format!("adding backend {be} to {key}"))?;
        }
        self.reconcile()?;
        Ok(key)
    }

    pub fn set_weight(&mut self, vip: &VipKey, backend: SocketAddrV4, weight: u32) -> Result<()> {
        self.state
            .set_weight(vip, backend, weight)
            .context("set_weight")?;
        self.reconcile()
    }

    /// Switches a VIP's mode (`State::set_mode`) and reconciles, as `SetVipMode` does.
    pub fn set_mode(&mut self, vip: &VipKey, mode: Mode) -> Result<()> {
        self.state
            .set_mode(vip, mode)
            .with_context(|| format!("set_mode({vip}, {mode})"))?;
        self.reconcile()
    }

    /// Writes a new run-time configuration (lb_config), as lbd does on a reload.
    pub fn set_config(&mut self, cfg: RuntimeConfig) -> Result<()> {
        self.rec
            .set_runtime_config(&cfg)
            .context("writing lb_config")?;
        self.cfg = cfg;
        Ok(())
    }

    /// Adds a firewall block rule for `net` through the desired state and reconciles, as the
    /// AddRules handler does (capacity: the 4096 rules [`Lb::new`] loads with).
    pub fn block(&mut self, net: ipnet::Ipv4Net) -> Result<()> {
        let mut batch = xdplb_model::firewall::RuleBatch::default();
        batch
            .push(0, net, xdplb_model::firewall::Action::Block)
            .with_context(|| format!("a block rule for {net}"))?;
        self.state
            .firewall
            .add(&batch, 4096)
            .with_context(|| format!("blocking {net}"))?;
        self.reconcile()
    }

    pub fn reconcile(&mut self) -> Result<()> {
        self.rec.reconcile(&self.state).context("reconciling")
    }

    pub fn maps(&self) -> xdplb::dataplane::maps::Maps<'_> {
        self.rec.dataplane().maps()
    }

    /// The maps, to write behind the reconciler's back (tests of the data plane only).
    pub fn maps_mut(&mut self) -> xdplb::dataplane::maps::MapWriter<'_> {
        self.rec.dataplane_mut().maps_mut()
    }

    pub fn vip_id(&self, vip: &VipKey) -> Result<u32> {
        self.rec
            .vip_id(vip)
            .with_context(|| format!("vip {vip} has no data-plane id"))
    }

    pub fn backend_id(&self, vip: &VipKey, backend: SocketAddrV4) -> Result<u32> {
        self.rec
            .backend_id(vip, &backend)
            .with_context(|| format!("backend {backend} of {vip} has no data-plane id"))
    }

    /// Runs `frame` through the program as if received on `ifindex` (one run).
    pub fn run(&self, ifindex: u32, frame: &[u8]) -> Result<Run> {
        run_xdp(self.rec.dataplane().program(), ifindex, frame)
    }

    /// The backend the program's Maglev lookup picks for a new flow `client` -> `vip`.
    pub fn pick(&self, vip: &VipKey, client: SocketAddrV4) -> Result<Pick> {
        let hash = maglev::flow_hash_v4(
            *client.ip(),
            *vip.addr.ip(),
            client.port(),
            vip.addr.port(),
            vip.proto.number(),
        );
        let id = self.vip_id(vip)?;
        let ring = self
            .maps()
            .read_ring(id)?
            .with_context(|| format!("vip {vip} has no ring"))?;
        ensure!(
            ring.len() == RING_SIZE as usize,
            "ring of {vip} has {} slots, not {RING_SIZE}",
            ring.len()
        );
        let backend_id = ring[hash as usize % ring.len()];
        let backend = self
            .state
            .vip(vip)?
            .backends
            .keys()
            .copied()
            .find(|be| self.rec.backend_id(vip, be) == Some(backend_id))
            .with_context(|| {
                format!(
                    "ring slot of {client} holds backend id {backend_id}, not a backend of {vip}"
                )
            })?;
        Ok(Pick {
            hash,
            backend,
            backend_id,
        })
    }

    /// The `i`-th SNAT port candidate of a flow hash (ct_create in bpf/flow.h).
    pub fn candidate_port(&self, hash: u32, i: u32) -> u16 {
        let (min, max) = self.cfg.snat_ports;
        let range = u32::from(max) - u32::from(min) + 1;
        (u32::from(min) + (hash % range + i * 65537) % range) as u16
    }

    /// The SNAT port a new flow with `hash` towards `backend` must get: the first of the
    /// program's candidates that no live flow to that backend holds (None: the program must give
    /// up, port exhausted). Records it as taken.
    pub fn claim_port(&mut self, hash: u32, backend: SocketAddrV4) -> Option<u16> {
        let retries = types::lb_limits::LB_PORT_RETRIES.0;
        let port = (0..retries)
            .map(|i| self.candidate_port(hash, i))
            .find(|p| !self.claimed.contains(&(backend, *p)))?;
        self.claimed.insert((backend, port));
        Some(port)
    }

    pub fn vip_counters(&self, vip: &VipKey) -> Result<Counters> {
        Ok(self.maps().vip_counters(self.vip_id(vip)?)?)
    }

    pub fn backend_counters(&self, vip: &VipKey, backend: SocketAddrV4) -> Result<Counters> {
        Ok(self
            .maps()
            .backend_counters(self.backend_id(vip, backend)?)?)
    }

    pub fn global(&self) -> Result<GlobalCounters> {
        Ok(self.maps().global_counters()?)
    }

    /// Checks that the flow table holds exactly `n` entries; `what` says when, for the message.
    pub fn expect_flow_entries(&self, n: usize, what: &str) -> Result<()> {
        let got = self.maps().conntrack_entries();
        ensure!(got == n, "{what}: {got} flow-table entries, expected {n}");
        Ok(())
    }

    /// Checks the global counters: exactly `reasons` (reason, count) and `verdicts` (action,
    /// count), every other counter zero.
    pub fn expect_global(
        &self,
        reasons: &[(types::lb_reason, u64)],
        verdicts: &[(u32, u64)],
    ) -> Result<()> {
        let g = self.global()?;
        let mut want_r = vec![0u64; g.reasons.len()];
        for (r, n) in reasons {
            want_r[r.0 as usize] += n;
        }
        let mut want_v = vec![0u64; g.verdicts.len()];
        for (v, n) in verdicts {
            want_v[*v as usize] += n;
        }
        let named = |v: &[u64], name: &dyn Fn(usize) -> String| -> Vec<String> {
            v.iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(i, n)| format!("{}={n}", name(i)))
                .collect()
        };
        let reason_name = |i: usize| xdplb::dataplane::maps::reason_name(i);
        let verdict_name = |i: usize| xdplb::dataplane::maps::verdict_name(i).to_string();
        ensure!(
            g.reasons == want_r,
            "reason counters {:?}, expected {:?}",
            named(&g.reasons, &reason_name),
            named(&want_r, &reason_name)
        );
        ensure!(
            g.verdicts == want_v,
            "verdict counters {:?}, expected {:?}",
            named(&g.verdicts, &verdict_name),
            named(&want_v, &verdict_name)
        );
        Ok(())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("cpu set")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("pinning the thread")
}

/// Pins the calling thread to the CPU it runs on, as an RSS queue's packets are on one CPU.
pub fn pin_to_this_cpu() -> Result<()> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    ensure!(cpu >= 0, "sched_getcpu failed");
    pin_to_cpu(cpu as usize)
}
