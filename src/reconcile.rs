//! Makes the BPF maps match a desired [`State`]: hands out data-plane ids, builds Maglev rings,
//! and writes map entries in an order that never shows the XDP program a half-configured VIP.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddrV4;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::maps::RuntimeConfig;
use crate::dataplane::{Dataplane, DataplaneError, MAX_BACKENDS, MAX_VIPS};
use crate::maglev::{self, MaglevBackend};
use crate::persist::AppliedIds;
use xdplb_model::state::{invalid, Mode, State, StateError, VipKey};

mod firewall;
pub(crate) use firewall::AppliedFirewall;
mod ratelimit;
pub(crate) use ratelimit::AppliedRateLimits;
mod reader;
pub(crate) use reader::{Counters, PolicyCounters, Reader};
mod ring;

/// Why the maps could not be made to match.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("building the Maglev table of {vip}: {source}")]
    Maglev {
        vip: VipKey,
        source: maglev::MaglevError,
    },
    #[error("no free {0} id (limit reached)")]
    NoFreeId(&'static str),
}

/// Hands out small integer ids; a freed id goes to the back of the queue, so it is reused as late
/// as possible (counters and conntrack entries of the old owner have time to fade).
#[derive(Debug)]
struct IdPool {
    what: &'static str,
    next: u32,
    limit: u32,
    free: VecDeque<u32>,
}

impl IdPool {
    fn new(what: &'static str, limit: usize) -> Self {
        Self::starting_at(what, 0, limit)
    }

    /// A pool of the ids `first..limit`.
    fn starting_at(what: &'static str, first: u32, limit: usize) -> Self {
        Self {
            what,
            next: first,
            limit: limit as u32,
            free: VecDeque::new(),
        }
    }

    fn take(&mut self) -> Result<u32, ReconcileError> {
        if self.next < self.limit {
            self.next += 1;
            return Ok(self.next - 1);
        }
        self.free
            .pop_front()
            .ok_or(ReconcileError::NoFreeId(self.what))
    }

    fn give_back(&mut self, id: u32) {
        self.free.push_back(id);
    }

    /// Marks `id` as in use (adopting the ids of a previous lbd).
    fn reserve(&mut self, id: u32) {
        if id >= self.next {
            self.free.extend(self.next..id);
            self.next = id + 1;
        } else {
            self.free.retain(|f| *f != id);
        }
    }
}

/// What the maps currently hold for one VIP.
#[derive(Debug, Clone)]
struct AppliedVip {
    id: u32,
    mode: Mode,
    /// Backend address -> (id, weight).
    backends: BTreeMap<SocketAddrV4, (u32, u32)>,
    /// The ring in the data plane (None: no ring, every new flow is dropped as "no backend").
    /// Shared, so that copying an `AppliedVip` does not copy its 65,537 slots.
    ring: Option<Arc<[u32]>>,
    /// What `ring` was built from: (id, address, weight) of each member, in address order.
    /// The same members give the same table, so a change elsewhere rebuilds nothing here.
    members: Vec<(u32, SocketAddrV4, u32)>,
    /// Adopted from a previous lbd: the VIP entry and ring are rewritten on the next reconcile.
    adopted: bool,
}

/// Refuses a state the data plane cannot hold (more VIPs than it has ids for), as an invalid
/// argument naming `vip`, before the reconciler is asked to apply it.
pub fn check_limits(state: &State) -> Result<(), StateError> {
    if state.vips.len() > MAX_VIPS {
        return Err(invalid("vip", format!("at most {MAX_VIPS} VIPs")));
    }
    Ok(())
}

/// Owns the data plane and what has been applied to it.
pub struct Reconciler {
    dp: Dataplane,
    ring_size: u32,
    applied: BTreeMap<VipKey, AppliedVip>,
    vip_ids: IdPool,
    backend_ids: IdPool,
    firewall: AppliedFirewall,
    ratelimit: AppliedRateLimits,
    /// Backends the health checker marked down: left out of the Maglev tables.
    health: crate::health::view::HealthView,
    /// Memory mappings of the rings, for changes written in place.
    live: ring::LiveRings,
    ring_updates: RingUpdates,
    /// Backends (data-plane ids) marked down, since when; their flows are ended
    /// ([`Reconciler::end_dead_backends`]) once down past the grace.
    down_since: BTreeMap<u32, (Instant, bool)>,
}

/// How the Maglev rings were written since this Reconciler started (diagnostics, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingUpdates {
    /// Changes stored in place, slot by slot, in the live ring.
    pub in_place: u64,
    /// Slots stored by those.
    pub slots_written: u64,
    /// New rings swapped in (first ring, adoption, a backend leaving the ring).
    pub swapped: u64,
}

