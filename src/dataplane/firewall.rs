//! Typed access to the firewall's maps: the IPv4 LPM trie of rules (`fw_v4`), its per-CPU hit
//! counters (`fw_hits`), and their sizing and scope before load.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use ipnet::Ipv4Net;
use libbpf_rs::{MapCore, MapFlags};

use super::maps::{bytes_of, from_bytes};
use super::{bpf_err, Dataplane, DataplaneError};
use crate::firewall::{Action, Scope};
use crate::skel::{types, OpenLbSkel};

/// Rules written or deleted per batch syscall.
const BATCH: usize = 4096;

/// Sizes the firewall maps to `capacity` rules and sets the scope, before load.
pub(super) fn prepare(
    open: &mut OpenLbSkel<'_>,
    capacity: u32,
    scope: Scope,
) -> Result<(), DataplaneError> {
    open.maps
        .fw_v4
        .set_max_entries(capacity)
        .map_err(bpf_err("sizing fw_v4"))?;
    open.maps
        .fw_v6
        .set_max_entries(capacity)
        .map_err(bpf_err("sizing fw_v6"))?;
    open.maps
        .fw_hits
        .set_max_entries(capacity)
        .map_err(bpf_err("sizing fw_hits"))?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .ok_or_else(|| DataplaneError::Io {
            what: "setting the firewall scope".into(),
            source: std::io::Error::other("the program's read-only data is not memory-mapped"),
        })?;
    rodata.firewall_scope = match scope {
        Scope::Vips => types::fw_scope::FW_SCOPE_VIPS,
        Scope::All => types::fw_scope::FW_SCOPE_ALL,
    };
    tracing::info!(capacity, %scope, "firewall maps sized");
    Ok(())
}

/// The `fw_v4` key of a prefix: the address bytes in network order, as the trie compares them.
pub fn lpm_key(net: Ipv4Net) -> types::lpm_v4_key {
    types::lpm_v4_key {
        prefixlen: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

/// A rule as the data plane holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleEntry {
    pub id: u32,
    pub action: Action,
}

/// A batch of map writes that stopped part-way: the first `done` entries took effect.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct Partial {
    pub done: usize,
    pub source: DataplaneError,
}

impl Dataplane {
    /// The firewall's maps, typed.
    pub fn firewall(&self) -> FirewallMaps<'_> {
        FirewallMaps {
            rules: &self.skel.maps.fw_v4,
            hits: &self.skel.maps.fw_hits,
        }
    }
}

/// Typed view of the firewall maps of a loaded program.
pub struct FirewallMaps<'a> {
    rules: &'a libbpf_rs::MapMut<'static>,
    hits: &'a libbpf_rs::MapMut<'static>,
}

