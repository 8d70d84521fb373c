//! Maglev consistent hashing with weights: builds the per-VIP lookup table that the XDP program indexes by flow hash.
//!
//! The control plane calls [`build_table`] whenever the backend set (or a
//! weight) of a VIP changes and writes the resulting `Vec<u32>` of backend ids
//! into the VIP's BPF array. The XDP program computes [`flow_hash_v4`] (the C
//! twin lives in `bpf/maglev.h`) and forwards the packet to
//! `table[flow_hash % size]`.
//!
//! # Algorithm
//!
//! This is Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4) extended with
//! weights:
//!
//! * Backends are sorted by `key` first, so the table depends only on the set
//!   of `(key, id, weight)` and never on the order the caller passes them in.
//! * Every backend has a preference list, a permutation of the slots
//!   `0..size` given by `(offset + j * skip) % size` for `j = 0, 1, ...`, where
//!   `offset = h1(key) % size` and `skip = h2(key) % (size - 1) + 1`.
//!   `size` is prime and `1 <= skip < size`, so the list visits every slot
//!   exactly once. It is generated lazily (one cursor per backend) instead of
//!   materialising the `N x size` permutation matrix of the paper.
//! * Population runs in rounds, as in the paper, but with credits: in each
//!   round every weighted backend (in key order) adds its weight to its
//!   credit, and when the credit reaches `max_weight` (the largest weight in
//!   the set) it subtracts `max_weight` and claims the next free slot of its
//!   preference list. After `r` rounds a backend of weight `w` has therefore
//!   claimed exactly `floor(r * w / max_weight)` slots, so its share is
//!   proportional to its weight (within two slots below and
//!   `1 + N * w / sum_of_weights` slots above the exact share; see the tests).
//!   With equal weights every backend claims one slot per round, which is
//!   exactly the unweighted algorithm of the paper.
//! * Rather than iterating over rounds in which a light backend claims
//!   nothing (which would cost `O(size * N)` for weights such as `1` and
//!   `u32::MAX`), the loop is event driven: the `k`-th claim of a backend of
//!   weight `w` happens in round `ceil(k * max_weight / w)`, and a min-heap
//!   ordered by `(round, key order)` yields the claims in exactly the order of
//!   the round-based loop. All of this arithmetic is done in `u64`, which
//!   cannot overflow for `k <= size <= MAX_TABLE_SIZE` and weights up to
//!   `u32::MAX`.
//! * Backends with weight 0 take no part (they are drained); if no backend
//!   has a non-zero weight every slot is [`NO_BACKEND`].
//!
//! # Speed
//!
//! lbd rebuilds a VIP's table on every change of its backends, so the build is
//! on the path of every AddBackend call. Three things keep it short without
//! changing a single slot of the result (a property test compares it with the
//! plain heap-driven loop above):
//! * when the weights are close (the rounds are few for the backend count, as
//!   with equal weights), the claims are made round by round with credits:
//!   no heap and no division per claim; the heap is kept for skewed weights;
//! * the preference walks test a bitmap of the taken slots (8 KiB for 65,537
//!   slots, in the L1 cache) instead of the 256 KiB table;
//! * the walks cost `size / free` tests per claim, which adds up to
//!   `size * ln(size)` and is mostly spent on the last slots; once few slots
//!   are free, the next free slot of a preference list is found from the free
//!   slots instead (the position of slot `s` in a list is
//!   `(s - offset) / skip (mod size)`).
//!
//! The two key hashes are 64-bit FNV-1a of the key followed by the murmur3
//! `fmix64` finaliser applied with two different seeds. They are effectively
//! part of the interface: changing them reshuffles every flow when the control
//! plane is upgraded, so a test pins them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::Ipv4Addr;

/// Default Maglev table size (a prime; matches `LB_DEFAULT_MAGLEV_SIZE` in `bpf/xdplb.h`).
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// Table entry meaning "no backend": the XDP program must not forward such flows.
/// It is reserved and cannot be used as a backend id.
pub(crate) const NO_BACKEND: u32 = u32::MAX;

/// Largest accepted table size: the largest prime below 2^24 (a 64 MiB table).
/// Larger tables bring no benefit and would only exhaust memory.
pub(crate) const MAX_TABLE_SIZE: u32 = 16_777_213;

/// FNV-1a 32-bit offset basis (`FNV32_OFFSET` in `bpf/maglev.h`).
pub(crate) const FNV32_OFFSET: u32 = 2_166_136_261;
/// FNV-1a 32-bit prime (`FNV32_PRIME` in `bpf/maglev.h`).
pub(crate) const FNV32_PRIME: u32 = 16_777_619;

const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Seed mixed into the key hash to derive the permutation offset.
const OFFSET_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Seed mixed into the key hash to derive the permutation skip.
const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// One backend of a VIP as seen by the Maglev table builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Value stored in the table slots this backend owns (index of the backend
    /// in the data plane). Must be unique and must not be [`NO_BACKEND`].
    pub id: u32,
    /// Stable identity of the backend (e.g. the bytes of `"10.0.2.1:8080"`);
    /// it alone determines the backend's preference list. Must be unique.
    pub key: Vec<u8>,
    /// Relative weight; 0 means drained (no slots).
    pub weight: u32,
}

