//! The CIDR firewall's part of the desired state: block and allow rules on IPv4 source prefixes,
//! the validation of prefixes, and the changes (add, remove, replace) operators make to the rules.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::names::named_enum;
use crate::state::StateError;

/// Rules the data plane holds unless `[firewall] capacity` says otherwise (`FW_DEFAULT_RULES` in
/// `bpf/xdplb.h`; the data plane asserts they agree).
pub const DEFAULT_CAPACITY: u32 = 1_000_000;
/// Largest `[firewall] capacity` accepted (the per-CPU hit counters grow with it).
pub const MAX_CAPACITY: u32 = 1 << 24;

/// What a rule does with a packet whose source it matches (longest prefix wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop it (`drop_firewall`).
    Block,
    /// Pass it on to the next stage, marked as allowed (rate limiting exempts it).
    Allow,
}

named_enum!(Action, "firewall action", { Block => "block", Allow => "allow" });

/// Which packets the firewall sees (`[firewall] scope`), fixed when the program is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only packets addressed to a VIP.
    #[default]
    Vips,
    /// Every IPv4 packet arriving on lbd's interfaces (traffic to the host itself too).
    All,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Vips => "vips",
            Scope::All => "all",
        })
    }
}

pub use crate::cidr::{parse_cidr, CidrError};

/// One rule as a request names it: a prefix and what happens to packets from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub net: Ipv4Net,
    pub action: Action,
}

/// The rules of one request, validated and de-duplicated; each prefix remembers the index of
/// its first occurrence so that later refusals can name it (`rules[3]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleBatch {
    rules: BTreeMap<Ipv4Net, (Action, usize)>,
}

/// A rule of a request that cannot be used, by its index in the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules[{index}].{field}: {message}")]
pub struct RuleError {
    pub index: usize,
    pub field: &'static str,
    pub message: String,
}

impl RuleBatch {
    /// Adds rule `index`. The same prefix twice with the same action is merged; with the other
    /// action it is refused.
    pub fn push(&mut self, index: usize, net: Ipv4Net, action: Action) -> Result<(), RuleError> {
        match self.rules.entry(net) {
            Entry::Vacant(e) => {
                e.insert((action, index));
                Ok(())
            }
            Entry::Occupied(e) if e.get().0 == action => Ok(()),
            Entry::Occupied(e) => Err(RuleError {
                index,
                field: "action",
                message: format!(
                    "{net} is also rules[{}] with action {}",
                    e.get().1,
                    e.get().0
                ),
            }),
        }
    }

    /// Distinct prefixes in the batch.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// (prefix, action, index of its first occurrence), in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, Action, usize)> + '_ {
        self.rules.iter().map(|(n, (a, i))| (*n, *a, *i))
    }
}

/// What an add changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Added {
    pub added: usize,
    /// Already present with the same action.
    pub unchanged: usize,
    /// Rules afterwards.
    pub total: usize,
}

/// What a remove changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub removed: usize,
    pub total: usize,
}

/// What a replace changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Prefixes of the new list that had no rule.
    pub added: usize,
    /// Prefixes of the new list whose action changed.
    pub changed: usize,
    pub removed: usize,
    /// Prefixes of the new list that already had their rule.
    pub unchanged: usize,
    pub total: usize,
}

/// The firewall rules of the desired state: prefix -> action.
///
/// Shared behind an `Arc`: the controller copies the whole `State` for every change, and a
/// million-rule list must not be copied when a VIP changes. The reconciler also uses the
/// pointer to skip the rules entirely when they are the ones it applied last.
///
/// Besides the number of rules, the capacity bounds the data plane's table of single addresses
/// (`fw_l3`): every address that a rule longer than /24 covers is one entry there (a /32 one, a
/// /25 128), so the rules also count their [`Firewall::exact_entries`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Firewall {
    rules: Arc<BTreeMap<Ipv4Net, Action>>,
    /// Addresses covered by rules longer than /24 (entries of `fw_l3`).
    exact: u64,
}

/// Rules longer than this are expanded to single addresses in the data plane.
const EXACT_FROM: u8 = 25;

