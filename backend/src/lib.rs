//! xdplb-backend: prepares a host as a DSR backend of a VIP (what `lbctl backend-setup` runs,
//! through the `xdplb-backend-setup` binary), and owns the decap program and its skeleton.
//! It runs on the backend itself: no lbd, no dependency on the `xdplb` crate.
//!
//! Under L2 DSR and IPIP DSR the client's packet reaches the backend still addressed to the VIP,
//! and the backend answers the client directly, from the VIP. So the backend needs:
//!
//! - the VIP as a /32 on `lo` (through rtnetlink, never the `ip` command), so that its stack
//!   accepts the packets and answers from the VIP;
//! - `arp_ignore=1` and `arp_announce=2` (on `all`, the traffic interface and `lo`), so that it
//!   never answers ARP for the VIP nor announces it: on the LB's segment that would steal the
//!   VIP from the load balancer. They are set *before* the VIP goes on `lo`;
//! - for IPIP, the decapsulation program `backend/bpf/decap.bpf.c` on the traffic interface (XDP, native
//!   or else generic) through a bpf_link pinned in `/sys/fs/bpf/xdplb-decap/<dev>/` with its maps,
//!   so that it outlives the process that installed it; the VIPs it decapsulates are the keys of
//!   the pinned `decap_vips` map, and setting up another VIP on the same interface only adds a
//!   key. `rp_filter` on that interface is set to loose (2): the decapsulated packet comes from
//!   the client, not from the tunnel's source;
//! - for IPIP, the load balancers' outer source prefixes (`--lb-source`, their `[ipip] source`):
//!   the pinned LPM trie `decap_sources` holds (VIP, prefix) pairs, and the program drops (and
//!   counts) IPIP to a VIP from any other outer source, which would bypass the balancer's
//!   firewall and rate limits. A setup sets the VIP's prefixes to exactly those given.
//!
//! [`undo`] removes the VIP from `decap_vips` and its prefixes from `decap_sources` (unpinning,
//! and so detaching, the program when no VIP is left) and from `lo`; it leaves the sysctls,
//! which other VIPs may rely on.
//!
//! Everything here acts on the network namespace of the calling thread. bpffs is global, so the
//! pins of two namespaces that use the same interface name collide; [`setup`] notices (the
//! pinned program is not the one attached to this namespace's interface) and refuses.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};

use xdplb_bpffs as bpffs;
use xdplb_model::ifname::is_interface_name;

use crate::decap_skel::{types, DecapSkelBuilder};

xdplb_bpffs::skeleton!(
    /// The libbpf skeleton generated from `bpf/decap.bpf.c`, the backend-side IPIP decapsulator.
    pub mod decap_skel = "decap.skel.rs"
);

/// Where the decap program's link and maps are pinned, one directory per interface.
pub const DECAP_PIN_ROOT: &str = "/sys/fs/bpf/xdplb-decap";
/// Name of the pinned bpf_link in a per-interface pin directory.
pub const LINK_PIN: &str = "link";
/// Name of the pinned VIP set (`decap_vips`: VIP in wire order as u32 -> 1).
pub const VIPS_PIN: &str = "decap_vips";
/// Name of the pinned per-CPU counters (`decap_stats`).
pub const STATS_PIN: &str = "decap_stats";
/// Name of the pinned allowed outer sources (`decap_sources`: LPM trie of (VIP, prefix) -> 1).
pub const SOURCES_PIN: &str = "decap_sources";
/// How many (VIP, `--lb-source` prefix) pairs the decap program of one interface holds.
pub const MAX_SOURCES: u32 = types::decap_limits::DECAP_MAX_SOURCES.0;

/// `arp_ignore` values under which the host never answers ARP for an address on `lo`
/// (1: only for addresses of the receiving interface, 2: also same subnet, 8: never).
const ARP_IGNORE_OK: &[u32] = &[1, 2, 8];
const ARP_IGNORE: u32 = 1;
/// `arp_announce` 2: always use the best local address of the outgoing interface.
const ARP_ANNOUNCE: u32 = 2;
/// `rp_filter` 2: loose reverse-path filtering.
const RP_FILTER_LOOSE: u32 = 2;

/// BPF_LINK_TYPE_XDP in `enum bpf_link_type`.
const BPF_LINK_TYPE_XDP: u32 = 6;

/// How the load balancer reaches this backend for the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// L2 DSR: the frame arrives with only its MAC addresses changed.
    L2dsr,
    /// IPIP DSR: the packet arrives inside an outer IPv4 header; the decap program strips it.
    Ipip,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L2dsr => "l2dsr",
            Mode::Ipip => "ipip",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    /// `l2dsr` or `ipip`, any case. `nat` is refused: a NAT backend needs no preparation.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "l2dsr" => Ok(Mode::L2dsr),
            "ipip" => Ok(Mode::Ipip),
            "nat" => Err("a NAT backend needs no preparation; expected l2dsr or ipip".into()),
            _ => Err(format!("unknown mode '{s}' (l2dsr or ipip)")),
        }
    }
}

