//! The end-to-end section's BPF programs (`bench/bpf/e2e_*.bpf.c`): the live-frames generator,
//! the counting sink and the floor forwarder, loaded through their skeletons and attached in
//! native mode to interfaces inside the bench's own namespaces.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};
use xdplb_testkit::xdp::attach;
pub use xdplb_testkit::xdp::detach;
use xdplb_testkit::NetNs;

#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    unused_imports
)]
mod gen_skel {
    //! Skeleton of `bench/bpf/e2e_gen.bpf.c`.
    include!(concat!(env!("OUT_DIR"), "/e2e_gen.skel.rs"));
}
#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    unused_imports
)]
mod sink_skel {
    //! Skeleton of `bench/bpf/e2e_sink.bpf.c`.
    include!(concat!(env!("OUT_DIR"), "/e2e_sink.skel.rs"));
}
#[allow(
    clippy::all,
    dead_code,
    non_camel_case_types,
    non_snake_case,
    unused_imports
)]
mod fwd_skel {
    //! Skeleton of `bench/bpf/e2e_fwd.bpf.c`.
    include!(concat!(env!("OUT_DIR"), "/e2e_fwd.skel.rs"));
}

use fwd_skel::{E2eFwdSkel, E2eFwdSkelBuilder};
use gen_skel::{E2eGenSkel, E2eGenSkelBuilder};
use sink_skel::{E2eSinkSkel, E2eSinkSkelBuilder};

/// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames leave through the real device instead of coming back.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frame size of the generated packets (Ethernet header included, no FCS).
pub const FRAME_LEN: usize = 64;
/// Frames per BPF_PROG_TEST_RUN call: one call is the unit in which the time bound is checked.
const CHUNK: u32 = 1 << 16;

/// The skeletons borrow their object storage for life; the bench loads a handful, so the
/// (small) storage is leaked rather than threaded through lifetimes.
fn storage() -> &'static mut MaybeUninit<OpenObject> {
    Box::leak(Box::new(MaybeUninit::uninit()))
}

/// The MAC address of `ifname` inside `ns`.
pub fn mac(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("`ip -j link show {ifname}` printed no JSON: {out}"))?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {ifname} in {out}"))?;
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        bail!("bad MAC {text:?} of {ifname}");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("bad MAC {text:?}"))?;
    }
    Ok(mac)
}

// ---------------------------------------------------------------------------------------
// Sink

/// A loaded sink: counts and drops every frame of the interface it is attached to.
pub struct Sink {
    skel: E2eSinkSkel<'static>,
}

/// The sink's counts, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounts {
    pub all: u64,
    pub udp: u64,
    pub ipip: u64,
}

impl SinkCounts {
    /// The counts since `earlier`.
    pub fn since(&self, earlier: &SinkCounts) -> SinkCounts {
        SinkCounts {
            all: self.all.saturating_sub(earlier.all),
            udp: self.udp.saturating_sub(earlier.udp),
            ipip: self.ipip.saturating_sub(earlier.ipip),
        }
    }

    /// The sum of two sinks' counts.
    pub fn plus(&self, other: &SinkCounts) -> SinkCounts {
        SinkCounts {
            all: self.all + other.all,
            udp: self.udp + other.udp,
            ipip: self.ipip + other.ipip,
        }
    }
}

impl Sink {
    /// Loads a sink with counters of its own and attaches it to `ifname` in `ns`.
    pub fn attach(ns: &NetNs, ifname: &str) -> Result<Sink> {
        let open = E2eSinkSkelBuilder::default()
            .open(storage())
            .context("opening the e2e sink object")?;
        let skel = open.load().context("loading the e2e sink program")?;
        attach(ns, ifname, skel.progs.e2e_sink.as_fd())?;
        Ok(Sink { skel })
    }

