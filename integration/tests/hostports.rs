//! The SNAT port range and the host's own ports (issue 16): lbd started with a `[nat] port_range`
//! inside its namespace's `ip_local_port_range` reserves the range in `ip_local_reserved_ports`
//! (keeping the entries already there), so that a connection the LB's host side opens gets a
//! source port outside it; a clean exit removes what lbd added, a handover (pins kept) keeps it,
//! and the next lbd with another range moves it. With `reserve_ports = false` lbd refuses the
//! overlap with a message naming both ranges and the fixes.
//!
//! `net.ipv4.ip_local_*` are per network namespace: every test checks that the host's values are
//! the same afterwards (and puts them back if a kernel ever shared them).
//! Run as root: `cargo test -p xdplb-integration --test hostports -- --test-threads=1`.

use std::net::{SocketAddrV4, TcpStream};
use std::ops::RangeInclusive;
use std::time::Duration;

use anyhow::{Context, Result};
use xdplb_integration::{lbd_config, tcp_name_server, Lbd, NetNs, StartOptions, Topology};
use xdplb_testkit::pins::PinDir;

const RESERVED: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
const LOCAL_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";
/// Linux's default ephemeral range, set explicitly in the LB's namespace.
const KERNEL_RANGE: &str = "32768 60999";
/// The SNAT range of these tests: most of the kernel's range, leaving it 60001-60999.
const SNAT: RangeInclusive<u16> = 32768..=60000;
/// Already reserved in the LB's namespace before lbd starts: one entry outside the SNAT range
/// and one inside it; both must still be there after lbd has come and gone.
const PREEXISTING: &str = "8080,50000-50010";
const BACKEND_PORT: u16 = 8080;

/// The host's (the test process's namespace) `ip_local_*` sysctls, read when the test starts;
/// [`HostPorts::check`] says whether they changed, and Drop restores them if they did.
struct HostPorts {
    reserved: String,
    range: String,
}

impl HostPorts {
    fn record() -> HostPorts {
        HostPorts {
            reserved: read(RESERVED),
            range: read(LOCAL_RANGE),
        }
    }

    fn check(&self) {
        assert_eq!(
            (read(RESERVED), read(LOCAL_RANGE)),
            (self.reserved.clone(), self.range.clone()),
            "the host's ip_local_reserved_ports / ip_local_port_range changed: not per namespace?"
        );
    }
}

