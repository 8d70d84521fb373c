//! The backend-side IPIP decapsulation program (`bpf/decap.bpf.c`), loaded on its own and driven
//! with BPF_PROG_TEST_RUN, as `lbctl backend-setup --mode ipip` would configure it.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};
use xdplb_backend::decap_skel::{types, DecapSkel, DecapSkelBuilder};

use xdplb_testkit::{run_xdp, Run};

/// A loaded decap program (not attached anywhere).
pub struct Decap {
    skel: DecapSkel<'static>,
}

/// The decap program's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecapStats {
    pub decapsulated: u64,
    pub passed: u64,
}

impl Decap {
    pub fn load() -> Result<Decap> {
        // As in Dataplane::load: the skeleton borrows its storage for its whole life.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = DecapSkelBuilder::default()
            .open(storage)
            .context("opening the decap BPF object")?;
        let skel = open.load().context("loading the decap program")?;
        Ok(Decap { skel })
    }

    /// Puts `vip` in decap_vips (key: the address in wire order, value 1).
    pub fn add_vip(&self, vip: Ipv4Addr) -> Result<()> {
        self.skel
            .maps
            .decap_vips
            .update(&vip.octets(), &1u32.to_ne_bytes(), MapFlags::ANY)
            .with_context(|| format!("adding {vip} to decap_vips"))
    }

    /// Runs `frame` through the program (one run).
    pub fn run(&self, ifindex: u32, frame: &[u8]) -> Result<Run> {
        run_xdp(&self.skel.progs.xdplb_decap, ifindex, frame)
    }

    pub fn stats(&self) -> Result<DecapStats> {
        let per_cpu = self
            .skel
            .maps
            .decap_stats
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .context("reading decap_stats")?
            .unwrap_or_default();
        let mut sum = DecapStats::default();
        for cpu in per_cpu {
            let mut s = types::decap_stats::default();
            let n = cpu.len().min(std::mem::size_of::<types::decap_stats>());
            // SAFETY: decap_stats is two u64 (no padding); at most its size is copied.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    cpu.as_ptr(),
                    (&mut s as *mut types::decap_stats).cast::<u8>(),
                    n,
                )
            };
            sum.decapsulated += s.decapsulated;
            sum.passed += s.passed;
        }
        Ok(sum)
    }
}
