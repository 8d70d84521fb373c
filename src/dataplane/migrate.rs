//! Upgrades from the v1 flow tables (`ct_fwd`, `ct_rev`: one shared LRU each, 40-byte keys; the
//! releases before flow tables v2) to the v2 ones, so that an upgrade breaks no flow.
//!
//! A v2 program cannot read the v1 layouts, and a pinned map is never reused under another
//! layout: the v2 tables have names of their own (`*_v2`). An lbd that finds the v1 pins copies
//! every v1 flow into the v2 tables twice: once right after load, while the old program still
//! runs, and once right after the link swap, when the old program has stopped (flows it created
//! in between). Then it removes the v1 pins (the old program's maps go with it). A NAT flow goes
//! to `nat_fwd_v2`/`nat_rev_v2` as an established flow, with its SNAT port, backend and next hop;
//! a DSR flow into every CPU's table (whichever CPU its packets reach finds it; the others age
//! out). Between the swap and the second copy (milliseconds) a packet of a flow created in that
//! window finds no entry: a DSR one is chosen again by Maglev (same backend), a NAT one is
//! dropped and retransmitted.

use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::maps::{bytes_of, from_bytes};
use super::{bpf_err, flows, Dataplane, DataplaneError};
use crate::skel::types;

/// Pins of the v1 layout that a v2 lbd retires once their flows are copied.
pub(crate) const V1_PINS: [&str; 3] = ["ct_fwd", "ct_rev", "lb_config"];

/// What one copy did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Migrated {
    pub nat_flows: u64,
    pub dsr_flows: u64,
    pub replies: u64,
    /// Entries that were not IPv4 or not of a known mode (left behind).
    pub skipped: u64,
}

impl Migrated {
    /// One log line with the counts.
    pub fn log(&self, what: &str) {
        tracing::info!(
            nat = self.nat_flows,
            dsr = self.dsr_flows,
            replies = self.replies,
            skipped = self.skipped,
            "{what}"
        );
    }
}

/// Calls `f` with every (key, value) of a v1 table, decoded (an entry evicted between the key
/// walk and its lookup is skipped).
fn for_each_v1<K: Copy + Default, V: Copy + Default>(
    map: &MapHandle,
    name: &str,
    mut f: impl FnMut(K, V) -> Result<(), DataplaneError>,
) -> Result<(), DataplaneError> {
    for k in map.keys() {
        if let Some(v) = map
            .lookup(&k, MapFlags::ANY)
            .map_err(bpf_err(format!("reading {name}")))?
        {
            f(from_bytes(&k), from_bytes(&v))?;
        }
    }
    Ok(())
}

/// The v1 flow tables pinned in `dir`, if an earlier lbd left them (and they have the layout
/// this build knows as v1).
fn v1_tables(dir: &Path) -> Result<Option<(MapHandle, MapHandle)>, DataplaneError> {
    let (fwd, rev) = (dir.join("ct_fwd"), dir.join("ct_rev"));
    if !fwd.exists() || !rev.exists() {
        return Ok(None);
    }
    let open = |p: &Path| {
        MapHandle::from_pinned_path(p).map_err(bpf_err(format!("opening {}", p.display())))
    };
    let (fwd, rev) = (open(&fwd)?, open(&rev)?);
    let key = std::mem::size_of::<types::flow_key>() as u32;
    if fwd.key_size() != key
        || rev.key_size() != key
        || fwd.value_size() != std::mem::size_of::<types::ct_fwd>() as u32
        || rev.value_size() != std::mem::size_of::<types::ct_rev>() as u32
    {
        return Err(DataplaneError::Incompatible {
            map: "ct_fwd".into(),
            detail: "pinned flow tables of neither the v1 nor the v2 layout".into(),
        });
    }
    Ok(Some((fwd, rev)))
}

fn key4(k: &types::flow_key) -> Option<types::flow_key4> {
    (u32::from(k.family) == types::lb_family::LB_AF_INET.0).then(|| types::flow_key4 {
        saddr_be: unsafe_v4(&k.src),
        daddr_be: unsafe_v4(&k.dst),
        sport_be: k.sport_be,
        dport_be: k.dport_be,
        proto: k.proto,
        ..Default::default()
    })
}