impl Reconciler {
    pub fn new(dp: Dataplane, ring_size: u32) -> Self {
        Self {
            firewall: AppliedFirewall::new(&dp),
            ratelimit: AppliedRateLimits::new(),
            dp,
            ring_size,
            applied: BTreeMap::new(),
            vip_ids: IdPool::new("vip", MAX_VIPS),
            backend_ids: IdPool::new("backend", MAX_BACKENDS),
            health: crate::health::view::HealthView::default(),
            live: ring::LiveRings::default(),
            ring_updates: RingUpdates::default(),
            down_since: BTreeMap::new(),
        }
    }

    /// Marks for the sweep (`lb_flow_gc`) the backends down for longer than `grace`: their flows
    /// are ended (DSR flows chosen again by Maglev, NAT flows dropped). A backend that comes back
    /// up is unmarked. Draining (weight 0) never ends flows. Returns how many were newly marked.
    pub(crate) fn end_dead_backends(&mut self, grace: Duration) -> Result<usize, ReconcileError> {
        let mut marked = 0;
        for (id, (since, ended)) in self.down_since.iter_mut() {
            if !*ended && since.elapsed() >= grace {
                self.dp.maps_mut().set_backend_ended(*id, true)?;
                *ended = true;
                marked += 1;
                tracing::info!(
                    backend_id = id,
                    "backend down past the grace: its flows end"
                );
            }
        }
        Ok(marked)
    }

    /// Writes the data plane's run-time settings (`lb_config`: SNAT, timeouts, IPIP source).
    pub fn set_runtime_config(&mut self, c: &RuntimeConfig) -> Result<(), ReconcileError> {
        Ok(self.dp.maps_mut().write_config(c)?)
    }

    /// How the Maglev rings were written so far.
    pub fn ring_updates(&self) -> RingUpdates {
        self.ring_updates
    }

    /// Marks a backend up or down in the live health view; returns whether that changed
    /// anything. Takes effect on the next `reconcile` (a backend never marked counts as up).
    pub(crate) fn set_backend_health(&mut self, vip: VipKey, addr: SocketAddrV4, up: bool) -> bool {
        let changed = self.health.set(vip, addr, up);
        if let (true, Some(id)) = (changed, self.backend_id(&vip, &addr)) {
            if up {
                if let Some((_, true)) = self.down_since.remove(&id) {
                    if let Err(e) = self.dp.maps_mut().set_backend_ended(id, false) {
                        tracing::warn!(backend_id = id, error = %e, "unmarking a backend that came back up");
                    }
                }
            } else {
                self.down_since.insert(id, (Instant::now(), false));
            }
        }
        changed
    }

    /// The live health view.
    pub(crate) fn health(&self) -> &crate::health::view::HealthView {
        &self.health
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    /// The rate-limit policies the data plane holds, with their ids.
    pub fn ratelimit(&self) -> &AppliedRateLimits {
        &self.ratelimit
    }

    /// The firewall rules the data plane holds, with their ids.
    pub fn firewall(&self) -> &AppliedFirewall {
        &self.firewall
    }

    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dp
    }

    /// Gives the data plane back (for shutdown).
    pub fn into_dataplane(self) -> Dataplane {
        self.dp
    }

    /// Data-plane id of a VIP, once applied.
    pub fn vip_id(&self, key: &VipKey) -> Option<u32> {
        self.applied.get(key).map(|v| v.id)
    }

    /// Data-plane id of a backend of a VIP, once applied.
    pub fn backend_id(&self, key: &VipKey, addr: &SocketAddrV4) -> Option<u32> {
        self.applied
            .get(key)
            .and_then(|v| v.backends.get(addr))
            .map(|b| b.0)
    }

    /// The ids in use, for the state file.
    pub fn ids(&self) -> AppliedIds {
        let mut ids = AppliedIds::default();
        for (key, v) in &self.applied {
            ids.vips.push((*key, v.id));
            for (addr, (id, _)) in &v.backends {
                ids.backends.push((*key, *addr, *id));
            }
        }
        ids
    }

    /// Takes over the ids of a previous lbd whose pinned maps this one reuses; call before the
    /// first `reconcile`. Entries of VIPs no longer wanted are then removed by `reconcile`.
    pub fn adopt_ids(&mut self, ids: &AppliedIds) {
        for (key, id) in &ids.vips {
            self.vip_ids.reserve(*id);
            self.applied.insert(
                *key,
                AppliedVip {
                    id: *id,
                    mode: Mode::Nat,
                    backends: BTreeMap::new(),
                    ring: None,
                    members: Vec::new(),
                    adopted: true,
                },
            );
        }
        for (key, addr, id) in &ids.backends {
            if let Some(v) = self.applied.get_mut(key) {
                self.backend_ids.reserve(*id);
                // Weight 0 until reconcile sets the wanted one; the ring is rebuilt anyway.
                v.backends.insert(*addr, (*id, 0));
            }
        }
    }