/// Reasons why a Maglev table cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is below 2, the smallest usable prime.
    #[error("maglev table size {size} is too small (minimum 2)")]
    TableSizeTooSmall {
        /// Requested table size.
        size: u32,
    },
    /// The table size exceeds [`MAX_TABLE_SIZE`].
    #[error("maglev table size {size} is too large (maximum {max})")]
    TableSizeTooLarge {
        /// Requested table size.
        size: u32,
        /// Largest accepted size.
        max: u32,
    },
    /// The table size is not prime, so preference lists would not be permutations.
    #[error("maglev table size {size} is not prime")]
    TableSizeNotPrime {
        /// Requested table size.
        size: u32,
    },
    /// There are more backends with a non-zero weight than table slots.
    #[error(
        "{backends} backends with non-zero weight do not fit in a maglev table of size {size}"
    )]
    TooManyBackends {
        /// Number of backends with a non-zero weight.
        backends: usize,
        /// Requested table size.
        size: u32,
    },
    /// Two backends share the same key.
    #[error("duplicate maglev backend key \"{}\"", String::from_utf8_lossy(.key))]
    DuplicateKey {
        /// The duplicated key.
        key: Vec<u8>,
    },
    /// Two backends share the same id.
    #[error("duplicate maglev backend id {id}")]
    DuplicateId {
        /// The duplicated id.
        id: u32,
    },
    /// A backend uses the reserved id [`NO_BACKEND`].
    #[error("maglev backend id {id} is reserved (NO_BACKEND)")]
    ReservedId {
        /// The offending id.
        id: u32,
    },
}

/// Builds the table. Backends with weight 0 get no slots (drained). If no backend has weight > 0, every slot is NO_BACKEND.
/// Deterministic: the same set of (key, weight) gives the same table whatever the input order (sort by key first).
///
/// `size` must be a prime in `2..=MAX_TABLE_SIZE` and at least the number of
/// backends with a non-zero weight; keys and ids must be unique and no id may
/// be [`NO_BACKEND`]. The slot share of each backend is proportional to its
/// weight (see the module documentation for the credit scheme used). Note that
/// a backend whose weight is tiny relative to the others may get no slot at
/// all, exactly as proportionality demands.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>, MaglevError> {
    validate_size(size)?;

    let mut sorted: Vec<&MaglevBackend> = backends.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    if let Some(pair) = sorted.windows(2).find(|pair| pair[0].key == pair[1].key) {
        return Err(MaglevError::DuplicateKey {
            key: pair[0].key.clone(),
        });
    }
    let mut ids = HashSet::with_capacity(sorted.len());
    for backend in &sorted {
        if backend.id == NO_BACKEND {
            return Err(MaglevError::ReservedId { id: backend.id });
        }
        if !ids.insert(backend.id) {
            return Err(MaglevError::DuplicateId { id: backend.id });
        }
    }

    let weighted: Vec<&MaglevBackend> = sorted.into_iter().filter(|b| b.weight > 0).collect();
    let mut table = vec![NO_BACKEND; size as usize];
    if weighted.is_empty() {
        return Ok(table);
    }
    if weighted.len() > size as usize {
        return Err(MaglevError::TooManyBackends {
            backends: weighted.len(),
            size,
        });
    }

    populate(&weighted, size, &mut table);
    Ok(table)
}

/// Returns the backend id for `flow_hash`, as the XDP program does
/// (`table[flow_hash % size]`), or [`NO_BACKEND`] for an empty table.
#[cfg(test)]
pub(crate) fn lookup(table: &[u32], flow_hash: u32) -> u32 {
    if table.is_empty() {
        return NO_BACKEND;
    }
    table
        .get(flow_hash as usize % table.len())
        .copied()
        .unwrap_or(NO_BACKEND)
}

/// Returns whether `n` is prime (deterministic trial division; at most ~22k
/// divisions for any `u32`).
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n % 2 == 0 || n % 3 == 0 {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n % d == 0 || n % (d + 2) == 0 {
            return false;
        }
        d += 6;
    }
    true
}

/// 32-bit FNV-1a of `data` (the hash function of the data plane).
pub(crate) fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(FNV32_OFFSET, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(FNV32_PRIME)
    })
}

/// The flow hash used by the XDP program (bpf/maglev.h); must be bit-identical to the C code below.
///
/// ```c
/// /* FNV-1a, 32 bit, over the 13 bytes: saddr(4, wire order) daddr(4, wire order)
///    sport(2, wire order) dport(2, wire order) proto(1) */
/// h = FNV32_OFFSET; for each byte b: h ^= b; h *= FNV32_PRIME;   /* u32 wrapping */
/// ```
pub fn flow_hash_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut bytes = [0u8; 13];
    bytes[0..4].copy_from_slice(&src.octets());
    bytes[4..8].copy_from_slice(&dst.octets());
    bytes[8..10].copy_from_slice(&sport.to_be_bytes());
    bytes[10..12].copy_from_slice(&dport.to_be_bytes());
    bytes[12] = proto;
    fnv1a32(&bytes)
}

/// Checks `size` against the table-size constraints.
fn validate_size(size: u32) -> Result<(), MaglevError> {
    if size < 2 {
        return Err(MaglevError::TableSizeTooSmall { size });
    }
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TableSizeTooLarge {
            size,
            max: MAX_TABLE_SIZE,
        });
    }
    if !is_prime(size) {
        return Err(MaglevError::TableSizeNotPrime { size });
    }
    Ok(())
}

