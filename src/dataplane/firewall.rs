//! Typed access to the firewall's maps: the fixed-depth tables the program reads (`fw_l2`,
//! `fw_l3`, computed by [`tables`]), the record of the rules behind them (`fw_rules`), the
//! per-CPU hit counters (`fw_hits`), and their sizing and scope before load.

pub mod tables;

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use ipnet::Ipv4Net;
use libbpf_rs::{MapCore, MapFlags};

use super::maps::{bytes_of, from_bytes};
use super::{bpf_err, size_map, Dataplane, DataplaneError};
use crate::skel::{types, OpenLbSkel};
use tables::{Plan, Slots, Tables, DEEPER, L2_ENTRIES, SLOTS};
use xdplb_model::firewall::{Action, Scope};

// The model's limits are the data plane's: they must agree with bpf/xdplb.h.
const _: () =
    assert!(xdplb_model::firewall::DEFAULT_CAPACITY == types::fw_limits::FW_DEFAULT_RULES.0);

/// The `enum fw_action` value the data plane reads for `action`.
pub fn action_value(action: Action) -> u8 {
    let a = match action {
        Action::Block => types::fw_action::FW_BLOCK,
        Action::Allow => types::fw_action::FW_ALLOW,
    };
    a.0 as u8
}

/// Entries written, deleted or read per batch syscall.
const BATCH: usize = 4096;

/// Sizes the firewall maps to `capacity` rules and sets the scope, before load.
///
/// `fw_l3` gets twice the capacity: a change writes the new addresses before it deletes the old
/// ones, so between two lists of `capacity` addresses it briefly holds both. `fw_l2` is 64 MiB
/// whatever the capacity. Capacity 0 turns the firewall off: every firewall map is one entry
/// (nothing is paid for it) and the stage runs at no call site.
pub(super) fn prepare(
    open: &mut OpenLbSkel<'_>,
    capacity: u32,
    scope: Scope,
) -> Result<(), DataplaneError> {
    let off = capacity == 0;
    let rules = capacity.max(1);
    size_map(
        &mut open.maps.fw_l2,
        if off { 1 } else { L2_ENTRIES as u32 },
        "fw_l2",
    )?;
    size_map(&mut open.maps.fw_rules, rules, "fw_rules")?;
    size_map(&mut open.maps.fw_l3, rules.saturating_mul(2), "fw_l3")?;
    size_map(&mut open.maps.fw_v6, rules, "fw_v6")?;
    size_map(&mut open.maps.fw_hits, rules, "fw_hits")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| DataplaneError::Io {
            what: "setting the firewall scope".into(),
            source: std::io::Error::other("the program's read-only data is not memory-mapped"),
        })?;
    rodata.firewall_scope = match scope {
        _ if off => types::fw_scope::FW_SCOPE_OFF,
        Scope::Vips => types::fw_scope::FW_SCOPE_VIPS,
        Scope::All => types::fw_scope::FW_SCOPE_ALL,
    };
    if off {
        tracing::info!("firewall off ([firewall] capacity = 0): its maps take one entry each");
    } else {
        tracing::info!(capacity, %scope, "firewall maps sized");
    }
    Ok(())
}

/// A rule as the data plane holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleEntry {
    pub id: u32,
    pub action: Action,
}

impl Dataplane {
    /// The firewall's maps, typed.
    pub fn firewall(&self) -> FirewallMaps<'_> {
        let m = &self.skel.maps;
        FirewallMaps {
            l2: &m.fw_l2,
            l3: &m.fw_l3,
            rules: &m.fw_rules,
            hits: &m.fw_hits,
        }
    }

    /// The firewall's maps, to write.
    pub(crate) fn firewall_mut(&mut self) -> FirewallWriter<'_> {
        FirewallWriter { r: self.firewall() }
    }
}

/// Typed view of the firewall maps of a loaded program.
pub struct FirewallMaps<'a> {
    l2: &'a libbpf_rs::MapMut<'static>,
    l3: &'a libbpf_rs::MapMut<'static>,
    rules: &'a libbpf_rs::MapMut<'static>,
    hits: &'a libbpf_rs::MapMut<'static>,
}

/// Which map, for messages.
fn name(map: &libbpf_rs::MapMut<'_>) -> String {
    map.name().to_string_lossy().into_owned()
}

