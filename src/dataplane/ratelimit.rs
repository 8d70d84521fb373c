//! Typed access to the rate limiter's maps: policies (`rl_policies`), per-CIDR overrides
//! (`rl_v4`), per-policy counters (`rl_stats`) and the client buckets (`rl_clients`), sized before
//! load.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::maps::{addr_v4, bytes_of, from_bytes, v4_of};
use super::{bpf_err, Dataplane, DataplaneError};
use crate::skel::{types, OpenLbSkel};
use xdplb_model::ratelimit::{Policy, Scope};

// The model's limits are the data plane's: they must agree with bpf/xdplb.h.
const _: () = {
    use xdplb_model::ratelimit::{DEFAULT_CLIENTS, MAX_POLICIES, TIME_SHIFT};
    assert!(MAX_POLICIES == types::rl_limits::RL_MAX_POLICIES.0 as usize);
    assert!(DEFAULT_CLIENTS == types::rl_limits::RL_DEFAULT_CLIENTS.0);
    assert!(TIME_SHIFT == types::rl_limits::RL_TIME_SHIFT.0);
};

/// The `enum rl_scope` value the data plane reads for `scope`.
pub(crate) fn scope_value(scope: Scope) -> u32 {
    match scope {
        Scope::All => types::rl_scope::RL_SCOPE_ALL.0,
        Scope::NewFlows => types::rl_scope::RL_SCOPE_NEW_FLOWS.0,
    }
}

/// Client entries read per batch syscall when walking `rl_clients`.
const WALK_BATCH: u32 = 4096;

/// Sizes the client table to `clients` buckets, before load.
pub(super) fn prepare(open: &mut OpenLbSkel<'_>, clients: u32) -> Result<(), DataplaneError> {
    open.maps
        .rl_clients
        .set_max_entries(clients)
        .map_err(bpf_err("sizing rl_clients"))
}

/// The `rl_v4` key of a prefix: the address bytes in network order, as the trie compares them.
pub(crate) fn lpm_key(net: Ipv4Net) -> types::lpm_v4_key {
    types::lpm_v4_key {
        prefixlen: u32::from(net.prefix_len()),
        addr: net.network().octets(),
    }
}

/// The `rl_clients` key of an IPv4 client.
pub fn client_key(addr: Ipv4Addr) -> types::rl_client_key {
    types::rl_client_key {
        addr: addr_v4(addr),
        family: types::lb_family::LB_AF_INET.0,
    }
}

/// The `rl_policies` value of a policy. `overrides` is only meaningful on the default policy
/// (id 0): it tells the program that `rl_v4` must be searched.
pub(crate) fn policy_value(policy: &Policy, overrides: bool) -> types::rl_policy {
    let bucket = policy.bucket();
    types::rl_policy {
        interval: bucket.map_or(0, |b| b.interval),
        burst_time: bucket.map_or(0, |b| b.burst_time),
        scope: scope_value(policy.scope),
        flags: if overrides {
            types::rl_policy_flags::RL_POLICY_F_OVERRIDES.0
        } else {
            0
        },
    }
}

/// Packets a policy's limiter checked, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyCounters {
    pub allowed: u64,
    pub dropped: u64,
}

/// One client's bucket as the data plane holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientEntry {
    pub addr: Ipv4Addr,
    /// GCRA theoretical arrival time, in bucket clock units.
    pub(crate) tat: u64,
    /// Packets dropped since the entry was created.
    pub dropped: u64,
}

/// The clients with the most drops, and how many buckets the walk saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopClients {
    /// By drops, most first (ties by address); only clients with drops.
    pub clients: Vec<ClientEntry>,
    /// Buckets in `rl_clients` during the walk.
    pub tracked: usize,
}

impl Dataplane {
    /// The rate limiter's maps, typed.
    pub fn ratelimit(&self) -> RateLimitMaps<'_> {
        RateLimitMaps {
            policies: &self.skel.maps.rl_policies,
            prefixes: &self.skel.maps.rl_v4,
            stats: &self.skel.maps.rl_stats,
            clients: &self.skel.maps.rl_clients,
        }
    }

    /// The rate limiter's maps, to write.
    pub(crate) fn ratelimit_mut(&mut self) -> RateLimitWriter<'_> {
        RateLimitWriter {
            r: self.ratelimit(),
        }
    }
}

