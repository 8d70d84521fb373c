//! The SNAT port range and the host's own ports (issue 16): lbd started with a `[nat] port_range`
//! inside its namespace's `ip_local_port_range` reserves the range in `ip_local_reserved_ports`
//! (keeping the entries already there), so that a connection the LB's host side opens gets a
//! source port outside it; a clean exit removes what lbd added, a handover (pins kept) keeps it,
//! and the next lbd with another range moves it. With `reserve_ports = false` lbd refuses the
//! overlap with a message naming both ranges and the fixes, and so does any lbd that cannot write the
//! sysctl (`/proc/sys` read-only, as in an unprivileged container).
//!
//! `net.ipv4.ip_local_*` are per network namespace: every test checks that the host's values are
//! the same afterwards (and puts them back if a kernel ever shared them).
//! Run as root: `cargo test -p xdplb-integration --test hostports -- --test-threads=1`.

use std::net::{SocketAddrV4, TcpStream};
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use xdplb_integration::{lbd_config, tcp_name_server, Lbd, NetNs, StartOptions, Topology};
use xdplb_testkit::cmd::{terminate, wait_bounded};
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

/// One test's world: the two-arm topology with one backend, its LB namespace given Linux's default
/// ephemeral range and [`PREEXISTING`] reservations; an lbd config on pins of the test's own and a
/// scratch directory. Fields drop in order: the namespaces, then the pins, then the host's
/// sysctls are checked and put back.
struct Lab {
    topo: Topology,
    base: String,
    dir: tempfile::TempDir,
    pins: PinDir,
    host: HostPorts,
}

impl Lab {
    fn new(tag: &str) -> Result<Lab> {
        let host = HostPorts::record();
        let pins = PinDir::new(tag);
        let topo = Topology::two_arm(1)?;
        topo.lb()
            .sysctl("net.ipv4.ip_local_port_range", KERNEL_RANGE)?;
        topo.lb()
            .sysctl("net.ipv4.ip_local_reserved_ports", PREEXISTING)?;
        assert_eq!(read_in(topo.lb(), RESERVED), PREEXISTING);
        let base = lbd_config(
            &topo.lb_interfaces(),
            &pins.path().display().to_string(),
            topo.snat_addr(),
        );
        Ok(Lab {
            topo,
            base,
            dir: tempfile::tempdir()?,
            pins,
            host,
        })
    }

    fn lb(&self) -> &NetNs {
        self.topo.lb()
    }

    /// The LB namespace's `ip_local_reserved_ports`.
    fn reserved(&self) -> String {
        read_in(self.lb(), RESERVED)
    }

    /// The config with `port_range` = `range` and `extra` lines in `[nat]`.
    fn config(&self, range: &RangeInclusive<u16>, extra: &str) -> String {
        with_range(&self.base, range, extra)
    }

    /// Stops `lbd` cleanly (it detaches), then [`Lab::check_back`]: lbd took back what it added.
    fn stop_and_check_back(&self, lbd: &mut Lbd) -> Result<()> {
        lbd.stop()
            .with_context(|| format!("lbd's log:\n{}", lbd.log_text()))?;
        self.check_back();
        Ok(())
    }

    /// The LB's namespace has [`PREEXISTING`] reserved again, and the host's values are unchanged.
    fn check_back(&self) {
        assert_eq!(self.reserved(), PREEXISTING);
        self.host.check();
    }
}

