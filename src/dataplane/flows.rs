//! The flow tables v2 (`bpf/flow.h`, `bpf/maps.h`) from user space: sizing them before load,
//! creating the per-CPU DSR tables (`dsr_v2`'s inner maps), the sweep (`lb_flow_gc`, run through
//! BPF_PROG_TEST_RUN), and handles on every flow table for walks.

use std::os::fd::{AsFd, AsRawFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::{bpf_err, size_map, DataplaneError};
use crate::skel::{types, OpenLbSkel};

/// Names of the shared flow tables; the per-CPU DSR tables are `dsr_v2`'s inner maps.
pub(crate) const SYN_TABLE: &str = "flows_syn_v2";
pub(crate) const NAT_FWD_TABLE: &str = "nat_fwd_v2";
pub(crate) const NAT_REV_TABLE: &str = "nat_rev_v2";
pub(crate) const NAT_REV_SYN_TABLE: &str = "nat_rev_syn_v2";
pub(crate) const DSR_TABLES: &str = "dsr_v2";

/// How big the flow tables are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSizes {
    /// Established flows: `nat_fwd_v2`, and the DSR tables together.
    pub established: u32,
    /// Embryonic TCP flows (`flows_syn_v2`).
    pub embryonic: u32,
}

impl Default for TableSizes {
    fn default() -> Self {
        Self {
            established: types::lb_limits::LB_DEFAULT_CT_SIZE.0,
            embryonic: types::lb_limits::LB_DEFAULT_SYN_SIZE.0,
        }
    }
}

impl TableSizes {
    /// Entries of each per-CPU DSR table: the established size shared by the CPUs (at least
    /// 1,024 each).
    pub fn dsr_per_cpu(&self, cpus: usize) -> u32 {
        (self.established / cpus.max(1) as u32).max(1024)
    }
}

/// Possible CPUs (the slots of `dsr_v2` lbd fills).
pub(crate) fn cpus() -> Result<usize, DataplaneError> {
    libbpf_rs::num_possible_cpus().map_err(bpf_err("counting possible CPUs"))
}

/// Sizes the flow tables of the object before load, the inner-map template of `dsr_v2`
/// included (the kernel accepts only inner maps of the template's size). The template it
/// returns must stay open until the object is loaded.
pub(crate) fn prepare(
    open: &mut OpenLbSkel<'_>,
    sizes: TableSizes,
) -> Result<MapHandle, DataplaneError> {
    let cpus = cpus()?;
    let max_cpus = types::lb_limits::LB_MAX_CPUS.0 as usize;
    if cpus > max_cpus {
        return Err(DataplaneError::Full(format!(
            "{cpus} possible CPUs, the DSR tables have {max_cpus} slots"
        )));
    }
    size_map(&mut open.maps.flows_syn_v2, sizes.embryonic, SYN_TABLE)?;
    size_map(&mut open.maps.nat_fwd_v2, sizes.established, NAT_FWD_TABLE)?;
    size_map(&mut open.maps.nat_rev_v2, sizes.established, NAT_REV_TABLE)?;
    size_map(
        &mut open.maps.nat_rev_syn_v2,
        sizes.embryonic,
        NAT_REV_SYN_TABLE,
    )?;
    // The template of dsr_v2's inner maps: one of the size lbd wants (libbpf cannot resize the
    // one the object declares); the kernel keeps what it needs of it, the fd may then close.
    let template = dsr_table(sizes.dsr_per_cpu(cpus), "xdplb_dsr_tmpl")?;
    open.maps
        .dsr_v2
        .set_inner_map_fd(template.as_fd())
        .map_err(bpf_err("setting the DSR tables' template"))?;
    Ok(template)
}

/// Fills every empty slot of `dsr_v2` (one per possible CPU) with a new LRU table. Slots an
/// earlier lbd filled (adopted pins) keep their tables and flows; new ones take the size of the
/// tables already there, so that they fit the pinned template.
pub(crate) fn fill_dsr_slots(outer: &dyn MapCore, sizes: TableSizes) -> Result<(), DataplaneError> {
    let cpus = cpus()?;
    let existing = dsr_tables(outer)?;
    let entries = existing
        .first()
        .map(|m| m.max_entries())
        .unwrap_or_else(|| sizes.dsr_per_cpu(cpus));
    for cpu in existing.len()..cpus {
        let table = dsr_table(entries, &format!("xdplb_dsr{cpu}"))?;
        let fd = table.as_fd().as_raw_fd();
        outer
            .update(
                &(cpu as u32).to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(bpf_err(format!("installing the DSR table of CPU {cpu}")))?;
    }
    Ok(())
}

/// A new per-CPU DSR table (the layout of `struct dsr_table` in `bpf/maps.h`).
fn dsr_table(entries: u32, name: &str) -> Result<MapHandle, DataplaneError> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    MapHandle::create(
        MapType::LruHash,
        Some(name),
        std::mem::size_of::<types::flow_key4>() as u32,
        std::mem::size_of::<types::flow4>() as u32,
        entries,
        &opts,
    )
    .map_err(bpf_err(format!("creating DSR table {name}")))
}

/// Handles on the DSR tables in `dsr_v2`'s slots, CPU 0 first, up to the first empty slot.
pub(crate) fn dsr_tables(outer: &dyn MapCore) -> Result<Vec<MapHandle>, DataplaneError> {
    let mut out = Vec::new();
    for cpu in 0..outer.max_entries() {
        let Some(v) = outer
            .lookup(&cpu.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading dsr_v2"))?
        else {
            break;
        };
        let id = u32::from_ne_bytes(v[..4].try_into().expect("map-in-map values are map ids"));
        out.push(MapHandle::from_map_id(id).map_err(bpf_err(format!("opening DSR table {id}")))?);
    }
    Ok(out)
}

/// What one sweep did (`struct lb_gc_report`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired reverse entries deleted (their SNAT ports free again).
    pub rev_swept: u64,
    /// Entries of removed or ended backends deleted.
    pub ended: u64,
    /// Entries looked at.
    pub seen: u64,
}

/// A handle of its own on the sweep program (`lb_flow_gc`), usable off the controller's lock.
pub struct Sweeper {
    prog: std::os::fd::OwnedFd,
}

impl Sweeper {
    /// Runs the sweep once: deletes the reply entries of flows expired in both directions and
    /// every entry of flows whose backend is gone or ended. Takes tens of milliseconds per
    /// million entries.
    pub fn run(&self) -> Result<SweepReport, DataplaneError> {
        sweep(self.prog.as_fd())
    }
}

impl super::Dataplane {
    /// A [`Sweeper`] (duplicates the `lb_flow_gc` program's fd).
    pub fn sweeper(&self) -> Result<Sweeper, DataplaneError> {
        let prog = self
            .skel
            .progs
            .lb_flow_gc
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Io {
                what: "duplicating the lb_flow_gc program fd".into(),
                source,
            })?;
        Ok(Sweeper { prog })
    }
}

/// Runs `lb_flow_gc` once (BPF_PROG_TEST_RUN): deletes what no flow needs any more.
fn sweep(prog: std::os::fd::BorrowedFd<'_>) -> Result<SweepReport, DataplaneError> {
    let output = super::run_helper(
        prog,
        std::mem::size_of::<types::lb_gc_report>(),
        "sweeping the flow tables (lb_flow_gc)",
    )?;
    let r: types::lb_gc_report = super::maps::from_bytes(&output);
    Ok(SweepReport {
        rev_swept: r.rev_swept,
        ended: r.ended,
        seen: r.seen,
    })
}