/// Addresses covered by the prefixes of `nets` (ascending) that are longer than /24.
fn exact_entries<'a>(nets: impl Iterator<Item = &'a Ipv4Net>) -> u64 {
    // Prefixes nest or are disjoint, and one comes before those inside it: a prefix that starts
    // before the end of the last one counted lies inside it.
    let (mut total, mut end) = (0u64, 0u64);
    for net in nets.filter(|n| n.prefix_len() >= EXACT_FROM) {
        let start = u64::from(u32::from(net.network()));
        if start < end {
            continue;
        }
        let size = 1u64 << (32 - net.prefix_len());
        total += size;
        end = start + size;
    }
    total
}

/// The /24 of a prefix longer than /24, as the range of prefixes inside it.
fn slash24(net: &Ipv4Net) -> std::ops::RangeInclusive<Ipv4Net> {
    let lo = u32::from(net.network()) & 0xffff_ff00;
    let first = Ipv4Net::new(lo.into(), 0).unwrap_or_default();
    let last = Ipv4Net::new((lo | 0xff).into(), 32).unwrap_or_default();
    first..=last
}

impl Firewall {
    /// Every rule, in prefix order.
    pub fn rules(&self) -> &BTreeMap<Ipv4Net, Action> {
        &self.rules
    }

    /// The shared rule map (the reconciler keeps it to recognise an unchanged list).
    pub fn shared(&self) -> &Arc<BTreeMap<Ipv4Net, Action>> {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn get(&self, net: &Ipv4Net) -> Option<Action> {
        self.rules.get(net).copied()
    }

    /// Single addresses the data plane holds for the rules longer than /24 (a /25 is 128).
    pub fn exact_entries(&self) -> u64 {
        self.exact
    }

    /// The exact entries after adding the new prefixes of `batch` (or removing them), computed
    /// /24 by /24 for the /24s the batch touches; refused (naming the rule) past `capacity`.
    fn exact_after(
        &self,
        batch: &RuleBatch,
        remove: bool,
        capacity: usize,
    ) -> Result<u64, StateError> {
        let mut by24: BTreeMap<u32, Vec<(Ipv4Net, usize)>> = BTreeMap::new();
        for (net, _, index) in batch.iter() {
            if net.prefix_len() >= EXACT_FROM && self.rules.contains_key(&net) == remove {
                by24.entry(u32::from(net.network()) >> 8)
                    .or_default()
                    .push((net, index));
            }
        }
        let mut total = self.exact;
        for changed in by24.values() {
            let Some((first, index)) = changed.first().copied() else {
                continue;
            };
            let old: Vec<Ipv4Net> = self.rules.range(slash24(&first)).map(|(n, _)| *n).collect();
            let before = exact_entries(old.iter());
            let mut new: Vec<Ipv4Net> = if remove {
                old.into_iter()
                    .filter(|n| !changed.iter().any(|(c, _)| c == n))
                    .collect()
            } else {
                old.into_iter()
                    .chain(changed.iter().map(|(n, _)| *n))
                    .collect()
            };
            new.sort_unstable();
            total = total - before + exact_entries(new.iter());
            if total > capacity as u64 {
                return Err(exact_full(first, Some(index), total, capacity));
            }
        }
        Ok(total)
    }

    /// Adds every rule of `batch`, or none: a prefix whose rule has the other action is refused
    /// (AlreadyExists), as is going beyond `capacity` rules.
    pub fn add(&mut self, batch: &RuleBatch, capacity: usize) -> Result<Added, StateError> {
        let mut out = Added::default();
        for (net, action, index) in batch.iter() {
            match self.rules.get(&net) {
                None => out.added += 1,
                Some(a) if *a == action => out.unchanged += 1,
                Some(a) => {
                    return Err(StateError::AlreadyExists(format!(
                        "rules[{index}].cidr: {net} already has a rule with action {a}; remove it first (or replace the list)"
                    )))
                }
            }
        }
        out.total = self.rules.len() + out.added;
        check_capacity(out.total, capacity)?;
        let exact = self.exact_after(batch, false, capacity)?;
        if out.added > 0 {
            let rules = Arc::make_mut(&mut self.rules);
            for (net, action, _) in batch.iter() {
                rules.insert(net, action);
            }
            self.exact = exact;
        }
        Ok(out)
    }

    /// Removes every rule of `batch` (prefix and action must match), or none (NotFound).
    pub fn remove(&mut self, batch: &RuleBatch) -> Result<Removed, StateError> {
        for (net, action, index) in batch.iter() {
            match self.rules.get(&net) {
                Some(a) if *a == action => {}
                Some(a) => {
                    return Err(StateError::NotFound(format!(
                        "rules[{index}].cidr: the rule for {net} has action {a}, not {action}"
                    )))
                }
                None => {
                    return Err(StateError::NotFound(format!(
                        "rules[{index}].cidr: there is no rule for {net}"
                    )))
                }
            }
        }
        if !batch.is_empty() {
            self.exact = self.exact_after(batch, true, usize::MAX)?;
            let rules = Arc::make_mut(&mut self.rules);
            for (net, _, _) in batch.iter() {
                rules.remove(&net);
            }
        }
        Ok(Removed {
            removed: batch.len(),
            total: self.rules.len(),
        })
    }

    /// Makes `batch` the list: every rule when `only` is None, else the rules with action
    /// `only` (the rules with the other action stay; a batch prefix that has one is refused).
    pub fn replace(
        &mut self,
        only: Option<Action>,
        batch: &RuleBatch,
        capacity: usize,
    ) -> Result<Replaced, StateError> {
        let mut next: BTreeMap<Ipv4Net, Action> = BTreeMap::new();
        if let Some(only) = only {
            for (net, action, index) in batch.iter() {
                if action != only {
                    return Err(StateError::InvalidArgument {
                        field: "rules",
                        message: format!(
                            "rules[{index}] ({net}) is a {action} rule in a replace of the {only} list"
                        ),
                    });
                }
                if let Some(kept) = self.rules.get(&net).filter(|a| **a != only) {
                    return Err(StateError::AlreadyExists(format!(
                        "rules[{index}].cidr: {net} already has a rule with action {kept}, which a replace of the {only} list keeps; remove it first"
                    )));
                }
            }
            next.extend(self.rules.iter().filter(|(_, a)| **a != only));
        }
        next.extend(batch.iter().map(|(n, a, _)| (n, a)));
        check_capacity(next.len(), capacity)?;
        let exact = exact_entries(next.keys());
        if exact > capacity as u64 {
            // Name the rule at which the addresses pass the capacity.
            let (mut total, mut end) = (0u64, 0u64);
            for net in next.keys().filter(|n| n.prefix_len() >= EXACT_FROM) {
                let start = u64::from(u32::from(net.network()));
                if start < end {
                    continue;
                }
                total += 1u64 << (32 - net.prefix_len());
                end = start + (1u64 << (32 - net.prefix_len()));
                if total > capacity as u64 {
                    let index = batch.iter().find(|(n, _, _)| n == net).map(|(_, _, i)| i);
                    return Err(exact_full(*net, index, exact, capacity));
                }
            }
        }

        let mut out = Replaced {
            total: next.len(),
            ..Default::default()
        };
        for (net, action, _) in batch.iter() {
            match self.rules.get(&net) {
                None => out.added += 1,
                Some(a) if *a == action => out.unchanged += 1,
                Some(_) => out.changed += 1,
            }
        }
        out.removed = self.rules.keys().filter(|n| !next.contains_key(n)).count();
        if next != *self.rules {
            self.rules = Arc::new(next);
            self.exact = exact;
        }
        Ok(out)
    }
}

/// The refusal of any rule when the firewall is off.
pub fn off_error() -> StateError {
    StateError::FailedPrecondition(
        "the firewall is off ([firewall] capacity = 0): set a capacity in lbd's configuration and restart lbd to use rules"
            .into(),
    )
}

fn check_capacity(total: usize, capacity: usize) -> Result<(), StateError> {
    if capacity == 0 && total > 0 {
        return Err(off_error());
    }
    if total > capacity {
        return Err(StateError::InvalidArgument {
            field: "rules",
            message: format!(
                "the firewall would hold {total} rules; it holds at most {capacity} ([firewall] capacity)"
            ),
        });
    }
    Ok(())
}

/// The refusal of a rule that takes the single addresses past the capacity; `index` is its
/// place in the request (None: a rule the request keeps).
fn exact_full(net: Ipv4Net, index: Option<usize>, total: u64, capacity: usize) -> StateError {
    let rule = match index {
        Some(i) => format!("rules[{i}] ({net})"),
        None => format!("the kept rule {net}"),
    };
    StateError::InvalidArgument {
        field: "rules",
        message: format!(
            "{rule} takes the firewall past its capacity: rules longer than /24 are held as single addresses (a /{} is {}), {total} in all, and it holds at most {capacity} ([firewall] capacity)",
            net.prefix_len(),
            1u64 << (32 - net.prefix_len())
        ),
    }
}

impl Serialize for Firewall {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.rules.as_ref().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Firewall {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let rules = BTreeMap::<Ipv4Net, Action>::deserialize(d)?;
        if let Some(bad) = rules.keys().find(|n| n.trunc() != **n) {
            return Err(serde::de::Error::custom(format!(
                "firewall rule {bad} has host bits set"
            )));
        }
        Ok(Self {
            exact: exact_entries(rules.keys()),
            rules: Arc::new(rules),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn batch(rules: &[(&str, Action)]) -> RuleBatch {
        let mut b = RuleBatch::default();
        for (i, (n, a)) in rules.iter().enumerate() {
            b.push(i, net(n), *a).expect("test batch");
        }
        b
    }

    /// A firewall holding `rules`, added as one batch with room for ten.
    fn with(rules: &[(&str, Action)]) -> Firewall {
        let mut fw = Firewall::default();
        fw.add(&batch(rules), 10).expect("add");
        fw
    }

    #[test]
    fn prefixes_parse_and_normalise() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(net("10.0.0.0/8")));
        assert_eq!(parse_cidr("192.0.2.7"), Ok(net("192.0.2.7/32")));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(net("0.0.0.0/0")));
        assert_eq!(parse_cidr("203.0.113.9/32"), Ok(net("203.0.113.9/32")));
    }

