//! bpffs for tests: [`PinDir`], a pin directory removed with every pin in it on drop; mounting
//! bpffs where it is missing; sweeping directories of test processes that were killed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use anyhow::Result;

use crate::netns::stale_owner_pid;

/// Where bpffs is mounted.
pub const BPFFS: &str = xdplb_bpffs::BPFFS_ROOT;
/// Prefix of every pin directory of the tests: `/sys/fs/bpf/xdplb-<pid>-<name>`.
pub const PIN_PREFIX: &str = "/sys/fs/bpf/xdplb-";

static PIN_COUNTER: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

/// Mounts bpffs on /sys/fs/bpf unless it is there already (the way lbd does).
pub fn ensure_bpffs() -> Result<()> {
    xdplb_bpffs::ensure_bpffs(Path::new(BPFFS))?;
    Ok(())
}

/// A fresh pin directory path of this process, `/sys/fs/bpf/xdplb-<pid>-<counter>` (not
/// created: e.g. for lbd's `pin_path`). Directories of dead test processes are swept first.
pub fn unique_pin_path() -> PathBuf {
    let n = PIN_COUNTER.fetch_add(1, Ordering::Relaxed);
    pin_path(&n.to_string())
}

fn pin_path(name: &str) -> PathBuf {
    sweep_stale_pins();
    PathBuf::from(format!("{PIN_PREFIX}{}-{name}", std::process::id()))
}

/// A bpffs pin directory owned by one test, `/sys/fs/bpf/xdplb-<pid>-<tag>`, removed with every
/// pin in it when dropped, whether the test passed or not (Drop never panics: a failure is
/// logged).
#[derive(Debug)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// The directory for `tag` (unique in this process); nothing is created until a program
    /// pins there.
    pub fn new(tag: &str) -> PinDir {
        PinDir(pin_path(tag))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: removing pin directory {}: {e}", self.0.display()),
        }
    }
}

/// Removes pin directories of earlier test processes that died before their guard ran (once
/// per process; [`PinDir::new`] and [`unique_pin_path`] call it).
pub fn sweep_stale_pins() {
    SWEEP.call_once(sweep_now);
}

fn sweep_now() {
    let Ok(entries) = std::fs::read_dir(BPFFS) else {
        return;
    };
    let prefix = PIN_PREFIX.trim_start_matches("/sys/fs/bpf/");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_owner_pid(&name, prefix) {
            eprintln!("note: removing stale pin directory {name} of dead process {pid}");
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                eprintln!("warning: removing {}: {e}", entry.path().display());
            }
        }
    }
}
