//! xdplb's domain model: what an operator can set (VIPs, modes, backends, firewall rules,
//! rate-limit policies, health-check specs), how it is validated, and the domain errors. Pure
//! data and rules: no tokio, no libbpf, no protobuf (the layer check in `make test` enforces it).

pub mod cidr;
pub mod firewall;
pub mod health;
pub mod ifname;
mod names;
pub mod ratelimit;
pub mod state;