    /// Applies `desired`. On error the maps may be partly changed: call again with the previous
    /// state to roll back (what `api::Controller` does).
    pub fn reconcile(&mut self, desired: &State) -> Result<(), ReconcileError> {
        // 0. Firewall rules first: a VIP must not go live before its block rules do.
        self.firewall.apply(&mut self.dp, &desired.firewall)?;
        // Rate limits too: a VIP goes live already limited.
        self.ratelimit.apply(&mut self.dp, &desired.ratelimit)?;
        // Health marks of backends, or VIPs, that went away or are no longer checked.
        self.health.retain(desired);
        // 1. VIPs that went away: hide the VIP first, then free what it used.
        let gone: Vec<VipKey> = self
            .applied
            .keys()
            .filter(|k| !desired.vips.contains_key(k))
            .copied()
            .collect();
        for key in gone {
            let Some(old) = self.applied.remove(&key) else {
                continue;
            };
            self.dp.maps_mut().delete_vip(key.addr, key.proto)?;
            self.live.forget(old.id);
            self.dp.maps_mut().delete_ring(old.id)?;
            for (id, _) in old.backends.values() {
                self.dp.maps_mut().set_backend_ended(*id, true)?;
                self.down_since.remove(id);
                self.backend_ids.give_back(*id);
            }
            self.vip_ids.give_back(old.id);
            tracing::info!(vip = %key, id = old.id, "vip removed from the data plane");
        }

        // 2. New and changed VIPs: backends, then ring, then the VIP entry itself.
        for (key, want) in &desired.vips {
            let mut cur = match self.applied.get(key) {
                Some(a) => a.clone(),
                None => {
                    let id = self.vip_ids.take()?;
                    self.dp.maps_mut().reset_vip_counters(id)?;
                    AppliedVip {
                        id,
                        mode: want.mode,
                        backends: BTreeMap::new(),
                        ring: None,
                        members: Vec::new(),
                        adopted: false,
                    }
                }
            };
            let is_new = !self.applied.contains_key(key);
            let adopted = std::mem::take(&mut cur.adopted);

            let removed: Vec<SocketAddrV4> = cur
                .backends
                .keys()
                .filter(|a| !want.backends.contains_key(a))
                .copied()
                .collect();
            for addr in &removed {
                if let Some((id, _)) = cur.backends.remove(addr) {
                    // Its flows end at the next sweep (unless the id goes to the same address).
                    self.dp.maps_mut().set_backend_ended(id, true)?;
                    self.down_since.remove(&id);
                    self.backend_ids.give_back(id);
                }
            }
            for (addr, weight) in &want.backends {
                match cur.backends.get_mut(addr) {
                    Some(b) => b.1 = *weight,
                    None => {
                        let id = self.backend_ids.take()?;
                        self.dp.maps_mut().reset_backend_counters(id)?;
                        self.dp.maps_mut().put_backend(id, *addr)?;
                        cur.backends.insert(*addr, (id, *weight));
                    }
                }
            }

            let members = self.ring_members(key, &cur, want.health.all_down);
            if members != cur.members || adopted {
                let started = Instant::now();
                let ring = build_ring(key, &members, self.ring_size)?;
                let built = started.elapsed();
                let mut written = RingWrite::Unchanged;
                if ring != cur.ring || adopted {
                    let leaving = leaves(&cur.members, &members);
                    written = write_ring(
                        &mut self.dp,
                        &mut self.live,
                        cur.id,
                        cur.ring.as_deref().filter(|_| !adopted && !leaving),
                        ring.as_deref(),
                    )?;
                    match written {
                        RingWrite::InPlace(n) => {
                            self.ring_updates.in_place += 1;
                            self.ring_updates.slots_written += n as u64;
                        }
                        RingWrite::Swapped => self.ring_updates.swapped += 1,
                        RingWrite::Unchanged | RingWrite::Deleted => {}
                    }
                    cur.ring = ring;
                }
                tracing::debug!(
                    vip = %key,
                    members = members.len(),
                    build_us = built.as_micros() as u64,
                    write_us = (started.elapsed() - built).as_micros() as u64,
                    ?written,
                    "maglev ring rebuilt"
                );
                cur.members = members;
            }
            if is_new || adopted || cur.mode != want.mode {
                cur.mode = want.mode;
                self.dp.maps_mut().put_vip(
                    key.addr,
                    key.proto,
                    cur.id,
                    cur.mode,
                    self.ring_size,
                )?;
            }
            if is_new {
                tracing::info!(vip = %key, id = cur.id, mode = %cur.mode, "vip added to the data plane");
            }
            self.applied.insert(*key, cur);
        }
        Ok(())
    }