/// The IPv4 word of an address union (network byte order, as stored).
fn unsafe_v4(a: &types::lb_addr) -> u32 {
    // SAFETY: every variant of the union is plain integers over the same 16 bytes.
    unsafe { a.v4_be }
}

impl Dataplane {
    /// Copies the flows of v1 tables pinned by an earlier lbd into this program's tables (see
    /// the module docs); `None` if there are none. Call right after load and again right after
    /// attaching, then [`Dataplane::retire_v1_tables`].
    pub fn migrate_v1_flows(&self) -> Result<Option<Migrated>, DataplaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(None);
        };
        let Some((old_fwd, old_rev)) = v1_tables(dir)? else {
            return Ok(None);
        };
        let m = &self.skel.maps;
        let dsr = flows::dsr_tables(&m.dsr_v2)?;
        let mut done = Migrated::default();
        let nat = types::lb_mode::LB_MODE_NAT.0 as u8;
        for_each_v1(
            &old_fwd,
            "ct_fwd",
            |key: types::flow_key, fwd: types::ct_fwd| {
                let Some(key4) = key4(&key) else {
                    done.skipped += 1;
                    return Ok(());
                };
                let flow = types::flow4 {
                    backend_be: unsafe_v4(&fwd.backend_addr),
                    src_be: unsafe_v4(&fwd.snat_addr),
                    backend_port_be: fwd.backend_port_be,
                    snat_port_be: fwd.snat_port_be,
                    backend_id: fwd.backend_id,
                    vip_id: fwd.vip_id as u16,
                    mode: fwd.mode,
                    flags: (u32::from(fwd.flags) & types::ct_flags::CT_F_CLOSING.0) as u8,
                    last_seen_ns: fwd.last_seen_ns,
                    nh: fwd.nh,
                    ..Default::default()
                };
                let kb = bytes_of(&key4);
                if fwd.mode == nat {
                    m.nat_fwd_v2
                        .update(kb, bytes_of(&flow), MapFlags::ANY)
                        .map_err(bpf_err("writing nat_fwd_v2"))?;
                    done.nat_flows += 1;
                } else if fwd.mode > nat && fwd.mode <= types::lb_mode::LB_MODE_IPIP.0 as u8 {
                    for table in &dsr {
                        table
                            .update(kb, bytes_of(&flow), MapFlags::ANY)
                            .map_err(bpf_err("writing a DSR table"))?;
                    }
                    done.dsr_flows += 1;
                } else {
                    done.skipped += 1;
                }
                Ok(())
            },
        )?;
        for_each_v1(
            &old_rev,
            "ct_rev",
            |key: types::flow_key, rev: types::ct_rev| {
                let Some(key4) = key4(&key) else {
                    done.skipped += 1;
                    return Ok(());
                };
                let r = types::nat4_rev {
                    client_be: unsafe_v4(&rev.client_addr),
                    vip_be: unsafe_v4(&rev.vip_addr),
                    client_port_be: rev.client_port_be,
                    vip_port_be: rev.vip_port_be,
                    backend_id: rev.backend_id,
                    vip_id: rev.vip_id as u16,
                    flags: rev.flags & types::ct_flags::CT_F_CLOSING.0 as u16,
                    last_seen_ns: rev.last_seen_ns,
                    nh: rev.nh,
                    ..Default::default()
                };
                m.nat_rev_v2
                    .update(bytes_of(&key4), bytes_of(&r), MapFlags::ANY)
                    .map_err(bpf_err("writing nat_rev_v2"))?;
                done.replies += 1;
                Ok(())
            },
        )?;
        Ok(Some(done))
    }

    /// Removes the pins of the v1 layout (after the second [`Dataplane::migrate_v1_flows`]):
    /// the old program is gone, its maps go with their last reference.
    pub fn retire_v1_tables(&self) -> Result<(), DataplaneError> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        for name in V1_PINS {
            let pin = dir.join(name);
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(|source| DataplaneError::Io {
                    what: format!("unpinning {}", pin.display()),
                    source,
                })?;
            }
        }
        Ok(())
    }
}
