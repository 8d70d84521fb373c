//! Read-only walks of the data plane for the metrics endpoint: how full every hash, LRU and
//! LPM-trie map is, the live flows of the flow table per VIP and per backend, the firewall rules
//! with the most hits, and the rate limiter's counters per policy.
//!
//! A walk runs on handles of its own (duplicated map fds, taken in [`Dataplane::telemetry`]), so
//! it never holds the controller's lock while it reads a million conntrack entries. It is not a
//! snapshot: entries the program adds or evicts meanwhile may or may not be seen. Every loop is
//! bounded by the map's capacity.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use libbpf_rs::skel::Skel;
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::maps::from_bytes;
use super::{bpf_err, flows, Dataplane, DataplaneError};
use crate::skel::types;

/// Entries fetched per batch syscall (grown if a hash bucket holds more).
const BATCH: usize = 4096;
/// Largest batch tried before a walk gives up on batching.
const MAX_BATCH: usize = 1 << 20;
/// Firewall rules exported with their own series: the ones with the most hits.
pub(crate) const TOP_RULES: usize = 20;

/// How full one map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Occupancy {
    /// The map's name in `bpf/maps.h` (`nat_fwd_v2`, `fw_l3`, ...; `dsr_v2`: its per-CPU
    /// tables together).
    pub(crate) map: String,
    /// `hash`, `lru_hash` or `lpm_trie` (and the per-CPU hash variants).
    pub(crate) kind: &'static str,
    /// Entries seen by the walk (at most `capacity`).
    pub(crate) entries: u64,
    /// `max_entries`.
    pub(crate) capacity: u64,
}

/// Live flows (not idle past their timeout) of the client-side flow tables (embryonic, NAT
/// established, every CPU's DSR table), by VIP id and by backend id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flows {
    pub by_vip: HashMap<u32, u64>,
    pub(crate) by_backend: HashMap<u32, u64>,
    /// Of the live flows, those whose TCP handshake has not completed (`flows_syn_v2`).
    pub embryonic: u64,
    /// Entries that are idle past their timeout but not evicted yet.
    pub expired: u64,
}

/// One firewall rule and the packets it decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleHits {
    pub(crate) net: Ipv4Net,
    /// `block` or `allow`.
    pub(crate) action: &'static str,
    pub(crate) packets: u64,
}

/// One rate-limit policy (the default one has no prefix) and what its limiter decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PolicyCounts {
    /// The client prefix the policy applies to; `None` for the default policy (id 0).
    pub(crate) net: Option<Ipv4Net>,
    pub(crate) allowed: u64,
    pub(crate) dropped: u64,
}

/// The result of one walk.
#[derive(Debug, Clone, Default)]
pub struct Walk {
    /// Every hash, LRU and LPM-trie map of the program, by name.
    pub(crate) maps: Vec<Occupancy>,
    pub(crate) flows: Flows,
    /// The [`TOP_RULES`] rules with the most hits (only rules with hits), most first; `None`
    /// when the program has no firewall maps.
    pub(crate) firewall: Option<Vec<RuleHits>>,
    /// Every policy in use, the default first; `None` when the program has no rate limiter.
    pub(crate) ratelimit: Option<Vec<PolicyCounts>>,
    /// How long the walk took.
    pub took: Duration,
}

/// The data plane's clock (`lb_now()` of `bpf/clock.h`), read through the program `lb_clock`.
///
/// Flow stamps (`last_seen_ns`) and next-hop stamps are in this clock: ticks since boot in
/// nanoseconds, built from jiffies. It runs with `CLOCK_MONOTONIC_COARSE`, a constant fraction of a
/// second apart, but is not that clock, so whatever compares stamps with "now" reads it here (one
/// BPF_PROG_TEST_RUN, a few microseconds).
pub struct Clock {
    prog: OwnedFd,
}

