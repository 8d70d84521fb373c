//! The loaded XDP program: opening the skeleton, sizing and pinning its maps, attaching it to
//! interfaces through bpf_links, and detaching and unpinning on shutdown.

pub mod maps;

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::OpenObject;

use crate::config::XdpMode;
use crate::skel::types;
use crate::skel::{LbSkel, LbSkelBuilder};

pub use maps::{Counters, GlobalCounters};

/// Most VIPs the data plane holds (from `enum lb_limits` in `bpf/xdplb.h`).
pub const MAX_VIPS: usize = types::lb_limits::LB_MAX_VIPS.0 as usize;
/// Most backends (over all VIPs) the data plane holds.
pub const MAX_BACKENDS: usize = types::lb_limits::LB_MAX_BACKENDS.0 as usize;
/// Most interfaces lbd attaches to.
pub const MAX_IFACES: usize = types::lb_limits::LB_MAX_IFACES.0 as usize;
/// Maglev ring value of an empty slot.
pub const NO_BACKEND: u32 = types::lb_ring_values::LB_NO_BACKEND.0;

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// A data-plane error.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("table full: {0}")]
    Full(String),
}

pub(crate) fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Bpf { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Io { what, source }
}

/// How to load the program.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Entries of each conntrack table.
    pub conntrack_size: u32,
    /// Directory on a bpffs where maps are pinned; `None` keeps them private (tests).
    pub pin_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_size: types::lb_limits::LB_DEFAULT_CT_SIZE.0,
            pin_dir: None,
        }
    }
}

/// An XDP program attached to one interface through a bpf_link (detached when dropped).
#[derive(Debug)]
pub struct XdpLink {
    pub ifname: String,
    pub ifindex: u32,
    /// Generic (skb) mode rather than native.
    pub generic: bool,
    _fd: OwnedFd,
}

/// The loaded program and its maps.
pub struct Dataplane {
    skel: LbSkel<'static>,
    links: Vec<XdpLink>,
    pin_dir: Option<PathBuf>,
}

impl Dataplane {
    /// Opens, sizes, (pins) and loads the program. It is not attached anywhere yet.
    pub fn load(opts: &LoadOptions) -> Result<Self, DataplaneError> {
        // The skeleton borrows its object storage for its whole life; lbd keeps one for the life of
        // the process, tests a few, so leaking the (small) storage is the simple correct choice.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = LbSkelBuilder::default()
            .open(storage)
            .map_err(bpf_err("opening the BPF object"))?;
        let ct = opts.conntrack_size;
        open.maps
            .ct_fwd
            .set_max_entries(ct)
            .map_err(bpf_err("sizing ct_fwd"))?;
        open.maps
            .ct_rev
            .set_max_entries(ct)
            .map_err(bpf_err("sizing ct_rev"))?;
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs(dir)?;
            for mut map in open.open_object_mut().maps_mut() {
                let name = map.name().to_string_lossy().into_owned();
                // .rodata and friends are internal to the program; only pin real maps.
                if name.starts_with('.') || name.contains(".rodata") {
                    continue;
                }
                map.set_pin_path(dir.join(&name))
                    .map_err(bpf_err(format!("pin path of {name}")))?;
            }
        }
        let skel = open
            .load()
            .map_err(bpf_err("loading the XDP program (verifier log above)"))?;
        Ok(Self {
            skel,
            links: Vec::new(),
            pin_dir: opts.pin_dir.clone(),
        })
    }

    /// The maps, typed.
    pub fn maps(&self) -> maps::Maps<'_> {
        maps::Maps::new(&self.skel.maps)
    }

    /// The program, for BPF_PROG_TEST_RUN.
    pub fn program(&self) -> &libbpf_rs::ProgramMut<'static> {
        &self.skel.progs.xdplb
    }

    /// Attaches to `ifname` and adds it to the redirect map. `Auto` tries native, then generic.
    pub fn attach(&mut self, ifname: &str, mode: XdpMode) -> Result<&XdpLink, DataplaneError> {
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|_| DataplaneError::NoSuchInterface(ifname.to_string()))?;
        let prog_fd = self.skel.progs.xdplb.as_fd().as_raw_fd();
        let (fd, generic) = match mode {
            XdpMode::Native => (
                link_xdp(prog_fd, ifindex, libbpf_sys::XDP_FLAGS_DRV_MODE),
                false,
            ),
            XdpMode::Generic => (
                link_xdp(prog_fd, ifindex, libbpf_sys::XDP_FLAGS_SKB_MODE),
                true,
            ),
            XdpMode::Auto => match link_xdp(prog_fd, ifindex, libbpf_sys::XDP_FLAGS_DRV_MODE) {
                Ok(fd) => (Ok(fd), false),
                Err(e) => {
                    tracing::warn!(interface = ifname, error = %e, "native XDP failed, using generic mode");
                    (
                        link_xdp(prog_fd, ifindex, libbpf_sys::XDP_FLAGS_SKB_MODE),
                        true,
                    )
                }
            },
        };
        let fd = fd.map_err(io_err(format!("attaching XDP to {ifname}")))?;
        self.maps().add_tx_port(ifindex)?;
        self.links.push(XdpLink {
            ifname: ifname.to_string(),
            ifindex,
            generic,
            _fd: fd,
        });
        Ok(self.links.last().expect("just pushed"))
    }

    /// Interfaces the program is attached to.
    pub fn links(&self) -> &[XdpLink] {
        &self.links
    }

    /// Detaches from every interface and removes the pinned maps (a clean stop).
    pub fn shutdown(mut self) -> Result<(), DataplaneError> {
        self.links.clear();
        if let Some(dir) = self.pin_dir.take() {
            remove_pins(&dir)?;
        }
        Ok(())
    }
}

fn link_xdp(prog_fd: i32, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
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

/// Makes sure `dir` can hold pins: mounts bpffs on /sys/fs/bpf if nothing is mounted there
/// (as after `ip netns exec`, which remounts /sys), then creates `dir`.
fn ensure_bpffs(dir: &Path) -> Result<(), DataplaneError> {
    let root = Path::new("/sys/fs/bpf");
    if dir.starts_with(root) && !is_bpffs(root) {
        std::fs::create_dir_all(root).map_err(io_err("creating /sys/fs/bpf"))?;
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| DataplaneError::Io {
            what: "mounting bpffs on /sys/fs/bpf".into(),
            source: e.into(),
        })?;
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir)
        .map_err(io_err(format!("creating pin directory {}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Io {
            what: format!("pin directory {}", dir.display()),
            source: io::Error::other("not on a bpffs (mount -t bpf bpf /sys/fs/bpf)"),
        });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Removes every pin in `dir` and the directory itself.
pub fn remove_pins(dir: &Path) -> Result<(), DataplaneError> {
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