/// Why a backend could not be prepared (or the preparation undone).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0} is not usable as a VIP (it must be a unicast address, not loopback)")]
    BadVip(Ipv4Addr),
    #[error("interface {0} does not exist")]
    NoSuchInterface(String),
    #[error("--dev must be the interface the VIP's traffic arrives on, not lo")]
    DevIsLoopback,
    #[error("{vip} is already an address of {dev}: the backend would answer ARP for it and take the VIP from the load balancer; remove it there first")]
    VipOnInterface { vip: Ipv4Addr, dev: String },
    #[error("netlink socket: {0}")]
    NetlinkSocket(io::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        source: libbpf_rs::Error,
    },
    #[error(transparent)]
    Bpffs(#[from] bpffs::Error),
    #[error("attaching the decap program to {dev}: native XDP: {native}; generic XDP: {generic}")]
    Attach {
        dev: String,
        native: io::Error,
        generic: io::Error,
    },
    #[error("{} holds a decap program attached to an interface {dev} of another network namespace (bpffs is shared by all of them); undo it there first", .dir.display())]
    PinnedElsewhere { dir: PathBuf, dev: String },
    #[error("{cause} (done before that: {})", .done.join("; "))]
    Partial {
        done: Vec<String>,
        cause: Box<SetupError>,
    },
    #[error("another XDP program is already attached to {0} (see `ip link show {0}`); the decap program needs the interface's XDP hook")]
    XdpBusy(String),
    #[error("--mode ipip needs at least one --lb-source PREFIX (the load balancers' [ipip] source, e.g. 10.0.1.1/32): the decap program takes IPIP only from them")]
    NoLbSource,
    #[error(
        "--lb-source {0} applies to --mode ipip only (L2 DSR has no tunnel whose source to check)"
    )]
    LbSourceNotIpip(Ipv4Net),
    #[error("--lb-source {given}: expected a prefix without host bits (did you mean {}?)", .given.trunc())]
    LbSourceHostBits { given: Ipv4Net },
    #[error("--lb-source 0.0.0.0/0 would take IPIP from anyone, who could then bypass the balancer's firewall and rate limits; name the load balancers' [ipip] source prefixes")]
    LbSourceEverything,
    #[error("--lb-source: the decap program on {dev} holds at most {max} (VIP, prefix) pairs; this setup would need {want}")]
    TooManyLbSources { dev: String, want: usize, max: u32 },
    #[error("the decap program pinned in {} predates --lb-source (no {SOURCES_PIN} pin) and takes IPIP from anyone: undo its VIPs there (backend-setup --undo) and set them up again", .0.display())]
    PinsWithoutSources(PathBuf),
    #[error("/sys/fs/bpf is not mounted in this mount namespace, which is not the host's (as under `ip netns exec`): pins made here would vanish when lbctl exits and detach the decap program; run it through `nsenter --net=/run/netns/NAME` instead")]
    PrivateMountNamespace,
}

/// A result with a [`SetupError`].
pub type Result<T, E = SetupError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Io { what, source }
}

fn bpf_err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> SetupError {
    let what = what.into();
    move |source| SetupError::Bpf { what, source }
}

/// The pin directory of the decap program on `dev`.
pub fn decap_pin_dir(dev: &str) -> PathBuf {
    Path::new(DECAP_PIN_ROOT).join(dev)
}

/// Checks the `--lb-source` prefixes of a setup: at least one for IPIP, none for L2 DSR, no
/// host bits, not `0.0.0.0/0`.
pub fn check_lb_sources(mode: Mode, lb_sources: &[Ipv4Net]) -> Result<()> {
    if mode == Mode::L2dsr {
        return match lb_sources.first() {
            Some(p) => Err(SetupError::LbSourceNotIpip(*p)),
            None => Ok(()),
        };
    }
    if lb_sources.is_empty() {
        return Err(SetupError::NoLbSource);
    }
    for p in lb_sources {
        if p.prefix_len() == 0 {
            return Err(SetupError::LbSourceEverything);
        }
        if p.trunc() != *p {
            return Err(SetupError::LbSourceHostBits { given: *p });
        }
    }
    Ok(())
}