    /// The counters now.
    pub fn counts(&self) -> Result<SinkCounts> {
        let get = |which: sink_skel::types::e2e_sink_counter| -> Result<u64> {
            let key = which.0.to_ne_bytes();
            let per_cpu = self
                .skel
                .maps
                .e2e_sink_counts
                .lookup_percpu(&key, MapFlags::ANY)
                .context("reading the sink's counters")?
                .context("the sink's counter slot is missing")?;
            Ok(per_cpu
                .iter()
                .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .sum())
        };
        use sink_skel::types::e2e_sink_counter as C;
        Ok(SinkCounts {
            all: get(C::E2E_SINK_ALL)?,
            udp: get(C::E2E_SINK_UDP)?,
            ipip: get(C::E2E_SINK_IPIP)?,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Floor forwarder

/// One next hop of the floor forwarder: the LB interface to leave by and the MACs to write.
#[derive(Debug, Clone)]
pub struct FwdTarget {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// The loaded floor forwarder (not attached until [`Fwd::attach`]).
pub struct Fwd {
    skel: E2eFwdSkel<'static>,
}

impl Fwd {
    /// Loads it with `targets` (picked by source port modulo their number), whose interface
    /// indexes are those of `lb_ns`.
    pub fn load(lb_ns: &NetNs, targets: &[FwdTarget]) -> Result<Fwd> {
        let mut open = E2eFwdSkelBuilder::default()
            .open(storage())
            .context("opening the e2e forwarder object")?;
        open.maps
            .rodata_data
            .as_deref_mut()
            .context("the forwarder's read-only data is not memory-mapped")?
            .n_targets = u32::try_from(targets.len()).context("too many targets")?;
        let skel = open.load().context("loading the e2e forwarder")?;
        for (slot, t) in targets.iter().enumerate() {
            let key = (slot as u32).to_ne_bytes();
            let target = fwd_skel::types::e2e_fwd_target {
                dst_mac: t.dst_mac,
                src_mac: t.src_mac,
            };
            // SAFETY: e2e_fwd_target is repr(C) plain data (two byte arrays, no padding);
            // the slice covers exactly the value and lives no longer than it.
            let value = unsafe {
                std::slice::from_raw_parts(
                    (&target as *const fwd_skel::types::e2e_fwd_target).cast::<u8>(),
                    std::mem::size_of_val(&target),
                )
            };
            skel.maps
                .e2e_fwd_targets
                .update(&key, value, MapFlags::ANY)
                .context("writing a forwarder target")?;
            // A devmap resolves the ifindex in the network namespace of the updating thread.
            let ports_fd = skel.maps.e2e_fwd_ports.as_fd().as_raw_fd();
            let ifindex = t.ifindex;
            let rc = lb_ns.run(move || {
                let slot = slot as u32;
                // SAFETY: ports_fd is a live map fd; key and value are 4-byte buffers that
                // outlive the call, as the devmap's key and value sizes require.
                unsafe {
                    libbpf_sys::bpf_map_update_elem(
                        ports_fd,
                        (&slot as *const u32).cast(),
                        (&ifindex as *const u32).cast(),
                        u64::from(libbpf_sys::BPF_ANY),
                    )
                }
            })?;
            if rc < 0 {
                return Err(std::io::Error::from_raw_os_error(-rc))
                    .context("writing a forwarder port (devmap)");
            }
        }
        Ok(Fwd { skel })
    }

    /// Attaches it to `ifname` in `ns`.
    pub fn attach(&self, ns: &NetNs, ifname: &str) -> Result<()> {
        attach(ns, ifname, self.skel.progs.e2e_fwd.as_fd())
    }
}

// ---------------------------------------------------------------------------------------
// Generator

/// What the generator sends: from `n_addrs` addresses starting at `src_base`, ports
/// `src_port_base..+n_ports`, to `dst:dst_port`, between the given MACs.
#[derive(Debug, Clone)]
pub struct Flows {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub src_base: Ipv4Addr,
    pub n_addrs: u32,
    pub src_port_base: u16,
    pub n_ports: u32,
}

/// The loaded generator.
pub struct Generator {
    skel: E2eGenSkel<'static>,
}

/// What one generator run did.
#[derive(Debug, Clone, Copy)]
pub struct GenRun {
    /// Frames handed to the program (each sent with XDP_TX).
    pub sent: u64,
    /// Wall time from the first call's start to the last call's end.
    pub elapsed: Duration,
}

impl Generator {
    /// Loads it (configure with [`Generator::set_flows`]).
    pub fn load() -> Result<Generator> {
        let open = E2eGenSkelBuilder::default()
            .open(storage())
            .context("opening the e2e generator object")?;
        let skel = open.load().context("loading the e2e generator")?;
        Ok(Generator { skel })
    }

    /// Sets what the next frames look like (takes effect at once: the config is mmap'd).
    pub fn set_flows(&mut self, f: &Flows) -> Result<()> {
        let bss = self
            .skel
            .maps
            .bss_data
            .as_deref_mut()
            .context("the generator's .bss is not memory-mapped")?;
        let cfg = &mut bss.gen_cfg;
        cfg.dst_mac = f.dst_mac;
        cfg.src_mac = f.src_mac;
        cfg.dst_addr = u32::from_ne_bytes(f.dst.octets());
        cfg.src_base = u32::from_ne_bytes(f.src_base.octets());
        cfg.dst_port = f.dst_port.to_be();
        cfg.src_port_base = f.src_port_base;
        cfg.n_addrs = f.n_addrs.max(1);
        cfg.n_ports = f.n_ports.max(1);
        Ok(())
    }

    /// Sends up to `packets` frames out of `ifname` in `ns` (BPF_PROG_TEST_RUN with live
    /// frames, `CHUNK` per call), stopping early once `limit` has passed. The sending thread is
    /// pinned to `cpu`, so the whole chain (generator, LB, sink: veth delivers in the softirq
    /// of the sending CPU) runs on that CPU.
    pub fn send(
        &self,
        ns: &NetNs,
        ifname: &str,
        cpu: usize,
        packets: u64,
        limit: Duration,
    ) -> Result<GenRun> {
        let index = ns.ifindex(ifname)?;
        // The program object is not Send; its fd is all the sending thread needs.
        let prog_fd = self.skel.progs.e2e_gen.as_fd().as_raw_fd();
        ns.run(move || -> Result<GenRun> {
            pin_to_cpu(cpu)?;
            let frame = [0u8; FRAME_LEN];
            // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
            // egress_ifindex (u32 each).
            let ctx: [u32; 6] = [0, FRAME_LEN as u32, 0, index, 0, 0];
            let start = Instant::now();
            let mut sent = 0u64;
            while sent < packets && start.elapsed() < limit {
                let n = CHUNK.min(u32::try_from(packets - sent).unwrap_or(CHUNK));
                test_run_live(prog_fd, &frame, &ctx, n)?;
                sent += u64::from(n);
            }
            Ok(GenRun {
                sent,
                elapsed: start.elapsed(),
            })
        })?
    }
}

/// One BPF_PROG_TEST_RUN call with live frames: `repeat` copies of `frame` go through the
/// program and out of the device `ctx` names.
fn test_run_live(prog_fd: i32, frame: &[u8], ctx: &[u32; 6], repeat: u32) -> Result<()> {
    // SAFETY: all-zero is a valid bpf_test_run_opts; the fields set below point to live
    // buffers of the stated sizes for the duration of the call.
    let mut opts: libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _;
    opts.data_in = frame.as_ptr().cast();
    opts.data_size_in = frame.len() as u32;
    opts.ctx_in = ctx.as_ptr().cast();
    opts.ctx_size_in = std::mem::size_of_val(ctx) as u32;
    opts.flags = BPF_F_TEST_XDP_LIVE_FRAMES;
    opts.repeat = repeat as i32;
    // SAFETY: see above; the kernel writes only into `opts`.
    let rc = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog_fd, &mut opts) };
    if rc < 0 {
        return Err(std::io::Error::from_raw_os_error(-rc))
            .context("BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES");
    }
    Ok(())
}

/// Pins the calling thread to one CPU.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).context("CPU out of range")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning the generator to CPU {cpu}"))
}
