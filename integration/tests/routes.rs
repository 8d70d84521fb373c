//! lbd's blackhole routes for the VIP addresses (issue 17, "Blocked sources reach the host"):
//! packets to a VIP address that the XDP program passes to the kernel (here UDP to a port no VIP
//! serves) are dropped by the balancer's kernel instead of being routed back upstream.
//!
//! The LB's default route points at the client side, as a balancer's points at its upstream
//! router: without the blackhole route its kernel forwards such a packet straight back there,
//! which an nftables counter in the client namespace sees. A counter in the LB namespace proves
//! that the packets arrived, so "nothing came back" cannot pass by sending nothing. The routes
//! are read with `ip -j route show` in the LB namespace: a `blackhole` /32 per VIP address in
//! the main table, with lbd's route protocol (200), and nobody else's route touched.
//! Run as root: `cargo test -p xdplb-integration --test routes -- --test-threads=1`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use xdplb_integration::{Lbd, NetNs, StartOptions, Topology, VIP};

/// lbd's route protocol (`routes::ROUTE_PROTOCOL` in `src/routes.rs`), as `ip -N` prints it.
const LBD_PROTO: &str = "200";
/// `RTN_BLACKHOLE`, as `ip -N` prints the route type.
const BLACKHOLE: &str = "6";
/// A port no VIP serves: the program passes these packets to the kernel.
const UNSERVED_PORT: u16 = 9999;
/// Datagrams sent per probe.
const PROBES: u64 = 20;
/// How long the counters may take to show the probes.
const SETTLE: Duration = Duration::from_secs(2);
/// An address with no VIP, for a stale route of lbd's protocol left behind.
const STALE: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 7);
/// An address with a blackhole route of someone else's (protocol static): never lbd's to touch.
const FOREIGN: Ipv4Addr = Ipv4Addr::new(10, 200, 100, 8);

/// The nftables table of the counters (in the client and in the LB namespace).
const NFT_TABLE: &str = "xlb_routes";

/// A two-arm topology whose LB routes everything it has no better route for back to the client
/// side (10.200.1.2 plays the upstream router), with a counter of the probes on each side.
struct Lab {
    topo: Topology,
}

impl Lab {
    fn build() -> Lab {
        let topo = Topology::two_arm(1).expect("topology");
        topo.lb()
            .ip(&["route", "add", "default", "via", "10.200.1.2"])
            .expect("the LB's default route upstream");
        for ns in [topo.client(), topo.lb()] {
            count_probes(ns).expect("nftables counter");
        }
        Lab { topo }
    }

    /// The harness's lbd configuration with `dataplane_extra` in its `[dataplane]` table.
    fn config(&self, dataplane_extra: &str) -> String {
        self.topo.lbd_config().replacen(
            "[dataplane]\n",
            &format!("[dataplane]\n{dataplane_extra}"),
            1,
        )
    }

    fn lb(&self) -> &NetNs {
        self.topo.lb()
    }

    /// Sends [`PROBES`] datagrams from the client to the VIP's unserved port and returns how
    /// many of them the client saw coming back from the LB, once the LB has counted them all.
    fn probe(&self) -> u64 {
        let (arrived0, back0) = (self.arrived(), self.back());
        self.topo
            .client()
            .run(|| -> Result<()> {
                let sock = UdpSocket::bind("10.200.1.2:0").context("binding the probe socket")?;
                for _ in 0..PROBES {
                    sock.send_to(b"probe", SocketAddrV4::new(VIP, UNSERVED_PORT))
                        .context("sending a probe")?;
                }
                Ok(())
            })
            .expect("entering the client namespace")
            .expect("sending the probes");
        let deadline = Instant::now() + SETTLE;
        while self.arrived() < arrived0 + PROBES && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.arrived() >= arrived0 + PROBES,
            "the LB saw {} of {PROBES} probes",
            self.arrived() - arrived0
        );
        // The LB's kernel forwards (or drops) each probe as it receives it; give a probe routed
        // back a moment to be counted on the client side.
        let deadline = Instant::now() + Duration::from_millis(300);
        while self.back() < back0 + PROBES && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.back() - back0
    }

    /// Probes that reached the LB's kernel (prerouting in the LB namespace).
    fn arrived(&self) -> u64 {
        nft_counter(self.topo.lb()).expect("the LB's counter")
    }

    /// Probes the LB routed back to the client (prerouting in the client namespace).
    fn back(&self) -> u64 {
        nft_counter(self.topo.client()).expect("the client's counter")
    }
}

