//! bpffs and pinned BPF objects: mounting /sys/fs/bpf, pin directories, pinning and opening
//! objects, XDP bpf_links in a chosen mode, and the `skeleton!` declaration of a generated skeleton. Shared by lbd's data plane (`xdplb`) and
//! backend-setup (`xdplb-backend`), so that neither crate depends on the other.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Declares a module holding the libbpf skeleton `$OUT_DIR/<file>` that the calling crate's
/// build script generated, with the lints a generated file cannot satisfy allowed:
/// `xdplb_bpffs::skeleton!(/// doc; pub mod skel = "lb.skel.rs");` (the test kit re-exports it).
#[macro_export]
macro_rules! skeleton {
    ($(#[$attr:meta])* $vis:vis mod $name:ident = $file:literal) => {
        $(#[$attr])*
        #[allow(
            clippy::all,
            dead_code,
            missing_docs,
            non_camel_case_types,
            non_snake_case,
            unused_imports
        )]
        $vis mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

/// Where bpffs is mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// A failed bpffs operation: what was being done, and the system's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct Error {
    pub what: String,
    #[source]
    pub source: io::Error,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error { what, source }
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `dir` can hold pins: mounts bpffs on /sys/fs/bpf if nothing is mounted there
/// (as after `ip netns exec`, which remounts /sys), then creates `dir`.
pub fn ensure_bpffs(dir: &Path) -> Result<(), Error> {
    let root = Path::new(BPFFS_ROOT);
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).map_err(io_err("creating /sys/fs/bpf"))?;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io_err("mounting bpffs on /sys/fs/bpf")(e.into()))?;
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir)
        .map_err(io_err(format!("creating pin directory {}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(io_err(format!("pin directory {}", dir.display()))(
            io::Error::other("not on a bpffs (mount -t bpf bpf /sys/fs/bpf)"),
        ));
    }
    Ok(())
}

/// Removes every pin in `dir` and the directory itself; a missing `dir` is fine.
pub fn remove_pins(dir: &Path) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("reading {}", dir.display()))(e)),
    };
    for entry in entries.flatten() {
        std::fs::remove_file(entry.path())
            .map_err(io_err(format!("unpinning {}", entry.path().display())))?;
    }
    std::fs::remove_dir(dir).map_err(io_err(format!("removing {}", dir.display())))
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)
}

/// Pins a BPF object (a link, a map) at `path`.
pub fn pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: a valid fd and a NUL-terminated path that lives across the call.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(())
}

/// Opens the BPF object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: a NUL-terminated path that lives across the call.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative return is a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Attaches the XDP program `prog_fd` to `ifindex` through a new bpf_link; `flags` picks the
/// mode (`libbpf_sys::XDP_FLAGS_DRV_MODE`, `XDP_FLAGS_SKB_MODE`).
pub fn link_xdp(prog_fd: i32, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero bpf_link_create_opts is the documented "no options" value; sz is set below.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = flags;
    // SAFETY: prog_fd is a loaded program's fd; opts lives across the call.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative return is a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_pin_dir_is_nothing_to_remove() {
        assert!(remove_pins(Path::new("/nonexistent/xdplb-bpffs-test")).is_ok());
    }

    #[test]
    fn a_tmp_dir_is_not_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()));
    }
}