impl Clock {
    /// The data plane's "now", in nanoseconds.
    pub fn now(&self) -> Result<u64, DataplaneError> {
        // The program writes lb_now() into the frame's first 8 bytes.
        let output = super::run_helper(
            self.prog.as_fd(),
            8,
            "reading the data plane's clock (lb_clock)",
        )?;
        let mut now = [0u8; 8];
        now.copy_from_slice(&output[..8]);
        Ok(u64::from_ne_bytes(now))
    }
}

/// Handles of their own on the maps a [`Walk`] reads.
pub struct Telemetry {
    /// Every map of the program, by name.
    maps: BTreeMap<String, MapHandle>,
    /// The clock flow stamps are compared with.
    clock: Clock,
    /// One more than the highest firewall rule id in use (hit counters above are not read);
    /// `None`: every counter of `fw_hits`.
    firewall_ids: Option<u32>,
}

impl Dataplane {
    /// A handle of its own on the data plane's clock (duplicates the `lb_clock` program's fd).
    pub fn clock(&self) -> Result<Clock, DataplaneError> {
        let prog = self
            .skel
            .progs
            .lb_clock
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| DataplaneError::Io {
                what: "duplicating the lb_clock program fd".into(),
                source,
            })?;
        Ok(Clock { prog })
    }

    /// A duplicated handle of every table of the program, by name (cheap). `.rodata`, `.bss`,
    /// `.kconfig` ("<object>.<section>") are the program's globals, not tables; a map of
    /// bpf/maps.h has no dot in its name.
    pub(crate) fn table_handles(&self) -> Result<BTreeMap<String, MapHandle>, DataplaneError> {
        let mut maps = BTreeMap::new();
        for map in self.skel.object().maps() {
            let name = map.name().to_string_lossy().into_owned();
            if name.contains('.') {
                continue;
            }
            let handle = MapHandle::try_from(&map)
                .map_err(bpf_err(format!("duplicating the {name} handle")))?;
            maps.insert(name, handle);
        }
        Ok(maps)
    }

    /// Duplicates the handles a [`Telemetry::walk`] needs (cheap); the walk itself can then run
    /// anywhere, without borrowing the data plane.
    pub fn telemetry(&self) -> Result<Telemetry, DataplaneError> {
        Ok(Telemetry {
            maps: self.table_handles()?,
            clock: self.clock()?,
            firewall_ids: None,
        })
    }
}

impl Telemetry {
    /// Reads the firewall's hit counters only below rule id `bound` (the reconciler's
    /// `AppliedFirewall::id_bound`): a walk with ten rules reads
    /// ten counters, not the million slots of a full-capacity `fw_hits`.
    pub fn with_firewall_ids(mut self, bound: u32) -> Self {
        self.firewall_ids = Some(bound);
        self
    }

    /// Walks every map the metrics need. Takes about a second per million conntrack entries
    /// (tens of milliseconds per million firewall rules): run it off the async runtime.
    pub fn walk(&self) -> Result<Walk, DataplaneError> {
        let start = Instant::now();
        let mut walk = Walk::default();
        for (name, map) in &self.maps {
            let Some(kind) = walked_kind(map.map_type()) else {
                continue;
            };
            let entries = count_entries(map)?;
            walk.maps.push(Occupancy {
                map: name.clone(),
                kind,
                entries,
                capacity: u64::from(map.max_entries()),
            });
        }
        let (flows, dsr) = self.client_flows()?;
        walk.flows = flows;
        if let Some((entries, capacity)) = dsr {
            walk.maps.push(Occupancy {
                map: flows::DSR_TABLES.into(),
                kind: "lru_hash",
                entries,
                capacity,
            });
        }
        if let (Some(rules), Some(hits)) = (self.maps.get("fw_rules"), self.maps.get("fw_hits")) {
            let bound = self.firewall_ids.unwrap_or(hits.max_entries());
            walk.firewall = Some(top_rules(rules, hits, bound, TOP_RULES)?);
        }
        if let (Some(prefixes), Some(stats)) = (self.maps.get("rl_v4"), self.maps.get("rl_stats")) {
            walk.ratelimit = Some(policies(prefixes, stats)?);
        }
        walk.took = start.elapsed();
        Ok(walk)
    }

