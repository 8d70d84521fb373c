//! The host's own ports and the SNAT range: lbd keeps `[nat] port_range` and the ports the kernel
//! picks for this host's connections (`net.ipv4.ip_local_port_range` of lbd's network namespace)
//! disjoint, by reserving the range in `net.ipv4.ip_local_reserved_ports` (`reserve_ports = true`)
//! or by refusing to start on an overlap (`reserve_ports = false`).
//!
//! Otherwise the reply to a connection this host opens (lbd's own health checks among them) from
//! an SNAT port on the SNAT address could be taken for a NAT reply. Both sysctls are per network
//! namespace. What lbd added to the reserved list, and only that, is recorded in its state
//! directory ([`RECORD_FILE`]): the next lbd (after a handover, a crash, or with another range)
//! takes back what the record names before it reserves the range in force, so a changed range
//! moves the reservation and a repeated start changes nothing. A clean exit that detaches the data
//! plane removes what lbd added; a handover (program and pins kept) leaves it for the next lbd.

use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use rangemap::RangeInclusiveSet;

use crate::config::NatConfig;

/// A set of ports, as ranges.
pub(crate) type PortSet = RangeInclusiveSet<u16>;

/// The file of the state directory that holds the ports lbd added to the reserved list (in the
/// kernel's list format).
pub(crate) const RECORD_FILE: &str = "reserved-ports";

const LOCAL_RANGE: &str = "ip_local_port_range";
const RESERVED: &str = "ip_local_reserved_ports";

/// Why lbd cannot make the SNAT range and the kernel's ports disjoint.
#[derive(Debug, thiserror::Error)]
pub enum HostPortsError {
    #[error("[nat] port_range {snat} overlaps the kernel's net.ipv4.ip_local_port_range {local} and [nat] reserve_ports = false: this host's own connections (lbd's health checks among them) could take SNAT ports. Either move port_range outside {local} (or narrow ip_local_port_range), or set [nat] reserve_ports = true so that lbd reserves {snat} in net.ipv4.ip_local_reserved_ports")]
    Overlap { snat: String, local: String },
    #[error("[nat] port_range {snat} overlaps the kernel's net.ipv4.ip_local_port_range {local} and cannot be reserved: writing {path}: {source} (is /proc/sys read-only here?). Either let lbd write it, or move port_range outside {local}")]
    Write {
        snat: String,
        local: String,
        path: String,
        source: io::Error,
    },
    #[error("removing the SNAT ports lbd reserved from {path}: {source}")]
    Release { path: String, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: cannot parse {text:?}: {reason}")]
    Parse {
        path: String,
        text: String,
        reason: String,
    },
    #[error("recording the reserved ports in {path}: {source}")]
    Record { path: String, source: io::Error },
}

/// The `net.ipv4` sysctls of lbd's network namespace (a fake in the unit tests).
pub(crate) trait Sysctls {
    /// Where `name` lives, for messages.
    fn path(&self, name: &str) -> String;
    fn read(&self, name: &str) -> io::Result<String>;
    fn write(&self, name: &str, value: &str) -> io::Result<()>;
}

/// `/proc/sys/net/ipv4`, as lbd's network namespace sees it.
struct ProcSys;

impl Sysctls for ProcSys {
    fn path(&self, name: &str) -> String {
        format!("/proc/sys/net/ipv4/{name}")
    }

    fn read(&self, name: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(name))
    }

    fn write(&self, name: &str, value: &str) -> io::Result<()> {
        // The newline matters: an empty write leaves the list as it is, "\n" clears it.
        std::fs::write(self.path(name), format!("{value}\n"))
    }
}

/// Parses the kernel's list of reserved ports: `""`, `"8080"`, `"8080,9148-9150"`.
pub(crate) fn parse_ports(text: &str) -> Result<PortSet, String> {
    let mut set = PortSet::new();
    for item in text
        .trim()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|e| format!("{s:?} is not a port: {e}"))
        };
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => (port(item)?, port(item)?),
        };
        if lo > hi {
            return Err(format!("{item:?} is not a range (start > end)"));
        }
        set.insert(lo..=hi);
    }
    Ok(set)
}