impl Drop for HostPorts {
    fn drop(&mut self) {
        for (path, value) in [(RESERVED, &self.reserved), (LOCAL_RANGE, &self.range)] {
            if read(path) != *value {
                eprintln!("warning: restoring the host's {path} to {value:?}");
                if let Err(e) = std::fs::write(path, format!("{value}\n")) {
                    eprintln!("warning: restoring {path}: {e}");
                }
            }
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
        .trim()
        .to_string()
}

/// `path` as the namespace `ns` sees it.
fn read_in(ns: &NetNs, path: &'static str) -> String {
    ns.run(move || read(path))
        .expect("reading a sysctl in the namespace")
}

/// The two-arm topology with one backend, its LB namespace given Linux's default ephemeral range
/// and [`PREEXISTING`] reservations.
fn lab() -> Result<Topology> {
    let topo = Topology::two_arm(1)?;
    topo.lb()
        .sysctl("net.ipv4.ip_local_port_range", KERNEL_RANGE)?;
    topo.lb()
        .sysctl("net.ipv4.ip_local_reserved_ports", PREEXISTING)?;
    assert_eq!(read_in(topo.lb(), RESERVED), PREEXISTING);
    Ok(topo)
}

/// `base` (an lbd config of the harness) with `port_range = [lo, hi]` and `extra` lines in `[nat]`.
fn with_range(base: &str, range: &RangeInclusive<u16>, extra: &str) -> String {
    let (lo, hi) = (range.start(), range.end());
    let with = base.replace(
        "port_range = [20000, 29999]",
        &format!("port_range = [{lo}, {hi}]\n{extra}"),
    );
    assert_ne!(
        with, base,
        "the harness config has no port_range line to replace"
    );
    with
}

/// Opens `n` TCP connections from the LB's own namespace to the backend (as lbd's health checks
/// do) and returns their source ports, all open at once so that the kernel picks `n` of them.
fn host_source_ports(topo: &Topology, n: usize) -> Result<Vec<u16>> {
    let backend = SocketAddrV4::new(topo.backend(1).addr, BACKEND_PORT);
    topo.lb().run(move || -> Result<Vec<u16>> {
        let streams = (0..n)
            .map(|i| {
                TcpStream::connect_timeout(&backend.into(), Duration::from_secs(2))
                    .with_context(|| format!("connection {i} from the LB to {backend}"))
            })
            .collect::<Result<Vec<_>>>()?;
        streams.iter().map(|s| Ok(s.local_addr()?.port())).collect()
    })?
}

#[test]
fn overlapping_range_is_reserved_while_lbd_runs_and_released_at_exit() -> Result<()> {
    let host = HostPorts::record();
    let topo = lab()?;
    let backend = topo.backend(1);
    let _server = tcp_name_server(
        &backend.ns,
        SocketAddrV4::new(backend.addr, BACKEND_PORT),
        "b1",
    )?;

    // reserve_ports is on by default.
    let mut lbd = Lbd::start(topo.lb(), &with_range(&topo.lbd_config(), &SNAT, ""))?;
    assert_eq!(
        read_in(topo.lb(), RESERVED),
        "8080,32768-60000",
        "lbd running with port_range 32768-60000 inside ip_local_port_range {KERNEL_RANGE}; log:\n{}",
        lbd.log_text()
    );
    assert!(
        lbd.log_text().contains("ip_local_reserved_ports"),
        "no log line about the reservation:\n{}",
        lbd.log_text()
    );
    let ports = host_source_ports(&topo, 20)?;
    assert!(
        ports.iter().all(|p| !SNAT.contains(p)),
        "the LB's own connections got source ports inside the SNAT range {SNAT:?}: {ports:?}"
    );

    lbd.stop()?;
    assert_eq!(
        read_in(topo.lb(), RESERVED),
        "8080,50000-50010",
        "after a clean exit lbd's reservation is gone and the others are back"
    );
    host.check();
    Ok(())
}

#[test]
fn overlap_without_reserve_ports_is_refused() -> Result<()> {
    let host = HostPorts::record();
    let topo = lab()?;
    let refused = Lbd::start(
        topo.lb(),
        &with_range(&topo.lbd_config(), &SNAT, "reserve_ports = false"),
    );
    let err = format!("{:#}", refused.err().context("lbd started")?);
    for needle in [
        "32768-60000",
        "32768-60999",
        "port_range",
        "reserve_ports = true",
    ] {
        assert!(
            err.contains(needle),
            "no {needle:?} in lbd's refusal:\n{err}"
        );
    }
    assert_eq!(read_in(topo.lb(), RESERVED), PREEXISTING);
    host.check();
    Ok(())
}

#[test]
fn handover_keeps_the_reservation_and_a_new_range_replaces_it() -> Result<()> {
    let host = HostPorts::record();
    // Both lbds on the same pins, removed however the test ends (dropped last).
    let pins = PinDir::new("hostports-handover");
    let topo = lab()?;
    let state = tempfile::tempdir()?;
    let base = lbd_config(
        &topo.lb_interfaces(),
        &pins.path().display().to_string(),
        topo.snat_addr(),
    );
    let config = |range: RangeInclusive<u16>| with_range(&base, &range, "");

    // Pins kept on exit: the program keeps running the SNAT range, the reservation stays.
    let mut first = Lbd::start_with(
        topo.lb(),
        &config(40000..=45000),
        &StartOptions::keep(state.path()),
    )?;
    assert_eq!(read_in(topo.lb(), RESERVED), "8080,40000-45000,50000-50010");
    first.stop()?;
    assert_eq!(read_in(topo.lb(), RESERVED), "8080,40000-45000,50000-50010");

    // The next lbd, with another range, adopts the pins and moves the reservation.
    let mut second = Lbd::start_with(
        topo.lb(),
        &config(46000..=52000),
        &StartOptions::state(state.path()),
    )?;
    assert_eq!(
        read_in(topo.lb(), RESERVED),
        "8080,46000-52000",
        "log:\n{}",
        second.log_text()
    );
    second.stop()?;
    assert_eq!(read_in(topo.lb(), RESERVED), PREEXISTING);
    host.check();
    Ok(())
}
