//! Next-hop warming: asks the kernel to resolve, and keep resolved, the neighbour entry of every
//! backend's next hop (kernel-managed neighbours, NTF_EXT_MANAGED), so that `bpf_fib_lookup` in
//! the XDP program finds a MAC address from the first packet on. Through rtnetlink, never `ip`.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourExtFlags, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::RouteMessageBuilder;

/// Why a next hop could not be warmed (logged, never fatal: the data plane counts
/// `drop_fib_no_neigh` (NAT) or `drop_dsr_no_nexthop` (DSR) while a neighbour is unresolved).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NeighborError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    #[error("{0} is an address of this host")]
    Local(Ipv4Addr),
}

/// The next hop towards `dst`: (ifindex, neighbour address), or None for a local address.
async fn next_hop(
    handle: &rtnetlink::Handle,
    dst: Ipv4Addr,
) -> Result<(u32, Ipv4Addr), NeighborError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    let mut routes = handle.route().get(msg).execute();
    let route = routes
        .try_next()
        .await?
        .ok_or(NeighborError::NoRoute(dst))?;
    if route.header.kind == RouteType::Local {
        return Err(NeighborError::Local(dst));
    }
    let mut oif = None;
    let mut via = dst;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => via = *gw,
            _ => {}
        }
    }
    Ok((oif.ok_or(NeighborError::NoRoute(dst))?, via))
}

/// The kernel's route to `dst`: (egress ifindex, the neighbour it goes to), over a netlink
/// socket of its own (`lbctl explain` finds the interface a client's packets arrive on).
pub(crate) async fn route_to(dst: Ipv4Addr) -> Result<(u32, Ipv4Addr), NeighborError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let hop = next_hop(&handle, dst).await;
    task.abort();
    hop
}

/// The name and MAC address of every interface, by ifindex (one dump over netlink).
pub(crate) async fn link_names(
) -> Result<std::collections::BTreeMap<u32, (String, [u8; 6])>, NeighborError> {
    use netlink_packet_route::link::LinkAttribute;
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut links = handle.link().get().execute();
    let mut out = std::collections::BTreeMap::new();
    let result = loop {
        match links.try_next().await {
            Ok(Some(link)) => {
                let mut name = String::new();
                let mut mac = [0u8; 6];
                for attr in &link.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => name = n.clone(),
                        LinkAttribute::Address(a) if a.len() == 6 => mac.copy_from_slice(a),
                        _ => {}
                    }
                }
                out.insert(link.header.index, (name, mac));
            }
            Ok(None) => break Ok(out),
            Err(e) => break Err(e.into()),
        }
    };
    task.abort();
    result
}

/// A backend's way out, as the kernel routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NextHop {
    pub(crate) dst: Ipv4Addr,
    pub(crate) ifindex: u32,
    pub(crate) via: Ipv4Addr,
}

/// Remembers the next hops it made managed neighbours, so that a backend behind a next hop
/// already warmed costs one route lookup, not another neighbour update: adding 1,000 backends
/// behind one router installs one neighbour.
#[derive(Debug, Default)]
pub(crate) struct NextHopWarmer {
    managed: HashSet<(u32, Ipv4Addr)>,
}

impl NextHopWarmer {
    /// Makes the next hop of each of `dsts` a kernel-managed neighbour, unless an earlier call
    /// did. Returns the next hop of every destination it could route (one netlink socket for
    /// all of them); the first error, if any, after trying every destination.
    pub(crate) async fn warm(&mut self, dsts: &[Ipv4Addr]) -> Result<Vec<NextHop>, NeighborError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        let mut done = Vec::with_capacity(dsts.len());
        let mut result = Ok(());
        let mut added = 0usize;
        for dst in dsts {
            let (ifindex, via) = match next_hop(&handle, *dst).await {
                Ok(hop) => hop,
                Err(e) => {
                    result = result.and(Err(e));
                    continue;
                }
            };
            if !self.managed.contains(&(ifindex, via)) {
                let mut req = handle
                    .neighbours()
                    .add(ifindex, IpAddr::V4(via))
                    .state(NeighbourState::None)
                    .replace();
                req.message_mut()
                    .attributes
                    .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
                if let Err(e) = req.execute().await {
                    result = result.and(Err(e.into()));
                    continue;
                }
                tracing::debug!(backend = %dst, next_hop = %via, ifindex, "next hop is a managed neighbour");
                self.managed.insert((ifindex, via));
                added += 1;
            }
            done.push(NextHop {
                dst: *dst,
                ifindex,
                via,
            });
        }
        task.abort();
        tracing::debug!(
            backends = dsts.len(),
            new_next_hops = added,
            "next hops warmed"
        );
        result.map(|()| done)
    }
}

/// Checks that `dst` is on a directly connected subnet (no gateway on its route), as L2 DSR
/// needs: a frame for an off-link backend would go to the gateway, which routes the
/// VIP-addressed packet straight back to the LB. Returns a message for the operator otherwise.
pub async fn check_on_link(dst: Ipv4Addr) -> Result<(), String> {
    match check_all_on_link(&[dst]).await {
        Ok(()) => Ok(()),
        Err((_, m)) => Err(m),
    }
}

/// [`check_on_link`] for every one of `dsts` over one netlink socket; the first refused
/// destination as (its index, the message).
pub(crate) async fn check_all_on_link(dsts: &[Ipv4Addr]) -> Result<(), (usize, String)> {
    if dsts.is_empty() {
        return Ok(());
    }
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| (0, format!("netlink socket: {e}")))?;
    let task = tokio::spawn(conn);
    let mut result = Ok(());
    for (i, dst) in dsts.iter().enumerate() {
        if let Err(m) = on_link(&handle, *dst).await {
            result = Err((i, m));
            break;
        }
    }
    task.abort();
    result
}

async fn on_link(handle: &rtnetlink::Handle, dst: Ipv4Addr) -> Result<(), String> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    let route = match handle.route().get(msg).execute().try_next().await {
        Ok(Some(r)) => r,
        Ok(None) | Err(_) => return Err(format!("no route to {dst}")),
    };
    if route.header.kind == RouteType::Local {
        return Err(format!("{dst} is an address of this host"));
    }
    for attr in &route.attributes {
        if let RouteAttribute::Gateway(RouteAddress::Inet(gw)) = attr {
            return Err(format!(
                "{dst} is not on a directly connected subnet (routed via {gw}): L2 DSR would send its \
                 frames to the gateway, which routes the VIP back here; use ipip for backends in other subnets"
            ));
        }
    }
    Ok(())
}
