//! The loaded XDP program: opening the skeleton, sizing and pinning its maps, attaching it to
//! interfaces through bpf_links, and detaching and unpinning on shutdown.

/// Declares the writer of a typed map view: it holds the reader and derefs to it (whoever may
/// write may also read); only `&mut Dataplane` hands one out.
macro_rules! map_writer {
    ($(#[$m:meta])* $vis:vis struct $writer:ident => $reader:ident) => {
        $(#[$m])*
        $vis struct $writer<'a> {
            r: $reader<'a>,
        }

        impl<'a> std::ops::Deref for $writer<'a> {
            type Target = $reader<'a>;

            fn deref(&self) -> &$reader<'a> {
                &self.r
            }
        }
    };
}
pub(crate) use map_writer;

pub mod explain;
pub mod firewall;
pub mod flows;
pub mod maps;
pub mod migrate;
pub mod ratelimit;
pub mod telemetry;
pub mod trace;

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, OpenObject};

use crate::skel::types;
use crate::skel::{LbSkel, LbSkelBuilder};

pub use maps::{Counters, GlobalCounters};
// bpffs and XDP-link plumbing, shared with xdplb-backend (backend-setup) through xdplb-bpffs.
pub use bpffs::remove_pins;
pub(crate) use bpffs::{ensure_bpffs, link_xdp, pin as pin_fd};
use xdplb_bpffs as bpffs;

/// Most VIPs the data plane holds (from `enum lb_limits` in `bpf/xdplb.h`).
pub(crate) const MAX_VIPS: usize = types::lb_limits::LB_MAX_VIPS.0 as usize;
/// Most backends (over all VIPs) the data plane holds.
pub(crate) const MAX_BACKENDS: usize = types::lb_limits::LB_MAX_BACKENDS.0 as usize;

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
    #[error(
        "pinned map {map} does not fit this build ({detail}); reusing it would lose or corrupt its \
         state: stop lbd with --detach-on-exit (drops tracked flows) and start again to apply"
    )]
    Incompatible { map: String, detail: String },
}

impl From<bpffs::Error> for DataplaneError {
    fn from(e: bpffs::Error) -> Self {
        DataplaneError::Io {
            what: e.what,
            source: e.source,
        }
    }
}

pub(crate) fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Bpf { what, source }
}

