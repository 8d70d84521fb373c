//! The smallest lab of the suites: a two-arm topology whose one backend serves names over TCP
//! (`tcp_name_server`, answering "b1") behind a TCP VIP of a running lbd.

use std::net::SocketAddrV4;

use anyhow::{Context, Result};

use crate::{tcp_name_server, Lbd, Proto, ServerHandle, Topology, VIP};

/// The backend server's port.
pub const BACKEND_PORT: u16 = 8080;

/// The TCP VIP of the lab (port 80).
pub fn vip_tcp() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

/// Field order is drop order: the server stops first, then lbd, then the namespaces go.
pub struct OneBackend {
    _server: ServerHandle,
    pub lbd: Lbd,
    pub topo: Topology,
    /// The backend of the VIP, serving.
    pub backend: SocketAddrV4,
}

impl OneBackend {
    /// `extra_config` is appended to the harness's lbd configuration.
    pub fn start(extra_config: &str) -> Result<OneBackend> {
        let topo = Topology::two_arm(1).context("topology")?;
        let backend = SocketAddrV4::new(topo.backend(1).addr, BACKEND_PORT);
        let server =
            tcp_name_server(&topo.backend(1).ns, backend, "b1").context("backend server")?;
        let config = format!("{}{extra_config}", topo.lbd_config());
        let lbd = Lbd::start(topo.lb(), &config).context("lbd starts")?;
        lbd.add_vip(vip_tcp(), Proto::Tcp)
            .context("lbctl vip add")?;
        lbd.add_backend(vip_tcp(), Proto::Tcp, backend)
            .context("lbctl add-backend")?;
        Ok(OneBackend {
            _server: server,
            lbd,
            topo,
            backend,
        })
    }
}
