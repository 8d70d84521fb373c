//! The read-only side of the reconciler: what the controller hands the API, the health checker
//! and the metrics under its lock. Ids, the health view, and the data plane's counters as plain
//! values (summed over CPUs, named); walks get handles of their own. No method here writes a map,
//! and nothing here hands out the data plane or a map layout.

use std::net::SocketAddrV4;

use ipnet::Ipv4Net;

use super::{ReconcileError, Reconciler};
use crate::dataplane::ratelimit::ClientBuckets;
pub(crate) use crate::dataplane::ratelimit::PolicyCounters;
use crate::dataplane::telemetry::Telemetry;
pub(crate) use crate::dataplane::Counters;
use crate::health::view::HealthView;
use xdplb_model::state::VipKey;

/// Packets per `enum lb_reason` and per XDP verdict, by name, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NamedCounts {
    pub(crate) reasons: Vec<(String, u64)>,
    pub(crate) verdicts: Vec<(&'static str, u64)>,
    /// Flow-table events (`enum lb_event`), by name.
    pub(crate) events: Vec<(String, u64)>,
}

/// A read-only view of the reconciler (see the module docs).
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    r: &'a Reconciler,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(r: &'a Reconciler) -> Self {
        Self { r }
    }

    /// The data-plane id of a VIP.
    pub(crate) fn vip_id(&self, key: &VipKey) -> Option<u32> {
        self.r.vip_id(key)
    }

    /// The data-plane id of a backend of a VIP.
    pub(crate) fn backend_id(&self, key: &VipKey, addr: &SocketAddrV4) -> Option<u32> {
        self.r.backend_id(key, addr)
    }

    /// The interfaces the program is attached to: (name, ifindex).
    pub(crate) fn attached(&self) -> Vec<(String, u32)> {
        let dp = self.r.dataplane();
        dp.links()
            .iter()
            .map(|l| (l.ifname.clone(), l.ifindex))
            .collect()
    }

    /// Which backends the checker marked down, and its counters.
    pub(crate) fn health(&self) -> &'a HealthView {
        self.r.health()
    }

    /// Most firewall rules the data plane holds.
    pub(crate) fn firewall_capacity(&self) -> usize {
        self.r.firewall().capacity()
    }

    /// The id of the firewall rule the data plane holds for exactly `net`.
    pub(crate) fn firewall_rule_id(&self, net: &Ipv4Net) -> Option<u32> {
        self.r.firewall().rule(net).map(|e| e.id)
    }

    /// One more than the highest firewall rule id in use (0: none).
    pub(crate) fn firewall_id_bound(&self) -> u32 {
        self.r.firewall().id_bound()
    }

    /// Packets that hit each firewall rule id handed out so far, by id.
    pub(crate) fn firewall_hits(&self) -> Result<Vec<u64>, ReconcileError> {
        let limit = self.r.firewall().id_limit();
        Ok(self.r.dataplane().firewall().all_hits(limit)?)
    }

    /// The id of the rate-limit policy of `cidr` (None: the default policy).
    pub(crate) fn ratelimit_id(&self, cidr: Option<&Ipv4Net>) -> Option<u32> {
        self.r.ratelimit().id_of(cidr)
    }

    /// Packets rate-limit policy `id` allowed and dropped.
    pub(crate) fn ratelimit_counters(&self, id: u32) -> Result<PolicyCounters, ReconcileError> {
        Ok(self.r.dataplane().ratelimit().counters(id)?)
    }

    /// The client buckets of the rate limiter, on a handle of their own: walk them outside the
    /// lock.
    pub(crate) fn ratelimit_clients(&self) -> Result<ClientBuckets, ReconcileError> {
        Ok(self.r.dataplane().ratelimit().client_buckets()?)
    }

    /// Counters of VIP `id`.
    pub(crate) fn vip_counters(&self, id: u32) -> Result<Counters, ReconcileError> {
        Ok(self.r.dataplane().maps().vip_counters(id)?)
    }

    /// Counters of backend `id`.
    pub(crate) fn backend_counters(&self, id: u32) -> Result<Counters, ReconcileError> {
        Ok(self.r.dataplane().maps().backend_counters(id)?)
    }

    /// Packets per reason and per verdict, by name.
    pub(crate) fn global_counts(&self) -> Result<NamedCounts, ReconcileError> {
        let g = self.r.dataplane().maps().global_counters()?;
        Ok(NamedCounts {
            reasons: g
                .reasons
                .iter()
                .enumerate()
                .map(|(i, n)| (crate::dataplane::maps::reason_name(i), *n))
                .collect(),
            verdicts: g
                .verdicts
                .iter()
                .enumerate()
                .map(|(i, n)| (crate::dataplane::maps::verdict_name(i), *n))
                .collect(),
            events: g
                .events
                .iter()
                .enumerate()
                .map(|(i, n)| (crate::dataplane::maps::event_name(i), *n))
                .collect(),
        })
    }

    /// Handles of the tables' own for a walk outside the lock (occupancy, live flows, firewall
    /// hits of the rule ids in use, rate-limit counters).
    pub(crate) fn telemetry(&self) -> Result<Telemetry, ReconcileError> {
        Ok(self
            .r
            .dataplane()
            .telemetry()?
            .with_firewall_ids(self.firewall_id_bound()))
    }

    /// lbd's `CLOCK_MONOTONIC` in nanoseconds (what stats snapshots are stamped with).
    pub(crate) fn monotonic_ns(&self) -> u64 {
        crate::dataplane::telemetry::clock_ns(libc::CLOCK_MONOTONIC)
    }
}
