//! Blackhole routes for the VIP addresses. A packet to a VIP address that the XDP program passes
//! to the kernel (a protocol or port no VIP serves, a later fragment, anything it hands over)
//! would be routed by this host along its routes, usually straight back upstream. So lbd keeps a
//! `blackhole` /32 in the main table for every address some VIP has (`[dataplane]
//! blackhole_routes`, default true), and the kernel drops such packets silently. Through
//! rtnetlink, never `ip`.
//!
//! Every route lbd adds carries lbd's own route protocol, [`ROUTE_PROTOCOL`]: that is how it finds
//! its routes again (after a restart, a crash, a change of the config) and why it never changes or
//! deletes anyone else's. A route that cannot be added or removed is logged and counted, never
//! fatal: the data plane works without it. A VIP address that is also a local address of this
//! host is unaffected: the local table is consulted before the main one.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::RouteMessageBuilder;
use xdplb_model::state::State;

/// The route protocol (`rtm_protocol`) of lbd's routes: `ip route show proto 200`. Outside the
/// numbers iproute2 and the routing daemons (FRR 186-198, BIRD 12, Babel 42, ...) use; an
/// `/etc/iproute2/rt_protos.d/xdplb.conf` line `200 xdplb` makes `ip` print it by name.
pub(crate) const ROUTE_PROTOCOL: u8 = 200;

/// What [`VipRoutes`] did so far, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RouteCounts {
    /// lbd's blackhole routes in place now.
    pub(crate) installed: u64,
    /// Adds and removals that failed (and netlink sockets that could not be opened).
    pub(crate) errors: u64,
}

/// The distinct VIP addresses of `state`: the routes lbd wants.
pub(crate) fn vip_addresses(state: &State) -> BTreeSet<Ipv4Addr> {
    state.vips.keys().map(|k| *k.addr.ip()).collect()
}

/// lbd's blackhole routes: which it holds, and the addresses whose route it could not add
/// (tried again when the address loses its last VIP and gets one again, or at the next start,
/// so that a refusal is logged once, not at every change).
#[derive(Debug)]
pub struct VipRoutes {
    enabled: bool,
    installed: BTreeSet<Ipv4Addr>,
    failed: BTreeSet<Ipv4Addr>,
    errors: u64,
}

/// One netlink socket for a batch of requests; its task ends with it.
struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    fn open() -> std::io::Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// The addresses of lbd's blackhole /32 routes in the main table.
    async fn own_routes(&self) -> Result<BTreeSet<Ipv4Addr>, rtnetlink::Error> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(dump)
            .execute()
            .try_collect()
            .await?;
        Ok(routes.iter().filter_map(own_destination).collect())
    }

    async fn add(&self, addr: Ipv4Addr) -> Result<(), rtnetlink::Error> {
        self.handle.route().add(route(addr)).execute().await
    }

    /// Deletes lbd's route for `addr`; the kernel matches the type and the protocol too, so
    /// another route for the same destination is never the one deleted.
    async fn delete(&self, addr: Ipv4Addr) -> Result<(), rtnetlink::Error> {
        self.handle.route().del(route(addr)).execute().await
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// lbd's route for `addr`: blackhole, `addr`/32, main table, [`ROUTE_PROTOCOL`].
fn route(addr: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, 32)
        .table_id(RouteHeader::RT_TABLE_MAIN.into())
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .kind(RouteType::BlackHole)
        .build()
}

/// The destination of `r` if it is one of lbd's routes (as [`route`] makes them).
fn own_destination(r: &RouteMessage) -> Option<Ipv4Addr> {
    let h = &r.header;
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(h.table.into());
    if table != u32::from(RouteHeader::RT_TABLE_MAIN)
        || h.kind != RouteType::BlackHole
        || u8::from(h.protocol) != ROUTE_PROTOCOL
        || h.destination_prefix_length != 32
    {
        return None;
    }
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    })
}

/// The errno of a netlink refusal.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

impl VipRoutes {
    /// Routes that are never touched (a controller without them: tests, tools).
    pub(crate) fn off() -> Self {
        Self {
            enabled: false,
            installed: BTreeSet::new(),
            failed: BTreeSet::new(),
            errors: 0,
        }
    }