/// Typed view of the rate limiter's maps of a loaded program.
pub struct RateLimitMaps<'a> {
    policies: &'a libbpf_rs::MapMut<'static>,
    prefixes: &'a libbpf_rs::MapMut<'static>,
    stats: &'a libbpf_rs::MapMut<'static>,
    clients: &'a libbpf_rs::MapMut<'static>,
}

impl RateLimitMaps<'_> {
    /// Every prefix the trie holds, with its policy id.
    pub fn prefixes(&self) -> Result<Vec<(Ipv4Net, u32)>, DataplaneError> {
        let mut out = Vec::new();
        for key in self.prefixes.keys() {
            let Some(value) = self
                .prefixes
                .lookup(&key, MapFlags::ANY)
                .map_err(bpf_err("reading rl_v4"))?
            else {
                continue;
            };
            let k: types::lpm_v4_key = from_bytes(&key);
            let net = u8::try_from(k.prefixlen)
                .ok()
                .and_then(|len| Ipv4Net::new(Ipv4Addr::from(k.addr), len).ok());
            if let Some(net) = net {
                out.push((net, from_bytes::<u32>(&value)));
            }
        }
        Ok(out)
    }

    /// Packets policy `id` allowed and dropped, summed over CPUs.
    pub fn counters(&self, id: u32) -> Result<PolicyCounters, DataplaneError> {
        let per_cpu = self
            .stats
            .lookup_percpu(&id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err("reading rl_stats"))?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .map(|c| from_bytes::<types::rl_counters>(c))
            .fold(PolicyCounters::default(), |acc, c| PolicyCounters {
                allowed: acc.allowed + c.allowed,
                dropped: acc.dropped + c.dropped,
            }))
    }

    /// The bucket of one client, if it has one.
    pub fn client(&self, addr: Ipv4Addr) -> Result<Option<ClientEntry>, DataplaneError> {
        let key = client_key(addr);
        Ok(self
            .clients
            .lookup(bytes_of(&key), MapFlags::ANY)
            .map_err(bpf_err(format!("reading the rate-limit bucket of {addr}")))?
            .map(|v| entry(&key, &v)))
    }

    /// A handle of its own on `rl_clients`, so that a long walk ([`top_clients`]) can run
    /// without borrowing the data plane (and without holding the controller's lock).
    pub(crate) fn client_buckets(&self) -> Result<ClientBuckets, DataplaneError> {
        self.clients_handle().map(ClientBuckets)
    }

    /// A handle of its own on `rl_clients`.
    pub fn clients_handle(&self) -> Result<MapHandle, DataplaneError> {
        MapHandle::try_from(self.clients).map_err(bpf_err("duplicating the rl_clients handle"))
    }
}

super::map_writer! {
    /// Writes to the rate limiter's maps: only from `&mut Dataplane` ([`Dataplane::ratelimit_mut`]).
    pub(crate) struct RateLimitWriter => RateLimitMaps
}

impl RateLimitWriter<'_> {
    /// Writes policy `id` (one map update).
    pub(crate) fn put_policy(
        &self,
        id: u32,
        policy: &Policy,
        overrides: bool,
    ) -> Result<(), DataplaneError> {
        self.policies
            .update(
                &id.to_ne_bytes(),
                bytes_of(&policy_value(policy, overrides)),
                MapFlags::ANY,
            )
            .map_err(bpf_err(format!("writing rate-limit policy {id}")))
    }

    /// Points the clients of `net` to policy `id` (an atomic update of the trie).
    pub(crate) fn put_prefix(&self, net: Ipv4Net, id: u32) -> Result<(), DataplaneError> {
        self.prefixes
            .update(bytes_of(&lpm_key(net)), &id.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_err(format!("writing rate-limit override {net}")))
    }

    /// Removes the override of `net`; one that is not there counts as removed.
    pub(crate) fn delete_prefix(&self, net: Ipv4Net) -> Result<(), DataplaneError> {
        match self.prefixes.delete(bytes_of(&lpm_key(net))) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(bpf_err(format!("deleting rate-limit override {net}"))(e)),
        }
    }

    /// Zeroes the counters of policy `id` (when the id is handed out again).
    pub(crate) fn reset_counters(&self, id: u32) -> Result<(), DataplaneError> {
        let cpus = libbpf_rs::num_possible_cpus().map_err(bpf_err("counting CPUs"))?;
        let zero = vec![vec![0u8; self.stats.value_size() as usize]; cpus];
        self.stats
            .update_percpu(&id.to_ne_bytes(), &zero, MapFlags::ANY)
            .map_err(bpf_err(format!(
                "zeroing the counters of rate-limit policy {id}"
            )))
    }
}