/// Fills `table` (all [`NO_BACKEND`]) from `weighted`: backends with a non-zero weight, in key
/// order, at most `size` of them (checked by the caller).
///
/// Two loops give the same claims in the same order (round, then key order):
/// * rounds: every backend adds its weight to its credit each round and claims a slot when the
///   credit reaches `max_weight`. It costs one step per backend and round, so it is used when the
///   rounds are few for the backend count (weights within a small factor of each other, as in
///   the common case of equal weights), and needs no division;
/// * events: the min-heap of the module documentation, for skewed weights, where most backends
///   would claim nothing in most rounds.
fn populate(weighted: &[&MaglevBackend], size: u32, table: &mut [u32]) {
    let max_weight = weighted
        .iter()
        .map(|b| u64::from(b.weight))
        .fold(0, u64::max);
    let sum: u64 = weighted.iter().map(|b| u64::from(b.weight)).sum();
    let n = weighted.len() as u64;
    let mut claimers: Vec<Claimer> = weighted
        .iter()
        .map(|b| Claimer {
            id: b.id,
            weight: u64::from(b.weight),
            credit: 0,
            prefs: Preferences::new(&b.key, size),
            inverse_skip: 0,
        })
        .collect();
    let mut fill = Fill::new(table);

    // After r rounds the backends hold sum(floor(r * w / max)) >= r * sum / max - n slots, so
    // the table is full after at most (size + n) * max / sum + 1 rounds (no overflow: the
    // product is below 2^25 * 2^32).
    let rounds = (u64::from(size) + n) * max_weight / sum + 1;
    if rounds.saturating_mul(n) <= 4 * u64::from(size) {
        'rounds: loop {
            for c in claimers.iter_mut() {
                c.credit += c.weight;
                if c.credit >= max_weight {
                    c.credit -= max_weight;
                    if fill.claim(c) {
                        break 'rounds;
                    }
                }
            }
        }
        return;
    }

    // Min-heap of (round of the next claim, position in key order).
    let mut pending: BinaryHeap<Reverse<(u64, usize)>> = claimers
        .iter()
        .enumerate()
        .map(|(i, c)| Reverse((claim_round(1, max_weight, c.weight), i)))
        .collect();
    let mut claimed = vec![0u64; claimers.len()];
    while let Some(Reverse((_, i))) = pending.pop() {
        let claimer = &mut claimers[i];
        if fill.claim(claimer) {
            break;
        }
        claimed[i] += 1;
        pending.push(Reverse((
            claim_round(claimed[i] + 1, max_weight, claimer.weight),
            i,
        )));
    }
}

/// Round (1-based) in which a backend of weight `weight` makes its `k`-th
/// claim (`k >= 1`): the smallest `r` with `r * weight >= k * max_weight`,
/// i.e. `ceil(k * max_weight / weight)`. `k * max_weight` fits in `u64` since
/// `k <= size + 1 <= 2^24` and `max_weight < 2^32`.
fn claim_round(k: u64, max_weight: u64, weight: u64) -> u64 {
    (k * max_weight - 1) / weight + 1
}

/// Free slots left when [`Fill`] stops walking preference lists and searches the free slots
/// instead (see [`Fill::claim`]).
const TAIL_SLOTS: usize = 128;

/// The table being filled, with a bitmap of its taken slots (8 KiB for 65,537 slots: the
/// preference walks test bits in the L1 cache instead of reading the 256 KiB table).
struct Fill<'a> {
    table: &'a mut [u32],
    taken: Vec<u64>,
    size: u64,
    free: usize,
    /// The free slots, once at most [`TAIL_SLOTS`] are left.
    tail: Option<Vec<u32>>,
    modulo: Modulo,
}

impl<'a> Fill<'a> {
    fn new(table: &'a mut [u32]) -> Self {
        Self {
            taken: vec![0; table.len().div_ceil(64)],
            size: table.len() as u64,
            free: table.len(),
            tail: None,
            modulo: Modulo::new(table.len() as u64),
            table,
        }
    }

    /// The next free slot of `c`'s list once at most [`TAIL_SLOTS`] are free (see
    /// [`Fill::claim`]), removed from the list of free slots; moves the cursor past it.
    #[inline(never)]
    fn claim_in_tail(&mut self, c: &mut Claimer) -> Option<u32> {
        if self.tail.is_none() {
            self.tail = Some(self.free_slots());
        }
        let free = self.tail.as_mut()?;
        let walked = (0..TAIL_WALK)
            .map(|_| c.prefs.next_slot())
            .find(|&s| !is_taken(&self.taken, s));
        let pos = match walked {
            Some(slot) => free.iter().position(|&f| f == slot),
            None => {
                if c.inverse_skip == 0 {
                    c.inverse_skip = inverse_mod(c.prefs.skip, self.size);
                }
                let (next, inverse, size) = (c.prefs.next, c.inverse_skip, self.size);
                let modulo = &self.modulo;
                free.iter()
                    .enumerate()
                    .min_by_key(|(_, &s)| {
                        modulo.reduce((u64::from(s) + size - u64::from(next)) * inverse)
                    })
                    .map(|(pos, _)| pos)
            }
        }?;
        let slot = free.swap_remove(pos);
        c.prefs.next = slot;
        c.prefs.next_slot();
        Some(slot)
    }