/// Prepares this host to serve `vip` by `mode` on interface `dev`; for IPIP, only from the
/// outer sources `lb_sources` (the VIP's prefixes become exactly these). Idempotent: a second
/// run changes nothing and says what was already so. Returns one line per step, for people.
///
/// Order matters: the ARP sysctls come before the VIP goes on `lo`, so the host never answers
/// ARP for it, not even for a moment.
pub async fn setup(
    vip: Ipv4Addr,
    mode: Mode,
    dev: &str,
    lb_sources: &[Ipv4Net],
) -> Result<Vec<String>> {
    check_vip(vip)?;
    check_lb_sources(mode, lb_sources)?;
    check_dev_name(dev)?;
    let ifindex = interface_index(dev)?;
    let lo = interface_index("lo")?;
    if mode == Mode::Ipip {
        // Refusals that need no change first, so that a refused setup changes nothing.
        check_bpffs_is_shared()?;
        let dir = decap_pin_dir(dev);
        match pinned_state(&dir, ifindex)? {
            Pinned::Elsewhere => {
                return Err(SetupError::PinnedElsewhere {
                    dir,
                    dev: dev.to_string(),
                })
            }
            Pinned::Nothing | Pinned::Stale if !attached_prog_ids(ifindex).is_empty() => {
                return Err(SetupError::XdpBusy(dev.to_string()))
            }
            Pinned::Live => check_sources_room(&dir, dev, vip, lb_sources)?,
            _ if distinct(lb_sources).len() > MAX_SOURCES as usize => {
                return Err(SetupError::TooManyLbSources {
                    dev: dev.to_string(),
                    want: distinct(lb_sources).len(),
                    max: MAX_SOURCES,
                })
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let (conn, handle, _) = rtnetlink::new_connection().map_err(SetupError::NetlinkSocket)?;
    let task = tokio::spawn(conn);
    let result = async {
        check_vip_not_elsewhere(&handle, vip, lo).await?;
        for scope in ["all", dev, "lo"] {
            out.push(ensure_sysctl(
                scope,
                "arp_ignore",
                ARP_IGNORE,
                ARP_IGNORE_OK,
                "",
            )?);
            out.push(ensure_sysctl(
                scope,
                "arp_announce",
                ARP_ANNOUNCE,
                &[ARP_ANNOUNCE],
                "",
            )?);
        }
        if mode == Mode::Ipip {
            out.push(ensure_sysctl(
                dev,
                "rp_filter",
                RP_FILTER_LOOSE,
                &[RP_FILTER_LOOSE],
                "; loose, since decapsulated packets come from clients, not from the tunnel's source",
            )?);
            decap_add(vip, dev, ifindex, lb_sources, &mut out)?;
        }
        out.push(add_vip_to_lo(&handle, vip, lo).await?);
        Ok(())
    }
    .await;
    task.abort();
    match result {
        Ok(()) => Ok(out),
        Err(e) if out.is_empty() => Err(e),
        // Say what had been done: the operator may want to undo it.
        Err(e) => Err(SetupError::Partial {
            done: out,
            cause: Box::new(e),
        }),
    }
}

/// Reverses [`setup`] for `vip`: removes it and its outer sources from the decap program
/// (detaching the program and removing its pins when it was the last VIP) and from `lo`. The ARP and rp_filter
/// sysctls stay: other VIPs may need them. Idempotent.
pub async fn undo(vip: Ipv4Addr, mode: Mode, dev: &str) -> Result<Vec<String>> {
    check_dev_name(dev)?;
    let lo = interface_index("lo")?;
    let mut out = Vec::new();
    if mode == Mode::Ipip {
        decap_remove(vip, dev, &mut out)?;
    }
    let (conn, handle, _) = rtnetlink::new_connection().map_err(SetupError::NetlinkSocket)?;
    let task = tokio::spawn(conn);
    let removed = remove_vip_from_lo(&handle, vip, lo).await;
    task.abort();
    out.push(removed?);
    let mut left =
        format!("left the sysctls as they are (arp_ignore/arp_announce on all, {dev}, lo");
    if mode == Mode::Ipip {
        left.push_str(&format!("; rp_filter on {dev}"));
    }
    left.push_str("): other VIPs may need them");
    out.push(left);
    Ok(out)
}

fn check_vip(vip: Ipv4Addr) -> Result<()> {
    if vip.is_unspecified() || vip.is_loopback() || vip.is_multicast() || vip.is_broadcast() {
        return Err(SetupError::BadVip(vip));
    }
    Ok(())
}

/// An interface name as the kernel allows it (it becomes a directory name under bpffs), not `lo`.
fn check_dev_name(dev: &str) -> Result<()> {
    if dev == "lo" {
        return Err(SetupError::DevIsLoopback);
    }
    if is_interface_name(dev) {
        Ok(())
    } else {
        Err(SetupError::NoSuchInterface(dev.to_string()))
    }
}

fn interface_index(dev: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(dev).map_err(|_| SetupError::NoSuchInterface(dev.to_string()))
}

// ---------------------------------------------------------------------------------------
// sysctls

fn sysctl_path(scope: &str, key: &str) -> PathBuf {
    Path::new("/proc/sys/net/ipv4/conf").join(scope).join(key)
}

fn read_sysctl(scope: &str, key: &str) -> Result<u32> {
    let path = sysctl_path(scope, key);
    let text =
        std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
    text.trim().parse().map_err(|_| SetupError::Io {
        what: format!("reading {}", path.display()),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number: {text:?}"),
        ),
    })
}

/// Sets `net.ipv4.conf.<scope>.<key>` to `want` unless its value is one of `fine`.
fn ensure_sysctl(scope: &str, key: &str, want: u32, fine: &[u32], why: &str) -> Result<String> {
    let name = format!("net.ipv4.conf.{scope}.{key}");
    let was = read_sysctl(scope, key)?;
    if fine.contains(&was) {
        return Ok(format!("{name} is already {was}{why}"));
    }
    let path = sysctl_path(scope, key);
    std::fs::write(&path, format!("{want}\n"))
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(format!("set {name}={want} (was {was}){why}"))
}

// ---------------------------------------------------------------------------------------
// the VIP on lo (rtnetlink)

/// The address messages of `vip` (any prefix length), on any interface.
async fn vip_addresses(handle: &rtnetlink::Handle, vip: Ipv4Addr) -> Result<Vec<AddressMessage>> {
    let found: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_address_filter(IpAddr::V4(vip))
        .execute()
        .try_collect()
        .await?;
    Ok(found)
}

/// The addresses of `vip` configured on `lo` (ifindex `lo`).
async fn vip_on_lo(
    handle: &rtnetlink::Handle,
    vip: Ipv4Addr,
    lo: u32,
) -> Result<Vec<AddressMessage>> {
    let all = vip_addresses(handle, vip).await?;
    Ok(all
        .into_iter()
        .filter(|m| m.header.index == lo && has_local(m, vip))
        .collect())
}

/// Refuses a VIP configured on an interface other than `lo`.
async fn check_vip_not_elsewhere(handle: &rtnetlink::Handle, vip: Ipv4Addr, lo: u32) -> Result<()> {
    for msg in vip_addresses(handle, vip).await? {
        if msg.header.index != lo {
            let dev = nix::net::if_::if_indextoname(msg.header.index)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("interface #{}", msg.header.index));
            return Err(SetupError::VipOnInterface { vip, dev });
        }
    }
    Ok(())
}

fn has_local(msg: &AddressMessage, vip: Ipv4Addr) -> bool {
    msg.attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) | AddressAttribute::Address(IpAddr::V4(a)) if *a == vip))
}