/// The rate limiter's client buckets on a map handle of their own, to walk outside any lock;
/// nothing but [`ClientBuckets::top`] is offered on it.
pub(crate) struct ClientBuckets(MapHandle);

impl ClientBuckets {
    /// The `n` clients with the most drops (see [`top_clients`]).
    pub(crate) fn top(&self, n: usize) -> Result<TopClients, DataplaneError> {
        top_clients(&self.0, n)
    }
}

fn entry(key: &types::rl_client_key, value: &[u8]) -> ClientEntry {
    let v: types::rl_client = from_bytes(value);
    ClientEntry {
        addr: v4_of(&key.addr),
        tat: v.tat,
        dropped: v.dropped,
    }
}

/// Walks `rl_clients` (batched lookups) and returns the `n` clients with the most drops.
///
/// The walk is not a snapshot: buckets the program creates or evicts meanwhile may or may not be
/// seen. A million buckets take a few hundred milliseconds; run it off the async runtime.
pub fn top_clients(clients: &MapHandle, n: usize) -> Result<TopClients, DataplaneError> {
    let v4 = types::lb_family::LB_AF_INET.0;
    let mut tracked = 0;
    let mut top: Vec<ClientEntry> = Vec::new();
    let batched = clients
        .lookup_batch(WALK_BATCH, MapFlags::ANY, MapFlags::ANY)
        .map_err(bpf_err("walking rl_clients"))?;
    for (k, v) in batched {
        tracked += 1;
        let key: types::rl_client_key = from_bytes(&k);
        if key.family != v4 {
            continue;
        }
        let e = entry(&key, &v);
        if e.dropped > 0 {
            top.push(e);
        }
    }
    top.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(a.addr.cmp(&b.addr)));
    top.truncate(n);
    Ok(TopClients {
        clients: top,
        tracked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdplb_model::ratelimit::{Scope, UNITS_PER_SEC};

    #[test]
    fn keys_are_in_network_byte_order() {
        let k = lpm_key("10.1.2.0/24".parse().expect("prefix"));
        let bytes = bytes_of(&k);
        assert_eq!(&bytes[..4], &24u32.to_ne_bytes());
        assert_eq!(&bytes[4..], &[10, 1, 2, 0]);
        let c = client_key(Ipv4Addr::new(192, 0, 2, 7));
        let bytes = bytes_of(&c);
        assert_eq!(bytes.len(), 20);
        assert_eq!(&bytes[..4], &[192, 0, 2, 7]);
        assert_eq!(&bytes[4..16], &[0; 12]);
    }

    #[test]
    fn policy_values() {
        let p = Policy {
            rate: 1000,
            burst: 20,
            scope: Scope::NewFlows,
        };
        let v = policy_value(&p, true);
        assert_eq!(v.interval, UNITS_PER_SEC / 1000);
        assert_eq!(v.burst_time, 20 * v.interval);
        assert_eq!(v.scope, types::rl_scope::RL_SCOPE_NEW_FLOWS.0);
        assert_eq!(v.flags, types::rl_policy_flags::RL_POLICY_F_OVERRIDES.0);
        let none = policy_value(&Policy::UNLIMITED, false);
        assert_eq!((none.interval, none.burst_time, none.flags), (0, 0, 0));
    }
}