    /// The backends that go into a VIP's Maglev table: those with a weight that the health
    /// checker did not mark down (all of them, or none, when every one is down: `all_down`).
    fn ring_members(
        &self,
        key: &VipKey,
        vip: &AppliedVip,
        all_down: xdplb_model::health::AllDown,
    ) -> Vec<(u32, SocketAddrV4, u32)> {
        let weighted: Vec<(SocketAddrV4, (u32, u32))> = vip
            .backends
            .iter()
            .filter(|(_, (_, w))| *w > 0)
            .map(|(addr, b)| (*addr, *b))
            .collect();
        crate::health::view::ring_members(&weighted, |a| self.health.is_down(key, a), all_down)
            .into_iter()
            .map(|(addr, (id, w))| (id, addr, w))
            .collect()
    }
}

/// How a VIP's new Maglev table reached the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingWrite {
    /// Same table as before: nothing written.
    Unchanged,
    /// The changed slots of the live ring were stored in place (this many).
    InPlace(usize),
    /// A new ring was swapped in (one outer-map update, which waits for an RCU grace period).
    Swapped,
    /// The ring was removed (no ring members).
    Deleted,
}

/// Whether a backend of `old` is not in `new` (by id and address): it leaves the ring.
fn leaves(old: &[(u32, SocketAddrV4, u32)], new: &[(u32, SocketAddrV4, u32)]) -> bool {
    let staying: HashSet<(u32, SocketAddrV4)> = new.iter().map(|(id, a, _)| (*id, *a)).collect();
    old.iter().any(|(id, a, _)| !staying.contains(&(*id, *a)))
}

/// Makes the data plane's ring of VIP `vip_id` hold `new` (None: no ring).
///
/// `old` is the table the live ring holds, given only when the change may be written in place:
/// every backend of `old` is still a ring member (a new flow that picks a slot's old owner
/// picks a backend that stays; see `reconcile/ring.rs`). Then only the slots that differ are
/// stored, through the ring's memory mapping: no new map, no outer-map update, no RCU grace
/// period. Otherwise (first ring, adopted rings, a backend leaving, a ring that cannot be
/// mapped) a new ring is swapped in, and when that returns no packet still reads the old one.
fn write_ring(
    dp: &mut Dataplane,
    live: &mut ring::LiveRings,
    vip_id: u32,
    old: Option<&[u32]>,
    new: Option<&[u32]>,
) -> Result<RingWrite, ReconcileError> {
    let Some(new) = new else {
        live.forget(vip_id);
        dp.maps_mut().delete_ring(vip_id)?;
        return Ok(RingWrite::Deleted);
    };
    if let Some(old) = old {
        if let Some(n) = live.update(vip_id, old, new)? {
            return Ok(RingWrite::InPlace(n));
        }
    }
    live.forget(vip_id);
    dp.maps_mut().set_ring(vip_id, new)?;
    // The swap is done and correct; a ring that cannot be mapped only means the next change
    // of this VIP swaps again.
    if let Err(e) = live.open(dp.program().as_fd(), vip_id, new.len()) {
        tracing::warn!(vip_id, error = %e, "cannot map the new Maglev ring: its next change swaps a new ring in");
    }
    Ok(RingWrite::Swapped)
}

/// The Maglev table of a VIP's ring members, or None when there are none (no backend can take
/// new flows).
fn build_ring(
    key: &VipKey,
    members: &[(u32, SocketAddrV4, u32)],
    ring_size: u32,
) -> Result<Option<Arc<[u32]>>, ReconcileError> {
    if members.is_empty() {
        return Ok(None);
    }
    let backends: Vec<MaglevBackend> = members
        .iter()
        .map(|(id, addr, w)| MaglevBackend {
            id: *id,
            key: addr.to_string().into_bytes(),
            weight: *w,
        })
        .collect();
    maglev::build_table(&backends, ring_size)
        .map(|t| Some(t.into()))
        .map_err(|source| ReconcileError::Maglev { vip: *key, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_pool_reuses_freed_ids_last() {
        let mut p = IdPool::new("x", 3);
        assert_eq!(
            (p.take().unwrap(), p.take().unwrap(), p.take().unwrap()),
            (0, 1, 2)
        );
        assert!(matches!(p.take(), Err(ReconcileError::NoFreeId("x"))));
        p.give_back(1);
        p.give_back(0);
        assert_eq!(p.take().unwrap(), 1);
        assert_eq!(p.take().unwrap(), 0);
    }
}