/// Writes `entries` (key, value bytes of the map's sizes) in batches; where a batch is refused,
/// entry by entry, so that the error names the entry (`what(i)`).
fn put(
    map: &libbpf_rs::MapMut<'_>,
    entries: &[(Vec<u8>, Vec<u8>)],
    what: impl Fn(usize) -> String,
) -> Result<(), DataplaneError> {
    for (c, chunk) in entries.chunks(BATCH).enumerate() {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (k, v) in chunk {
            keys.extend_from_slice(k);
            values.extend_from_slice(v);
        }
        let batched = map.update_batch(
            &keys,
            &values,
            chunk.len() as u32,
            MapFlags::ANY,
            MapFlags::ANY,
        );
        if batched.is_err() {
            for (i, (k, v)) in chunk.iter().enumerate() {
                map.update(k, v, MapFlags::ANY)
                    .map_err(|e| match e.kind() {
                        libbpf_rs::ErrorKind::OutOfMemory | libbpf_rs::ErrorKind::TooBig => {
                            DataplaneError::Full(format!("{} ({})", name(map), what(c * BATCH + i)))
                        }
                        _ => bpf_err(format!("writing {} ({})", name(map), what(c * BATCH + i)))(e),
                    })?;
            }
        }
    }
    Ok(())
}

/// Deletes `keys` in batches; a key that is not there counts as deleted.
fn delete(map: &libbpf_rs::MapMut<'_>, keys: &[Vec<u8>]) -> Result<(), DataplaneError> {
    for chunk in keys.chunks(BATCH) {
        let flat: Vec<u8> = chunk.iter().flat_map(|k| k.iter().copied()).collect();
        if map
            .delete_batch(&flat, chunk.len() as u32, MapFlags::ANY, MapFlags::ANY)
            .is_ok()
        {
            continue;
        }
        for k in chunk {
            match map.delete(k) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(bpf_err(format!("deleting from {}", name(map)))(e)),
            }
        }
    }
    Ok(())
}

/// Calls `f` with every (key, value) of a map that is not per-CPU, in batches (the one batch walk
/// of the crate, `telemetry::for_each_batch`).
fn for_each(
    map: &libbpf_rs::MapMut<'_>,
    mut f: impl FnMut(&[u8], &[u8]),
) -> Result<(), DataplaneError> {
    super::telemetry::for_each_batch(map, BATCH, |k, v| {
        f(k, v);
        std::ops::ControlFlow::Continue(())
    })
}

/// Waits until no program run that started before the call is still running (an RCU grace
/// period: `membarrier(MEMBARRIER_CMD_GLOBAL)` is a `synchronize_rcu()`), so that an entry
/// unlinked before the call is no longer on any packet's path.
fn grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        // nohz_full kernels refuse it; a program run lasts microseconds.
        tracing::debug!(error = %std::io::Error::last_os_error(), "membarrier refused; sleeping instead");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn rule_def(rule: Option<(Ipv4Net, Action)>) -> types::fw_rule_def {
    match rule {
        Some((net, action)) => types::fw_rule_def {
            addr: net.network().octets(),
            prefixlen: net.prefix_len(),
            action: action_value(action),
            pad: [0; 2],
        },
        None => types::fw_rule_def::default(),
    }
}

/// The rule of a `fw_rules` value (None: the id is not in use, or the value is not a rule).
pub(crate) fn decode_rule_def(v: &types::fw_rule_def) -> Option<(Ipv4Net, Action)> {
    let action = if v.action == action_value(Action::Block) {
        Action::Block
    } else if v.action == action_value(Action::Allow) {
        Action::Allow
    } else {
        return None;
    };
    let net = Ipv4Net::new(Ipv4Addr::from(v.addr), v.prefixlen).ok()?;
    (net.trunc() == net).then_some((net, action))
}