    /// lbd's start: finds the routes of lbd's protocol that are already there (left by the
    /// previous lbd, which keeps them across a restart), deletes those of addresses `state` has
    /// no VIP for (every one when `enabled` is false), and adds the missing ones.
    pub async fn start(enabled: bool, state: &State) -> Self {
        let mut routes = Self {
            enabled,
            ..Self::off()
        };
        let found = match Netlink::open() {
            Ok(nl) => nl.own_routes().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match found {
            Ok(found) => routes.installed = found,
            Err(e) => {
                routes.errors += 1;
                tracing::warn!(error = %e, "cannot list the routes: lbd's blackhole routes left as they are");
            }
        }
        let kept = routes.installed.len();
        let wanted = if enabled {
            vip_addresses(state)
        } else {
            BTreeSet::new()
        };
        routes.apply(&wanted, true).await;
        tracing::info!(
            enabled,
            found = kept,
            installed = routes.installed.len(),
            protocol = ROUTE_PROTOCOL,
            "blackhole routes for the VIP addresses"
        );
        routes
    }

    /// Adds the routes `state` needs that are missing, removes none: before a change goes live.
    pub(crate) async fn add_for(&mut self, state: &State) {
        if self.enabled {
            self.apply(&vip_addresses(state), false).await;
        }
    }

    /// Makes the routes match `state`: after a change, once the data plane holds it.
    pub(crate) async fn sync(&mut self, state: &State) {
        if self.enabled {
            self.apply(&vip_addresses(state), true).await;
        }
    }

    /// Removes every route lbd holds: when lbd removes the data plane (`--detach-on-exit`).
    pub async fn remove_all(&mut self) {
        self.apply(&BTreeSet::new(), true).await;
    }

    /// Whether lbd keeps routes (`[dataplane] blackhole_routes`).
    pub(crate) fn is_on(&self) -> bool {
        self.enabled
    }

    /// For the metrics.
    pub(crate) fn counts(&self) -> RouteCounts {
        RouteCounts {
            installed: self.installed.len() as u64,
            errors: self.errors,
        }
    }

    /// Adds the routes of `wanted` not held (nor refused before) and, with `remove`, deletes
    /// those held for other addresses. One netlink socket, and none when nothing is to be done.
    async fn apply(&mut self, wanted: &BTreeSet<Ipv4Addr>, remove: bool) {
        if remove {
            self.failed.retain(|a| wanted.contains(a));
        }
        let add: Vec<Ipv4Addr> = wanted
            .iter()
            .filter(|a| !self.installed.contains(a) && !self.failed.contains(a))
            .copied()
            .collect();
        let delete: Vec<Ipv4Addr> = match remove {
            true => self.installed.difference(wanted).copied().collect(),
            false => Vec::new(),
        };
        if add.is_empty() && delete.is_empty() {
            return;
        }
        let nl = match Netlink::open() {
            Ok(nl) => nl,
            Err(e) => {
                self.errors += 1;
                tracing::warn!(error = %e, "netlink socket: blackhole routes for the VIP addresses not updated");
                return;
            }
        };
        for addr in add {
            match nl.add(addr).await {
                Ok(()) => {
                    tracing::info!(vip = %addr, "blackhole route added");
                    self.installed.insert(addr);
                }
                Err(e) => {
                    self.errors += 1;
                    self.failed.insert(addr);
                    if errno(&e) == Some(libc::EEXIST) {
                        tracing::warn!(vip = %addr, "no blackhole route: the main table has another route for {addr}/32 (not lbd's, left as it is)");
                    } else {
                        tracing::warn!(vip = %addr, error = %e, "cannot add the blackhole route; the data plane works without it");
                    }
                }
            }
        }
        for addr in delete {
            // Forgotten whatever happens: a route lbd could not delete is found again at the
            // next start, which deletes it then.
            self.installed.remove(&addr);
            match nl.delete(addr).await {
                Ok(()) => tracing::info!(vip = %addr, "blackhole route removed"),
                Err(e) if errno(&e) == Some(libc::ESRCH) => {
                    tracing::info!(vip = %addr, "blackhole route was removed already")
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::warn!(vip = %addr, error = %e, "cannot remove the blackhole route");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdplb_model::state::{Mode, Protocol, VipKey};

    #[test]
    fn one_address_per_vip_address() {
        let mut state = State::default();
        for (addr, proto) in [
            ("10.0.0.1:80", Protocol::Tcp),
            ("10.0.0.1:53", Protocol::Udp),
            ("10.0.0.2:80", Protocol::Tcp),
        ] {
            let key = VipKey {
                addr: addr.parse().unwrap(),
                proto,
            };
            state.add_vip(key, Mode::Nat).unwrap();
        }
        let want: BTreeSet<Ipv4Addr> = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(vip_addresses(&state), want);
    }

    #[test]
    fn only_lbds_own_routes_are_recognised() {
        let addr = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(own_destination(&route(addr)), Some(addr));
        let mut other = route(addr);
        other.header.protocol = RouteProtocol::Static;
        assert_eq!(own_destination(&other), None, "another protocol");
        let mut other = route(addr);
        other.header.kind = RouteType::Unicast;
        assert_eq!(own_destination(&other), None, "not a blackhole");
        let mut other = route(addr);
        other.header.table = 100;
        assert_eq!(own_destination(&other), None, "another table");
        let mut other = route(addr);
        other.header.destination_prefix_length = 24;
        assert_eq!(own_destination(&other), None, "not a /32");
    }
}
