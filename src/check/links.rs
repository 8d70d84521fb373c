//! What `backend check` and lbd's attach need to know about interfaces and neighbours, over
//! rtnetlink (never `ip`, never /sys, which shows another namespace's devices when lbd runs under
//! `nsenter --net`): an interface's name, MAC and MTU, a neighbour's MAC, and whether a veth's
//! peer has an XDP program (the peer may be in another namespace: it is read through
//! IFLA_LINK_NETNSID / IFLA_TARGET_NETNSID).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};

/// One interface of lbd's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// Whether frames the program sends into an interface with XDP_TX or XDP_REDIRECT arrive in
/// time: a veth delivers them to its peer through the peer's NAPI, which runs only when the peer
/// has an XDP program (or GRO on); otherwise they wait in the queue until other traffic flushes
/// it, late and in bursts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VethPeer {
    /// Not a veth: nothing to say.
    NotVeth,
    /// A veth whose peer has an XDP program. `peer` says where it is (its name, and "(in
    /// another namespace)" when it is).
    WithXdp { peer: String },
    /// A veth whose peer has none: its name, and whether it is in another namespace.
    WithoutXdp { peer: String, elsewhere: bool },
    /// A veth whose peer could not be read.
    Unknown { reason: String },
}

impl VethPeer {
    /// The warning lbd logs (and `backend check` reports) for a veth `ifname` whose peer has no
    /// XDP program, with the fix.
    pub fn warning(ifname: &str, peer: &str, elsewhere: bool) -> String {
        let ns = if elsewhere {
            " (in another namespace)"
        } else {
            ""
        };
        format!(
            "frames sent with XDP_TX/XDP_REDIRECT into veth {ifname} arrive late and in bursts \
             (connections stall and time out) unless its peer {peer}{ns} has NAPI on: turn GRO \
             on there (`ethtool -K {peer} gro on`, in its namespace) or attach a native XDP program \
             to {peer} (an XDP_PASS program is enough); lbd only sees whether {peer} has an XDP \
             program: if GRO is on there, this is fine"
        )
    }
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn get_link(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    netnsid: Option<i32>,
) -> Result<LinkMessage, String> {
    let mut req = handle.link().get().match_index(ifindex);
    if let Some(id) = netnsid {
        // IFLA_TARGET_NETNSID (the crate's IfNetnsId): the index is in that namespace.
        req.message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(id));
    }
    req.execute()
        .try_next()
        .await
        .map_err(fail)?
        .ok_or_else(|| format!("no interface with index {ifindex}"))
}

fn to_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        ifindex: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            _ => {}
        }
    }
    link
}

fn has_xdp(msg: &LinkMessage) -> bool {
    msg.attributes.iter().any(|a| match a {
        LinkAttribute::Xdp(x) => x
            .iter()
            .any(|x| matches!(x, LinkXdp::Attached(a) if *a != XdpAttached::None)),
        _ => false,
    })
}

/// Interface `ifindex` of lbd's namespace.
pub async fn link(ifindex: u32) -> Result<Link, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(fail)?;
    let task = tokio::spawn(conn);
    let result = get_link(&handle, ifindex, None).await.map(|m| to_link(&m));
    task.abort();
    result
}

/// Whether `ifindex` is a veth and, if so, whether its peer has an XDP program.
pub async fn veth_peer(ifindex: u32) -> VethPeer {
    let (conn, handle, _) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            return VethPeer::Unknown {
                reason: format!("netlink socket: {e}"),
            }
        }
    };
    let task = tokio::spawn(conn);
    let result = veth_peer_on(&handle, ifindex).await;
    task.abort();
    result
}

async fn veth_peer_on(handle: &rtnetlink::Handle, ifindex: u32) -> VethPeer {
    let msg = match get_link(handle, ifindex, None).await {
        Ok(m) => m,
        Err(reason) => return VethPeer::Unknown { reason },
    };
    let mut veth = false;
    let mut peer_index = None;
    let mut netnsid = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::LinkInfo(infos) => {
                veth |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            LinkAttribute::Link(i) => peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(id) if *id >= 0 => netnsid = Some(*id),
            _ => {}
        }
    }
    if !veth {
        return VethPeer::NotVeth;
    }
    let Some(peer_index) = peer_index.filter(|i| *i != 0) else {
        return VethPeer::Unknown {
            reason: "the kernel did not say which interface is its peer (no IFLA_LINK)".into(),
        };
    };
    match get_link(handle, peer_index, netnsid).await {
        Ok(peer) => {
            let name = to_link(&peer).name;
            let elsewhere = netnsid.is_some();
            if has_xdp(&peer) {
                VethPeer::WithXdp {
                    peer: if elsewhere {
                        format!("{name} (in another namespace)")
                    } else {
                        name
                    },
                }
            } else {
                VethPeer::WithoutXdp {
                    peer: name,
                    elsewhere,
                }
            }
        }
        Err(e) => VethPeer::Unknown {
            reason: format!(
                "its peer (index {peer_index}{}) cannot be read: {e}",
                netnsid
                    .map(|n| format!(" in namespace id {n}"))
                    .unwrap_or_default()
            ),
        },
    }
}

/// The MAC address of neighbour `ip` on `ifindex`, if the kernel has a usable entry (not
/// incomplete or failed).
pub async fn neighbour_mac(ifindex: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>, String> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(fail)?;
    let task = tokio::spawn(conn);
    let mut dump = handle.neighbours().get().execute();
    let mut found = None;
    let result = loop {
        match dump.try_next().await {
            Ok(Some(n)) => {
                if n.header.ifindex != ifindex
                    || matches!(
                        n.header.state,
                        NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
                    )
                {
                    continue;
                }
                let mut dst = None;
                let mut mac = None;
                for attr in &n.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            dst = Some(*a)
                        }
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                            let mut m = [0u8; 6];
                            m.copy_from_slice(l);
                            mac = Some(m);
                        }
                        _ => {}
                    }
                }
                if dst == Some(ip) && mac.is_some() {
                    found = mac;
                }
            }
            Ok(None) => break Ok(found),
            Err(e) => break Err(fail(e)),
        }
    };
    task.abort();
    result
}

/// The source address the kernel picks towards `dst` (a connected UDP socket's local address:
/// nothing is sent).
pub fn source_towards(dst: Ipv4Addr) -> Result<Ipv4Addr, String> {
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(fail)?;
    sock.connect((IpAddr::V4(dst), 9)).map_err(fail)?;
    match sock.local_addr().map_err(fail)? {
        std::net::SocketAddr::V4(a) => Ok(*a.ip()),
        other => Err(format!("unexpected local address {other}")),
    }
}
