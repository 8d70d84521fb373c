//! The firewall's fixed-depth tables as lbd computes them from the rules, before they are written
//! to `fw_l1`, `fw_l2` and `fw_l3` (see `bpf/maps.h`): one verdict word per /16, a chunk of one
//! word per /24 for the /16s that hold longer rules, and one word per address that a rule longer
//! than /24 covers. A packet's verdict is a fixed number of lookups (at most three) whatever the
//! number of rules; the work of the longest-prefix match is done here, once per change.
//!
//! Everything here is pure (no maps): [`Tables::build`] computes the tables of a rule set,
//! [`Tables::update`] recomputes only the /16s a change touches and says which entries to write
//! and delete ([`Plan`]), and [`Tables::verdict`] is the lookup the data plane does.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::RuleEntry;
use crate::firewall::Action;
use crate::skel::types;

/// Words per chunk (one per /24 of a /16).
pub const SLOTS: usize = types::fw_limits::FW_L2_SLOTS.0 as usize;
/// Entries of `fw_l1` (one per /16).
pub const L1_ENTRIES: usize = types::fw_limits::FW_L1_ENTRIES.0 as usize;
/// A word's bit that sends the lookup to the next table.
pub const DEEPER: u32 = types::fw_verdict_bits::FW_VERDICT_DEEPER.0;
const ACTION_SHIFT: u32 = types::fw_verdict_bits::FW_VERDICT_ACTION_SHIFT.0;
const ID_MASK: u32 = types::fw_verdict_bits::FW_VERDICT_ID_MASK.0;

/// The words of the 256 /24s of one /16.
pub type Slots = [u32; SLOTS];

/// The verdict word of a rule (never 0: the action is never 0).
pub fn word(rule: RuleEntry) -> u32 {
    (u32::from(rule.action.value()) << ACTION_SHIFT) | (rule.id & ID_MASK)
}

/// The rule a word names, without its [`DEEPER`] bit (None: no rule).
pub fn decode(word: u32) -> Option<RuleEntry> {
    let action = (word >> ACTION_SHIFT) as u8;
    let action = if action == Action::Block.value() {
        Action::Block
    } else if action == Action::Allow.value() {
        Action::Allow
    } else {
        return None;
    };
    Some(RuleEntry {
        id: word & ID_MASK,
        action,
    })
}

/// Rule ids must fit a word's id bits.
pub const MAX_RULE_ID: u32 = ID_MASK;

/// One /16's chunk: its slots and the `fw_l3` entries of its addresses (ascending, host order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub slots: Box<Slots>,
    pub exact: Vec<(u32, u32)>,
}

/// What the three tables hold (or must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// `fw_l1`, by /16 (source >> 16).
    pub l1: Vec<u32>,
    /// `fw_l2` and `fw_l3`, by /16: only /16s with rules longer than /16.
    pub chunks: BTreeMap<u16, Chunk>,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            l1: vec![0; L1_ENTRIES],
            chunks: BTreeMap::new(),
        }
    }
}

/// The map writes that turn one [`Tables`] into another, in the order they must happen: every
/// entry is written before the entries that send packets to it, and unlinked (followed by a
/// grace period) before it is deleted, so a packet never sees a verdict of neither state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// 1. New and changed `fw_l3` entries (address host order, word).
    pub l3_put: Vec<(u32, u32)>,
    /// 2. New and changed chunks (/16 index, slots).
    pub l2_put: Vec<(u32, Box<Slots>)>,
    /// 3. Changed `fw_l1` words (/16 index, word).
    pub l1_put: Vec<(u32, u32)>,
    /// 4. (after a grace period) chunks no `fw_l1` word points to any more.
    pub l2_del: Vec<u32>,
    /// 5. `fw_l3` entries no slot points to any more.
    pub l3_del: Vec<u32>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.l3_put.is_empty()
            && self.l2_put.is_empty()
            && self.l1_put.is_empty()
            && self.l2_del.is_empty()
            && self.l3_del.is_empty()
    }

    /// Whether something is deleted (and readers must be waited for first).
    pub fn deletes(&self) -> bool {
        !self.l2_del.is_empty() || !self.l3_del.is_empty()
    }
}

/// Rules of a set, as the tables need them.
pub type Rules = BTreeMap<Ipv4Net, RuleEntry>;

fn base(net: &Ipv4Net) -> u32 {
    u32::from(net.network())
}

/// Paints `words[from..from + n]` with `w`.
fn paint(words: &mut [u32], from: usize, n: usize, w: u32) {
    if let Some(s) = words.get_mut(from..from + n) {
        s.fill(w);
    }
}