/// A counter `probes` of the packets to VIP:[`UNSERVED_PORT`] entering `ns` (its own
/// datagrams leave through output, not prerouting). Removed with the namespace.
fn count_probes(ns: &NetNs) -> Result<()> {
    let script = format!(
        "add table ip {NFT_TABLE}
add counter ip {NFT_TABLE} probes
add chain ip {NFT_TABLE} pre {{ type filter hook prerouting priority -300; }}
add rule ip {NFT_TABLE} pre ip daddr {VIP} udp dport {UNSERVED_PORT} counter name probes
"
    );
    ns.exec(&["nft", &script])
        .with_context(|| format!("nft in {}:\n{script}", ns.name()))?;
    Ok(())
}

fn nft_counter(ns: &NetNs) -> Result<u64> {
    let out = ns.exec(&["nft", "-j", "list", "counter", "ip", NFT_TABLE, "probes"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("nft: {out}"))?;
    v["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
        .with_context(|| format!("no counter in {out}"))
}

/// The blackhole /32 routes of the main table of `ns`: (destination, protocol).
fn blackholes(ns: &NetNs) -> Vec<(Ipv4Addr, String)> {
    let out = ns
        .ip(&["-N", "-j", "route", "show", "table", "main"])
        .expect("ip route show");
    let routes: Vec<Value> = serde_json::from_str(&out).expect("ip -j printed JSON");
    let mut found: Vec<(Ipv4Addr, String)> = routes
        .iter()
        .filter(|r| r["type"] == BLACKHOLE)
        .filter_map(|r| {
            let dst = r["dst"].as_str()?.parse().ok()?;
            Some((dst, r["protocol"].as_str()?.to_string()))
        })
        .collect();
    found.sort();
    found
}

/// The addresses of lbd's blackhole routes in `ns`.
fn lbd_routes(ns: &NetNs) -> Vec<Ipv4Addr> {
    blackholes(ns)
        .into_iter()
        .filter(|(_, p)| p == LBD_PROTO)
        .map(|(a, _)| a)
        .collect()
}

/// A stale route of lbd's protocol for an address no VIP has, and someone else's blackhole route.
fn plant_routes(ns: &NetNs) {
    let stale = format!("{STALE}/32");
    let foreign = format!("{FOREIGN}/32");
    ns.ip(&["route", "add", "blackhole", &stale, "proto", LBD_PROTO])
        .expect("stale route");
    ns.ip(&["route", "add", "blackhole", &foreign, "proto", "static"])
        .expect("foreign route");
}

fn foreign_kept(ns: &NetNs) -> bool {
    blackholes(ns).contains(&(FOREIGN, "4".to_string()))
}

fn ctl(lbd: &Lbd, line: &str) -> String {
    let args: Vec<&str> = line.split_whitespace().collect();
    lbd.ctl(&args)
        .unwrap_or_else(|e| panic!("lbctl {line}: {e:#}"))
}

#[test]
fn a_vip_address_gets_a_blackhole_route_while_it_has_a_vip() {
    let lab = Lab::build();
    // Before any VIP the address is nobody's: the LB routes it upstream (the behaviour the
    // route exists to stop, and proof that the counters see it).
    assert_eq!(
        lab.probe(),
        PROBES,
        "without a VIP the LB routes the probes back upstream"
    );
    let lbd = Lbd::start(lab.lb(), &lab.config("")).expect("lbd starts");
    assert_eq!(lbd_routes(lab.lb()), Vec::<Ipv4Addr>::new());

    ctl(&lbd, &format!("vip add {VIP}:80 --proto tcp"));
    assert_eq!(lbd_routes(lab.lb()), vec![VIP], "after vip add");
    assert_eq!(
        lab.probe(),
        0,
        "the LB routed probes to the VIP address back upstream"
    );

    // A second VIP on the same address: still one route; it goes with the last VIP.
    ctl(&lbd, &format!("vip add {VIP}:53 --proto udp"));
    assert_eq!(lbd_routes(lab.lb()), vec![VIP]);
    ctl(&lbd, &format!("vip remove {VIP}:80 --proto tcp"));
    assert_eq!(
        lbd_routes(lab.lb()),
        vec![VIP],
        "the address still has a VIP"
    );
    assert_eq!(lab.probe(), 0);
    ctl(&lbd, &format!("vip remove {VIP}:53 --proto udp"));
    assert_eq!(
        lbd_routes(lab.lb()),
        Vec::<Ipv4Addr>::new(),
        "after the last vip remove"
    );
    assert_eq!(lab.probe(), PROBES, "no VIP left: routed as before");
}

#[test]
fn routes_stay_across_a_restart_and_go_with_detach_on_exit() {
    let lab = Lab::build();
    let state = tempfile::tempdir().expect("state dir");
    let config = lab.config("");
    let mut first =
        Lbd::start_with(lab.lb(), &config, &StartOptions::keep(state.path())).expect("lbd starts");
    ctl(&first, &format!("vip add {VIP}:80 --proto tcp"));
    assert_eq!(lbd_routes(lab.lb()), vec![VIP]);
    first.stop().expect("lbd stops, the program stays attached");
    drop(first);
    // No lbd runs: the program is still attached, and so is the route.
    assert_eq!(lbd_routes(lab.lb()), vec![VIP], "while no lbd runs");
    assert_eq!(lab.probe(), 0, "while no lbd runs");

    // The next lbd keeps it, removes its own stale ones, and leaves anyone else's alone.
    plant_routes(lab.lb());
    let mut second =
        Lbd::start_with(lab.lb(), &config, &StartOptions::state(state.path())).expect("lbd starts");
    assert_eq!(lbd_routes(lab.lb()), vec![VIP], "after the restart");
    assert!(foreign_kept(lab.lb()), "{:?}", blackholes(lab.lb()));
    assert_eq!(lab.probe(), 0, "after the restart");

    // --detach-on-exit takes the data plane away, and the routes with it.
    second.stop().expect("lbd stops and detaches");
    assert_eq!(lbd_routes(lab.lb()), Vec::<Ipv4Addr>::new(), "after detach");
    assert!(foreign_kept(lab.lb()), "{:?}", blackholes(lab.lb()));
}

#[test]
fn blackhole_routes_off_installs_none_and_removes_stale_ones() {
    let lab = Lab::build();
    plant_routes(lab.lb());
    let lbd = Lbd::start(lab.lb(), &lab.config("blackhole_routes = false\n")).expect("lbd starts");
    ctl(&lbd, &format!("vip add {VIP}:80 --proto tcp"));
    assert_eq!(
        lbd_routes(lab.lb()),
        Vec::<Ipv4Addr>::new(),
        "off: none for the VIP, and the stale one ({STALE}) removed"
    );
    assert!(foreign_kept(lab.lb()), "{:?}", blackholes(lab.lb()));
    assert_eq!(
        lab.probe(),
        PROBES,
        "off: routed upstream, as without lbd's routes"
    );
}

#[test]
fn a_vip_address_with_someone_elses_route_keeps_it_and_the_vip_works() {
    let lab = Lab::build();
    plant_routes(lab.lb());
    let lbd = Lbd::start(lab.lb(), &lab.config("")).expect("lbd starts");
    // lbd cannot add its route (the main table has one for that /32): logged, not fatal.
    ctl(&lbd, &format!("vip add {FOREIGN}:80 --proto tcp"));
    ctl(&lbd, &format!("vip add {VIP}:80 --proto tcp"));
    assert_eq!(
        lbd_routes(lab.lb()),
        vec![VIP],
        "{:?}",
        blackholes(lab.lb())
    );
    assert!(foreign_kept(lab.lb()), "{:?}", blackholes(lab.lb()));
    let log = lbd.log_text();
    assert!(
        log.contains(&format!("another route for {FOREIGN}/32 (not lbd's")),
        "{log}"
    );
    assert_eq!(lab.probe(), 0);
    ctl(&lbd, &format!("vip remove {FOREIGN}:80 --proto tcp"));
    assert!(foreign_kept(lab.lb()), "{:?}", blackholes(lab.lb()));
}