    /// Only the live flows of the client-side flow tables, by VIP and backend (`lbctl backend
    /// list`: when a drained backend reaches zero). Run it off the async runtime.
    pub fn live_flows(&self) -> Result<Flows, DataplaneError> {
        Ok(self.client_flows()?.0)
    }

    /// The live flows of every client-side table (embryonic, NAT established, each CPU's DSR
    /// table), each flow once: a DSR flow whose packets moved between CPUs has an entry in
    /// each CPU's table, and its state is that of the entry seen last (the one its FIN
    /// closed, say). Also the DSR tables' (entries, capacity) together.
    fn client_flows(&self) -> Result<(Flows, Option<(u64, u64)>), DataplaneError> {
        let timeouts = self
            .maps
            .get("lb_config_v2")
            .map(read_timeouts)
            .transpose()?
            .unwrap_or_default();
        let now = self.clock.now()?;
        let mut tables: Vec<MapHandle> = Vec::new();
        for (name, map) in &self.maps {
            if is_client_table(name) {
                tables.push(
                    MapHandle::try_from(map)
                        .map_err(bpf_err(format!("duplicating the {name} handle")))?,
                );
            }
        }
        let mut dsr = None;
        if let Some(outer) = self.maps.get(flows::DSR_TABLES) {
            let per_cpu = flows::dsr_tables(outer)?;
            let (mut entries, mut capacity) = (0, 0);
            for t in &per_cpu {
                entries += count_entries(t)?;
                capacity += u64::from(t.max_entries());
            }
            dsr = Some((entries, capacity));
            tables.extend(per_cpu);
        }
        // key -> the flow's copies merged ([`Copies`]).
        let mut latest: HashMap<[u8; 16], Copies> = HashMap::new();
        for table in &tables {
            for_each_entry(table, |k, v| {
                let key: types::flow_key4 = from_bytes(k);
                let fwd: types::flow4 = from_bytes(v);
                let mut kb = [0u8; 16];
                kb.copy_from_slice(&k[..16.min(k.len())]);
                latest
                    .entry(kb)
                    .or_insert_with(|| Copies::new(&key, &fwd))
                    .add(&fwd);
            })?;
        }
        let mut flows = Flows::default();
        for c in latest.into_values() {
            let (last_seen, flags, vip_id, backend_id, proto) = c.merged();
            if timeouts.is_live(proto, flags.into(), last_seen, now) {
                *flows.by_vip.entry(vip_id.into()).or_default() += 1;
                *flows.by_backend.entry(backend_id).or_default() += 1;
                if u32::from(flags) & types::ct_flags::CT_F_EMBRYONIC.0 != 0 {
                    flows.embryonic += 1;
                }
            } else {
                flows.expired += 1;
            }
        }
        Ok((flows, dsr))
    }
}

/// The copies of one flow in the client-side tables (one per CPU's DSR table it was seen on,
/// maybe an embryonic one). A FIN or RST marks only the copy of the CPU it arrived on, and a
/// copy's `last_seen` lags by up to a second (`CT_TOUCH_NS`), so the flow is closing when a
/// closing copy was seen no more than a second before the latest other copy.
struct Copies {
    proto: u8,
    vip_id: u16,
    backend_id: u32,
    open_seen: Option<(u64, u8)>,
    closing_seen: Option<u64>,
}

impl Copies {
    fn new(key: &types::flow_key4, fwd: &types::flow4) -> Self {
        Copies {
            proto: key.proto,
            vip_id: fwd.vip_id,
            backend_id: fwd.backend_id,
            open_seen: None,
            closing_seen: None,
        }
    }

    fn add(&mut self, fwd: &types::flow4) {
        let seen = fwd.last_seen_ns;
        if u32::from(fwd.flags) & types::ct_flags::CT_F_CLOSING.0 != 0 {
            self.closing_seen = Some(self.closing_seen.map_or(seen, |s| s.max(seen)));
        } else if self.open_seen.is_none_or(|(s, _)| seen >= s) {
            self.open_seen = Some((seen, fwd.flags));
            self.vip_id = fwd.vip_id;
            self.backend_id = fwd.backend_id;
        }
    }

