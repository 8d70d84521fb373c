//! The firewall part of reconciling: rule ids, and the difference between the rules in the LPM
//! trie and the desired ones, applied so that no wanted rule is ever missing in between (new and
//! changed prefixes are written before the prefixes no longer wanted are deleted).

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::{IdPool, ReconcileError};
use crate::dataplane::firewall::{FirewallMaps, Partial, RuleEntry};
use crate::dataplane::Dataplane;
use crate::firewall::{Action, Firewall};

/// Changes listed one by one in the log when there are at most this many.
const LOG_EACH: usize = 8;

/// What the trie holds, and the rule ids.
#[derive(Debug)]
pub struct AppliedFirewall {
    capacity: usize,
    applied: BTreeMap<Ipv4Net, RuleEntry>,
    ids: IdPool,
    /// The desired rules last applied in full: the same `Arc` again means nothing to do.
    last: Option<Arc<BTreeMap<Ipv4Net, Action>>>,
    /// The maps were pinned by an earlier lbd: take over its rules on the first apply.
    adopt: bool,
    /// Hit counters of ids not in use may hold counts (of an earlier lbd): zero every id taken.
    dirty_hits: bool,
}

impl AppliedFirewall {
    pub(super) fn new(dp: &Dataplane) -> Self {
        let capacity = dp.firewall().capacity() as usize;
        Self {
            capacity,
            applied: BTreeMap::new(),
            ids: IdPool::new("firewall rule", capacity),
            last: None,
            adopt: dp.adopted(),
            dirty_hits: false,
        }
    }

    /// Rules the data plane holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The rule the data plane holds for exactly `net`.
    pub fn rule(&self, net: &Ipv4Net) -> Option<RuleEntry> {
        self.applied.get(net).copied()
    }

    /// One more than the highest rule id handed out so far (hit counters above are unused).
    pub fn id_limit(&self) -> u32 {
        self.ids.next
    }

    /// Makes the trie hold `desired`. On error the record of what was applied stays exact, so a
    /// second call (the controller's rollback) finishes or undoes the work.
    pub(super) fn apply(
        &mut self,
        dp: &Dataplane,
        desired: &Firewall,
    ) -> Result<(), ReconcileError> {
        if self.adopt {
            self.adopt(dp)?;
        }
        if self
            .last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, desired.shared()))
        {
            return Ok(());
        }
        let (puts, dels) = self.diff(desired.rules());
        if puts.is_empty() && dels.is_empty() {
            self.last = Some(desired.shared().clone());
            return Ok(());
        }
        self.last = None;
        let maps = dp.firewall();
        let new_prefixes = puts
            .iter()
            .filter(|(n, _)| !self.applied.contains_key(n))
            .count();

        // Deleting first only what must go to make room: at most `capacity` rules at any time.
        let room = self.capacity.saturating_sub(self.applied.len());
        let early = new_prefixes.saturating_sub(room).min(dels.len());
        self.delete(&maps, &dels[..early])?;

        let mut writes = Vec::with_capacity(puts.len());
        for (net, action) in &puts {
            let id = match self.applied.get(net) {
                // A prefix whose action changes keeps its id; its hits start again.
                Some(old) => old.id,
                None => match self.take_id(&maps) {
                    Ok(id) => id,
                    Err(e) => {
                        self.give_back_new(&writes);
                        return Err(e);
                    }
                },
            };
            if self.applied.contains_key(net) {
                if let Err(e) = maps.reset_hits(id) {
                    self.give_back_new(&writes);
                    return Err(e.into());
                }
            }
            writes.push((*net, id, *action));
        }
        let written = maps.put(&writes);
        let done = match &written {
            Ok(()) => writes.len(),
            Err(p) => p.done,
        };
        for (net, id, action) in &writes[..done] {
            self.applied.insert(
                *net,
                RuleEntry {
                    id: *id,
                    action: *action,
                },
            );
        }
        self.give_back_new(&writes[done..]);
        if let Err(Partial { source, .. }) = written {
            return Err(source.into());
        }

        self.delete(&maps, &dels[early..])?;
        self.last = Some(desired.shared().clone());
        log_change(&puts, &dels, new_prefixes, self.applied.len());
        Ok(())
    }

    /// Takes over the rules in maps pinned by an earlier lbd, with their ids: the firewall keeps
    /// working across a restart, and the first apply then changes only what differs.
    fn adopt(&mut self, dp: &Dataplane) -> Result<(), ReconcileError> {
        let maps = dp.firewall();
        let mut stale = Vec::new();
        let mut used = std::collections::HashSet::new();
        for (net, entry) in maps.entries()? {
            if (entry.id as usize) < self.capacity && used.insert(entry.id) {
                self.ids.reserve(entry.id);
                self.applied.insert(net, entry);
            } else {
                stale.push(net);
            }
        }
        if let Err(p) = maps.delete(&stale) {
            return Err(p.source.into());
        }
        self.adopt = false;
        self.dirty_hits = true;
        tracing::info!(
            rules = self.applied.len(),
            stale = stale.len(),
            "adopted the firewall rules of pinned maps"
        );
        Ok(())
    }

    /// (prefixes to write with their action, prefixes to delete), both in prefix order.
    fn diff(&self, desired: &BTreeMap<Ipv4Net, Action>) -> (Vec<(Ipv4Net, Action)>, Vec<Ipv4Net>) {
        let puts = desired
            .iter()
            .filter(|(net, action)| self.applied.get(net).map(|r| r.action) != Some(**action))
            .map(|(n, a)| (*n, *a))
            .collect();
        let dels = self
            .applied
            .keys()
            .filter(|n| !desired.contains_key(n))
            .copied()
            .collect();
        (puts, dels)
    }

    /// A rule id whose hit counter reads zero.
    fn take_id(&mut self, maps: &FirewallMaps<'_>) -> Result<u32, ReconcileError> {
        let fresh = self.ids.next;
        let id = self.ids.take()?;
        // Never-used ids still hold the zeroes of the map's creation (unless adopted).
        if id < fresh || self.dirty_hits {
            if let Err(e) = maps.reset_hits(id) {
                self.ids.give_back(id);
                return Err(e.into());
            }
        }
        Ok(id)
    }

    /// Returns the ids of `writes` that were taken for prefixes not in the trie.
    fn give_back_new(&mut self, writes: &[(Ipv4Net, u32, Action)]) {
        for (net, id, _) in writes {
            if !self.applied.contains_key(net) {
                self.ids.give_back(*id);
            }
        }
    }

    fn delete(&mut self, maps: &FirewallMaps<'_>, nets: &[Ipv4Net]) -> Result<(), ReconcileError> {
        let deleted = maps.delete(nets);
        let done = match &deleted {
            Ok(()) => nets.len(),
            Err(p) => p.done,
        };
        for net in &nets[..done] {
            if let Some(old) = self.applied.remove(net) {
                self.ids.give_back(old.id);
            }
        }
        deleted.map_err(|p| p.source.into())
    }
}

fn log_change(puts: &[(Ipv4Net, Action)], dels: &[Ipv4Net], added: usize, total: usize) {
    let changed = puts.len() - added;
    if puts.len() + dels.len() <= LOG_EACH {
        let written: Vec<String> = puts.iter().map(|(n, a)| format!("{a} {n}")).collect();
        let deleted: Vec<String> = dels.iter().map(ToString::to_string).collect();
        tracing::info!(
            written = ?written, deleted = ?deleted, total,
            "firewall rules applied to the data plane"
        );
    } else {
        tracing::info!(
            added,
            changed,
            removed = dels.len(),
            total,
            "firewall rules applied to the data plane"
        );
    }
}