impl FirewallMaps<'_> {
    /// How many rules the data plane holds at most (and entries of `fw_l3` per list); 0 when
    /// the firewall is off (its `fw_l2` is then a single chunk).
    pub fn capacity(&self) -> u32 {
        if (self.l2.max_entries() as usize) < L2_ENTRIES {
            return 0;
        }
        self.rules.max_entries()
    }

    /// Every rule of the record, by id (maps pinned by an earlier lbd hold some at start).
    pub fn rules(&self) -> Result<Vec<(u32, Ipv4Net, Action)>, DataplaneError> {
        let mut out = Vec::new();
        for_each(self.rules, |k, v| {
            let id = u32::from_ne_bytes(k.try_into().unwrap_or([0xff; 4]));
            if let Some((net, action)) = decode_rule_def(&from_bytes(v)) {
                out.push((id, net, action));
            }
        })?;
        Ok(out)
    }

    /// What the two tables hold (to take over the maps of an earlier lbd, or to resume after
    /// a failed change). Reads all of `fw_l2` (64 MiB, in batches).
    pub fn tables(&self) -> Result<Tables, DataplaneError> {
        let mut t = Tables::default();
        for_each(self.l2, |k, v| {
            let h = u32::from_ne_bytes(k.try_into().unwrap_or([0xff; 4]));
            let Ok(h) = u16::try_from(h) else { return };
            let slots: Box<Slots> = Box::new(from_bytes::<types::fw_chunk>(v).slot);
            // One word everywhere, none leading to fw_l3: a /16 without longer rules.
            if slots[1..] == slots[..SLOTS - 1] && slots[0] & DEEPER == 0 {
                t.uniform[usize::from(h)] = slots[0];
            } else {
                t.chunks.insert(
                    h,
                    tables::Chunk {
                        slots,
                        exact: Vec::new(),
                    },
                );
            }
        })?;
        let mut orphans = Vec::new();
        for_each(self.l3, |k, v| {
            let a = u32::from_be_bytes(k.try_into().unwrap_or([0; 4]));
            let w = u32::from_ne_bytes(v.try_into().unwrap_or([0; 4]));
            match t.chunks.get_mut(&((a >> 16) as u16)) {
                Some(c) => c.exact.push((a, w)),
                None => orphans.push((a, w)),
            }
        })?;
        for c in t.chunks.values_mut() {
            c.exact.sort_unstable();
        }
        // Addresses under a /16 no slot sends to fw_l3 (a change cut short): give the /16 a
        // chunk of its own word, so that the next change deletes them.
        orphans.sort_unstable();
        for (a, w) in orphans {
            let h = (a >> 16) as u16;
            let u = std::mem::take(&mut t.uniform[usize::from(h)]);
            t.chunks
                .entry(h)
                .or_insert_with(|| tables::Chunk {
                    slots: Box::new([u; SLOTS]),
                    exact: Vec::new(),
                })
                .exact
                .push((a, w));
        }
        Ok(t)
    }

    /// Kernel memory of each firewall map (`memlock` of its fdinfo, bytes), by name.
    pub fn memory(&self) -> Vec<(String, u64)> {
        [self.l2, self.l3, self.rules, self.hits]
            .iter()
            .map(|m| {
                let fd = m.as_fd().as_raw_fd();
                let bytes = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
                    .ok()
                    .and_then(|info| {
                        info.lines()
                            .find_map(|l| l.strip_prefix("memlock:"))
                            .and_then(|v| v.trim().parse().ok())
                    })
                    .unwrap_or(0);
                (name(m), bytes)
            })
            .collect()
    }

    /// The rule stored for exactly `net`, from the record (reads it whole: for tests and
    /// diagnostics).
    pub fn get(&self, net: Ipv4Net) -> Result<Option<RuleEntry>, DataplaneError> {
        Ok(self
            .rules()?
            .into_iter()
            .find(|(_, n, _)| *n == net)
            .map(|(id, _, action)| RuleEntry { id, action }))
    }

    /// The rule the data plane applies to a packet from `addr`: the lookups the program does.
    pub fn matching(&self, addr: Ipv4Addr) -> Result<Option<RuleEntry>, DataplaneError> {
        let a = u32::from(addr);
        let h = a >> 16;
        let read = |map: &libbpf_rs::MapMut<'_>, key: &[u8]| {
            map.lookup(key, MapFlags::ANY)
                .map_err(bpf_err(format!("reading {}", name(map))))
        };
        let Some(chunk) = read(self.l2, &h.to_ne_bytes())? else {
            return Ok(None);
        };
        let slot = ((a >> 8) & 0xff) as usize * 4;
        let mut w = u32::from_ne_bytes(
            chunk
                .get(slot..slot + 4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([0; 4]),
        );
        if tables::goes_deeper(w, a) {
            if let Some(e) = read(self.l3, &a.to_be_bytes())? {
                w = u32::from_ne_bytes(
                    e.get(..4).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]),
                );
            }
        }
        Ok(tables::decode(w))
    }

    /// Packets rule `id` has decided, summed over CPUs.
    pub fn hits(&self, id: u32) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .hits
            .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading fw_hits"))?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .map(|c| from_bytes::<types::fw_counters>(c).packets)
            .sum())
    }

    /// The hits of rules `0..ids`, summed over CPUs, indexed by rule id. Reads the per-CPU
    /// array in batches (a million rules in a few syscalls); falls back to one lookup per id
    /// where batch lookups are refused.
    pub fn all_hits(&self, ids: u32) -> Result<Vec<u64>, DataplaneError> {
        match self.hits_batched(ids) {
            Ok(v) => Ok(v),
            Err(e) => {
                tracing::debug!(error = %e, "batched read of fw_hits failed; reading one by one");
                (0..ids).map(|id| self.hits(id)).collect()
            }
        }
    }

    fn hits_batched(&self, ids: u32) -> Result<Vec<u64>, DataplaneError> {
        let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting CPUs"))?;
        // Per-CPU values come back as one slot per possible CPU, each rounded up to 8 bytes.
        let slot = (self.hits.value_size() as usize).div_ceil(8) * 8;
        let want = ids as usize;
        let mut out = vec![0u64; want];
        let mut keys = vec![0u32; BATCH];
        let mut values = vec![0u8; BATCH * cpus * slot];
        let opts = libbpf_sys::bpf_map_batch_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
            ..Default::default()
        };
        let fd = self.hits.as_fd().as_raw_fd();
        let (mut token, mut next_token) = (0u32, 0u32);
        let mut read = 0usize;
        while read < want {
            let mut count = (want - read).min(BATCH) as u32;
            let in_batch = if read == 0 {
                std::ptr::null_mut()
            } else {
                (&mut token as *mut u32).cast()
            };
            // SAFETY: the key buffer holds BATCH u32 keys and the value buffer BATCH per-CPU
            // values of `cpus * slot` bytes, `count` <= BATCH; the batch tokens are u32 keys of
            // this array map; every pointer outlives the call.
            let ret = unsafe {
                libbpf_sys::bpf_map_lookup_batch(
                    fd,
                    in_batch,
                    (&mut next_token as *mut u32).cast(),
                    keys.as_mut_ptr().cast(),
                    values.as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            let end = ret == -libc::ENOENT;
            if ret != 0 && !end {
                return Err(DataplaneError::Io {
                    what: "batch lookup in fw_hits".into(),
                    source: std::io::Error::from_raw_os_error(-ret),
                });
            }
            for (i, key) in keys.iter().take(count as usize).enumerate() {
                let Some(acc) = out.get_mut(*key as usize) else {
                    continue;
                };
                let element = &values[i * cpus * slot..(i + 1) * cpus * slot];
                *acc = element
                    .chunks_exact(slot)
                    .map(|c| from_bytes::<types::fw_counters>(c).packets)
                    .sum();
            }
            read += count as usize;
            token = next_token;
            if end || count == 0 {
                break;
            }
        }
        Ok(out)
    }
}

