//! Test harness: network-namespace topologies, lbd/lbctl process control and real TCP/UDP peers.
//!
//! - [`dsr`]: the routed (IPIP) topology, `lbctl backend-setup` guards, a line server, counters,
//!   one-arm topologies prepared for a mode;
//! - [`netns`]: the [`NetNs`] guard, running code inside a namespace, veth pairs;
//! - [`topology`]: the two-arm and one-arm test networks;
//! - [`procs`]: the [`Lbd`] daemon guard and lbctl calls;
//! - [`peers`]: name servers on the backends and bounded clients;
//! - [`xdp_pass`]: the XDP_PASS program on the LB-facing veth ends;
//! - [`transfer`]: an echo server and a long, byte-checked TCP transfer (restarts, upgrades);
//! - [`upgrade`]: the variant build of lbd and what a pinned XDP link runs.

pub mod dsr;
pub mod netns;
pub mod peers;
pub mod procs;
pub mod topology;
pub mod transfer;
pub mod upgrade;
pub mod xdp_pass;

pub use netns::{veth, NetNs};
pub use peers::{
    all_ok, tcp_connect, tcp_exchange, tcp_name_server, tcp_request, tcp_requests, udp_name_server,
    udp_request, udp_requests, Reply, ServerHandle,
};
pub use procs::{vip_new_flows, Lbd, Proto, StartOptions};
pub use topology::{lbd_config, Topology, VIP};
