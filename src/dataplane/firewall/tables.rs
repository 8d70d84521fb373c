//! The firewall's fixed-depth tables as lbd computes them from the rules, before they are written
//! to `fw_l2` and `fw_l3` (see `bpf/maps.h`): a chunk of one verdict word per /24 for every /16
//! (rules up to /16 baked into all 256 words), and one word per address that a rule longer than
//! /24 covers. A packet's verdict is one array lookup, plus one hash lookup in a /24 that holds
//! rules longer than /24, whatever the number of rules; the work of the longest-prefix match is
//! done here, once per change.
//!
//! Everything here is pure (no maps): [`Tables::build`] computes the tables of a rule set,
//! [`Tables::update`] recomputes only the /16s a change touches and says which entries to write
//! and delete ([`Plan`]), and [`Tables::verdict`] is the lookup the data plane does. In memory a
//! /16 without rules longer than /16 is one word ([`Tables::uniform`]), not 256.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::RuleEntry;
use crate::skel::types;
use xdplb_model::firewall::Action;

/// Words per chunk (one per /24 of a /16).
pub(crate) const SLOTS: usize = types::fw_limits::FW_L2_SLOTS.0 as usize;
/// Chunks of `fw_l2` (one per /16).
pub(crate) const L2_ENTRIES: usize = types::fw_limits::FW_L2_ENTRIES.0 as usize;
/// A slot's bit that sends the lookup on to `fw_l3`.
pub(crate) const DEEPER: u32 = types::fw_verdict_bits::FW_VERDICT_DEEPER.0;
const DEEPER_SHIFT: u32 = types::fw_verdict_bits::FW_VERDICT_DEEPER_SHIFT.0;
const DEEPER_BITS: u32 = types::fw_verdict_bits::FW_VERDICT_DEEPER_BITS.0;
const DEEPER_ANY: u32 = types::fw_verdict_bits::FW_VERDICT_DEEPER_ANY.0;

/// The bits a slot gets for an `fw_l3` entry of `addr` (host order): "this /24 holds longer
/// rules" and `addr`'s bit of the filter.
pub(crate) fn deeper_bit(addr: u32) -> u32 {
    DEEPER_ANY | 1 << (DEEPER_SHIFT + (addr & 0xff) % DEEPER_BITS)
}

/// Whether the data plane looks `addr` up in `fw_l3` after reading slot word `w`: the /24 holds
/// longer rules and `addr`'s filter bit is set, or the filter is empty (a word of an lbd older
/// than the filter: every address goes on).
pub fn goes_deeper(w: u32, addr: u32) -> bool {
    let filter = w & DEEPER & !DEEPER_ANY;
    w & DEEPER_ANY != 0 && (filter == 0 || filter & deeper_bit(addr) != 0)
}
const ACTION_SHIFT: u32 = types::fw_verdict_bits::FW_VERDICT_ACTION_SHIFT.0;
const ID_MASK: u32 = types::fw_verdict_bits::FW_VERDICT_ID_MASK.0;

/// The words of the 256 /24s of one /16.
pub(crate) type Slots = [u32; SLOTS];

/// The verdict word of a rule (never 0: the action is never 0).
pub(crate) fn word(rule: RuleEntry) -> u32 {
    (u32::from(super::action_value(rule.action)) << ACTION_SHIFT) | (rule.id & ID_MASK)
}

/// The rule a word names, without its [`DEEPER`] bits (None: no rule).
pub(crate) fn decode(word: u32) -> Option<RuleEntry> {
    let action = (word >> ACTION_SHIFT) as u8;
    let action = if action == super::action_value(Action::Block) {
        Action::Block
    } else if action == super::action_value(Action::Allow) {
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
pub(crate) const MAX_RULE_ID: u32 = ID_MASK;

/// One /16 that holds rules longer than /16: its slots and the `fw_l3` entries of its addresses
/// (ascending, host order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub(crate) slots: Box<Slots>,
    pub(crate) exact: Vec<(u32, u32)>,
}

/// What the two tables hold (or must hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// By /16 (source >> 16), for the /16s not in `chunks`: the word all 256 slots of its
    /// `fw_l2` chunk hold (the longest rule <= /16 covering it, 0: none). 0 for the /16s in
    /// `chunks`.
    pub(crate) uniform: Vec<u32>,
    /// The /16s with rules longer than /16: their `fw_l2` slots and `fw_l3` entries.
    pub chunks: BTreeMap<u16, Chunk>,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            uniform: vec![0; L2_ENTRIES],
            chunks: BTreeMap::new(),
        }
    }
}