impl Tables {
    /// The tables of `rules`.
    pub fn build(rules: &Rules) -> Self {
        let mut l1 = vec![0u32; L1_ENTRIES];
        let mut short: Vec<(&Ipv4Net, u32)> = Vec::new();
        let mut deeper = vec![false; L1_ENTRIES];
        for (net, rule) in rules {
            if net.prefix_len() <= 16 {
                short.push((net, word(*rule)));
            } else {
                deeper[(base(net) >> 16) as usize] = true;
            }
        }
        // Shorter first: a longer rule paints over the ones that contain it.
        short.sort_by_key(|(n, _)| n.prefix_len());
        for (net, w) in short {
            paint(
                &mut l1,
                (base(net) >> 16) as usize,
                1 << (16 - net.prefix_len()),
                w,
            );
        }
        let mut chunks = BTreeMap::new();
        for (h, _) in deeper.iter().enumerate().filter(|(_, d)| **d) {
            let h = h as u16;
            if let Some(chunk) = build_chunk(rules, h, l1[h as usize]) {
                l1[h as usize] |= DEEPER;
                chunks.insert(h, chunk);
            }
        }
        Self { l1, chunks }
    }

    /// Entries of `fw_l3`.
    pub fn exact_len(&self) -> usize {
        self.chunks.values().map(|c| c.exact.len()).sum()
    }

    /// The word of the longest rule covering `addr`, as the data plane looks it up (without
    /// [`DEEPER`]; 0: no rule).
    pub fn verdict(&self, addr: Ipv4Addr) -> u32 {
        let a = u32::from(addr);
        let h = (a >> 16) as u16;
        let w = self.l1[h as usize];
        if w & DEEPER == 0 {
            return w;
        }
        let Some(chunk) = self.chunks.get(&h) else {
            return w & !DEEPER;
        };
        let w = chunk.slots[((a >> 8) & 0xff) as usize];
        if w & DEEPER == 0 {
            return w;
        }
        match chunk.exact.binary_search_by_key(&a, |(k, _)| *k) {
            Ok(i) => chunk.exact[i].1,
            Err(_) => w & !DEEPER,
        }
    }

    /// Makes these tables those of `rules`, recomputing only the /16s in `touched` (every /16
    /// when None), and returns the writes that take the maps from the old tables to the new.
    pub fn update(&mut self, rules: &Rules, touched: Option<&[u16]>) -> Plan {
        let fresh;
        let regions: Vec<(u16, u32, Option<Chunk>)> = match touched {
            Some(hs) => hs
                .iter()
                .map(|h| {
                    let short = short_word(rules, *h);
                    match build_chunk(rules, *h, short) {
                        Some(c) => (*h, short | DEEPER, Some(c)),
                        None => (*h, short, None),
                    }
                })
                .collect(),
            None => {
                fresh = Self::build(rules);
                let Tables { l1, mut chunks } = fresh;
                l1.iter()
                    .enumerate()
                    .map(|(h, w)| (h as u16, *w, chunks.remove(&(h as u16))))
                    .collect()
            }
        };
        let mut plan = Plan::default();
        for (h, w, chunk) in regions {
            let old = self.chunks.remove(&h);
            diff_exact(
                old.as_ref().map_or(&[][..], |c| &c.exact),
                chunk.as_ref().map_or(&[][..], |c| &c.exact),
                &mut plan,
            );
            match (&old, &chunk) {
                (Some(o), Some(n)) if o.slots == n.slots => {}
                (_, Some(n)) => plan.l2_put.push((u32::from(h), n.slots.clone())),
                (Some(_), None) => plan.l2_del.push(u32::from(h)),
                (None, None) => {}
            }
            if self.l1[h as usize] != w {
                plan.l1_put.push((u32::from(h), w));
                self.l1[h as usize] = w;
            }
            if let Some(c) = chunk {
                self.chunks.insert(h, c);
            }
        }
        plan
    }
}

/// The /16s whose tables a change of `net` touches (ascending).
pub fn touched(net: &Ipv4Net) -> std::ops::RangeInclusive<u16> {
    let first = (base(net) >> 16) as u16;
    let n = if net.prefix_len() >= 16 {
        1
    } else {
        1u32 << (16 - net.prefix_len())
    };
    first..=(u32::from(first) + n - 1) as u16
}

/// The word of the longest rule of length <= 16 covering /16 `h` (0: none).
fn short_word(rules: &Rules, h: u16) -> u32 {
    let addr = u32::from(h) << 16;
    (0..=16u8)
        .rev()
        .find_map(|len| {
            let net = Ipv4Net::new(Ipv4Addr::from(addr), len).ok()?.trunc();
            rules.get(&net).map(|r| word(*r))
        })
        .unwrap_or(0)
}

