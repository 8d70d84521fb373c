//! Test harness: network-namespace topologies, lbd/lbctl process control and real TCP/UDP peers.
//! Namespaces, veths, XDP attachment and pins come from `xdplb-testkit` (re-exported here).
//!
//! - [`flood`]: a SYN flood from spoofed sources, a long hash-checked transfer, idle and new
//!   connections (the flood tests);
//! - [`dsr`]: the routed (IPIP) topology, `lbctl backend-setup` guards, a line server, counters,
//!   one-arm topologies prepared for a mode;
//! - [`topology`]: the two-arm and one-arm test networks;
//! - [`procs`]: the [`Lbd`] daemon guard and lbctl calls;
//! - [`peers`]: name servers on the backends and bounded clients;
//! - [`transfer`]: an echo server and a long, byte-checked TCP transfer (restarts, upgrades);
//! - [`upgrade`]: the variant build of lbd and what a pinned XDP link runs;
//! - [`server`]: a thread stopped by its guard, and the TCP accept loop of every server here;
//! - [`scrape`]: lbd's `/metrics` over HTTP from inside a namespace, parsed as Prometheus does.

pub mod dsr;
pub mod flood;
pub mod lab;
pub mod peers;
pub mod procs;
pub mod scrape;
pub mod server;
pub mod topology;
pub mod transfer;
pub mod upgrade;

pub use peers::{
    all_ok, assert_spread, count_by_name, tcp_connect, tcp_exchange, tcp_name_server, tcp_request,
    tcp_requests, udp_name_server, udp_request, udp_requests, Reply, ServerHandle,
};
pub use procs::{vip_new_flows, Lbd, Proto, StartOptions};
pub use topology::{lbd_config, Topology, VIP};
pub use xdplb_testkit::{veth, NetNs};