super::map_writer! {
    /// Writes to the firewall maps: only from `&mut Dataplane` ([`Dataplane::firewall_mut`]).
    pub(crate) struct FirewallWriter => FirewallMaps
}

impl FirewallWriter<'_> {
    /// Writes the record of rules: `(id, Some(rule))` for rules in use, `(id, None)` for ids
    /// given back.
    pub(crate) fn write_rules(
        &self,
        rules: &[(u32, Option<(Ipv4Net, Action)>)],
    ) -> Result<(), DataplaneError> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = rules
            .iter()
            .map(|(id, r)| (id.to_ne_bytes().to_vec(), bytes_of(&rule_def(*r)).to_vec()))
            .collect();
        put(self.rules, &entries, |i| format!("rule id {}", rules[i].0))
    }

    /// Carries out `plan`: new `fw_l3` entries first, then the chunks that lead to them
    /// (rewritten in place, a word at a time as packets read them), then (after a grace period)
    /// the deletion of the `fw_l3` entries no slot leads to any more.
    pub(crate) fn apply(&self, plan: &Plan) -> Result<(), DataplaneError> {
        let exact: Vec<(Vec<u8>, Vec<u8>)> = plan
            .l3_put
            .iter()
            .map(|(a, w)| (a.to_be_bytes().to_vec(), w.to_ne_bytes().to_vec()))
            .collect();
        put(self.l3, &exact, |i| {
            format!("address {}", Ipv4Addr::from(plan.l3_put[i].0))
        })?;
        // Batch by batch: a /0 rewrites all 65,536 chunks (64 MiB).
        for (c, part) in plan.l2_put.chunks(BATCH).enumerate() {
            let chunks: Vec<(Vec<u8>, Vec<u8>)> = part
                .iter()
                .map(|(h, s)| {
                    let value = types::fw_chunk { slot: **s };
                    (h.to_ne_bytes().to_vec(), bytes_of(&value).to_vec())
                })
                .collect();
            put(self.l2, &chunks, |i| {
                format!("chunk of {}", net16(plan.l2_put[c * BATCH + i].0))
            })?;
        }
        if plan.deletes() {
            grace_period();
            let exact: Vec<Vec<u8>> = plan
                .l3_del
                .iter()
                .map(|a| a.to_be_bytes().to_vec())
                .collect();
            delete(self.l3, &exact)?;
        }
        Ok(())
    }

    /// Zeroes the hit counter of rule `id` (when the id is handed out again).
    pub(crate) fn reset_hits(&self, id: u32) -> Result<(), DataplaneError> {
        let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting CPUs"))?;
        let zero = vec![vec![0u8; self.hits.value_size() as usize]; cpus];
        self.hits
            .update_percpu(&id.to_ne_bytes(), &zero, MapFlags::ANY)
            .map_err(bpf_err(format!("zeroing the hits of firewall rule {id}")))
    }
}

/// "10.1.0.0/16" for a /16 index.
fn net16(h: u32) -> String {
    format!("{}/16", Ipv4Addr::from(h << 16))
}