impl FirewallMaps<'_> {
    /// How many rules the trie (and the hit counters) hold at most.
    pub fn capacity(&self) -> u32 {
        self.rules.max_entries()
    }

    /// Writes `rules` (prefix, rule id, action). A prefix already in the trie gets its new value
    /// in one atomic update, so a replaced rule never disappears. Batched; a refused batch is
    /// retried entry by entry to find exactly how far it got.
    pub fn put(&self, rules: &[(Ipv4Net, u32, Action)]) -> Result<(), Partial> {
        let mut done = 0;
        for chunk in rules.chunks(BATCH) {
            let mut keys = Vec::with_capacity(chunk.len() * 8);
            let mut values = Vec::with_capacity(chunk.len() * 8);
            for (net, id, action) in chunk {
                keys.extend_from_slice(bytes_of(&lpm_key(*net)));
                values.extend_from_slice(bytes_of(&rule_value(*id, *action)));
            }
            let batched = self.rules.update_batch(
                &keys,
                &values,
                chunk.len() as u32,
                MapFlags::ANY,
                MapFlags::ANY,
            );
            if batched.is_err() {
                for (i, (net, id, action)) in chunk.iter().enumerate() {
                    self.rules
                        .update(
                            bytes_of(&lpm_key(*net)),
                            bytes_of(&rule_value(*id, *action)),
                            MapFlags::ANY,
                        )
                        .map_err(|e| Partial {
                            done: done + i,
                            source: bpf_err(format!("writing firewall rule {net}"))(e),
                        })?;
                }
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// Deletes the rules of `nets`; a prefix that is not there counts as deleted.
    pub fn delete(&self, nets: &[Ipv4Net]) -> Result<(), Partial> {
        let mut done = 0;
        for chunk in nets.chunks(BATCH) {
            let keys: Vec<u8> = chunk
                .iter()
                .flat_map(|n| bytes_of(&lpm_key(*n)).to_vec())
                .collect();
            let batched =
                self.rules
                    .delete_batch(&keys, chunk.len() as u32, MapFlags::ANY, MapFlags::ANY);
            if batched.is_err() {
                for (i, net) in chunk.iter().enumerate() {
                    match self.rules.delete(bytes_of(&lpm_key(*net))) {
                        Ok(()) => {}
                        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(Partial {
                                done: done + i,
                                source: bpf_err(format!("deleting firewall rule {net}"))(e),
                            })
                        }
                    }
                }
            }
            done += chunk.len();
        }
        Ok(())
    }

    /// The rule stored for exactly `net`.
    ///
    /// A trie lookup is a longest-prefix match among the prefixes no longer than the key's, so
    /// the entry found for `net` is its own exactly when the same lookup one bit shorter finds
    /// another rule (rule ids are unique) or none.
    pub fn get(&self, net: Ipv4Net) -> Result<Option<RuleEntry>, DataplaneError> {
        let Some(found) = self.longest(net)? else {
            return Ok(None);
        };
        let Some(shorter) = net.trunc().supernet() else {
            return Ok(Some(found)); // a /0 is found only if it is there
        };
        match self.longest(shorter)? {
            Some(other) if other.id == found.id => Ok(None),
            _ => Ok(Some(found)),
        }
    }

    /// The rule of the longest prefix, at most as long as `net`'s, that contains `net`.
    fn longest(&self, net: Ipv4Net) -> Result<Option<RuleEntry>, DataplaneError> {
        let Some(v) = self
            .rules
            .lookup(bytes_of(&lpm_key(net)), MapFlags::ANY)
            .map_err(bpf_err(format!("reading firewall rule {net}")))?
        else {
            return Ok(None);
        };
        let rule: types::fw_rule = from_bytes(&v);
        let action = if rule.action == Action::Block.value() {
            Action::Block
        } else {
            Action::Allow
        };
        Ok(Some(RuleEntry {
            id: rule.rule_id,
            action,
        }))
    }

    /// Every rule in the trie (maps pinned by an earlier lbd hold some at start).
    pub fn entries(&self) -> Result<Vec<(Ipv4Net, RuleEntry)>, DataplaneError> {
        let mut out = Vec::new();
        for key in self.rules.keys() {
            let k: types::lpm_v4_key = from_bytes(&key);
            let Ok(net) = Ipv4Net::new(Ipv4Addr::from(k.addr), k.prefixlen.min(32) as u8) else {
                continue;
            };
            // The key is in the trie, so the longest match no longer than it is its own entry.
            if let Some(entry) = self.longest(net)? {
                out.push((net, entry));
            }
        }
        Ok(out)
    }

    /// The rule the data plane applies to a packet from `addr` (longest-prefix match).
    pub fn matching(&self, addr: Ipv4Addr) -> Result<Option<RuleEntry>, DataplaneError> {
        self.longest(Ipv4Net::from(addr))
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

    /// Zeroes the hit counter of rule `id` (when the id is handed out again).
    pub fn reset_hits(&self, id: u32) -> Result<(), DataplaneError> {
        let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting CPUs"))?;
        let zero = vec![vec![0u8; self.hits.value_size() as usize]; cpus];
        self.hits
            .update_percpu(&id.to_ne_bytes(), &zero, MapFlags::ANY)
            .map_err(bpf_err(format!("zeroing the hits of firewall rule {id}")))
    }
}

fn rule_value(id: u32, action: Action) -> types::fw_rule {
    types::fw_rule {
        rule_id: id,
        action: action.value(),
        pad: [0; 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_in_network_byte_order() {
        let k = lpm_key("10.1.2.0/24".parse().expect("prefix"));
        assert_eq!(k.prefixlen, 24);
        assert_eq!(k.addr, [10, 1, 2, 0]);
        let bytes = bytes_of(&k);
        assert_eq!(&bytes[4..], &[10, 1, 2, 0]);
        assert_eq!(&bytes[..4], &24u32.to_ne_bytes());
    }
}
