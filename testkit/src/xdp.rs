//! XDP programs on interfaces of a [`NetNs`]: attaching and detaching in native (driver) mode,
//! and [`attach_xdp_pass`], the XDP_PASS program (`bpf/xdp_pass.bpf.c`) of the veth ends that
//! face a load balancer.
//!
//! Why XDP_PASS there: when the LB's XDP program returns XDP_TX on a veth, the kernel queues
//! the frame on the peer's XDP ring but only schedules the peer's NAPI if the peer itself has an
//! XDP program (`veth_xdp_flush`); with GRO alone the frame waits until unrelated traffic wakes
//! the peer (seen: one-arm connections stalling for seconds). XDP_REDIRECT flushes either way. A
//! pass program on the peer makes both verdicts deliver at once and changes nothing else.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{OpenObject, Xdp, XdpFlags};

use crate::netns::NetNs;

xdplb_bpffs::skeleton!(
    /// Skeleton of `testkit/bpf/xdp_pass.bpf.c`.
    mod pass_skel = "xdp_pass.skel.rs"
);

/// Attaches the program `prog` in native mode to `ifname` in `ns` through netlink, replacing
/// whatever program is there. The attachment holds the program: it lives until [`detach`] or
/// until the interface goes away with its namespace.
pub fn attach(ns: &NetNs, ifname: &str, prog: BorrowedFd<'_>) -> Result<()> {
    let index = ns.ifindex(ifname)?;
    ns.run(move || Xdp::new(prog).attach(index as i32, XdpFlags::DRV_MODE))?
        .with_context(|| format!("attaching XDP to {}:{ifname}", ns.name()))
}

/// Detaches the native-mode XDP program of `ifname` in `ns`.
pub fn detach(ns: &NetNs, ifname: &str) -> Result<()> {
    let index = ns.ifindex(ifname)?;
    // SAFETY: bpf_xdp_detach takes an ifindex, flags and optional (null) options.
    let rc = ns.run(move || unsafe {
        libbpf_sys::bpf_xdp_detach(index as i32, XdpFlags::DRV_MODE.bits(), std::ptr::null())
    })?;
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc))
            .with_context(|| format!("detaching XDP from {}:{ifname}", ns.name()));
    }
    Ok(())
}

/// Attaches an XDP_PASS program in native mode to `ifname` inside `ns`. The program is loaded
/// for this attachment alone and held by it until the interface goes away.
pub fn attach_xdp_pass(ns: &NetNs, ifname: &str) -> Result<()> {
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let open = pass_skel::XdpPassSkelBuilder::default()
        .open(&mut storage)
        .context("opening the XDP_PASS program")?;
    let skel = open.load().context("loading the XDP_PASS program")?;
    attach(ns, ifname, skel.progs.xlb_pass.as_fd())
}
