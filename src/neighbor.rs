//! Next-hop warming: asks the kernel to resolve, and keep resolved, the neighbour entry of every
//! backend's next hop (kernel-managed neighbours, NTF_EXT_MANAGED), so that `bpf_fib_lookup` in
//! the XDP program finds a MAC address from the first packet on. Through rtnetlink, never `ip`.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourExtFlags, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::RouteMessageBuilder;

/// Why a next hop could not be warmed (logged, never fatal: the data plane counts
/// `pass_fib_no_neigh` while a neighbour is unresolved).
#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
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

/// A backend's way out, as the kernel routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub dst: Ipv4Addr,
    pub ifindex: u32,
    pub via: Ipv4Addr,
}

/// Makes the next hop of each of `dsts` a kernel-managed neighbour. Returns the next hops set up.
pub async fn warm(dsts: &[Ipv4Addr]) -> Result<Vec<NextHop>, NeighborError> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let mut done = Vec::new();
    let mut result = Ok(());
    for dst in dsts {
        match next_hop(&handle, *dst).await {
            Ok((ifindex, via)) => {
                if done
                    .iter()
                    .any(|h: &NextHop| h.via == via && h.ifindex == ifindex)
                {
                    done.push(NextHop {
                        dst: *dst,
                        ifindex,
                        via,
                    });
                    continue;
                }
                let mut req = handle
                    .neighbours()
                    .add(ifindex, IpAddr::V4(via))
                    .state(NeighbourState::None)
                    .replace();
                req.message_mut()
                    .attributes
                    .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
                if let Err(e) = req.execute().await {
                    result = Err(e.into());
                    continue;
                }
                tracing::debug!(backend = %dst, next_hop = %via, ifindex, "next hop is a managed neighbour");
                done.push(NextHop {
                    dst: *dst,
                    ifindex,
                    via,
                });
            }
            Err(e) => result = Err(e),
        }
    }
    task.abort();
    result.map(|()| done)
}

/// Checks that `dst` is on a directly connected subnet (no gateway on its route), as L2 DSR
/// needs: a frame for an off-link backend would go to the gateway, which routes the
/// VIP-addressed packet straight back to the LB. Returns a message for the operator otherwise.
pub async fn check_on_link(dst: Ipv4Addr) -> Result<(), String> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
    let task = tokio::spawn(conn);
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst, 32)
        .build();
    let route = handle.route().get(msg).execute().try_next().await;
    task.abort();
    let route = match route {
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