/// Asserts that lbd's refusal `text` names each of `needles`.
fn assert_names(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            text.contains(needle),
            "no {needle:?} in lbd's refusal:\n{text}"
        );
    }
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
    let lab = Lab::new("hostports-reserve")?;
    let backend = lab.topo.backend(1);
    let _server = tcp_name_server(
        &backend.ns,
        SocketAddrV4::new(backend.addr, BACKEND_PORT),
        "b1",
    )?;

    // reserve_ports is on by default.
    let mut lbd = Lbd::start(lab.lb(), &lab.config(&SNAT, ""))?;
    assert_eq!(
        lab.reserved(),
        "8080,32768-60000",
        "lbd running with port_range 32768-60000 inside ip_local_port_range {KERNEL_RANGE}; log:\n{}",
        lbd.log_text()
    );
    assert!(
        lbd.log_text().contains("ip_local_reserved_ports"),
        "no log line about the reservation:\n{}",
        lbd.log_text()
    );
    let ports = host_source_ports(&lab.topo, 20)?;
    assert!(
        ports.iter().all(|p| !SNAT.contains(p)),
        "the LB's own connections got source ports inside the SNAT range {SNAT:?}: {ports:?}"
    );

    // After a clean exit lbd's reservation is gone and the others are back.
    lab.stop_and_check_back(&mut lbd)
}

#[test]
fn overlap_without_reserve_ports_is_refused() -> Result<()> {
    let lab = Lab::new("hostports-refuse")?;
    let refused = Lbd::start(lab.lb(), &lab.config(&SNAT, "reserve_ports = false"));
    let err = format!("{:#}", refused.err().context("lbd started")?);
    let fixes = ["port_range", "reserve_ports = true"];
    assert_names(&err, &["32768-60000", "32768-60999", fixes[0], fixes[1]]);
    lab.check_back();
    Ok(())
}

#[test]
fn handover_keeps_the_reservation_and_a_new_range_replaces_it() -> Result<()> {
    // Both lbds on the same pins and state.
    let lab = Lab::new("hostports-handover")?;
    let state = lab.dir.path();

    // Pins kept on exit: the program keeps running the SNAT range, the reservation stays.
    let first_config = lab.config(&(40000..=45000), "");
    let mut first = Lbd::start_with(lab.lb(), &first_config, &StartOptions::keep(state))?;
    assert_eq!(lab.reserved(), "8080,40000-45000,50000-50010");
    first.stop()?;
    assert_eq!(lab.reserved(), "8080,40000-45000,50000-50010");

    // The next lbd, with another range, adopts the pins and moves the reservation.
    let second_config = lab.config(&(46000..=52000), "");
    let mut second = Lbd::start_with(lab.lb(), &second_config, &StartOptions::state(state))?;
    let log = second.log_text();
    assert_eq!(lab.reserved(), "8080,46000-52000", "log:\n{log}");
    lab.stop_and_check_back(&mut second)
}

/// `/proc/sys` read-only (a private mount namespace, as an unprivileged container has it): lbd
/// cannot reserve the overlapping range, so it refuses to start before touching the data plane.
#[test]
fn read_only_proc_sys_is_refused() -> Result<()> {
    let lab = Lab::new("hostports-ro")?;
    let path = |name: &str| lab.dir.path().join(name);
    let (config, log, state, socket) = (
        path("lbd.toml"),
        path("lbd.log"),
        path("state"),
        path("lbd.sock"),
    );
    std::fs::write(&config, lab.config(&SNAT, ""))?;
    // The remount stays in the private mount namespace of this one command.
    let script = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys \
                  && exec nsenter --net=\"$0\" \"$@\"";
    let lbd = xdplb_integration::procs::bin_dir()?.join("lbd");
    let flag = Path::new;
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .args([&lab.lb().path(), &lbd, flag("--config"), &config])
        .args([flag("--state-dir"), &state, flag("--socket"), &socket])
        .arg("--detach-on-exit")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("spawning lbd under a read-only /proc/sys")?;
    let status = wait_bounded(&mut child, Duration::from_secs(20))?;
    if status.is_none() {
        // It started (today's lbd only warned): stop it cleanly, it detaches.
        let _ = terminate(&mut child, "lbd", Duration::from_secs(5));
    }
    let text = std::fs::read_to_string(&log)?;
    assert!(
        status.is_some_and(|s| !s.success()),
        "lbd did not refuse ({status:?}):\n{text}"
    );
    let cause = "Read-only file system";
    assert_names(&text, &["32768-60000", "32768-60999", RESERVED, cause]);
    assert!(!lab.pins.path().exists(), "lbd touched the data plane");
    lab.check_back();
    Ok(())
}