/// The map writes that turn one [`Tables`] into another, in the order they must happen: every
/// `fw_l3` entry is written before the slots that send packets to it, and unlinked (followed by
/// a grace period) before it is deleted, so a packet never sees a verdict of neither state.
/// Chunks are rewritten in place: each slot is a word that a packet reads old or new.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// 1. New and changed `fw_l3` entries (address host order, word).
    pub(crate) l3_put: Vec<(u32, u32)>,
    /// 2. Changed `fw_l2` chunks (/16 index, all 256 slots).
    pub(crate) l2_put: Vec<(u32, Box<Slots>)>,
    /// 3. (after a grace period) `fw_l3` entries no slot points to any more.
    pub(crate) l3_del: Vec<u32>,
}

impl Plan {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.l3_put.is_empty() && self.l2_put.is_empty() && self.l3_del.is_empty()
    }

    /// Whether something is deleted (and readers must be waited for first).
    pub(crate) fn deletes(&self) -> bool {
        !self.l3_del.is_empty()
    }
}

/// Rules of a set, as the tables need them.
pub(crate) type Rules = BTreeMap<Ipv4Net, RuleEntry>;

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
        let mut uniform = vec![0u32; L2_ENTRIES];
        let mut short: Vec<(&Ipv4Net, u32)> = Vec::new();
        let mut deeper = vec![false; L2_ENTRIES];
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
                &mut uniform,
                (base(net) >> 16) as usize,
                1 << (16 - net.prefix_len()),
                w,
            );
        }
        let mut chunks = BTreeMap::new();
        for (h, _) in deeper.iter().enumerate().filter(|(_, d)| **d) {
            let h = h as u16;
            if let Some(chunk) = build_chunk(rules, h, uniform[h as usize]) {
                uniform[h as usize] = 0;
                chunks.insert(h, chunk);
            }
        }
        Self { uniform, chunks }
    }

    /// Entries of `fw_l3`.
    pub fn exact_len(&self) -> usize {
        self.chunks.values().map(|c| c.exact.len()).sum()
    }

    /// The word of the longest rule covering `addr`, as the data plane looks it up (without
    /// [`DEEPER`]; 0: no rule).
    #[cfg(test)]
    pub(crate) fn verdict(&self, addr: Ipv4Addr) -> u32 {
        let a = u32::from(addr);
        let h = (a >> 16) as u16;
        let Some(chunk) = self.chunks.get(&h) else {
            return self.uniform[h as usize];
        };
        let w = chunk.slots[((a >> 8) & 0xff) as usize];
        if !goes_deeper(w, a) {
            return w & !DEEPER;
        }
        match chunk.exact.binary_search_by_key(&a, |(k, _)| *k) {
            Ok(i) => chunk.exact[i].1,
            Err(_) => w & !DEEPER,
        }
    }

    /// The 256 slots `fw_l2` holds for /16 `h`.
    #[cfg(test)]
    pub(crate) fn slots(&self, h: u16) -> Box<Slots> {
        match self.chunks.get(&h) {
            Some(c) => c.slots.clone(),
            None => Box::new([self.uniform[usize::from(h)]; SLOTS]),
        }
    }

    /// Makes these tables those of `rules`, recomputing only the /16s in `touched` (every /16
    /// when None), and returns the writes that take the maps from the old tables to the new.
    pub(crate) fn update(&mut self, rules: &Rules, touched: Option<&[u16]>) -> Plan {
        let fresh;
        let regions: Vec<(u16, u32, Option<Chunk>)> = match touched {
            Some(hs) => hs
                .iter()
                .map(|h| {
                    let short = short_word(rules, *h);
                    match build_chunk(rules, *h, short) {
                        Some(c) => (*h, 0, Some(c)),
                        None => (*h, short, None),
                    }
                })
                .collect(),
            None => {
                fresh = Self::build(rules);
                let Tables {
                    uniform,
                    mut chunks,
                } = fresh;
                uniform
                    .iter()
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
            let before = self.uniform[h as usize];
            let same = match (&old, &chunk) {
                (Some(o), Some(n)) => o.slots == n.slots,
                (None, None) => before == w,
                // A chunk read back from the maps may hold one word everywhere.
                (Some(c), None) | (None, Some(c)) => {
                    let u = if old.is_some() { w } else { before };
                    c.slots.iter().all(|s| *s == u)
                }
            };
            if !same {
                let slots = chunk
                    .as_ref()
                    .map_or_else(|| Box::new([w; SLOTS]), |c| c.slots.clone());
                plan.l2_put.push((u32::from(h), slots));
            }
            self.uniform[h as usize] = w;
            if let Some(c) = chunk {
                self.chunks.insert(h, c);
            }
        }
        plan
    }
}

