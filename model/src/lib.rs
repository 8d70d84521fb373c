//! xdplb's domain model: the types and rules lbd and lbctl share, with no tokio, no libbpf and
//! no protobuf (scripts/check-layers.sh keeps it so).

pub mod cidr;