/// Handles of every map a loaded program uses, by name, found through the program's map ids: for
/// maps the skeleton does not hand out (the outer map of the Maglev rings as the kernel holds it,
/// the maps of test and bench programs). Maps closed between the two reads are skipped.
pub fn program_maps(
    prog: std::os::fd::BorrowedFd<'_>,
) -> Result<std::collections::BTreeMap<String, libbpf_rs::MapHandle>, DataplaneError> {
    let info_err = |source| DataplaneError::Io {
        what: "reading a program's map ids".into(),
        source,
    };
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` and `len` are valid for writes and `len` is the size of `info`.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(info_err(io::Error::from_raw_os_error(-rc)));
    }
    let mut ids = vec![0u32; info.nr_map_ids as usize];
    let mut info = libbpf_sys::bpf_prog_info {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `map_ids` points at `nr_map_ids` writable u32s that outlive the call.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) };
    if rc != 0 {
        return Err(info_err(io::Error::from_raw_os_error(-rc)));
    }
    ids.truncate(info.nr_map_ids as usize);
    let mut out = std::collections::BTreeMap::new();
    for id in ids {
        if let Ok(map) = libbpf_rs::MapHandle::from_map_id(id) {
            out.insert(map.name().to_string_lossy().into_owned(), map);
        }
    }
    Ok(out)
}

/// Runs one of the program's never-attached helper programs (`lb_clock`, `lb_flow_gc`) once
/// through BPF_PROG_TEST_RUN on a zeroed frame of `len` bytes (XDP takes at least an Ethernet
/// header); returns the frame as the program left it. The program must answer XDP_PASS.
pub(crate) fn run_helper(
    prog: std::os::fd::BorrowedFd<'_>,
    len: usize,
    what: &str,
) -> Result<Vec<u8>, DataplaneError> {
    let input = vec![0u8; len.max(64)];
    let mut output = vec![0u8; input.len()];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
        data_in: input.as_ptr().cast(),
        data_size_in: input.len() as u32,
        data_out: output.as_mut_ptr().cast(),
        data_size_out: output.len() as u32,
        repeat: 1,
        ..Default::default()
    };
    // SAFETY: the fd is a loaded XDP program; input and output outlive the call, sizes given.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    let source = if rc < 0 {
        io::Error::from_raw_os_error(-rc)
    } else if opts.retval != libbpf_sys::XDP_PASS || (opts.data_size_out as usize) < len {
        io::Error::other(format!(
            "returned {} with {} bytes",
            opts.retval, opts.data_size_out
        ))
    } else {
        output.truncate(opts.data_size_out as usize);
        return Ok(output);
    };
    Err(DataplaneError::Io {
        what: format!("{what} (BPF_PROG_TEST_RUN)"),
        source,
    })
}

/// Sets how many entries a map gets, before the program is loaded.
pub(crate) fn size_map(
    map: &mut libbpf_rs::OpenMapMut<'_>,
    entries: u32,
    name: &str,
) -> Result<(), DataplaneError> {
    map.set_max_entries(entries)
        .map_err(bpf_err(format!("sizing {name}")))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Io { what, source }
}

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver.
    Native,
    /// In the generic (skb) path.
    Generic,
    /// Native where the driver supports it, generic otherwise.
    Auto,
}

/// How to load the program.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Established flows tracked (`[tables] conntrack_size`): the NAT established table, and
    /// the per-CPU DSR tables together.
    pub conntrack_size: u32,
    /// Embryonic TCP flows tracked (`[tables] embryonic_size`).
    pub embryonic_size: u32,
    /// Directory on a bpffs where maps are pinned; `None` keeps them private (tests).
    pub pin_dir: Option<PathBuf>,
    /// Most firewall rules (entries of the LPM trie and of the per-CPU hit counters).
    pub firewall_capacity: u32,
    /// Which packets the firewall sees.
    pub firewall_scope: xdplb_model::firewall::Scope,
    /// Client buckets of the rate limiter (an LRU table: the least recent client is evicted).
    pub ratelimit_clients: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            conntrack_size: types::lb_limits::LB_DEFAULT_CT_SIZE.0,
            embryonic_size: types::lb_limits::LB_DEFAULT_SYN_SIZE.0,
            pin_dir: None,
            firewall_capacity: xdplb_model::firewall::DEFAULT_CAPACITY,
            firewall_scope: xdplb_model::firewall::Scope::default(),
            ratelimit_clients: xdplb_model::ratelimit::DEFAULT_CLIENTS,
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
    /// The maps were pinned by an earlier lbd and are reused (flows survive).
    adopted: bool,
    /// `lb_explain`, loaded on the first explain with these maps (`explain.rs`).
    explain: explain::Slot,
}

/// Counter maps may be recreated (their counts restart) when their layout changes, and so may
/// `lb_config_v2`, which lbd writes whole before the program is attached; every other pinned map
/// holds state that an upgrade must keep.
fn is_counter_map(name: &str) -> bool {
    name.ends_with("_stats")
        || name.ends_with("_hits")
        || name.ends_with("_counters")
        || name == "lb_config_v2"
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
        let sizes = flows::TableSizes {
            established: opts.conntrack_size,
            embryonic: opts.embryonic_size,
        };
        // libbpf creates dsr_v2 from this template's fd at load.
        let dsr_template = flows::prepare(&mut open, sizes)?;
        firewall::prepare(&mut open, opts.firewall_capacity, opts.firewall_scope)?;
        ratelimit::prepare(&mut open, opts.ratelimit_clients)?;
        trace::prepare(&mut open)?;
        let mut adopted = false;
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs(dir)?;
            for mut map in open.open_object_mut().maps_mut() {
                let name = map.name().to_string_lossy().into_owned();
                // .rodata, .kconfig and friends are internal to the program (libbpf names them
                // "<object>.<section>"; a map of bpf/maps.h is a C identifier, without a dot):
                // only pin real maps.
                if name.contains('.') {
                    continue;
                }
                let pin = dir.join(&name);
                if pin.exists() {
                    // libbpf reuses a pinned map only if it matches; say which and why if not.
                    let old = libbpf_rs::MapHandle::from_pinned_path(&pin)
                        .map_err(bpf_err(format!("opening pinned map {}", pin.display())))?;
                    let (want, have) = (
                        (
                            map.map_type(),
                            map.key_size(),
                            map.value_size(),
                            map.max_entries(),
                        ),
                        (
                            old.map_type(),
                            old.key_size(),
                            old.value_size(),
                            old.max_entries(),
                        ),
                    );
                    if want != have {
                        let detail = format!(
                            "pinned (type, key, value, entries) = {have:?}, this build wants {want:?}"
                        );
                        if !is_counter_map(&name) {
                            return Err(DataplaneError::Incompatible { map: name, detail });
                        }
                        tracing::warn!(map = %name, %detail, "map layout changed: recreated (counts restart, the configuration is written again)");
                        std::fs::remove_file(&pin)
                            .map_err(io_err(format!("unpinning {}", pin.display())))?;
                    } else {
                        adopted = true;
                    }
                }
                map.set_pin_path(&pin)
                    .map_err(bpf_err(format!("pin path of {name}")))?;
            }
        }
        let skel = open
            .load()
            .map_err(bpf_err("loading the XDP program (verifier log above)"))?;
        if adopted {
            tracing::info!("reusing the pinned maps of an earlier lbd: tracked flows carry on");
        }
        drop(dsr_template);
        flows::fill_dsr_slots(&skel.maps.dsr_v2, sizes)?;
        let mut dp = Self {
            skel,
            links: Vec::new(),
            pin_dir: opts.pin_dir.clone(),
            adopted,
            explain: Default::default(),
        };
        // Adopted VIPs must pass the prefilter (and their flows find them) before the program
        // is attached.
        dp.maps_mut().rebuild_vip_index()?;
        Ok(dp)
    }

    /// Whether the maps were pinned by an earlier lbd and reused.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The maps, typed, to read.
    pub fn maps(&self) -> maps::Maps<'_> {
        maps::Maps::new(&self.skel.maps)
    }

    /// The maps, typed, to write: only the owner of the data plane can.
    pub fn maps_mut(&mut self) -> maps::MapWriter<'_> {
        maps::MapWriter::new(&self.skel.maps)
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
        let pin = self
            .pin_dir
            .as_ref()
            .map(|d| d.join(format!("link_{ifname}")));
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            // An earlier lbd left the program attached: swap in this build's program atomically.
            let fd = replace_pinned_link(pin, prog_fd).map_err(io_err(format!(
                "updating the XDP link on {ifname} ({})",
                pin.display()
            )))?;
            self.maps_mut().add_tx_port(ifindex)?;
            tracing::info!(
                interface = ifname,
                "took over the pinned XDP link: program replaced atomically"
            );
            self.links.push(XdpLink {
                ifname: ifname.to_string(),
                ifindex,
                generic: false,
                _fd: fd,
            });
            return Ok(self.links.last().expect("just pushed"));
        }
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
        if let Some(pin) = &pin {
            pin_fd(&fd, pin).map_err(io_err(format!("pinning the XDP link of {ifname}")))?;
        }
        self.maps_mut().add_tx_port(ifindex)?;
        self.links.push(XdpLink {
            ifname: ifname.to_string(),
            ifindex,
            generic,
            _fd: fd,
        });
        Ok(self.links.last().expect("just pushed"))
    }

    /// Interfaces the program is attached to.
    pub(crate) fn links(&self) -> &[XdpLink] {
        &self.links
    }

    /// Detaches links an earlier lbd pinned for interfaces that are no longer configured.
    pub fn detach_stale_links(&self) -> Result<(), DataplaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(ifname) = name.strip_prefix("link_") {
                if !self.links.iter().any(|l| l.ifname == ifname) {
                    std::fs::remove_file(entry.path())
                        .map_err(io_err(format!("unpinning {name}")))?;
                    tracing::info!(
                        interface = ifname,
                        "detached: no longer in dataplane.interfaces"
                    );
                }
            }
        }
        Ok(())
    }

    /// Stops this lbd. With `detach`, detaches from every interface and removes every pin (the
    /// data plane is gone); without, the program stays attached through its pinned links and the
    /// pinned maps keep every flow, for the next lbd to adopt.
    pub fn shutdown(mut self, detach: bool) -> Result<(), DataplaneError> {
        if let (true, Some(dir)) = (detach, self.pin_dir.take()) {
            remove_pins(&dir)?;
        }
        self.links.clear();
        Ok(())
    }
}

/// Opens the link pinned at `path` and makes it run `prog_fd` (an atomic program swap).
fn replace_pinned_link(path: &Path, prog_fd: i32) -> io::Result<OwnedFd> {
    let fd = bpffs::obj_get(path)?;
    // SAFETY: both fds are valid; no options.
    let rc = unsafe { libbpf_sys::bpf_link_update(fd.as_raw_fd(), prog_fd, std::ptr::null()) };
    if rc < 0 {
        return Err(io::Error::from_raw_os_error(-rc));
    }
    Ok(fd)
}
