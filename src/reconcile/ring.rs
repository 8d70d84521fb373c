//! Live Maglev rings: a writable memory mapping of the ring that each VIP's slot of the outer
//! map `maglev_rings` points to, so that a change which only gives slots to backends (an added
//! backend, a new weight, a backend back up) rewrites the changed slots in place instead of
//! building a new ring and swapping it in.
//!
//! Why this is safe: the XDP program reads one slot per new flow (`ring[hash % size]`), and each
//! slot is one aligned `u32`, stored atomically. While the slots are being written, a new flow
//! finds the slot's old owner or its new one; both are backends of the VIP with their entry in
//! `backends` (a new backend's entry is written before its slots), and the flow table pins the
//! choice afterwards. What a swap gives and this does not: no RCU grace period, so a packet that
//! read a slot just before the store may still start a flow to the slot's old owner after lbd
//! answers. That is harmless only while the old owner stays a ring member, so the reconciler
//! keeps the swap (and its grace period) for every change in which a backend leaves the ring
//! (removed, drained, marked down): when lbd answers those, no packet can pick it any more.
//!
//! The mapping is opened after lbd swapped a ring in itself (first ring of a VIP, adoption of an
//! earlier lbd's rings, a backend leaving), so it always covers a ring this lbd filled; it is
//! dropped when the ring is swapped out or deleted. Rings pinned by an lbd whose inner maps were
//! not mmapable cannot be mapped: those VIPs keep the swap path.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::dataplane::maps::{mmap_ring, RING_ELEM as ELEM};
use crate::dataplane::{bpf_err, DataplaneError};

/// Name of the outer map in `bpf/maps.h`.
const OUTER: &str = "maglev_rings";

/// The mapped rings, by VIP id.
#[derive(Default)]
pub(super) struct LiveRings {
    /// The outer map, found through the program's map ids the first time it is needed.
    outer: Option<MapHandle>,
    mapped: HashMap<u32, MappedRing>,
}

impl LiveRings {
    /// Forgets the mapping of a VIP's ring (its ring is about to be swapped out or deleted).
    pub(super) fn forget(&mut self, vip_id: u32) {
        self.mapped.remove(&vip_id);
    }

    /// Maps the ring that `maglev_rings[vip_id]` now holds, which must have `slots` slots.
    /// Returns whether it could be mapped: a ring that is not mmapable (pinned by an older lbd)
    /// is not an error, its VIP keeps being updated by swaps.
    pub(super) fn open(
        &mut self,
        prog: BorrowedFd<'_>,
        vip_id: u32,
        slots: usize,
    ) -> Result<bool, DataplaneError> {
        self.mapped.remove(&vip_id);
        let outer = match &self.outer {
            Some(o) => o,
            None => self.outer.insert(find_outer(prog)?),
        };
        let Some(map_id) = inner_id(outer, vip_id)? else {
            return Ok(false);
        };
        let ring =
            MapHandle::from_map_id(map_id).map_err(bpf_err("opening a Maglev ring by id"))?;
        let flags = ring
            .info()
            .map_err(bpf_err("reading a Maglev ring's flags"))?
            .info
            .map_flags;
        let mmapable = flags & libbpf_sys::BPF_F_MMAPABLE != 0;
        if !mmapable
            || ring.map_type() != MapType::Array
            || ring.value_size() != 4
            || ring.max_entries() as usize != slots
        {
            tracing::debug!(
                vip_id,
                mmapable,
                "this Maglev ring cannot be updated in place: changes swap a new ring in"
            );
            return Ok(false);
        }
        let mapped = MappedRing::new(ring, map_id, slots)?;
        self.mapped.insert(vip_id, mapped);
        Ok(true)
    }

    /// Turns the live ring of `vip_id` from `old` into `new` by storing the slots that differ.
    /// Returns the number of slots written, or `None` when the VIP has no live ring of that
    /// size (or `maglev_rings` no longer points at it): the caller swaps a new ring in instead.
    pub(super) fn update(
        &mut self,
        vip_id: u32,
        old: &[u32],
        new: &[u32],
    ) -> Result<Option<usize>, DataplaneError> {
        let Some(ring) = self.mapped.get(&vip_id) else {
            return Ok(None);
        };
        let current = match &self.outer {
            Some(outer) => inner_id(outer, vip_id)?,
            None => None,
        };
        if ring.slots != new.len() || old.len() != new.len() || current != Some(ring.map_id) {
            self.mapped.remove(&vip_id);
            return Ok(None);
        }
        let mut written = 0;
        for (i, (o, n)) in old.iter().zip(new).enumerate() {
            if o != n {
                ring.store(i, *n);
                written += 1;
            }
        }
        Ok(Some(written))
    }
}

/// The id of the ring `maglev_rings[vip_id]` points at (user space reads map ids there).
fn inner_id(outer: &MapHandle, vip_id: u32) -> Result<Option<u32>, DataplaneError> {
    let v = outer
        .lookup(&vip_id.to_ne_bytes(), MapFlags::ANY)
        .map_err(bpf_err("reading maglev_rings"))?;
    Ok(v.and_then(|v| {
        v.get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }))
}

/// The program's `maglev_rings`, found among the maps it uses (by type and name).
fn find_outer(prog: BorrowedFd<'_>) -> Result<MapHandle, DataplaneError> {
    crate::dataplane::program_maps(prog)?
        .remove(OUTER)
        .filter(|m| m.map_type() == MapType::ArrayOfMaps)
        .ok_or_else(|| DataplaneError::Io {
            what: "finding the Maglev rings' outer map".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the program uses no map-of-maps named {OUTER}"),
            ),
        })
}

/// A writable shared mapping of one ring's value area.
struct MappedRing {
    /// Keeps the ring's fd (the mapping holds its own reference to the map too).
    _map: MapHandle,
    /// Kernel id of the ring, to check that `maglev_rings` still points at it.
    map_id: u32,
    base: NonNull<u8>,
    len: usize,
    slots: usize,
}

// SAFETY: the mapping is owned by this value alone (no other Rust reference to it exists) and
// every access goes through atomic operations, so moving it to another thread is sound.
unsafe impl Send for MappedRing {}

impl MappedRing {
    fn new(map: MapHandle, map_id: u32, slots: usize) -> Result<Self, DataplaneError> {
        // Unmapped in Drop.
        let (base, len) = mmap_ring(map.as_fd(), slots)?;
        Ok(Self {
            _map: map,
            map_id,
            base,
            len,
            slots,
        })
    }

    fn slot(&self, i: usize) -> &AtomicU32 {
        assert!(i < self.slots, "slot {i} of a ring of {}", self.slots);
        // SAFETY: `i < slots`, so the 4 bytes at `ELEM * i` lie inside the mapping, which is
        // page-aligned (so the address is 4-byte aligned) and lives as long as `self`. The BPF
        // program accesses the same memory concurrently, hence atomics only.
        unsafe { AtomicU32::from_ptr(self.base.as_ptr().add(ELEM * i).cast::<u32>()) }
    }

    /// Stores a slot; Release orders it after the writes that came before (the new backend's
    /// entry in `backends`), for readers that follow the id to that entry.
    fn store(&self, i: usize, id: u32) {
        self.slot(i).store(id, Ordering::Release);
    }
}

impl Drop for MappedRing {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it outlives self.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}