    /// The slots not taken, in order (read a bitmap word at a time).
    fn free_slots(&self) -> Vec<u32> {
        let mut free = Vec::with_capacity(self.free);
        for (i, word) in self.taken.iter().enumerate() {
            let mut bits = !word;
            while bits != 0 {
                let slot = i as u64 * 64 + u64::from(bits.trailing_zeros());
                // The last word's bits past the table are not slots.
                if slot < self.size {
                    free.push(slot as u32);
                }
                bits &= bits - 1;
            }
        }
        free
    }

    /// Gives `c` the next free slot of its preference list and moves its cursor past it;
    /// returns whether the table is now full.
    ///
    /// Walking the list costs `size / free` tests on average, which adds up to `size * ln(size)`
    /// over a whole table, most of it for the last slots. So once few slots are free, a claim
    /// walks a few steps only and then finds the slot from the other side: slot `s` comes
    /// `(s - next) / skip (mod size)` places after the cursor `next` in the list, and the free
    /// slot with the smallest distance is the one the walk would reach first. Same slot, `free`
    /// multiplications instead of `size / free` tests.
    // Inlined into the population loops: the walk is the hot path of the whole build.
    #[inline(always)]
    fn claim(&mut self, c: &mut Claimer) -> bool {
        let slot = if self.free > TAIL_SLOTS {
            // Terminates: the list is a permutation of all slots and one is still free.
            loop {
                let slot = c.prefs.next_slot();
                if !is_taken(&self.taken, slot) {
                    break slot;
                }
            }
        } else {
            match self.claim_in_tail(c) {
                Some(slot) => slot,
                // Unreachable: the caller stops once the table is full, and the list of free
                // slots holds every slot not taken.
                None => return true,
            }
        };
        if let Some(w) = self.taken.get_mut(slot as usize / 64) {
            *w |= 1 << (slot % 64);
        }
        if let Some(t) = self.table.get_mut(slot as usize) {
            *t = c.id;
        }
        self.free -= 1;
        self.free == 0
    }
}

/// Whether `slot` is taken in the bitmap `taken`.
fn is_taken(taken: &[u64], slot: u32) -> bool {
    taken
        .get(slot as usize / 64)
        .is_some_and(|w| w & (1 << (slot % 64)) != 0)
}

/// Steps of its preference list a claim walks before it searches the free slots, once few are
/// left: a backend whose next slots are free (one that claimed few so far) needs no search.
const TAIL_WALK: usize = 8;

/// `x mod m` by one multiplication instead of a division (`m < 2^24`, `x < 2^48`): with
/// `magic = floor(2^64 / m)`, `x * magic / 2^64` is `floor(x / m)` or one less.
struct Modulo {
    m: u64,
    magic: u64,
}

impl Modulo {
    fn new(m: u64) -> Self {
        Self {
            m,
            magic: u64::MAX / m.max(1),
        }
    }

    fn reduce(&self, x: u64) -> u64 {
        let q = ((u128::from(x) * u128::from(self.magic)) >> 64) as u64;
        let r = x - q * self.m;
        if r >= self.m {
            r - self.m
        } else {
            r
        }
    }
}

/// `a^-1 mod m` for a prime `m` and `0 < a < m` (extended Euclid).
fn inverse_mod(a: u32, m: u64) -> u64 {
    let (mut r0, mut r1) = (m as i64, i64::from(a));
    let (mut t0, mut t1) = (0i64, 1i64);
    while r1 != 0 {
        let q = r0 / r1;
        (r0, r1) = (r1, r0 - q * r1);
        (t0, t1) = (t1, t0 - q * t1);
    }
    t0.rem_euclid(m as i64) as u64
}

/// Population state of one weighted backend.
struct Claimer {
    id: u32,
    weight: u64,
    /// Weight accumulated since the last claim (round loop).
    credit: u64,
    prefs: Preferences,
    /// `prefs.skip^-1 mod size`, computed when first needed (0: not yet).
    inverse_skip: u64,
}

/// Lazily generated Maglev preference list `(offset + j * skip) % size`.
struct Preferences {
    next: u32,
    skip: u32,
    size: u32,
}

impl Preferences {
    /// Preference list of the backend with key `key` in a table of prime size `size >= 2`.
    fn new(key: &[u8], size: u32) -> Self {
        let (h1, h2) = key_hashes(key);
        let wide = u64::from(size);
        // Both results are below `size`, a u32.
        Preferences {
            next: (h1 % wide) as u32,
            skip: (h2 % (wide - 1) + 1) as u32,
            size,
        }
    }

    /// Returns the next slot of the list (wraps around after `size` slots).
    fn next_slot(&mut self) -> u32 {
        let slot = self.next;
        // next < size and skip < size <= 2^24, so the sum does not overflow and one
        // subtraction is enough.
        self.next += self.skip;
        if self.next >= self.size {
            self.next -= self.size;
        }
        slot
    }
}

/// 64-bit FNV-1a of `data`.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(FNV64_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV64_PRIME)
    })
}