async fn add_vip_to_lo(handle: &rtnetlink::Handle, vip: Ipv4Addr, lo: u32) -> Result<String> {
    let on_lo = vip_on_lo(handle, vip, lo).await?;
    if let Some(m) = on_lo.first() {
        return Ok(format!("{vip}/{} is already on lo", m.header.prefix_len));
    }
    handle
        .address()
        .add(lo, IpAddr::V4(vip), 32)
        .execute()
        .await?;
    Ok(format!("added {vip}/32 to lo"))
}

async fn remove_vip_from_lo(handle: &rtnetlink::Handle, vip: Ipv4Addr, lo: u32) -> Result<String> {
    let on_lo = vip_on_lo(handle, vip, lo).await?;
    if on_lo.is_empty() {
        return Ok(format!("{vip} was not on lo"));
    }
    let mut prefixes = Vec::new();
    for msg in on_lo {
        prefixes.push(msg.header.prefix_len);
        handle.address().del(msg).execute().await?;
    }
    let shown: Vec<String> = prefixes.iter().map(|p| format!("{vip}/{p}")).collect();
    Ok(format!("removed {} from lo", shown.join(", ")))
}

// ---------------------------------------------------------------------------------------
// the decap program

/// What the pin directory of an interface holds.
enum Pinned {
    /// Nothing.
    Nothing,
    /// A link attached to this namespace's interface: in use.
    Live,
    /// Leftovers: no link, or a link whose interface is gone (ifindex 0 once detached).
    Stale,
    /// A live link attached to an interface of the same name in another namespace.
    Elsewhere,
}

/// Opens a pinned bpf object.
fn obj_get(path: &Path) -> Result<OwnedFd> {
    bpffs::obj_get(path).map_err(io_err(format!("opening pinned {}", path.display())))
}

/// (program id, ifindex) of an XDP bpf_link; ifindex is 0 once its interface is gone.
fn xdp_link_info(link: &OwnedFd, path: &Path) -> Result<Option<(u32, u32)>> {
    // SAFETY: bpf_link_info is plain old data; all zeroes is a valid value.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: info and len live across the call; len is info's size.
    let ret = unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(io_err(format!(
            "reading the link pinned at {}",
            path.display()
        ))(io::Error::from_raw_os_error(-ret)));
    }
    if info.type_ != BPF_LINK_TYPE_XDP {
        return Ok(None);
    }
    // SAFETY: type_ is XDP, so the xdp member of the union is the one the kernel filled in.
    let ifindex = unsafe { info.__bindgen_anon_1.xdp.ifindex };
    Ok(Some((info.prog_id, ifindex)))
}

/// Ids of the XDP programs attached to `ifindex` in this namespace (any mode).
fn attached_prog_ids(ifindex: u32) -> Vec<u32> {
    // SAFETY: an all-zero bpf_xdp_query_opts is the documented empty value; sz is set below.
    let mut opts: libbpf_sys::bpf_xdp_query_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_query_opts>() as _;
    // SAFETY: opts lives across the call.
    let ret = unsafe { libbpf_sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) };
    if ret < 0 {
        return Vec::new();
    }
    [
        opts.prog_id,
        opts.drv_prog_id,
        opts.skb_prog_id,
        opts.hw_prog_id,
    ]
    .into_iter()
    .filter(|id| *id != 0)
    .collect()
}

