//! Makes the rate limiter's maps match the desired [`RateLimits`]: policy ids for overrides,
//! policies written before the prefixes that point to them, prefixes removed before their ids
//! are freed.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::{IdPool, ReconcileError};
use crate::dataplane::ratelimit::RateLimitWriter;
use crate::dataplane::Dataplane;
use xdplb_model::ratelimit::{Policy, RateLimits, MAX_POLICIES};

/// Override policy ids (1..MAX_POLICIES; 0 is the default policy), reused as late as possible.
fn policy_ids() -> IdPool {
    IdPool::starting_at("rate-limit policy", 1, MAX_POLICIES)
}

/// What the rate limiter's maps hold.
#[derive(Debug)]
pub struct AppliedRateLimits {
    /// The default policy (id 0) and its "overrides exist" flag; `None` before the first apply.
    default: Option<(Policy, bool)>,
    /// Prefix -> (policy id, policy written; `None`: adopted from pinned maps, to be rewritten).
    overrides: BTreeMap<Ipv4Net, (u32, Option<Policy>)>,
    ids: IdPool,
}

impl Default for AppliedRateLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl AppliedRateLimits {
    pub(crate) fn new() -> Self {
        Self {
            default: None,
            overrides: BTreeMap::new(),
            ids: policy_ids(),
        }
    }

    /// The data-plane policy id of an override (`None`: of the default policy, id 0).
    pub fn id_of(&self, cidr: Option<&Ipv4Net>) -> Option<u32> {
        match cidr {
            None => self.default.map(|_| 0),
            Some(net) => self.overrides.get(net).map(|(id, _)| *id),
        }
    }

    /// Applies `desired`. On error the maps may be partly changed, and what is recorded here
    /// says exactly how far it got: applying the previous state rolls back.
    pub(crate) fn apply(
        &mut self,
        dp: &mut Dataplane,
        desired: &RateLimits,
    ) -> Result<(), ReconcileError> {
        if self.default.is_none() {
            self.adopt(dp, desired)?;
        }
        let maps = dp.ratelimit_mut();
        let overrides = !desired.overrides.is_empty();
        // The program searches the trie only when the default policy says so: raise the flag
        // before the first prefix goes in, lower it after the last one is gone.
        if overrides {
            self.put_default(&maps, &desired.default, true)?;
        }

        let gone: Vec<Ipv4Net> = self
            .overrides
            .keys()
            .filter(|n| !desired.overrides.contains_key(n))
            .copied()
            .collect();
        for net in gone {
            maps.delete_prefix(net)?;
            if let Some((id, _)) = self.overrides.remove(&net) {
                self.ids.give_back(id);
                tracing::info!(cidr = %net, id, "rate-limit override removed from the data plane");
            }
        }

        for (net, want) in &desired.overrides {
            match self.overrides.get_mut(net) {
                Some((_, Some(have))) if have == want => {}
                Some((id, have)) => {
                    maps.put_policy(*id, want, false)?;
                    *have = Some(*want);
                    tracing::info!(cidr = %net, id = *id, policy = %want, "rate-limit override changed in the data plane");
                }
                None => {
                    let id = self.ids.take()?;
                    let written = maps
                        .reset_counters(id)
                        .and_then(|()| maps.put_policy(id, want, false))
                        .and_then(|()| maps.put_prefix(*net, id));
                    if let Err(e) = written {
                        // Nothing points to the id yet (the prefix is written last).
                        self.ids.give_back(id);
                        return Err(e.into());
                    }
                    self.overrides.insert(*net, (id, Some(*want)));
                    tracing::info!(cidr = %net, id, policy = %want, "rate-limit override added to the data plane");
                }
            }
        }

        if !overrides {
            self.put_default(&maps, &desired.default, false)?;
        }
        Ok(())
    }

    fn put_default(
        &mut self,
        maps: &RateLimitWriter<'_>,
        policy: &Policy,
        overrides: bool,
    ) -> Result<(), ReconcileError> {
        let want = (*policy, overrides);
        if self.default == Some(want) {
            return Ok(());
        }
        let changed = self.default.map(|(p, _)| p) != Some(*policy);
        maps.put_policy(0, policy, overrides)?;
        self.default = Some(want);
        if changed {
            tracing::info!(policy = %policy, "rate-limit default policy applied to the data plane");
        }
        Ok(())
    }

    /// First apply: maps pinned by a previous lbd may hold prefixes already. Those still wanted
    /// keep their ids (their policies are rewritten next); the others are removed at once, so
    /// that no id is handed out while a stale prefix still points to it.
    fn adopt(&mut self, dp: &mut Dataplane, desired: &RateLimits) -> Result<(), ReconcileError> {
        let maps = dp.ratelimit_mut();
        for (net, id) in maps.prefixes()? {
            let usable = id != 0 && (id as usize) < MAX_POLICIES;
            let free = !self.overrides.values().any(|(i, _)| *i == id);
            if desired.overrides.contains_key(&net) && usable && free {
                self.ids.reserve(id);
                self.overrides.insert(net, (id, None));
                tracing::info!(cidr = %net, id, "adopted a rate-limit override from pinned maps");
            } else {
                maps.delete_prefix(net)?;
                tracing::info!(cidr = %net, id, "removed a stale rate-limit override from pinned maps");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_ids_skip_the_default_and_reuse_late() {
        let mut p = policy_ids();
        assert_eq!(p.take().ok(), Some(1));
        assert_eq!(p.take().ok(), Some(2));
        p.give_back(1);
        assert_eq!(p.take().ok(), Some(3), "a fresh id before a freed one");
        p.reserve(7);
        let next: Vec<u32> = (0..5).filter_map(|_| p.take().ok()).collect();
        assert_eq!(next, vec![8, 9, 10, 11, 12]);
        let mut full = policy_ids();
        for _ in 1..MAX_POLICIES {
            full.take().expect("room");
        }
        assert!(matches!(full.take(), Err(ReconcileError::NoFreeId(_))));
        full.give_back(5);
        assert_eq!(full.take().ok(), Some(5));
    }
}