/// The chunk of /16 `h` whose own word (longest rule <= /16) is `short`; None when no rule
/// longer than /16 lies in it.
fn build_chunk(rules: &Rules, h: u16, short: u32) -> Option<Chunk> {
    let lo = u32::from(h) << 16;
    let (Ok(from), Ok(to)) = (
        Ipv4Net::new(Ipv4Addr::from(lo), 16),
        Ipv4Net::new(Ipv4Addr::from(lo | 0xffff), 32),
    ) else {
        return None;
    };
    let mut inner: Vec<(&Ipv4Net, u32)> = rules
        .range(from..=to)
        .filter(|(n, _)| n.prefix_len() > 16)
        .map(|(n, r)| (n, word(*r)))
        .collect();
    if inner.is_empty() {
        return None;
    }
    inner.sort_by_key(|(n, _)| n.prefix_len());
    let mut slots = Box::new([short & !DEEPER; SLOTS]);
    // /24 (third byte) -> word per address, 0 = no rule longer than /24.
    let mut exact: BTreeMap<u8, Box<[u32; 256]>> = BTreeMap::new();
    for (net, w) in inner {
        let a = base(net);
        let slot = ((a >> 8) & 0xff) as usize;
        if net.prefix_len() <= 24 {
            paint(&mut slots[..], slot, 1 << (24 - net.prefix_len()), w);
        } else {
            let words = exact
                .entry(slot as u8)
                .or_insert_with(|| Box::new([0; 256]));
            paint(
                &mut words[..],
                (a & 0xff) as usize,
                1 << (32 - net.prefix_len()),
                w,
            );
        }
    }
    let mut entries = Vec::new();
    for (slot, words) in &exact {
        slots[usize::from(*slot)] |= DEEPER;
        let prefix = lo | (u32::from(*slot) << 8);
        entries.extend(
            words
                .iter()
                .enumerate()
                .filter(|(_, w)| **w != 0)
                .map(|(i, w)| (prefix | i as u32, *w)),
        );
    }
    Some(Chunk {
        slots,
        exact: entries,
    })
}