    /// (last_seen, flags, vip id, backend id, proto) of the flow as a whole.
    fn merged(&self) -> (u64, u8, u16, u32, u8) {
        let closing = types::ct_flags::CT_F_CLOSING.0 as u8;
        let (seen, flags) = match (self.open_seen, self.closing_seen) {
            (Some((o, f)), Some(c)) if c.saturating_add(1_000_000_000) < o => (o, f),
            (Some((o, _)), Some(c)) => (o.max(c), closing),
            (Some((o, f)), None) => (o, f),
            (None, Some(c)) => (c, closing),
            (None, None) => (0, 0),
        };
        (seen, flags, self.vip_id, self.backend_id, self.proto)
    }
}

/// The shared tables of client flows (the DSR ones are walked through `dsr_v2`).
fn is_client_table(name: &str) -> bool {
    name == flows::SYN_TABLE || name == flows::NAT_FWD_TABLE
}

/// The kind label of a map the walk counts, `None` for maps it does not (arrays, devmaps...).
fn walked_kind(t: MapType) -> Option<&'static str> {
    Some(match t {
        MapType::Hash => "hash",
        MapType::LruHash => "lru_hash",
        MapType::PercpuHash => "percpu_hash",
        MapType::LruPercpuHash => "lru_percpu_hash",
        MapType::LpmTrie => "lpm_trie",
        _ => return None,
    })
}

/// The idle timeouts of `lb_config`, to tell live flows from expired ones as the program does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Timeouts {
    pub(crate) tcp_ns: u64,
    pub(crate) tcp_closing_ns: u64,
    pub(crate) tcp_handshake_ns: u64,
    pub(crate) udp_ns: u64,
}

impl Timeouts {
    /// `!ct_expired()` of `bpf/flow.h`: idle for at most the timeout of its protocol and state.
    /// With no configuration written yet (all zero) every entry counts as live.
    pub(crate) fn is_live(&self, proto: u8, flags: u16, last_seen_ns: u64, now_ns: u64) -> bool {
        if *self == Timeouts::default() {
            return true;
        }
        let timeout = if u32::from(proto) == libc::IPPROTO_UDP as u32 {
            self.udp_ns
        } else if u32::from(flags) & types::ct_flags::CT_F_CLOSING.0 != 0 {
            self.tcp_closing_ns
        } else if u32::from(flags) & types::ct_flags::CT_F_EMBRYONIC.0 != 0 {
            self.tcp_handshake_ns
        } else {
            self.tcp_ns
        };
        !(now_ns > last_seen_ns && now_ns - last_seen_ns > timeout)
    }
}

fn read_timeouts(lb_config: &MapHandle) -> Result<Timeouts, DataplaneError> {
    let v = lb_config
        .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .map_err(bpf_err("reading lb_config_v2"))?
        .unwrap_or_default();
    let c: types::lb_config = from_bytes(&v);
    Ok(Timeouts {
        tcp_ns: c.tcp_timeout_ns,
        tcp_closing_ns: c.tcp_closing_timeout_ns,
        tcp_handshake_ns: c.tcp_handshake_timeout_ns,
        udp_ns: c.udp_timeout_ns,
    })
}

/// A clock of the kernel in nanoseconds (not the data plane's: see [`Clock`]).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Counts the entries of a hash or trie map (at most its capacity).
fn count_entries(map: &MapHandle) -> Result<u64, DataplaneError> {
    if map.map_type().is_percpu() || map.map_type() == MapType::LpmTrie {
        // Tries have no batch operations; per-CPU values need not be read to be counted.
        let cap = usize::try_from(map.max_entries()).unwrap_or(usize::MAX);
        return Ok(map.keys().take(cap).count() as u64);
    }
    for_each_entry(map, |_, _| {})
}