fn pinned_state(dir: &Path, ifindex: u32) -> Result<Pinned> {
    if !dir.exists() {
        return Ok(Pinned::Nothing);
    }
    let link_path = dir.join(LINK_PIN);
    if !link_path.exists() || !dir.join(VIPS_PIN).exists() {
        return Ok(Pinned::Stale);
    }
    let link = obj_get(&link_path)?;
    match xdp_link_info(&link, &link_path)? {
        None | Some((_, 0)) => Ok(Pinned::Stale),
        Some((prog_id, _)) if attached_prog_ids(ifindex).contains(&prog_id) => Ok(Pinned::Live),
        Some(_) => Ok(Pinned::Elsewhere),
    }
}

/// Refuses to mount a private bpffs: under `ip netns exec` (a new mount namespace with a fresh
/// /sys) a bpffs mounted here dies with the process, and the pinned link with it. A mount
/// namespace other than our parent's (ip netns exec and unshare exec us in place) or pid 1's
/// (when readable) gives it away.
fn check_bpffs_is_shared() -> Result<()> {
    let root = Path::new(bpffs::BPFFS_ROOT);
    if bpffs::is_bpffs(root) {
        return Ok(());
    }
    let Ok(ours) = std::fs::read_link("/proc/self/ns/mnt") else {
        return Ok(());
    };
    let parent = std::os::unix::process::parent_id();
    for pid in [1, parent] {
        if let Ok(theirs) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) {
            if theirs != ours {
                return Err(SetupError::PrivateMountNamespace);
            }
        }
    }
    Ok(())
}

/// Views a map key or value of the skeleton's `types` (repr(C) integers, no implicit padding)
/// as bytes.
pub fn bytes_of<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: T is a plain-old-data repr(C) type without implicit padding (see above).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

/// Reads a value of the skeleton's `types` from map bytes (shorter bytes leave zeroes).
pub fn from_bytes<T: Copy + Default>(b: &[u8]) -> T {
    let mut v = T::default();
    let n = b.len().min(std::mem::size_of::<T>());
    // SAFETY: copies at most size_of::<T>() bytes into a valid T; every bit pattern is valid for
    // these integer-only structs.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), n) };
    v
}

/// The `decap_sources` key that allows outer sources in `prefix` for IPIP to `vip`.
pub fn source_key(vip: Ipv4Addr, prefix: Ipv4Net) -> types::decap_source_key {
    types::decap_source_key {
        prefixlen: 32 + u32::from(prefix.prefix_len()),
        vip_be: u32::from_ne_bytes(vip.octets()),
        src_be: u32::from_ne_bytes(prefix.network().octets()),
    }
}

/// Every (VIP, prefix) pair in a `decap_sources` map.
fn all_sources(map: &MapHandle) -> Vec<(Ipv4Addr, Ipv4Net)> {
    map.keys()
        .filter_map(|k| {
            let k: types::decap_source_key = from_bytes(&k);
            let len = u8::try_from(k.prefixlen.checked_sub(32)?).ok()?;
            let src = Ipv4Addr::from(k.src_be.to_ne_bytes());
            Some((
                Ipv4Addr::from(k.vip_be.to_ne_bytes()),
                Ipv4Net::new(src, len).ok()?,
            ))
        })
        .collect()
}

/// The outer sources the decap program on `dev` accepts IPIP to `vip` from, sorted (none when
/// nothing is pinned for `dev`).
pub fn lb_sources(vip: Ipv4Addr, dev: &str) -> Result<Vec<Ipv4Net>> {
    let path = decap_pin_dir(dev).join(SOURCES_PIN);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let map = MapHandle::from_pinned_path(&path)
        .map_err(bpf_err(format!("opening {}", path.display())))?;
    Ok(lb_sources_in(&map, vip))
}

/// Refuses, before any change, a setup whose prefixes would not fit in the (pinned, when
/// `dir` holds a live program) `decap_sources` of `dev`, or pins of a program that has none.
fn check_sources_room(dir: &Path, dev: &str, vip: Ipv4Addr, lb_sources: &[Ipv4Net]) -> Result<()> {
    let path = dir.join(SOURCES_PIN);
    if !path.exists() {
        return Err(SetupError::PinsWithoutSources(dir.to_path_buf()));
    }
    let map = MapHandle::from_pinned_path(&path)
        .map_err(bpf_err(format!("opening {}", path.display())))?;
    let others = all_sources(&map)
        .into_iter()
        .filter(|(v, _)| *v != vip)
        .count();
    let want = others + distinct(lb_sources).len();
    if want > map.max_entries() as usize {
        return Err(SetupError::TooManyLbSources {
            dev: dev.to_string(),
            want,
            max: map.max_entries(),
        });
    }
    Ok(())
}