/// Adds the `fw_l3` writes from `old` to `new` (both ascending) to `plan`.
fn diff_exact(old: &[(u32, u32)], new: &[(u32, u32)], plan: &mut Plan) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(o), Some(n)) if o.0 == n.0 => {
                if o.1 != n.1 {
                    plan.l3_put.push(*n);
                }
                i += 1;
                j += 1;
            }
            (Some(o), Some(n)) if o.0 < n.0 => {
                plan.l3_del.push(o.0);
                i += 1;
            }
            (Some(o), None) => {
                plan.l3_del.push(o.0);
                i += 1;
            }
            (_, Some(n)) => {
                plan.l3_put.push(*n);
                j += 1;
            }
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(id: u32, action: Action) -> RuleEntry {
        RuleEntry { id, action }
    }

    fn rules(list: &[(&str, Action)]) -> Rules {
        list.iter()
            .enumerate()
            .map(|(i, (n, a))| (n.parse().expect("prefix"), rule(i as u32, *a)))
            .collect()
    }

    /// Longest-prefix match the obvious way.
    fn lpm(rules: &Rules, addr: Ipv4Addr) -> u32 {
        rules
            .iter()
            .filter(|(n, _)| n.contains(&addr))
            .max_by_key(|(n, _)| n.prefix_len())
            .map_or(0, |(_, r)| word(*r))
    }

    #[test]
    fn words_round_trip() {
        let r = rule(12345, Action::Allow);
        assert_eq!(decode(word(r)), Some(r));
        assert_eq!(decode(word(r) | DEEPER), Some(r));
        assert_eq!(decode(0), None);
        assert_ne!(word(rule(0, Action::Block)), 0);
    }

    #[test]
    fn levels_and_edges() {
        let r = rules(&[
            ("0.0.0.0/0", Action::Block),
            ("10.0.0.0/8", Action::Allow),
            ("10.1.0.0/16", Action::Block),
            ("10.1.2.0/24", Action::Allow),
            ("10.1.2.128/25", Action::Block),
            ("10.1.2.200/32", Action::Allow),
            ("255.255.255.255/32", Action::Allow),
        ]);
        let t = Tables::build(&r);
        for a in [
            "1.2.3.4",
            "10.2.0.0",
            "10.1.0.1",
            "10.1.2.1",
            "10.1.2.128",
            "10.1.2.199",
            "10.1.2.200",
            "10.1.2.201",
            "10.1.3.0",
            "255.255.255.255",
            "255.255.255.254",
            "0.0.0.0",
        ] {
            let a: Ipv4Addr = a.parse().expect("addr");
            assert_eq!(t.verdict(a), lpm(&r, a), "{a}");
        }
        // Only the two /16s with longer rules have chunks; the /25 is 128 addresses.
        assert_eq!(t.chunks.len(), 2);
        assert_eq!(t.exact_len(), 129);
        assert_eq!(t.l1[0x0a02], word(r[&"10.0.0.0/8".parse().expect("p")]));
    }

    fn arb_net() -> impl Strategy<Value = Ipv4Net> {
        // Addresses bunched in a few /16s so that rules overlap.
        (0u32..4, any::<u16>(), 0u8..=32).prop_map(|(hi, lo, len)| {
            let addr = (0x0a00_0000 | (hi << 16) | u32::from(lo)) ^ ((hi & 1) << 27);
            Ipv4Net::new(Ipv4Addr::from(addr), len)
                .expect("len <= 32")
                .trunc()
        })
    }

    fn arb_rules() -> impl Strategy<Value = Vec<(Ipv4Net, bool)>> {
        proptest::collection::vec((arb_net(), any::<bool>()), 0..40)
    }

    fn to_rules(list: &[(Ipv4Net, bool)]) -> Rules {
        let mut out = Rules::new();
        for (i, (n, block)) in list.iter().enumerate() {
            let action = if *block { Action::Block } else { Action::Allow };
            out.entry(*n).or_insert(rule(i as u32, action));
        }
        out
    }

    /// A model of the maps: `fw_l1`, `fw_l2`, `fw_l3`.
    type Maps = (Vec<u32>, BTreeMap<u32, Box<Slots>>, BTreeMap<u32, u32>);

    /// Applies `plan` to a model of the maps.
    fn play(maps: &mut Maps, plan: &Plan) {
        for (a, w) in &plan.l3_put {
            maps.2.insert(*a, *w);
        }
        for (h, s) in &plan.l2_put {
            maps.1.insert(*h, s.clone());
        }
        for (h, w) in &plan.l1_put {
            maps.0[*h as usize] = *w;
        }
        for h in &plan.l2_del {
            assert!(maps.1.remove(h).is_some(), "deleting a missing chunk");
        }
        for a in &plan.l3_del {
            assert!(maps.2.remove(a).is_some(), "deleting a missing address");
        }
    }

    proptest! {
        // Each case builds and compares whole tables (65,536 words) several times.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn build_matches_longest_prefix(list in arb_rules(), probes in proptest::collection::vec(any::<u32>(), 32)) {
            let r = to_rules(&list);
            let t = Tables::build(&r);
            let mut addrs: Vec<Ipv4Addr> = probes.iter().map(|p| Ipv4Addr::from(0x0a00_0000 | (p & 0x0803_ffff))).collect();
            // Every rule's first and last address, and just outside.
            for n in r.keys() {
                let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
                addrs.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)].map(Ipv4Addr::from));
            }
            for a in addrs {
                prop_assert_eq!(t.verdict(a), lpm(&r, a), "{}", a);
            }
        }

        #[test]
        fn incremental_updates_end_where_a_fresh_build_does(
            steps in proptest::collection::vec(arb_rules(), 1..6),
        ) {
            let mut applied = Rules::new();
            let mut tables = Tables::default();
            let mut maps = (vec![0u32; L1_ENTRIES], BTreeMap::new(), BTreeMap::new());
            for list in steps {
                let next = to_rules(&list);
                let mut regions: Vec<u16> = applied
                    .iter()
                    .filter(|(n, r)| next.get(n) != Some(r))
                    .chain(next.iter().filter(|(n, r)| applied.get(n) != Some(r)))
                    .flat_map(|(n, _)| touched(n))
                    .collect();
                regions.sort_unstable();
                regions.dedup();
                // As the reconciler: region by region, or everything for wide changes.
                let plan = if regions.len() > 4096 {
                    tables.update(&next, None)
                } else {
                    tables.update(&next, Some(&regions))
                };
                play(&mut maps, &plan);
                applied = next;
                let fresh = Tables::build(&applied);
                prop_assert_eq!(&tables, &fresh);
                // The maps hold exactly the fresh tables.
                prop_assert_eq!(&maps.0, &fresh.l1);
                let chunks: BTreeMap<u32, Box<Slots>> = fresh.chunks.iter().map(|(h, c)| (u32::from(*h), c.slots.clone())).collect();
                prop_assert_eq!(&maps.1, &chunks);
                let exact: BTreeMap<u32, u32> = fresh.chunks.values().flat_map(|c| c.exact.iter().copied()).collect();
                prop_assert_eq!(&maps.2, &exact);
                // A full update from the fresh tables changes nothing.
                let mut again = fresh.clone();
                prop_assert!(again.update(&applied, None).is_empty());
            }
        }
    }
}
