//! The backend-side IPIP decapsulation program (`bpf/decap.bpf.c`), loaded on its own and driven
//! with BPF_PROG_TEST_RUN, as `lbctl backend-setup --mode ipip` would configure it.

use std::mem::MaybeUninit;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};
use xdplb_backend::decap_skel::{DecapSkel, DecapSkelBuilder};
use xdplb_backend::{bytes_of, source_key, sum_stats};

use xdplb_testkit::{run_xdp, Run};

/// ECN codepoints (RFC 3168).
pub const NOT_ECT: u8 = 0;
pub const ECT1: u8 = 1;
pub const ECT0: u8 = 2;
pub const CE: u8 = 3;

/// RFC 6040 section 4.2, figure 4 (normal mode), as printed there: rows are the arriving inner
/// header (Not-ECT, ECT(0), ECT(1), CE), columns the arriving outer header in the order of
/// [`RFC6040_OUTER`]; `None` is "drop".
pub const RFC6040_DECAP: [(u8, [Option<u8>; 4]); 4] = [
    (NOT_ECT, [Some(NOT_ECT), Some(NOT_ECT), Some(NOT_ECT), None]),
    (ECT0, [Some(ECT0), Some(ECT0), Some(ECT1), Some(CE)]),
    (ECT1, [Some(ECT1), Some(ECT1), Some(ECT1), Some(CE)]),
    (CE, [Some(CE), Some(CE), Some(CE), Some(CE)]),
];
pub const RFC6040_OUTER: [u8; 4] = [NOT_ECT, ECT0, ECT1, CE];

/// The inner ECN field after decapsulation by [`RFC6040_DECAP`] (`None`: drop), from the ECN
/// bits (the low two of the TOS bytes) of the outer and the inner header.
pub fn rfc6040_decap(outer: u8, inner: u8) -> Option<u8> {
    let (_, row) = RFC6040_DECAP.iter().find(|(i, _)| *i == inner & 3)?;
    let col = RFC6040_OUTER.iter().position(|o| *o == outer & 3)?;
    row[col]
}

/// A loaded decap program (not attached anywhere).
pub struct Decap {
    skel: DecapSkel<'static>,
}

/// The decap program's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecapStats {
    pub decapsulated: u64,
    pub passed: u64,
    /// IPIP to a VIP from an outer source not allowed for it.
    pub dropped_source: u64,
    /// Outer CE on a Not-ECT inner packet (RFC 6040).
    pub dropped_ce_not_ect: u64,
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

    /// Allows outer sources in `prefix` for IPIP to `vip`, as `backend-setup --lb-source` does.
    pub fn add_source(&self, vip: Ipv4Addr, prefix: Ipv4Net) -> Result<()> {
        self.skel
            .maps
            .decap_sources
            .update(
                bytes_of(&source_key(vip, prefix)),
                &1u32.to_ne_bytes(),
                MapFlags::ANY,
            )
            .with_context(|| format!("adding {prefix} to decap_sources for {vip}"))
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
        let s = sum_stats(&per_cpu);
        Ok(DecapStats {
            decapsulated: s.decapsulated,
            passed: s.passed,
            dropped_source: s.dropped_source,
            dropped_ce_not_ect: s.dropped_ce_not_ect,
        })
    }
}