/// Calls `f` on every (key, value) of a hash or LRU map, in batches; returns how many it saw (at
/// most the map's capacity). Falls back to a key-by-key walk if batching is refused.
fn for_each_entry(map: &MapHandle, mut f: impl FnMut(&[u8], &[u8])) -> Result<u64, DataplaneError> {
    let cap = u64::from(map.max_entries());
    let mut seen = 0u64;
    let batched = for_each_batch(map, BATCH, |k, v| {
        f(k, v);
        seen += 1;
        if seen >= cap {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    match batched {
        Ok(()) => Ok(seen),
        Err(e) if seen == 0 => {
            tracing::debug!(map = ?map.name(), error = %e, "batched walk refused; walking key by key");
            let mut n = 0;
            for key in map.keys().take(usize::try_from(cap).unwrap_or(usize::MAX)) {
                if let Some(v) = map
                    .lookup(&key, MapFlags::ANY)
                    .map_err(bpf_err("walking a map"))?
                {
                    f(&key, &v);
                    n += 1;
                }
            }
            Ok(n)
        }
        Err(e) => Err(e),
    }
}

/// `bpf_map_lookup_batch` over the whole map (or until `f` breaks). Per-CPU values come as one
/// slot of `round_up(value_size, 8)` bytes per possible CPU, back to back.
pub(crate) fn for_each_batch(
    map: &impl MapCore,
    batch: usize,
    mut f: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
) -> Result<(), DataplaneError> {
    let key_size = map.key_size() as usize;
    let value_size = if map.map_type().is_percpu() {
        let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting CPUs"))?;
        (map.value_size() as usize).next_multiple_of(8) * cpus
    } else {
        map.value_size() as usize
    };
    let mut batch = batch.max(1);
    let mut keys = vec![0u8; key_size * batch];
    let mut values = vec![0u8; value_size * batch];
    // The batch token is a bucket index (hash) or a key (array): 8 bytes hold either.
    let token_size = key_size.max(8);
    let mut in_token = vec![0u8; token_size];
    let mut out_token = vec![0u8; token_size];
    let mut first = true;
    // Every pass returns at least one entry or ends the walk; bound the passes all the same.
    let max_passes = map.max_entries() as usize + 2;
    for _ in 0..max_passes {
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        let mut count = batch as u32;
        let in_ptr = if first {
            std::ptr::null_mut()
        } else {
            in_token.as_mut_ptr().cast()
        };
        // SAFETY: the buffers hold `batch` keys and values of the map's sizes and a token of at
        // least the map's key size; all live across the call, `count` says how many fit.
        let rc = unsafe {
            libbpf_sys::bpf_map_lookup_batch(
                map.as_fd().as_raw_fd(),
                in_ptr,
                out_token.as_mut_ptr().cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        let errno = if rc < 0 { -rc } else { 0 };
        match errno {
            0 | libc::ENOENT => {}
            libc::EINTR | libc::EAGAIN => continue,
            // One bucket holds more entries than a batch: retry the same place with more room.
            libc::ENOSPC if count == 0 && batch < MAX_BATCH => {
                batch *= 2;
                keys.resize(key_size * batch, 0);
                values.resize(value_size * batch, 0);
                continue;
            }
            _ => {
                return Err(DataplaneError::Io {
                    what: format!("walking {} in batches", map.name().to_string_lossy()),
                    source: std::io::Error::from_raw_os_error(errno),
                })
            }
        }
        let n = (count as usize).min(batch);
        for i in 0..n {
            let k = &keys[i * key_size..(i + 1) * key_size];
            let v = &values[i * value_size..(i + 1) * value_size];
            if f(k, v).is_break() {
                return Ok(());
            }
        }
        if errno == libc::ENOENT || n == 0 {
            return Ok(());
        }
        in_token.copy_from_slice(&out_token);
        first = false;
    }
    Ok(())
}

/// Sums a per-CPU value of `value_size` bytes whose first field is the counter `field` (in u64s).
fn sum_percpu_u64(per_cpu: &[u8], value_size: usize, field: usize) -> u64 {
    let stride = value_size.next_multiple_of(8);
    per_cpu
        .chunks(stride)
        .filter_map(|slot| slot.get(field * 8..field * 8 + 8))
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        .sum()
}

/// The `n` rules with the most hits: the per-CPU counters of `fw_hits` below rule id `bound`
/// (in batches), then the record `fw_rules` (the firewall's rules by id) looked up for the
/// counters with the most hits only, skipping ids no rule uses (a freed id keeps its count until
/// it is handed out again). Rules without hits are never listed.
fn top_rules(
    rules: &MapHandle,
    hits: &MapHandle,
    bound: u32,
    n: usize,
) -> Result<Vec<RuleHits>, DataplaneError> {
    let bound = bound.min(hits.max_entries());
    if bound == 0 || n == 0 {
        return Ok(Vec::new());
    }
    let value_size = hits.value_size() as usize;
    let mut counted: Vec<(u64, u32)> = Vec::new();
    for_each_batch(hits, BATCH.min(bound as usize), |k, v| {
        let id = u32::from_ne_bytes(k.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
        if id >= bound {
            return ControlFlow::Break(());
        }
        let packets = sum_percpu_u64(v, value_size, 0);
        if packets > 0 {
            counted.push((packets, id));
        }
        ControlFlow::Continue(())
    })?;
    // Most hits first; look up rules until `n` are found, and the ties of the last one.
    counted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut all: Vec<RuleHits> = Vec::new();
    for (packets, id) in counted {
        if all.len() >= n && all.last().is_some_and(|last| last.packets > packets) {
            break;
        }
        let Some(v) = rules
            .lookup(&id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading fw_rules"))?
        else {
            continue;
        };
        let def: types::fw_rule_def = from_bytes(&v);
        if let Some((net, action)) = super::firewall::decode_rule_def(&def) {
            let action = match action {
                xdplb_model::firewall::Action::Block => "block",
                xdplb_model::firewall::Action::Allow => "allow",
            };
            all.push(RuleHits {
                net,
                action,
                packets,
            });
        }
    }
    all.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.net.cmp(&b.net)));
    all.truncate(n);
    Ok(all)
}

/// The default policy and every policy a prefix of `rl_v4` points at, with their counters.
fn policies(prefixes: &MapHandle, stats: &MapHandle) -> Result<Vec<PolicyCounts>, DataplaneError> {
    let mut nets: BTreeMap<u32, Ipv4Net> = BTreeMap::new();
    let cap = usize::try_from(prefixes.max_entries()).unwrap_or(usize::MAX);
    for key in prefixes.keys().take(cap) {
        let Some(v) = prefixes
            .lookup(&key, MapFlags::ANY)
            .map_err(bpf_err("reading rl_v4"))?
        else {
            continue;
        };
        let k: types::lpm_v4_key = from_bytes(&key);
        let id: u32 = from_bytes(&v);
        if let Some(net) = u8::try_from(k.prefixlen)
            .ok()
            .and_then(|len| Ipv4Net::new(k.addr.into(), len).ok())
        {
            nets.insert(id, net);
        }
    }
    let value_size = stats.value_size() as usize;
    let mut out = Vec::with_capacity(nets.len() + 1);
    for id in std::iter::once(0).chain(nets.keys().copied().filter(|id| *id != 0)) {
        let per_cpu = stats
            .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading rl_stats"))?
            .unwrap_or_default();
        let (mut allowed, mut dropped) = (0, 0);
        for cpu in &per_cpu {
            allowed += sum_percpu_u64(cpu, value_size, 0);
            dropped += sum_percpu_u64(cpu, value_size, 1);
        }
        out.push(PolicyCounts {
            net: if id == 0 {
                None
            } else {
                nets.get(&id).copied()
            },
            allowed,
            dropped,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn copy(seen: u64, flags: u32) -> types::flow4 {
        types::flow4 {
            last_seen_ns: seen,
            flags: flags as u8,
            ..Default::default()
        }
    }

    #[test]
    fn a_flow_seen_on_several_cpus_is_closing_when_its_close_is_the_latest_news() {
        let key = types::flow_key4::default();
        let closing = types::ct_flags::CT_F_CLOSING.0;
        let merged = |copies: &[types::flow4]| {
            let mut c = Copies::new(&key, &copies[0]);
            for f in copies {
                c.add(f);
            }
            let (seen, flags, ..) = c.merged();
            (seen, u32::from(flags) & closing != 0)
        };
        // The FIN on CPU 0, the last data on CPU 1 up to a second earlier (refresh lag).
        assert_eq!(
            merged(&[copy(100 * S, closing), copy(100 * S + S / 2, 0)]),
            (100 * S + S / 2, true)
        );
        assert_eq!(
            merged(&[copy(100 * S, 0), copy(99 * S, closing)]),
            (100 * S, true)
        );
        // A close long before the other copy's traffic: that copy is a later connection.
        assert_eq!(
            merged(&[copy(90 * S, closing), copy(100 * S, 0)]),
            (100 * S, false)
        );
        assert_eq!(merged(&[copy(100 * S, 0)]), (100 * S, false));
        assert_eq!(merged(&[copy(100 * S, closing)]), (100 * S, true));
    }

    #[test]
    fn liveness_follows_the_programs_timeouts() {
        let t = Timeouts {
            tcp_ns: 300 * S,
            tcp_closing_ns: 10 * S,
            tcp_handshake_ns: 5 * S,
            udp_ns: 30 * S,
        };
        let tcp = libc::IPPROTO_TCP as u8;
        let udp = libc::IPPROTO_UDP as u8;
        let closing = types::ct_flags::CT_F_CLOSING.0 as u16;
        let embryonic = types::ct_flags::CT_F_EMBRYONIC.0 as u16;
        let now = 1000 * S;
        assert!(t.is_live(tcp, embryonic, now - 4 * S, now));
        assert!(!t.is_live(tcp, embryonic, now - 6 * S, now));
        // Closing wins over embryonic, as in ct_timeout().
        assert!(!t.is_live(tcp, embryonic | closing, now - 11 * S, now));
        assert!(t.is_live(tcp, 0, now - 299 * S, now));
        assert!(!t.is_live(tcp, 0, now - 301 * S, now));
        assert!(t.is_live(tcp, closing, now - 9 * S, now));
        assert!(!t.is_live(tcp, closing, now - 11 * S, now));
        assert!(t.is_live(udp, 0, now - 29 * S, now));
        assert!(!t.is_live(udp, 0, now - 31 * S, now));
        // Seen "after" now (another CPU's clock): live, as in ct_expired().
        assert!(t.is_live(udp, 0, now + S, now));
        // No configuration yet: nothing expires.
        assert!(Timeouts::default().is_live(tcp, 0, 0, now));
    }

    #[test]
    fn per_cpu_slots_are_summed() {
        // Two CPUs, a 16-byte value { a, b }.
        let mut bytes = Vec::new();
        for v in [1u64, 10, 2, 20] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(sum_percpu_u64(&bytes, 16, 0), 3);
        assert_eq!(sum_percpu_u64(&bytes, 16, 1), 30);
        // A 4-byte value is padded to 8 per CPU.
        let mut small = Vec::new();
        small.extend_from_slice(&5u64.to_ne_bytes());
        small.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(sum_percpu_u64(&small, 4, 0), 12);
    }

    #[test]
    fn clocks_tick() {
        let a = clock_ns(libc::CLOCK_MONOTONIC);
        assert!(a > 0);
        assert!(clock_ns(libc::CLOCK_MONOTONIC) >= a);
    }
}

#[cfg(test)]
mod walk_tests {
    //! Walks of real maps (needs root or CAP_BPF; skipped otherwise).
    use super::*;

    fn map(t: MapType, key: u32, value: u32, entries: u32) -> Option<MapHandle> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: if t == MapType::LpmTrie {
                libbpf_sys::BPF_F_NO_PREALLOC
            } else {
                0
            },
            ..Default::default()
        };
        match MapHandle::create(t, Some("walk_test"), key, value, entries, &opts) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("cannot create a BPF map ({e}): skipping");
                None
            }
        }
    }

    #[test]
    fn hash_walks_see_every_entry() {
        for t in [MapType::Hash, MapType::LruHash] {
            let Some(m) = map(t, 8, 16, 10_000) else {
                return;
            };
            for k in 0..5000u64 {
                let mut v = [0u8; 16];
                v[..8].copy_from_slice(&(k * 2).to_ne_bytes());
                m.update(&k.to_ne_bytes(), &v, MapFlags::ANY)
                    .expect("insert");
            }
            let mut sum = 0u64;
            let n = for_each_entry(&m, |_, v| {
                sum += u64::from_ne_bytes(v[..8].try_into().expect("8 bytes"))
            })
            .expect("walk");
            assert_eq!(n, 5000, "{t:?}");
            assert_eq!(sum, (0..5000u64).map(|k| k * 2).sum::<u64>(), "{t:?}");
            assert_eq!(count_entries(&m).expect("count"), 5000);
        }
    }

    #[test]
    fn top_rules_join_the_record_and_the_per_cpu_hits() {
        let Some(rules) = map(MapType::Array, 4, 8, 100) else {
            return;
        };
        let Some(hits) = map(MapType::PercpuArray, 4, 8, 100) else {
            return;
        };
        let cpus = libbpf_rs::num_possible_cpus().expect("cpus");
        let block = types::fw_action::FW_BLOCK.0 as u8;
        let allow = types::fw_action::FW_ALLOW.0 as u8;
        // (prefix, rule id, action, hits per CPU)
        let table: [(&str, u32, u8, u64); 4] = [
            ("10.0.0.0/8", 3, block, 5),
            ("10.1.0.0/16", 7, allow, 1),
            ("192.0.2.0/24", 0, block, 0),
            ("198.51.100.7/32", 42, block, 9),
        ];
        for (net, id, action, per_cpu) in table {
            let net: Ipv4Net = net.parse().expect("prefix");
            let value = types::fw_rule_def {
                addr: net.network().octets(),
                prefixlen: net.prefix_len(),
                action,
                pad: [0; 2],
            };
            rules
                .update(
                    &id.to_ne_bytes(),
                    super::super::maps::bytes_of(&value),
                    MapFlags::ANY,
                )
                .expect("rule");
            let values = vec![per_cpu.to_ne_bytes().to_vec(); cpus];
            hits.update_percpu(&id.to_ne_bytes(), &values, MapFlags::ANY)
                .expect("hits");
        }
        let top = top_rules(&rules, &hits, 100, 2).expect("top rules");
        let c = cpus as u64;
        assert_eq!(
            top,
            vec![
                RuleHits {
                    net: "198.51.100.7/32".parse().expect("prefix"),
                    action: "block",
                    packets: 9 * c
                },
                RuleHits {
                    net: "10.0.0.0/8".parse().expect("prefix"),
                    action: "block",
                    packets: 5 * c
                },
            ]
        );
        // Rules without hits are never listed.
        assert_eq!(top_rules(&rules, &hits, 100, 10).expect("all").len(), 3);
        // Counters at and above the bound are not read.
        let below: Vec<Ipv4Net> = top_rules(&rules, &hits, 42, 10)
            .expect("below 42")
            .iter()
            .map(|r| r.net)
            .collect();
        assert_eq!(
            below,
            vec![
                "10.0.0.0/8".parse::<Ipv4Net>().expect("prefix"),
                "10.1.0.0/16".parse().expect("prefix")
            ]
        );
        assert!(top_rules(&rules, &hits, 0, 10).expect("none").is_empty());
        // An id no rule uses keeps its count (until handed out again) and is skipped: the next
        // rule takes its place in the top.
        hits.update_percpu(
            &50u32.to_ne_bytes(),
            &vec![100u64.to_ne_bytes().to_vec(); cpus],
            MapFlags::ANY,
        )
        .expect("hits of a freed id");
        let top = top_rules(&rules, &hits, 100, 2).expect("top rules");
        assert_eq!(
            top.iter().map(|r| r.packets).collect::<Vec<_>>(),
            vec![9 * c, 5 * c]
        );
    }
}