/// The /16s whose tables a change of `net` touches (ascending).
pub(crate) fn touched(net: &Ipv4Net) -> std::ops::RangeInclusive<u16> {
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
        for (i, w) in words.iter().enumerate() {
            if *w != 0 {
                slots[usize::from(*slot)] |= deeper_bit(i as u32);
            }
        }
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

    /// The built tables give every address of `addrs` the verdict of [`lpm`].
    fn assert_agrees_with_lpm(t: &Tables, rules: &Rules, addrs: &[&str]) {
        for a in addrs {
            let a: Ipv4Addr = a.parse().expect("addr");
            assert_eq!(t.verdict(a), lpm(rules, a), "{a}");
        }
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
    fn words_without_a_filter_send_every_address_on() {
        let block = word(rule(3, Action::Block));
        // Written by an lbd older than the filter: bit 29 alone.
        let legacy = block | DEEPER_ANY;
        // Written now, for an fw_l3 entry of x.x.x.7.
        let filtered = block | deeper_bit(7);
        assert_eq!(
            filtered & DEEPER_ANY,
            DEEPER_ANY,
            "old programs read bit 29 alone"
        );
        for last in 0..=255u32 {
            let a = 0x0a01_0200 | last;
            assert!(goes_deeper(legacy, a), "legacy word, .{last}");
            assert_eq!(
                goes_deeper(filtered, a),
                last % 5 == 2,
                "filtered word, .{last}"
            );
            assert!(!goes_deeper(block, a), "no fw_l3 entries, .{last}");
        }
    }

    #[test]
    fn deeper_filter_holds_the_bits_of_the_exact_addresses_only() {
        let r = rules(&[
            ("10.1.2.0/24", Action::Block),
            ("10.1.2.7/32", Action::Allow),
            ("10.1.3.0/31", Action::Allow),
        ]);
        let t = Tables::build(&r);
        let chunk = &t.chunks[&0x0a01];
        let block = word(r[&"10.1.2.0/24".parse().expect("p")]);
        // 7 % 5 = 2; 0 and 1 of the /31.
        assert_eq!(chunk.slots[2], block | deeper_bit(7));
        assert_eq!(chunk.slots[3], deeper_bit(0) | deeper_bit(1));
        assert_eq!(chunk.slots[4], 0);
        // 10.1.2.12 shares the /32's bit (12 % 5 = 2) and finds no entry; 10.1.2.8 skips fw_l3.
        assert_agrees_with_lpm(
            &t,
            &r,
            &[
                "10.1.2.7",
                "10.1.2.8",
                "10.1.2.12",
                "10.1.3.0",
                "10.1.3.1",
                "10.1.3.2",
            ],
        );
        assert_eq!(t.verdict("10.1.2.8".parse().expect("addr")), block);
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
        assert_agrees_with_lpm(
            &t,
            &r,
            &[
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
            ],
        );
        // Only the two /16s with longer rules have chunks; the /25 is 128 addresses.
        assert_eq!(t.chunks.len(), 2);
        assert_eq!(t.exact_len(), 129);
        assert_eq!(
            t.uniform[0x0a02],
            word(r[&"10.0.0.0/8".parse().expect("p")])
        );
        assert_eq!(
            t.uniform[0x0a01], 0,
            "a /16 with a chunk has no uniform word"
        );
        assert_eq!(*t.slots(0x0a02), [t.uniform[0x0a02]; SLOTS]);
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

    /// A model of the maps: `fw_l2` (chunks written so far; the others are zero, as the array
    /// starts) and `fw_l3`.
    type Maps = (BTreeMap<u32, Box<Slots>>, BTreeMap<u32, u32>);

    /// The program's lookup in the model.
    fn model_verdict(maps: &Maps, addr: u32) -> u32 {
        let w = maps
            .0
            .get(&(addr >> 16))
            .map_or(0, |c| c[((addr >> 8) & 0xff) as usize]);
        if !goes_deeper(w, addr) {
            return w & !DEEPER;
        }
        maps.1.get(&addr).copied().unwrap_or(w & !DEEPER)
    }

    /// Applies `plan` to a model of the maps in its order, checking after every write that each
    /// of `probes` (address, old word, new word) sees the old or the new verdict.
    fn play(maps: &mut Maps, plan: &Plan, probes: &[(u32, u32, u32)]) -> Result<(), String> {
        let check =
            |maps: &Maps, probes: &mut dyn Iterator<Item = &(u32, u32, u32)>, when: &str| {
                for (a, old, new) in probes {
                    let w = model_verdict(maps, *a);
                    if w != *old && w != *new {
                        return Err(format!(
                            "{} {when}: word {w:#x}, neither old {old:#x} nor new {new:#x}",
                            Ipv4Addr::from(*a)
                        ));
                    }
                }
                Ok(())
            };
        for (a, w) in &plan.l3_put {
            maps.1.insert(*a, *w);
        }
        check(maps, &mut probes.iter(), "after the fw_l3 writes")?;
        // A chunk decides the verdicts of its own /16 only.
        let mut by16: BTreeMap<u32, Vec<(u32, u32, u32)>> = BTreeMap::new();
        for p in probes {
            by16.entry(p.0 >> 16).or_default().push(*p);
        }
        for (h, s) in &plan.l2_put {
            maps.0.insert(*h, s.clone());
            if let Some(inside) = by16.get(h) {
                check(
                    maps,
                    &mut inside.iter(),
                    &format!("after the chunk of /16 {h:#x}"),
                )?;
            }
        }
        for a in &plan.l3_del {
            if maps.1.remove(a).is_none() {
                return Err(format!(
                    "deleting the missing address {}",
                    Ipv4Addr::from(*a)
                ));
            }
        }
        check(maps, &mut probes.iter(), "after the deletes")
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
            steps in proptest::collection::vec(
                (arb_rules(), proptest::collection::vec(any::<u32>(), 16)),
                1..6,
            ),
        ) {
            let mut applied = Rules::new();
            let mut tables = Tables::default();
            let mut maps: Maps = (BTreeMap::new(), BTreeMap::new());
            for (list, random) in steps {
                let next = to_rules(&list);
                let mut regions: Vec<u16> = applied
                    .iter()
                    .filter(|(n, r)| next.get(n) != Some(r))
                    .chain(next.iter().filter(|(n, r)| applied.get(n) != Some(r)))
                    .flat_map(|(n, _)| touched(n))
                    .collect();
                regions.sort_unstable();
                regions.dedup();
                // Every rule's edges (old and new), and random addresses near the rules.
                let mut addrs: Vec<u32> = random.iter().map(|p| 0x0a00_0000 | (p & 0x0803_ffff)).collect();
                for n in applied.keys().chain(next.keys()) {
                    let (a, b) = (u32::from(n.network()), u32::from(n.broadcast()));
                    addrs.extend([a, b, a.wrapping_sub(1), b.wrapping_add(1)]);
                }
                let probes: Vec<(u32, u32, u32)> = addrs
                    .iter()
                    .map(|a| (*a, lpm(&applied, Ipv4Addr::from(*a)), lpm(&next, Ipv4Addr::from(*a))))
                    .collect();
                // As the reconciler: region by region, or everything for wide changes.
                let plan = if regions.len() > 4096 {
                    tables.update(&next, None)
                } else {
                    tables.update(&next, Some(&regions))
                };
                if let Err(e) = play(&mut maps, &plan, &probes) {
                    return Err(TestCaseError::fail(e));
                }
                applied = next;
                let fresh = Tables::build(&applied);
                prop_assert_eq!(&tables, &fresh);
                // The maps hold exactly the fresh tables: every /16 written or non-zero.
                for h in 0..L2_ENTRIES as u32 {
                    let (held, u) = (maps.0.get(&h), fresh.uniform[h as usize]);
                    let want = fresh.chunks.get(&(h as u16));
                    let same = match (held, want) {
                        (None, None) => u == 0,
                        (Some(s), None) => s.iter().all(|w| *w == u),
                        (None, Some(c)) => c.slots.iter().all(|w| *w == 0),
                        (Some(s), Some(c)) => **s == *c.slots,
                    };
                    prop_assert!(same, "/16 {:#x}", h);
                }
                let exact: BTreeMap<u32, u32> = fresh.chunks.values().flat_map(|c| c.exact.iter().copied()).collect();
                prop_assert_eq!(&maps.1, &exact);
                // A full update from the fresh tables changes nothing.
                let mut again = fresh.clone();
                prop_assert!(again.update(&applied, None).is_empty());
            }
        }
    }
}