/// `prefixes` sorted, each once.
fn distinct(prefixes: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut v = prefixes.to_vec();
    v.sort();
    v.dedup();
    v
}

fn show(prefixes: &[Ipv4Net]) -> String {
    let shown: Vec<String> = prefixes.iter().map(Ipv4Net::to_string).collect();
    shown.join(", ")
}

/// Makes the prefixes of `vip` in the pinned `decap_sources` of `dir` exactly `lb_sources`
/// (the new ones first, so that the VIP's balancers are never refused meanwhile).
fn set_sources(
    dir: &Path,
    dev: &str,
    vip: Ipv4Addr,
    lb_sources: &[Ipv4Net],
    out: &mut Vec<String>,
) -> Result<()> {
    let path = dir.join(SOURCES_PIN);
    let map = MapHandle::from_pinned_path(&path)
        .map_err(bpf_err(format!("opening {}", path.display())))?;
    let want = distinct(lb_sources);
    let had = lb_sources_in(&map, vip);
    let added: Vec<Ipv4Net> = want.iter().filter(|p| !had.contains(p)).copied().collect();
    let removed: Vec<Ipv4Net> = had.iter().filter(|p| !want.contains(p)).copied().collect();
    for p in &added {
        map.update(
            bytes_of(&source_key(vip, *p)),
            &1u32.to_ne_bytes(),
            MapFlags::ANY,
        )
        .map_err(bpf_err(format!("adding {p} to {SOURCES_PIN} for {vip}")))?;
    }
    for p in &removed {
        map.delete(bytes_of(&source_key(vip, *p)))
            .map_err(bpf_err(format!(
                "removing {p} from {SOURCES_PIN} for {vip}"
            )))?;
    }
    let mut changes = Vec::new();
    if !added.is_empty() {
        changes.push(format!("added {}", show(&added)));
    }
    if !removed.is_empty() {
        changes.push(format!("removed {}", show(&removed)));
    }
    out.push(format!(
        "IPIP to {vip} on {dev} is decapsulated only from {} ({}); other outer sources are dropped",
        show(&want),
        if changes.is_empty() {
            "already so".to_string()
        } else {
            changes.join("; ")
        }
    ));
    Ok(())
}

/// The prefixes of `vip` in a `decap_sources` map, sorted.
fn lb_sources_in(map: &MapHandle, vip: Ipv4Addr) -> Vec<Ipv4Net> {
    let mut mine: Vec<Ipv4Net> = all_sources(map)
        .into_iter()
        .filter(|(v, _)| *v == vip)
        .map(|(_, p)| p)
        .collect();
    mine.sort();
    mine
}

/// Makes sure the decap program runs on `dev` (loading, attaching and pinning it if needed),
/// that it accepts IPIP to `vip` from `lb_sources` only, and that `vip` is one of its VIPs.
fn decap_add(
    vip: Ipv4Addr,
    dev: &str,
    ifindex: u32,
    lb_sources: &[Ipv4Net],
    out: &mut Vec<String>,
) -> Result<()> {
    check_bpffs_is_shared()?;
    let root = Path::new(bpffs::BPFFS_ROOT);
    let mounted_before = bpffs::is_bpffs(root);
    let dir = decap_pin_dir(dev);
    match pinned_state(&dir, ifindex)? {
        Pinned::Live => out.push(format!(
            "the IPIP decap program is already attached to {dev} (pinned in {})",
            dir.display()
        )),
        Pinned::Elsewhere => {
            return Err(SetupError::PinnedElsewhere {
                dir,
                dev: dev.to_string(),
            })
        }
        state => {
            if matches!(state, Pinned::Stale) {
                bpffs::remove_pins(&dir)?;
                out.push(format!(
                    "removed stale pins in {} (their interface is gone)",
                    dir.display()
                ));
            }
            bpffs::ensure_bpffs(&dir)?;
            if !mounted_before {
                out.push("mounted bpffs on /sys/fs/bpf".to_string());
            }
            match attach_decap(dev, ifindex, &dir) {
                Ok(generic) => out.push(format!(
                    "attached the IPIP decap program to {dev} ({} XDP); link and maps pinned in {}",
                    if generic { "generic" } else { "native" },
                    dir.display()
                )),
                Err(e) => {
                    // Leave nothing half-made behind.
                    let _ = bpffs::remove_pins(&dir);
                    return Err(e);
                }
            }
        }
    }
    set_sources(&dir, dev, vip, lb_sources, out)?;
    let vips = MapHandle::from_pinned_path(dir.join(VIPS_PIN))
        .map_err(bpf_err(format!("opening {}", dir.join(VIPS_PIN).display())))?;
    let key = vip.octets();
    let present = vips
        .lookup(&key, MapFlags::ANY)
        .map_err(bpf_err("reading decap_vips"))?
        .is_some();
    if !present {
        vips.update(&key, &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err(format!("adding {vip} to decap_vips")))?;
    }
    let n = vips.keys().count();
    out.push(format!(
        "{vip} {} the decap program's VIPs on {dev} ({n} in all)",
        if present {
            "is already one of"
        } else {
            "added to"
        }
    ));
    Ok(())
}