/// The kernel's list format of `set`: `"8080,9148-9150"`, `""` when empty.
pub(crate) fn format_ports(set: &PortSet) -> String {
    set.iter()
        .map(|r| match r.start() == r.end() {
            true => r.start().to_string(),
            false => span(r),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `lo-hi`.
fn span(r: &RangeInclusive<u16>) -> String {
    format!("{}-{}", r.start(), r.end())
}

/// Parses `ip_local_port_range` (`"32768\t60999"`).
fn parse_local_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let ports = text
        .split_whitespace()
        .map(|s| s.parse::<u16>().map_err(|e| format!("{s:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    match ports[..] {
        [lo, hi] if lo <= hi => Ok(lo..=hi),
        _ => Err("expected two ports, start <= end".to_string()),
    }
}

/// `a` minus `b`.
fn minus(a: &PortSet, b: &PortSet) -> PortSet {
    let mut out = a.clone();
    for r in b.iter() {
        out.remove(r.clone());
    }
    out
}

fn union(a: &PortSet, b: &PortSet) -> PortSet {
    a.iter().chain(b.iter()).cloned().collect()
}

/// What lbd added to `ip_local_reserved_ports` at start: [`Reservation::release`] removes it at a
/// clean exit, [`Reservation::keep`] leaves it for the next lbd (handover).
#[derive(Debug)]
#[must_use = "release the reservation at a clean exit, or keep it for the next lbd"]
pub struct Reservation {
    added: PortSet,
    record: PathBuf,
}

/// Makes `nat.port_range` and the kernel's `ip_local_port_range` disjoint, as
/// `nat.reserve_ports` says: see the module documentation. `state_dir` holds the record of what
/// lbd added.
pub fn reserve(nat: &NatConfig, state_dir: &Path) -> Result<Reservation, HostPortsError> {
    let [lo, hi] = nat.port_range;
    reserve_with(
        &ProcSys,
        lo..=hi,
        nat.reserve_ports,
        &state_dir.join(RECORD_FILE),
    )
}

fn read_sysctl<T>(
    io: &dyn Sysctls,
    name: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, HostPortsError> {
    let path = io.path(name);
    let text = io.read(name).map_err(|source| HostPortsError::Read {
        path: path.clone(),
        source,
    })?;
    parse(&text).map_err(|reason| HostPortsError::Parse { path, text, reason })
}

pub(crate) fn reserve_with(
    io: &dyn Sysctls,
    snat: RangeInclusive<u16>,
    reserve: bool,
    record: &Path,
) -> Result<Reservation, HostPortsError> {
    let local = read_sysctl(io, LOCAL_RANGE, parse_local_range)?;
    let current = read_sysctl(io, RESERVED, parse_ports)?;
    let earlier = read_record(record)?;
    // What others reserved: the list without what an earlier lbd added.
    let others = minus(&current, &earlier);
    let (snat_text, local_text) = (span(&snat), span(&local));
    let overlap = snat.start() <= local.end() && local.start() <= snat.end();
    let needed: PortSet = match (overlap, reserve) {
        (true, true) => std::iter::once(snat.clone()).collect(),
        (true, false) => {
            let shared = *snat.start().max(local.start())..=*snat.end().min(local.end());
            if others.gaps(&shared).next().is_some() {
                return Err(HostPortsError::Overlap {
                    snat: snat_text,
                    local: local_text,
                });
            }
            tracing::info!(snat_ports = %snat_text, local_ports = %local_text, "nat.port_range overlaps ip_local_port_range, but the shared ports are already in ip_local_reserved_ports (reserve_ports = false)");
            PortSet::new()
        }
        (false, _) => PortSet::new(),
    };
    let added = minus(&needed, &others);
    let target = union(&others, &needed);
    if target != current {
        // Recorded first (what an earlier lbd added too), so that a crash in between leaves
        // nothing unaccounted for.
        write_record(record, &union(&earlier, &added))?;
        if let Err(source) = io.write(RESERVED, &format_ports(&target)) {
            let _ = write_record(record, &earlier);
            return Err(HostPortsError::Write {
                snat: snat_text,
                local: local_text,
                path: io.path(RESERVED),
                source,
            });
        }
    }
    write_record(record, &added)?;
    let dropped = minus(&earlier, &added);
    if !dropped.is_empty() {
        tracing::info!(ports = %format_ports(&dropped), "removed from ip_local_reserved_ports what an earlier lbd reserved and this configuration does not need");
    }
    match (overlap, added.is_empty()) {
        (true, false) => tracing::info!(
            snat_ports = %snat_text,
            local_ports = %local_text,
            added = %format_ports(&added),
            "nat.port_range overlaps ip_local_port_range: reserved it in ip_local_reserved_ports, so the kernel picks none of these ports for this host's own connections (removed at a clean exit with --detach-on-exit)"
        ),
        (true, true) if reserve => tracing::info!(
            snat_ports = %snat_text,
            local_ports = %local_text,
            "nat.port_range overlaps ip_local_port_range and is already in ip_local_reserved_ports"
        ),
        _ => {
            tracing::debug!(snat_ports = %snat_text, local_ports = %local_text, "nat.port_range is clear of ip_local_port_range")
        }
    }
    Ok(Reservation {
        added,
        record: record.to_owned(),
    })
}

impl Reservation {
    /// The ports lbd added (empty when it added none).
    #[cfg(test)]
    fn added(&self) -> String {
        format_ports(&self.added)
    }

    /// Clean exit: removes what lbd added from `ip_local_reserved_ports` (and nothing else), and
    /// the record.
    pub fn release(self) -> Result<(), HostPortsError> {
        self.release_with(&ProcSys)
    }

    pub(crate) fn release_with(self, io: &dyn Sysctls) -> Result<(), HostPortsError> {
        if !self.added.is_empty() {
            let current = read_sysctl(io, RESERVED, parse_ports)?;
            let target = minus(&current, &self.added);
            if target != current {
                io.write(RESERVED, &format_ports(&target))
                    .map_err(|source| HostPortsError::Release {
                        path: io.path(RESERVED),
                        source,
                    })?;
            }
            tracing::info!(ports = %format_ports(&self.added), "removed the SNAT ports lbd reserved from ip_local_reserved_ports");
        }
        remove_record(&self.record)
    }

    /// Handover: the program keeps running the SNAT range, so the reservation and its record
    /// stay for the next lbd.
    pub fn keep(self) {
        if !self.added.is_empty() {
            tracing::info!(ports = %format_ports(&self.added), "the SNAT ports stay in ip_local_reserved_ports for the next lbd");
        }
    }
}

fn record_error(path: &Path) -> impl FnOnce(io::Error) -> HostPortsError + '_ {
    move |source| HostPortsError::Record {
        path: path.display().to_string(),
        source,
    }
}

fn read_record(path: &Path) -> Result<PortSet, HostPortsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_ports(&text).map_err(|reason| HostPortsError::Parse {
            path: path.display().to_string(),
            text,
            reason,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(PortSet::new()),
        Err(e) => Err(record_error(path)(e)),
    }
}

/// Writes the record atomically (a temporary file renamed over it); an empty set removes it.
fn write_record(path: &Path, ports: &PortSet) -> Result<(), HostPortsError> {
    if ports.is_empty() {
        return remove_record(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(record_error(path))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", format_ports(ports))).map_err(record_error(path))?;
    std::fs::rename(&tmp, path).map_err(record_error(path))
}

fn remove_record(path: &Path) -> Result<(), HostPortsError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(record_error(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// The two sysctls in memory; writes normalise as the kernel does (it prints its bitmap).
    struct FakeSys {
        values: RefCell<BTreeMap<String, String>>,
        read_only: bool,
    }

    impl FakeSys {
        fn new(local: &str, reserved: &str) -> FakeSys {
            FakeSys {
                values: RefCell::new(BTreeMap::from([
                    (LOCAL_RANGE.to_string(), format!("{local}\n")),
                    (RESERVED.to_string(), format!("{reserved}\n")),
                ])),
                read_only: false,
            }
        }

        fn reserved(&self) -> String {
            self.values.borrow()[RESERVED].trim().to_string()
        }
    }

    impl Sysctls for FakeSys {
        fn path(&self, name: &str) -> String {
            format!("/fake/{name}")
        }

        fn read(&self, name: &str) -> io::Result<String> {
            Ok(self.values.borrow()[name].clone())
        }

        fn write(&self, name: &str, value: &str) -> io::Result<()> {
            if self.read_only {
                return Err(io::Error::from_raw_os_error(libc::EROFS));
            }
            let set = parse_ports(value).map_err(io::Error::other)?;
            let text = format!("{}\n", format_ports(&set));
            self.values.borrow_mut().insert(name.to_string(), text);
            Ok(())
        }
    }

    fn set(text: &str) -> PortSet {
        parse_ports(text).expect("valid list")
    }

    #[test]
    fn parses_and_formats_the_kernel_list() {
        assert_eq!(format_ports(&set("")), "");
        assert_eq!(format_ports(&set("\n")), "");
        assert_eq!(format_ports(&set("8080\n")), "8080");
        assert_eq!(
            format_ports(&set("9150,8080, 9148-9149\n")),
            "8080,9148-9150"
        );
        assert_eq!(format_ports(&set("1-5,3-9,10")), "1-10");
        for bad in ["x", "1-", "5-1", "70000", "1-2-3"] {
            assert!(parse_ports(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_local_range("32768\t60999\n"), Ok(32768..=60999));
        assert!(parse_local_range("60999 32768").is_err());
        assert!(parse_local_range("32768").is_err());
    }

    /// A fake namespace and a state directory.
    struct Lab {
        sys: FakeSys,
        record: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl Lab {
        fn new(local: &str, reserved: &str) -> Lab {
            let dir = tempfile::tempdir().expect("temporary directory");
            Lab {
                sys: FakeSys::new(local, reserved),
                record: dir.path().join("state").join(RECORD_FILE),
                _dir: dir,
            }
        }

        fn reserve(&self, snat: RangeInclusive<u16>, reserve: bool) -> Reservation {
            reserve_with(&self.sys, snat, reserve, &self.record).expect("reserved")
        }

        /// The message of a refusal, checked for each of `needles`.
        fn refusal(&self, snat: RangeInclusive<u16>, reserve: bool, needles: &[&str]) {
            let err = reserve_with(&self.sys, snat, reserve, &self.record)
                .expect_err("refused")
                .to_string();
            for needle in needles {
                assert!(err.contains(needle), "no {needle:?} in {err}");
            }
        }
    }

    #[test]
    fn overlap_is_reserved_and_released_keeping_other_entries() {
        let lab = Lab::new("32768\t60999", "8080,50000-50010");
        let r = lab.reserve(40000..=55000, true);
        assert_eq!(lab.sys.reserved(), "8080,40000-55000");
        assert_eq!(r.added(), "40000-49999,50011-55000");
        assert_eq!(
            std::fs::read_to_string(&lab.record).unwrap(),
            "40000-49999,50011-55000\n"
        );
        // Another entry appears meanwhile: it stays.
        lab.sys.write(RESERVED, "8080,40000-55000,61000").unwrap();
        r.release_with(&lab.sys).unwrap();
        assert_eq!(lab.sys.reserved(), "8080,50000-50010,61000");
        assert!(!lab.record.exists());
    }

    /// Restarts on the same state directory: the same range changes nothing, another range
    /// moves the reservation, a range clear of the kernel's drops it.
    #[test]
    fn restarts_keep_move_or_drop_the_reservation() {
        let lab = Lab::new("32768 60999", "8080");
        lab.reserve(40000..=45000, true).keep();
        let again = lab.reserve(40000..=45000, true);
        assert_eq!(again.added(), "40000-45000");
        assert_eq!(lab.sys.reserved(), "8080,40000-45000");
        again.keep();
        lab.reserve(44000..=50000, true).keep();
        assert_eq!(lab.sys.reserved(), "8080,44000-50000");
        let clear = lab.reserve(20000..=32767, true);
        assert_eq!(
            (clear.added(), lab.sys.reserved()),
            (String::new(), "8080".into())
        );
        assert!(!lab.record.exists());
    }

    #[test]
    fn overlap_without_reserve_ports_is_refused_unless_already_reserved() {
        let lab = Lab::new("32768 60999", "8080");
        lab.refusal(
            20000..=40000,
            false,
            &[
                "20000-40000",
                "32768-60999",
                "port_range",
                "reserve_ports = true",
            ],
        );
        assert_eq!(lab.sys.reserved(), "8080");
        // The operator reserved the shared ports: accepted, nothing added.
        lab.sys.write(RESERVED, "8080,32768-40000").unwrap();
        assert_eq!(lab.reserve(20000..=40000, false).added(), "");
        assert_eq!(lab.sys.reserved(), "8080,32768-40000");
    }

    #[test]
    fn read_only_sysctl_is_refused_and_records_nothing() {
        let mut lab = Lab::new("32768 60999", "");
        lab.sys.read_only = true;
        lab.refusal(
            20000..=40000,
            true,
            &[
                "20000-40000",
                "32768-60999",
                "/fake/ip_local_reserved_ports",
                "read-only",
            ],
        );
        assert!(!lab.record.exists());
        // Nothing to write (clear of the kernel's range): fine even read-only.
        lab.reserve(20000..=32767, true).keep();
    }

    fn port_set() -> impl Strategy<Value = PortSet> {
        prop::collection::vec((any::<u16>(), 0u16..2000), 0..8).prop_map(|v| {
            v.into_iter()
                .map(|(lo, len)| lo..=lo.saturating_add(len))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn list_format_round_trips(s in port_set()) {
            prop_assert_eq!(parse_ports(&format_ports(&s)).unwrap(), s);
        }

        /// Reserving a range over any list, then releasing it, gives back the list.
        #[test]
        fn reserve_then_release_gives_back_the_original(
            others in port_set(),
            lo in 1u16..65535,
            len in 0u16..30000,
        ) {
            let lab = Lab::new("1 65535", &format_ports(&others));
            let r = lab.reserve(lo..=lo.saturating_add(len), true);
            let reserved = set(&lab.sys.reserved());
            prop_assert!(minus(&others, &reserved).is_empty());
            prop_assert!(reserved.contains(&lo) && reserved.contains(&lo.saturating_add(len)));
            r.release_with(&lab.sys).unwrap();
            prop_assert_eq!(set(&lab.sys.reserved()), others);
        }
    }
}