/// murmur3 64-bit finaliser (a bijection with full avalanche).
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The two independent hashes of a backend key: (offset hash, skip hash).
fn key_hashes(key: &[u8]) -> (u64, u64) {
    let base = fnv1a64(key);
    (fmix64(base ^ OFFSET_SEED), fmix64(base ^ SKIP_SEED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const SMALL_SIZE: u32 = 4099;

    fn key_for(n: u32) -> Vec<u8> {
        let ip = Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff));
        format!("{ip}:8080").into_bytes()
    }

    fn backend(id: u32, weight: u32) -> MaglevBackend {
        MaglevBackend {
            id,
            key: key_for(id),
            weight,
        }
    }

    fn equal_backends(n: u32) -> Vec<MaglevBackend> {
        (0..n).map(|i| backend(i, 1)).collect()
    }

    fn weighted_backends(weights: &[u32]) -> Vec<MaglevBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| backend(i as u32, w))
            .collect()
    }

    fn counts(table: &[u32]) -> HashMap<u32, u64> {
        let mut counts = HashMap::new();
        for &id in table {
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    fn changed(a: &[u32], b: &[u32]) -> u64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).filter(|(x, y)| x != y).count() as u64
    }

    /// Checks that every backend's share is proportional to its weight.
    ///
    /// Bounds used: with `c` = slots of a backend of weight `w`, `E = size * w / S`
    /// its exact share (`S` = sum of weights, `N` = number of weighted backends),
    /// the credit scheme guarantees `-2 <= c - E <= 1 + N * w / S` (after `r`
    /// rounds a backend holds `floor(r * w / max)` or `floor((r - 1) * w / max)`
    /// slots). That absolute bound is checked for every backend, and the 5 %
    /// relative bound for every backend with `E >= 100` (below that, one slot of
    /// rounding is already 1 %+ and the relative bound is meaningless).
    fn assert_proportional(backends: &[MaglevBackend], table: &[u32]) {
        let size = table.len() as f64;
        let counts = counts(table);
        let sum: f64 = backends.iter().map(|b| f64::from(b.weight)).sum();
        let n = backends.iter().filter(|b| b.weight > 0).count() as f64;
        assert!(!counts.contains_key(&NO_BACKEND), "table has empty slots");
        for b in backends {
            let got = counts.get(&b.id).copied().unwrap_or(0) as f64;
            if b.weight == 0 {
                assert_eq!(got, 0.0, "drained backend {} has slots", b.id);
                continue;
            }
            let w = f64::from(b.weight);
            let expected = size * w / sum;
            let diff = got - expected;
            assert!(
                diff >= -2.0 - 1e-6 && diff <= 1.0 + n * w / sum + 1e-6,
                "backend {} weight {}: {} slots, expected {:.2} (diff {:.2})",
                b.id,
                b.weight,
                got,
                expected,
                diff
            );
            if expected >= 100.0 {
                assert!(
                    diff.abs() <= 0.05 * expected,
                    "backend {} weight {}: {} slots, expected {:.2} (more than 5% off)",
                    b.id,
                    b.weight,
                    got,
                    expected
                );
            }
        }
    }

    /// The plain builder of the module documentation (a heap of claims, walks over the table
    /// itself): the fast [`build_table`] must give exactly its table.
    fn reference_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let mut sorted: Vec<&MaglevBackend> = backends.iter().filter(|b| b.weight > 0).collect();
        sorted.sort_by(|a, b| a.key.cmp(&b.key));
        let mut table = vec![NO_BACKEND; size as usize];
        if sorted.is_empty() {
            return table;
        }
        let max = sorted.iter().map(|b| u64::from(b.weight)).max().unwrap();
        let mut prefs: Vec<Preferences> = sorted
            .iter()
            .map(|b| Preferences::new(&b.key, size))
            .collect();
        let mut claimed = vec![0u64; sorted.len()];
        let mut pending: BinaryHeap<Reverse<(u64, usize)>> = sorted
            .iter()
            .enumerate()
            .map(|(i, b)| Reverse((claim_round(1, max, u64::from(b.weight)), i)))
            .collect();
        let mut filled = 0;
        while filled < table.len() {
            let Reverse((_, i)) = pending.pop().unwrap();
            loop {
                let slot = prefs[i].next_slot() as usize;
                if table[slot] == NO_BACKEND {
                    table[slot] = sorted[i].id;
                    break;
                }
            }
            claimed[i] += 1;
            filled += 1;
            pending.push(Reverse((
                claim_round(claimed[i] + 1, max, u64::from(sorted[i].weight)),
                i,
            )));
        }
        table
    }

    #[test]
    fn same_table_as_the_reference_builder() {
        // Equal weights (round loop), mixed weights, skewed weights (heap), tiny tables (all
        // tail), and the bench's 1,000 backends.
        let cases: Vec<(Vec<MaglevBackend>, u32)> = vec![
            (equal_backends(1000), DEFAULT_TABLE_SIZE),
            (equal_backends(3), DEFAULT_TABLE_SIZE),
            (weighted_backends(&[1, 2, 3, 4]), SMALL_SIZE),
            (weighted_backends(&[1, 1000, 5, 0, 7]), DEFAULT_TABLE_SIZE),
            (weighted_backends(&[u32::MAX, 1, 1, 2]), SMALL_SIZE),
            (equal_backends(5), 5),
            (equal_backends(7), 131),
            (equal_backends(1), 2),
        ];
        for (backends, size) in cases {
            assert_eq!(
                build_table(&backends, size).expect("build"),
                reference_table(&backends, size),
                "{} backends, size {size}",
                backends.len()
            );
        }
    }

    #[test]
    fn modulo_by_multiplication_is_exact() {
        for m in [2u64, 3, 131, 4099, 65537, u64::from(MAX_TABLE_SIZE)] {
            let r = Modulo::new(m);
            let top = (m - 1) * (m - 1) + 2 * m;
            for x in [
                0,
                1,
                m - 1,
                m,
                m + 1,
                2 * m - 1,
                12_345_678_901,
                top,
                (1 << 48) - 1,
            ] {
                assert_eq!(r.reduce(x), x % m, "{x} mod {m}");
            }
        }
    }

    #[test]
    fn inverse_mod_inverts() {
        for m in [2u64, 3, 131, 4099, 65537, u64::from(MAX_TABLE_SIZE)] {
            for a in [1u32, 2, 3, 100, 4098, 65536] {
                if u64::from(a) < m {
                    assert_eq!(u64::from(a) * inverse_mod(a, m) % m, 1, "{a} mod {m}");
                }
            }
        }
    }

    #[test]
    fn fnv1a32_published_vectors() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn fnv1a64_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn flow_hash_v4_is_fnv1a_over_wire_order_bytes() {
        let src = Ipv4Addr::new(10, 0, 0, 1);
        let dst = Ipv4Addr::new(192, 168, 1, 10);
        let bytes = [10, 0, 0, 1, 192, 168, 1, 10, 0x30, 0x39, 0x00, 0x50, 6];
        assert_eq!(flow_hash_v4(src, dst, 12345, 80, 6), fnv1a32(&bytes));
        // Computed independently (Python) from the 13 bytes above.
        assert_eq!(flow_hash_v4(src, dst, 12345, 80, 6), 0x67e9_b45e);
        // Byte order matters: swapped ports give a different hash.
        assert_ne!(
            flow_hash_v4(src, dst, 12345, 80, 6),
            flow_hash_v4(src, dst, 80, 12345, 6)
        );
    }

    #[test]
    fn key_hashes_are_pinned() {
        // Changing these reshuffles every flow on upgrade; values computed
        // independently (Python: FNV-1a 64 then murmur3 fmix64 with the seeds).
        assert_eq!(
            key_hashes(b"10.0.2.1:8080"),
            (0xed41_74f9_1ee0_232b, 0xb9d7_5fa1_0dd0_6166)
        );
        let prefs = Preferences::new(b"10.0.2.1:8080", DEFAULT_TABLE_SIZE);
        assert_eq!((prefs.next, prefs.skip), (35844, 24935));
    }

    #[test]
    fn preferences_are_a_permutation() {
        let mut prefs = Preferences::new(b"10.0.2.1:8080", SMALL_SIZE);
        let mut seen = vec![false; SMALL_SIZE as usize];
        for _ in 0..SMALL_SIZE {
            let slot = prefs.next_slot() as usize;
            assert!(!seen[slot], "slot {slot} visited twice");
            seen[slot] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn is_prime_known_values() {
        let primes = [2, 3, 5, 7, 11, 13, 4099, 65537, 16_777_213, 4_294_967_291];
        let composites = [0, 1, 4, 6, 9, 15, 25, 49, 4097, 65535, 65536, 16_777_215];
        for p in primes {
            assert!(is_prime(p), "{p} is prime");
        }
        for c in composites {
            assert!(!is_prime(c), "{c} is not prime");
        }
        // 3 * 5 * 17 * 257 * 65537
        assert!(!is_prime(u32::MAX));
        // 65521^2, the square of the largest 16-bit prime
        assert!(!is_prime(65521 * 65521));
        let small: Vec<u32> = (0..60).filter(|&n| is_prime(n)).collect();
        assert_eq!(
            small,
            [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]
        );
    }

    #[test]
    fn spread_equal_weights() {
        let size = DEFAULT_TABLE_SIZE;
        for n in [2, 3, 5, 7, 10, 13, 50, 100, 257, 500, 1000] {
            let table = build_table(&equal_backends(n), size).expect("build");
            assert_eq!(table.len(), size as usize);
            let counts = counts(&table);
            assert!(!counts.contains_key(&NO_BACKEND));
            let ideal = f64::from(size) / f64::from(n);
            let mut min = u64::MAX;
            let mut max = 0;
            for id in 0..n {
                let got = counts.get(&id).copied().unwrap_or(0);
                min = min.min(got);
                max = max.max(got);
                assert!(
                    (got as f64 - ideal).abs() <= 0.05 * ideal,
                    "n={n}: backend {id} has {got} slots, ideal {ideal:.2}"
                );
            }
            // Equal weights: one claim per round, so counts differ by at most one.
            assert!(max - min <= 1, "n={n}: min {min} max {max}");
        }
    }

    #[test]
    fn spread_weighted_fixed_sets() {
        let sets: [&[u32]; 6] = [
            &[1, 2, 3, 4],
            &[100, 100, 200],
            &[1, 1000],
            &[7, 13, 1, 50, 3, 3],
            &[u32::MAX, u32::MAX - 1, u32::MAX / 2, 1],
            &[5, 0, 5, 0, 10],
        ];
        for weights in sets {
            let backends = weighted_backends(weights);
            let table = build_table(&backends, DEFAULT_TABLE_SIZE).expect("build");
            assert_proportional(&backends, &table);
        }
    }

    #[test]
    fn extreme_weight_ratio_is_fast_and_proportional() {
        // 999 backends of weight 1 next to one of weight u32::MAX: a naive
        // round loop would need ~65537 rounds over 1000 backends.
        let mut weights = vec![1u32; 999];
        weights.push(u32::MAX);
        let backends = weighted_backends(&weights);
        let table = build_table(&backends, DEFAULT_TABLE_SIZE).expect("build");
        let counts = counts(&table);
        assert_eq!(counts.get(&999), Some(&u64::from(DEFAULT_TABLE_SIZE)));
        assert_proportional(&backends, &table);
    }

    #[test]
    fn table_as_small_as_backend_count() {
        let table = build_table(&equal_backends(5), 5).expect("build");
        let mut sorted = table.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        let table = build_table(&equal_backends(2), 2).expect("build");
        let mut sorted = table.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1]);
        let table = build_table(&equal_backends(1), 2).expect("build");
        assert_eq!(table, [0, 0]);
    }

    /// Removes backend `pos` (of `n`) and checks the number of changed slots.
    fn check_removal(n: u32, pos: u32, size: u32) {
        let before_set = equal_backends(n);
        let before = build_table(&before_set, size).expect("build");
        let after_set: Vec<_> = before_set.into_iter().filter(|b| b.id != pos).collect();
        let after = build_table(&after_set, size).expect("build");
        assert!(!after.contains(&pos));
        assert!(!after.contains(&NO_BACKEND));
        let total = changed(&before, &after);
        let owned = before.iter().filter(|&&id| id == pos).count() as u64;
        // Every slot of the removed backend must change; the rest are slots
        // of surviving backends that moved (disruption beyond the minimum).
        let survivors_moved = total - owned;
        let bound = f64::from(size) * (1.0 / f64::from(n) + 0.02);
        assert!(
            total as f64 <= bound,
            "remove {pos} of {n}: {total} slots changed ({owned} owned, \
             {survivors_moved} of survivors), bound {bound:.0}"
        );
    }

    /// Adds one backend to `n` and checks the number of changed slots.
    fn check_addition(n: u32, size: u32) {
        let before_set = equal_backends(n);
        let before = build_table(&before_set, size).expect("build");
        let mut after_set = before_set;
        // A key that sorts among the existing ones, not at the end.
        after_set.push(MaglevBackend {
            id: n,
            key: b"10.0.0.50:9090".to_vec(),
            weight: 1,
        });
        let after = build_table(&after_set, size).expect("build");
        let total = changed(&before, &after);
        let gained = after.iter().filter(|&&id| id == n).count() as u64;
        assert!(gained > 0);
        let bound = f64::from(size) * (1.0 / f64::from(n + 1) + 0.02);
        assert!(
            total as f64 <= bound,
            "add to {n}: {total} slots changed ({gained} to the new backend), bound {bound:.0}"
        );
    }

    #[test]
    fn disruption_remove_one() {
        for n in [3, 5, 10, 50, 100, 1000] {
            for pos in [0, n / 2, n - 1] {
                check_removal(n, pos, DEFAULT_TABLE_SIZE);
            }
        }
        check_removal(500, 123, DEFAULT_TABLE_SIZE);
    }

    #[test]
    fn disruption_add_one() {
        for n in [3, 5, 10, 50, 100, 500, 1000] {
            check_addition(n, DEFAULT_TABLE_SIZE);
        }
    }

    #[test]
    fn weight_change_moves_few_slots() {
        // Draining one of 10 equal backends changes about its share only.
        let mut backends = equal_backends(10);
        let before = build_table(&backends, DEFAULT_TABLE_SIZE).expect("build");
        backends[4].weight = 0;
        let after = build_table(&backends, DEFAULT_TABLE_SIZE).expect("build");
        assert!(!after.contains(&4));
        let bound = f64::from(DEFAULT_TABLE_SIZE) * (0.1 + 0.02);
        assert!((changed(&before, &after) as f64) <= bound);
    }

    #[test]
    fn weight_zero_gets_no_slots() {
        let backends = weighted_backends(&[1, 0, 3, 0]);
        let table = build_table(&backends, SMALL_SIZE).expect("build");
        let counts = counts(&table);
        assert!(!counts.contains_key(&1));
        assert!(!counts.contains_key(&3));
        assert!(!counts.contains_key(&NO_BACKEND));
        assert_proportional(&backends, &table);
    }

    #[test]
    fn all_weight_zero_or_empty_gives_no_backend() {
        let backends = weighted_backends(&[0, 0, 0]);
        let table = build_table(&backends, SMALL_SIZE).expect("build");
        assert_eq!(table.len(), SMALL_SIZE as usize);
        assert!(table.iter().all(|&id| id == NO_BACKEND));
        let table = build_table(&[], DEFAULT_TABLE_SIZE).expect("build");
        assert_eq!(table.len(), DEFAULT_TABLE_SIZE as usize);
        assert!(table.iter().all(|&id| id == NO_BACKEND));
    }

    #[test]
    fn order_independent() {
        let backends = weighted_backends(&[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]);
        let table = build_table(&backends, SMALL_SIZE).expect("build");
        let mut reversed = backends.clone();
        reversed.reverse();
        assert_eq!(build_table(&reversed, SMALL_SIZE).expect("build"), table);
        let mut rotated = backends.clone();
        rotated.rotate_left(4);
        assert_eq!(build_table(&rotated, SMALL_SIZE).expect("build"), table);
    }

    #[test]
    fn deterministic_across_calls() {
        let backends = equal_backends(7);
        assert_eq!(
            build_table(&backends, SMALL_SIZE),
            build_table(&backends, SMALL_SIZE)
        );
    }

    #[test]
    fn invalid_sizes_rejected() {
        let backends = equal_backends(3);
        for size in [4, 9, 65536, 65535, 4097] {
            assert_eq!(
                build_table(&backends, size),
                Err(MaglevError::TableSizeNotPrime { size })
            );
        }
        for size in [0, 1] {
            assert_eq!(
                build_table(&backends, size),
                Err(MaglevError::TableSizeTooSmall { size })
            );
        }
        assert_eq!(
            build_table(&backends, 4_294_967_291),
            Err(MaglevError::TableSizeTooLarge {
                size: 4_294_967_291,
                max: MAX_TABLE_SIZE
            })
        );
        // Size checks apply even without weighted backends.
        assert_eq!(
            build_table(&[], 100),
            Err(MaglevError::TableSizeNotPrime { size: 100 })
        );
    }

    #[test]
    fn too_many_weighted_backends_rejected() {
        assert_eq!(
            build_table(&equal_backends(6), 5),
            Err(MaglevError::TooManyBackends {
                backends: 6,
                size: 5
            })
        );
        // Drained backends do not count.
        let mut backends = equal_backends(7);
        backends[0].weight = 0;
        backends[3].weight = 0;
        let table = build_table(&backends, 5).expect("build");
        assert!(!table.contains(&0) && !table.contains(&3));
    }

    #[test]
    fn duplicates_and_reserved_id_rejected() {
        let mut backends = equal_backends(4);
        backends[2].key = backends[0].key.clone();
        backends[2].weight = 0;
        let err = build_table(&backends, SMALL_SIZE).expect_err("duplicate key");
        assert_eq!(
            err,
            MaglevError::DuplicateKey {
                key: b"10.0.0.0:8080".to_vec()
            }
        );
        assert_eq!(
            err.to_string(),
            "duplicate maglev backend key \"10.0.0.0:8080\""
        );

        let mut backends = equal_backends(4);
        backends[3].id = 1;
        assert_eq!(
            build_table(&backends, SMALL_SIZE),
            Err(MaglevError::DuplicateId { id: 1 })
        );

        let mut backends = equal_backends(4);
        backends[1].id = NO_BACKEND;
        assert_eq!(
            build_table(&backends, SMALL_SIZE),
            Err(MaglevError::ReservedId { id: NO_BACKEND })
        );
    }

    #[test]
    fn error_messages_are_clear() {
        assert_eq!(
            MaglevError::TableSizeNotPrime { size: 100 }.to_string(),
            "maglev table size 100 is not prime"
        );
        assert_eq!(
            MaglevError::TooManyBackends {
                backends: 6,
                size: 5
            }
            .to_string(),
            "6 backends with non-zero weight do not fit in a maglev table of size 5"
        );
    }

    #[test]
    fn lookup_uses_modulo() {
        let table = build_table(&equal_backends(3), 7).expect("build");
        for h in [0u32, 6, 7, 13, u32::MAX] {
            assert_eq!(lookup(&table, h), table[h as usize % 7]);
        }
        assert_eq!(lookup(&[], 42), NO_BACKEND);
    }

    /// Random backend sets: `len` backends with unique random IPv4 keys and weights in `weights`.
    fn backend_sets(
        len: std::ops::RangeInclusive<usize>,
        weights: std::ops::RangeInclusive<u32>,
    ) -> impl Strategy<Value = Vec<MaglevBackend>> {
        prop::collection::btree_set(any::<u32>(), len).prop_flat_map(move |addrs| {
            let len = addrs.len();
            prop::collection::vec(weights.clone(), len).prop_map(move |ws| {
                addrs
                    .iter()
                    .zip(ws)
                    .enumerate()
                    .map(|(i, (&addr, weight))| MaglevBackend {
                        id: i as u32,
                        key: format!("{}:80", Ipv4Addr::from(addr)).into_bytes(),
                        weight,
                    })
                    .collect::<Vec<_>>()
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn prop_only_weighted_ids_and_no_holes(
            backends in backend_sets(0..=60, 0..=5),
            big in any::<bool>(),
        ) {
            let size = if big { DEFAULT_TABLE_SIZE } else { SMALL_SIZE };
            let table = build_table(&backends, size).expect("build");
            prop_assert_eq!(table.len(), size as usize);
            let weighted: HashSet<u32> =
                backends.iter().filter(|b| b.weight > 0).map(|b| b.id).collect();
            if weighted.is_empty() {
                prop_assert!(table.iter().all(|&id| id == NO_BACKEND));
            } else {
                for &id in &table {
                    prop_assert!(weighted.contains(&id), "unexpected id {}", id);
                }
            }
        }

        #[test]
        fn prop_weighted_spread(backends in backend_sets(1..=50, 1..=1000)) {
            let table = build_table(&backends, DEFAULT_TABLE_SIZE).expect("build");
            assert_proportional(&backends, &table);
        }

        #[test]
        fn prop_same_table_as_the_reference_builder(
            backends in backend_sets(0..=80, 0..=20),
            size in prop::sample::select(vec![2u32, 3, 61, 131, 4099]),
        ) {
            prop_assume!(backends.iter().filter(|b| b.weight > 0).count() <= size as usize);
            prop_assert_eq!(
                build_table(&backends, size).expect("build"),
                reference_table(&backends, size)
            );
        }

        #[test]
        fn prop_order_independent(
            (backends, shuffled) in backend_sets(0..=30, 0..=10)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        ) {
            prop_assert_eq!(
                build_table(&backends, SMALL_SIZE).expect("build"),
                build_table(&shuffled, SMALL_SIZE).expect("build")
            );
        }
    }
}