/// Loads the decap program with its maps pinned in `dir`, attaches it to `ifindex` through a
/// bpf_link (native XDP, else generic) and pins the link. Returns whether generic mode is used.
fn attach_decap(dev: &str, ifindex: u32, dir: &Path) -> Result<bool> {
    let mut storage = MaybeUninit::uninit();
    let mut open = DecapSkelBuilder::default()
        .open(&mut storage)
        .map_err(bpf_err("opening the decap BPF object"))?;
    open.maps
        .decap_vips
        .set_pin_path(dir.join(VIPS_PIN))
        .map_err(bpf_err("pin path of decap_vips"))?;
    open.maps
        .decap_stats
        .set_pin_path(dir.join(STATS_PIN))
        .map_err(bpf_err("pin path of decap_stats"))?;
    open.maps
        .decap_sources
        .set_pin_path(dir.join(SOURCES_PIN))
        .map_err(bpf_err("pin path of decap_sources"))?;
    // libbpf pins the maps while loading.
    let skel = open.load().map_err(bpf_err("loading the decap program"))?;
    let prog_fd = skel.progs.xdplb_decap.as_fd().as_raw_fd();
    let (link, generic) = match bpffs::link_xdp(prog_fd, ifindex, libbpf_sys::XDP_FLAGS_DRV_MODE) {
        Ok(fd) => (fd, false),
        Err(native) => match bpffs::link_xdp(prog_fd, ifindex, libbpf_sys::XDP_FLAGS_SKB_MODE) {
            Ok(fd) => (fd, true),
            Err(_) if matches!(native.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                return Err(SetupError::XdpBusy(dev.to_string()))
            }
            Err(generic) => {
                return Err(SetupError::Attach {
                    dev: dev.to_string(),
                    native,
                    generic,
                })
            }
        },
    };
    let link_path = dir.join(LINK_PIN);
    bpffs::pin(&link, &link_path).map_err(io_err(format!(
        "pinning the link at {}",
        link_path.display()
    )))?;
    // Dropping `link` and `skel` closes our fds; the pins keep the link (and so the program)
    // and the maps alive.
    Ok(generic)
}

/// The decap program's counters, summed over CPUs.
pub fn sum_stats<B: AsRef<[u8]>>(per_cpu: &[B]) -> types::decap_stats {
    let mut sum = types::decap_stats::default();
    for v in per_cpu {
        let s: types::decap_stats = from_bytes(v.as_ref());
        sum.decapsulated += s.decapsulated;
        sum.passed += s.passed;
        sum.dropped_source += s.dropped_source;
        sum.dropped_ce_not_ect += s.dropped_ce_not_ect;
    }
    sum
}

/// The counters of the pinned `decap_stats`, summed over CPUs.
fn decap_counts(dir: &Path) -> Option<types::decap_stats> {
    let stats = MapHandle::from_pinned_path(dir.join(STATS_PIN)).ok()?;
    let per_cpu = stats
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()??;
    Some(sum_stats(&per_cpu))
}

/// Removes the prefixes of `vip` from the pinned `decap_sources` in `dir` (if any).
fn remove_sources(dir: &Path, dev: &str, vip: Ipv4Addr, out: &mut Vec<String>) -> Result<()> {
    let path = dir.join(SOURCES_PIN);
    if !path.exists() {
        return Ok(());
    }
    let map = MapHandle::from_pinned_path(&path)
        .map_err(bpf_err(format!("opening {}", path.display())))?;
    let had = lb_sources_in(&map, vip);
    for p in &had {
        map.delete(bytes_of(&source_key(vip, *p)))
            .map_err(bpf_err(format!(
                "removing {p} from {SOURCES_PIN} for {vip}"
            )))?;
    }
    if !had.is_empty() {
        out.push(format!(
            "removed the outer sources of {vip} on {dev} ({})",
            show(&had)
        ));
    }
    Ok(())
}

