//! The firewall part of reconciling: rule ids, and the change from the rules the data plane
//! holds to the desired ones. The reconciler keeps the fixed-depth tables the program reads
//! (see [`crate::dataplane::firewall::tables`]), recomputes the /16s a change touches, and
//! writes the difference in an order that never shows a packet a verdict of neither the old
//! nor the new rules: new `fw_l3` entries before the slots that lead to them, chunks rewritten in
//! place (each slot a word read old or new), and deletions only after no slot leads to them and
//! every packet that could have seen them is through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ipnet::Ipv4Net;

use super::{IdPool, ReconcileError};
use crate::dataplane::firewall::tables::{self, Rules, Tables};
use crate::dataplane::firewall::{FirewallWriter, RuleEntry};
use crate::dataplane::{Dataplane, DataplaneError};
use xdplb_model::firewall::{Action, Firewall};

/// Changes listed one by one in the log when there are at most this many.
const LOG_EACH: usize = 8;
/// A change touching more /16s than this recomputes every table (cheaper than one by one).
const FULL_REBUILD: usize = 4096;

/// The rules the data plane holds, their ids, and the tables computed from them.
#[derive(Debug)]
pub struct AppliedFirewall {
    capacity: usize,
    applied: Rules,
    ids: IdPool,
    /// What `fw_l2` and `fw_l3` hold.
    tables: Tables,
    /// The desired rules last applied in full: the same `Arc` again means nothing to do.
    last: Option<Arc<BTreeMap<Ipv4Net, Action>>>,
    /// The maps were pinned by an earlier lbd: take over its rules on the first apply.
    adopt: bool,
    /// Hit counters of ids not in use may hold counts (of an earlier lbd): zero every id taken.
    dirty_hits: bool,
    /// A change stopped part-way: the maps may differ from `tables` and the record from
    /// `applied`; read the tables back and rewrite the record before the next change.
    resync: bool,
    /// One more than the highest id in use (0: no rule).
    id_bound: u32,
}

impl AppliedFirewall {
    pub(super) fn new(dp: &Dataplane) -> Self {
        let capacity = dp.firewall().capacity() as usize;
        Self {
            capacity,
            applied: Rules::new(),
            ids: IdPool::new("firewall rule", capacity),
            tables: Tables::default(),
            last: None,
            adopt: dp.adopted(),
            dirty_hits: false,
            resync: false,
            id_bound: 0,
        }
    }

    /// Rules the data plane holds at most (0: the firewall is off).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The rule the data plane holds for exactly `net`.
    pub fn rule(&self, net: &Ipv4Net) -> Option<RuleEntry> {
        self.applied.get(net).copied()
    }

    /// Every rule the data plane holds, with its id.
    pub fn rules(&self) -> &Rules {
        &self.applied
    }

    /// The tables as written to the maps.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// One more than the highest rule id handed out so far (hit counters above are unused).
    pub fn id_limit(&self) -> u32 {
        self.ids.next
    }

    /// One more than the highest rule id in use now (0: no rule): the hit counters worth reading
    /// (after a big list shrinks, [`id_limit`](Self::id_limit) stays high, this does not).
    pub fn id_bound(&self) -> u32 {
        self.id_bound
    }

    fn refresh_id_bound(&mut self) {
        self.id_bound = self.applied.values().map(|r| r.id + 1).max().unwrap_or(0);
    }