    #[test]
    fn bad_prefixes_say_why() {
        let e = parse_cidr("10.0.0.1/8").expect_err("host bits");
        assert_eq!(
            e.to_string(),
            "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            parse_cidr("192.168.1.1/0")
                .expect_err("host bits")
                .to_string(),
            "192.168.1.1/0 has host bits set; did you mean 0.0.0.0/0?"
        );
        assert!(matches!(
            parse_cidr("10.0.0.0/33"),
            Err(CidrError::Length(_))
        ));
        assert!(matches!(
            parse_cidr("2001:db8::/32"),
            Err(CidrError::Ipv6(_))
        ));
        assert!(matches!(parse_cidr("::1"), Err(CidrError::Ipv6(_))));
        for bad in [
            "",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "x",
            "010.0.0.0/8",
            " 10.0.0.0/8",
            "10.0.0.256/32",
        ] {
            assert!(
                matches!(
                    parse_cidr(bad),
                    Err(CidrError::Syntax(_) | CidrError::Length(_))
                ),
                "{bad:?}: {:?}",
                parse_cidr(bad)
            );
        }
    }

    #[test]
    fn batch_merges_duplicates_and_refuses_contradictions() {
        let mut b = RuleBatch::default();
        b.push(0, net("10.0.0.0/8"), Action::Block).expect("first");
        b.push(1, net("10.0.0.0/8"), Action::Block)
            .expect("same again");
        let e = b
            .push(2, net("10.0.0.0/8"), Action::Allow)
            .expect_err("contradiction");
        assert_eq!(
            e.to_string(),
            "rules[2].action: 10.0.0.0/8 is also rules[0] with action block"
        );
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn add_is_idempotent_refuses_flips_and_changes_nothing_when_refused() {
        let mut fw = Firewall::default();
        let out = fw
            .add(
                &batch(&[
                    ("10.0.0.0/8", Action::Block),
                    ("10.1.2.0/24", Action::Allow),
                ]),
                10,
            )
            .expect("add");
        assert_eq!(
            out,
            Added {
                added: 2,
                unchanged: 0,
                total: 2
            }
        );
        let before = fw.clone();
        let out = fw
            .add(&batch(&[("10.0.0.0/8", Action::Block)]), 10)
            .expect("again");
        assert_eq!(out.unchanged, 1);
        assert!(
            Arc::ptr_eq(fw.shared(), before.shared()),
            "no-op add copied the rules"
        );

        let e = fw
            .add(
                &batch(&[
                    ("192.0.2.0/24", Action::Block),
                    ("10.1.2.0/24", Action::Block),
                ]),
                10,
            )
            .expect_err("flip");
        assert!(
            matches!(&e, StateError::AlreadyExists(m) if m.starts_with("rules[1].cidr: 10.1.2.0/24 already has a rule with action allow")),
            "{e}"
        );
        let e = fw
            .add(
                &batch(&[
                    ("192.0.2.0/24", Action::Block),
                    ("198.51.100.0/24", Action::Block),
                ]),
                3,
            )
            .expect_err("capacity");
        assert!(e.to_string().contains("at most 3"), "{e}");
        assert_eq!(fw, before);
    }

    #[test]
    fn remove_needs_every_rule_to_exist() {
        let mut fw = with(&[
            ("10.0.0.0/8", Action::Block),
            ("10.1.2.0/24", Action::Allow),
        ]);
        let before = fw.clone();
        let e = fw
            .remove(&batch(&[
                ("10.0.0.0/8", Action::Block),
                ("10.1.2.0/24", Action::Block),
            ]))
            .expect_err("wrong action");
        assert!(matches!(e, StateError::NotFound(_)), "{e}");
        let e = fw
            .remove(&batch(&[
                ("10.0.0.0/8", Action::Block),
                ("10.9.0.0/16", Action::Block),
            ]))
            .expect_err("missing");
        assert_eq!(
            e.to_string(),
            "rules[1].cidr: there is no rule for 10.9.0.0/16"
        );
        assert_eq!(fw, before);
        let out = fw
            .remove(&batch(&[("10.0.0.0/8", Action::Block)]))
            .expect("remove");
        assert_eq!(
            out,
            Removed {
                removed: 1,
                total: 1
            }
        );
        assert_eq!(fw.get(&net("10.1.2.0/24")), Some(Action::Allow));
    }

    #[test]
    fn replace_of_one_list_keeps_the_other() {
        let mut fw = with(&[
            ("10.0.0.0/8", Action::Block),
            ("172.16.0.0/12", Action::Block),
            ("10.1.2.0/24", Action::Allow),
        ]);
        let out = fw
            .replace(
                Some(Action::Block),
                &batch(&[
                    ("10.0.0.0/8", Action::Block),
                    ("192.0.2.0/24", Action::Block),
                ]),
                10,
            )
            .expect("replace block list");
        assert_eq!(
            out,
            Replaced {
                added: 1,
                changed: 0,
                removed: 1,
                unchanged: 1,
                total: 3
            }
        );
        assert_eq!(fw.get(&net("10.1.2.0/24")), Some(Action::Allow));
        assert_eq!(fw.get(&net("172.16.0.0/12")), None);

        let before = fw.clone();
        let e = fw
            .replace(
                Some(Action::Block),
                &batch(&[("10.1.2.0/24", Action::Block)]),
                10,
            )
            .expect_err("would flip a kept allow rule");
        assert!(matches!(e, StateError::AlreadyExists(_)), "{e}");
        let e = fw
            .replace(
                Some(Action::Block),
                &batch(&[("10.1.3.0/24", Action::Allow)]),
                10,
            )
            .expect_err("allow rule in a block list");
        assert!(matches!(e, StateError::InvalidArgument { .. }), "{e}");
        assert_eq!(fw, before);

        let out = fw
            .replace(None, &batch(&[("10.1.2.0/24", Action::Block)]), 10)
            .expect("replace everything");
        assert_eq!(
            out,
            Replaced {
                added: 0,
                changed: 1,
                removed: 2,
                unchanged: 0,
                total: 1
            }
        );
        let out = fw
            .replace(Some(Action::Block), &RuleBatch::default(), 10)
            .expect("empty the block list");
        assert_eq!(out.removed, 1);
        assert!(fw.is_empty());
    }

    #[test]
    fn state_round_trips_through_json() {
        let fw = with(&[
            ("10.0.0.0/8", Action::Block),
            ("10.1.2.0/24", Action::Allow),
        ]);
        let text = serde_json::to_string(&fw).expect("serialise");
        assert_eq!(text, r#"{"10.0.0.0/8":"block","10.1.2.0/24":"allow"}"#);
        let back: Firewall = serde_json::from_str(&text).expect("deserialise");
        assert_eq!(back, fw);
        assert!(serde_json::from_str::<Firewall>(r#"{"10.0.0.1/8":"block"}"#).is_err());
    }

    #[test]
    fn single_addresses_count_against_the_capacity() {
        let mut fw = Firewall::default();
        fw.add(
            &batch(&[
                ("10.0.0.0/8", Action::Block),
                ("10.1.2.0/25", Action::Block),
                ("10.1.2.7/32", Action::Allow),
                ("10.1.3.4/31", Action::Block),
            ]),
            200,
        )
        .expect("add");
        // The /32 lies inside the /25: 128 + 2 addresses.
        assert_eq!(fw.exact_entries(), 130);
        let before = fw.clone();
        let e = fw
            .add(
                &batch(&[
                    ("192.0.2.0/24", Action::Block),
                    ("192.0.2.128/26", Action::Block),
                    ("198.51.100.0/25", Action::Block),
                ]),
                200,
            )
            .expect_err("past the capacity");
        assert!(
            e.to_string()
                .contains("rules[2] (198.51.100.0/25) takes the firewall past its capacity")
                && e.to_string().contains("at most 200"),
            "{e}"
        );
        assert!(matches!(
            e,
            StateError::InvalidArgument { field: "rules", .. }
        ));
        assert_eq!(fw, before);
        let e = fw
            .replace(
                Some(Action::Block),
                &batch(&[
                    ("10.9.0.0/25", Action::Block),
                    ("10.9.1.0/25", Action::Block),
                ]),
                200,
            )
            .expect_err("replace past the capacity");
        assert!(
            e.to_string()
                .starts_with("rules: the kept rule 10.1.2.7/32 takes")
                || e.to_string().contains("rules[1] (10.9.1.0/25)"),
            "{e}"
        );
        assert_eq!(fw, before);
        fw.remove(&batch(&[("10.1.2.0/25", Action::Block)]))
            .expect("remove");
        assert_eq!(fw.exact_entries(), 3);
        fw.add(&batch(&[("10.1.2.0/25", Action::Block)]), 200)
            .expect("add back");
        assert_eq!(fw.exact_entries(), 130);
        let back: Firewall =
            serde_json::from_str(&serde_json::to_string(&fw).expect("json")).expect("parse");
        assert_eq!(back.exact_entries(), 130);
    }

    proptest::proptest! {
        #[test]
        fn exact_entries_count_distinct_addresses(
            list in proptest::collection::vec((0u32..4096, 20u8..=32, proptest::bool::ANY), 0..30),
            removed in proptest::collection::vec(proptest::bool::ANY, 30),
        ) {
            let nets: Vec<Ipv4Net> = list
                .iter()
                .map(|(a, len, _)| Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 | (a << 2)), *len).expect("len").trunc())
                .collect();
            let mut fw = Firewall::default();
            let mut b = RuleBatch::default();
            for (i, n) in nets.iter().enumerate() {
                let _ = b.push(i, *n, Action::Block);
            }
            fw.add(&b, usize::MAX).expect("add");
            let brute = |fw: &Firewall| {
                let mut addrs = std::collections::BTreeSet::new();
                for n in fw.rules().keys().filter(|n| n.prefix_len() > 24) {
                    addrs.extend(u32::from(n.network())..=u32::from(n.broadcast()));
                }
                addrs.len() as u64
            };
            proptest::prop_assert_eq!(fw.exact_entries(), brute(&fw));
            let mut r = RuleBatch::default();
            for (i, n) in fw.rules().keys().enumerate() {
                if removed.get(i).copied().unwrap_or(false) {
                    let _ = r.push(i, *n, Action::Block);
                }
            }
            fw.remove(&r).expect("remove");
            proptest::prop_assert_eq!(fw.exact_entries(), brute(&fw));
        }
    }
}