/// Removes `vip` from the decap program on `dev`; unpins (detaching it) when none is left.
fn decap_remove(vip: Ipv4Addr, dev: &str, out: &mut Vec<String>) -> Result<()> {
    check_bpffs_is_shared()?;
    let dir = decap_pin_dir(dev);
    // The interface may be gone already; then only stale pins can be left.
    let ifindex = interface_index(dev).unwrap_or(0);
    match pinned_state(&dir, ifindex)? {
        Pinned::Live => {}
        Pinned::Nothing => {
            out.push(format!(
                "no decap program is pinned for {dev} ({} does not exist)",
                dir.display()
            ));
            return Ok(());
        }
        Pinned::Stale => {
            bpffs::remove_pins(&dir)?;
            out.push(format!(
                "removed stale pins in {} (their interface is gone)",
                dir.display()
            ));
            return Ok(());
        }
        Pinned::Elsewhere => {
            return Err(SetupError::PinnedElsewhere {
                dir,
                dev: dev.to_string(),
            })
        }
    }
    let vips_path = dir.join(VIPS_PIN);
    let vips = MapHandle::from_pinned_path(&vips_path)
        .map_err(bpf_err(format!("opening {}", vips_path.display())))?;
    let key = vip.octets();
    let present = vips
        .lookup(&key, MapFlags::ANY)
        .map_err(bpf_err("reading decap_vips"))?
        .is_some();
    if present {
        vips.delete(&key)
            .map_err(bpf_err(format!("removing {vip} from decap_vips")))?;
        out.push(format!(
            "removed {vip} from the decap program's VIPs on {dev}"
        ));
    } else {
        out.push(format!(
            "{vip} was not one of the decap program's VIPs on {dev}"
        ));
    }
    remove_sources(&dir, dev, vip, out)?;
    let left = vips.keys().count();
    drop(vips);
    if left > 0 {
        out.push(format!(
            "the decap program stays on {dev} for {left} other VIP{}",
            if left == 1 { "" } else { "s" }
        ));
        return Ok(());
    }
    let counts = decap_counts(&dir);
    // Unpinning the link drops its last reference: the kernel detaches the program.
    bpffs::remove_pins(&dir)?;
    let mut line = format!(
        "no VIP left: detached the decap program from {dev} and removed {}",
        dir.display()
    );
    if let Some(c) = counts {
        line.push_str(&format!(
            " (it decapsulated {} packets, passed {}, dropped {} from other outer sources and {} CE-marked Not-ECT)",
            c.decapsulated, c.passed, c.dropped_source, c.dropped_ce_not_ect
        ));
    }
    out.push(line);
    // The root directory goes too once no interface uses it.
    if std::fs::read_dir(DECAP_PIN_ROOT).is_ok_and(|mut d| d.next().is_none()) {
        let _ = std::fs::remove_dir(DECAP_PIN_ROOT);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("l2dsr".parse::<Mode>(), Ok(Mode::L2dsr));
        assert_eq!("IPIP".parse::<Mode>(), Ok(Mode::Ipip));
        assert!("nat"
            .parse::<Mode>()
            .unwrap_err()
            .contains("no preparation"));
        assert!("dsr".parse::<Mode>().is_err());
        assert_eq!(Mode::Ipip.to_string(), "ipip");
    }

    #[test]
    fn vips_are_checked() {
        for bad in ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255"] {
            let ip: Ipv4Addr = bad.parse().unwrap();
            assert!(matches!(check_vip(ip), Err(SetupError::BadVip(_))), "{bad}");
        }
        assert!(check_vip(Ipv4Addr::new(10, 0, 0, 10)).is_ok());
    }

    #[test]
    fn lb_sources_are_checked() {
        let p = |s: &str| -> Ipv4Net { s.parse().expect("prefix") };
        assert!(check_lb_sources(Mode::Ipip, &[p("10.0.1.1/32"), p("10.0.2.0/28")]).is_ok());
        assert!(check_lb_sources(Mode::L2dsr, &[]).is_ok());
        let msg = |mode, list: &[Ipv4Net]| {
            check_lb_sources(mode, list)
                .expect_err("refused")
                .to_string()
        };
        assert!(msg(Mode::Ipip, &[]).starts_with("--mode ipip needs at least one --lb-source"));
        assert!(msg(Mode::L2dsr, &[p("10.0.1.1/32")]).contains("applies to --mode ipip only"));
        assert!(msg(Mode::Ipip, &[p("10.0.1.1/32"), p("0.0.0.0/0")]).contains("from anyone"));
        assert_eq!(
            msg(Mode::Ipip, &[p("10.0.1.1/24")]),
            "--lb-source 10.0.1.1/24: expected a prefix without host bits (did you mean 10.0.1.0/24?)"
        );
    }

    #[test]
    fn source_keys_match_the_program() {
        // The program looks up (VIP, outer source) with prefixlen 64.
        let k = source_key(
            Ipv4Addr::new(10, 0, 0, 10),
            "10.0.2.16/28".parse().expect("prefix"),
        );
        assert_eq!(k.prefixlen, 32 + 28);
        assert_eq!(bytes_of(&k)[4..], [10, 0, 0, 10, 10, 0, 2, 16]);
        assert_eq!(std::mem::size_of::<types::decap_source_key>(), 12);
        let back: types::decap_source_key = from_bytes(bytes_of(&k));
        assert_eq!(
            (back.prefixlen, back.vip_be, back.src_be),
            (k.prefixlen, k.vip_be, k.src_be)
        );
    }

    #[test]
    fn pin_layout() {
        assert_eq!(
            decap_pin_dir("eth0"),
            PathBuf::from("/sys/fs/bpf/xdplb-decap/eth0")
        );
    }
}