    /// Makes the data plane hold `desired`. On error the maps may be partly changed; the next
    /// call (the controller's rollback) reads them back and finishes or undoes the work.
    pub(super) fn apply(
        &mut self,
        dp: &mut Dataplane,
        desired: &Firewall,
    ) -> Result<(), ReconcileError> {
        let maps = dp.firewall_mut();
        if desired.len() > self.capacity {
            // A state saved with rules, restored by an lbd whose capacity is smaller (or 0).
            return Err(DataplaneError::Full(format!(
                "the state holds {} firewall rules; the firewall holds at most {} ([firewall] capacity{})",
                desired.len(),
                self.capacity,
                if self.capacity == 0 { " = 0: off" } else { "" }
            ))
            .into());
        }
        if self.adopt {
            self.adopt(&maps)?;
        }
        if self
            .last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, desired.shared()))
        {
            return Ok(());
        }
        if self.resync {
            self.resync(&maps)?;
        }
        let (puts, dels) = self.diff(desired.rules());
        if puts.is_empty() && dels.is_empty() {
            self.last = Some(desired.shared().clone());
            return Ok(());
        }
        self.last = None;
        let new_prefixes = puts
            .iter()
            .filter(|(n, _)| !self.applied.contains_key(n))
            .count();

        // Ids are bounded by the capacity: when a replace needs the ids of rules it drops, those
        // rules go first, in a change of their own.
        let room = self.capacity.saturating_sub(self.applied.len());
        let early = new_prefixes.saturating_sub(room).min(dels.len());
        if early > 0 {
            let done = self.change(&maps, &[], &dels[..early]);
            self.refresh_id_bound();
            done?;
        }
        let done = self.change(&maps, &puts, &dels[early..]);
        // Ids in use changed whether or not the change got through.
        self.refresh_id_bound();
        done?;
        self.last = Some(desired.shared().clone());
        log_change(&puts, &dels, new_prefixes, self.applied.len());
        Ok(())
    }

    /// Writes `puts` and removes `dels`: ids and the record first, then the tables, then the
    /// ids of removed rules are given back.
    fn change(
        &mut self,
        maps: &FirewallWriter<'_>,
        puts: &[(Ipv4Net, Action)],
        dels: &[Ipv4Net],
    ) -> Result<(), ReconcileError> {
        self.resync = true;
        let mut freed = Vec::with_capacity(dels.len());
        let done = self.change_tables(maps, puts, dels, &mut freed);
        // Given back whatever happened: an id is zeroed when taken again.
        for id in freed {
            self.ids.give_back(id);
        }
        done?;
        self.resync = false;
        Ok(())
    }

    fn change_tables(
        &mut self,
        maps: &FirewallWriter<'_>,
        puts: &[(Ipv4Net, Action)],
        dels: &[Ipv4Net],
        freed: &mut Vec<u32>,
    ) -> Result<(), ReconcileError> {
        let mut touched: Vec<u16> = Vec::new();
        for net in dels {
            if let Some(old) = self.applied.remove(net) {
                freed.push(old.id);
                touched.extend(tables::touched(net));
            }
        }
        let mut record = Vec::with_capacity(puts.len() + dels.len());
        for (net, action) in puts {
            let id = match self.applied.get(net) {
                // A prefix whose action changes keeps its id; its hits start again.
                Some(old) => {
                    maps.reset_hits(old.id)?;
                    old.id
                }
                None => self.take_id(maps)?,
            };
            self.applied.insert(
                *net,
                RuleEntry {
                    id,
                    action: *action,
                },
            );
            record.push((id, Some((*net, *action))));
            touched.extend(tables::touched(net));
        }
        // The record names every id the tables will hold before they hold it.
        maps.write_rules(&record)?;
        touched.sort_unstable();
        touched.dedup();
        let plan = if touched.len() > FULL_REBUILD {
            self.tables.update(&self.applied, None)
        } else {
            self.tables.update(&self.applied, Some(&touched))
        };
        maps.apply(&plan)?;
        let cleared: Vec<(u32, Option<(Ipv4Net, Action)>)> =
            freed.iter().map(|id| (*id, None)).collect();
        maps.write_rules(&cleared)?;
        Ok(())
    }

    /// After a change stopped part-way: makes the record say `applied` and the tables match it.
    fn resync(&mut self, maps: &FirewallWriter<'_>) -> Result<(), ReconcileError> {
        let mut writes: Vec<(u32, Option<(Ipv4Net, Action)>)> = Vec::new();
        let wanted: HashMap<u32, (Ipv4Net, Action)> = self
            .applied
            .iter()
            .map(|(n, r)| (r.id, (*n, r.action)))
            .collect();
        for (id, net, action) in maps.rules()? {
            if !wanted.contains_key(&id) {
                writes.push((id, None));
            } else if wanted.get(&id) != Some(&(net, action)) {
                writes.push((id, wanted.get(&id).copied()));
            }
        }
        writes.extend(wanted.iter().map(|(id, r)| (*id, Some(*r))));
        maps.write_rules(&writes)?;
        self.tables = maps.tables()?;
        let plan = self.tables.update(&self.applied, None);
        maps.apply(&plan)?;
        self.resync = false;
        tracing::info!(
            rules = self.applied.len(),
            "firewall tables read back and completed after an interrupted change"
        );
        Ok(())
    }

    /// Takes over the rules of maps pinned by an earlier lbd, with their ids: the firewall keeps
    /// working across a restart, and the first apply then changes only what differs.
    fn adopt(&mut self, maps: &FirewallWriter<'_>) -> Result<(), ReconcileError> {
        let mut stale = Vec::new();
        let mut used = HashSet::new();
        for (id, net, action) in maps.rules()? {
            if (id as usize) < self.capacity
                && id <= tables::MAX_RULE_ID
                && !self.applied.contains_key(&net)
                && used.insert(id)
            {
                self.ids.reserve(id);
                self.applied.insert(net, RuleEntry { id, action });
            } else {
                stale.push((id, None));
            }
        }
        self.refresh_id_bound();
        maps.write_rules(&stale)?;
        // The tables as they are, completed to match the record (an lbd stopped mid-change).
        self.tables = maps.tables()?;
        let plan = self.tables.update(&self.applied, None);
        maps.apply(&plan)?;
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
    fn take_id(&mut self, maps: &FirewallWriter<'_>) -> Result<u32, ReconcileError> {
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
