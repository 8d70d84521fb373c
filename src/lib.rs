//! xdplb: an XDP layer-4 load balancer. This library holds the control plane that `lbd` runs:
//! configuration, desired state, Maglev, the reconciler that writes BPF maps, and the gRPC API.

pub mod api;
pub mod check;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod health;
pub mod hostports;
pub mod maglev;
pub mod metrics;
pub mod neighbor;
pub mod persist;
pub mod reconcile;
pub mod routes;
pub mod trace;

xdplb_bpffs::skeleton!(
    /// The libbpf skeleton generated from `bpf/lb.bpf.c`; `types` holds the C structs of
    /// `bpf/xdplb.h`.
    pub mod skel = "lb.skel.rs"
);

xdplb_bpffs::skeleton!(
    /// The libbpf skeleton generated from `bpf/explain.bpf.c`: the pipeline without its map
    /// writes (`lb_explain`, `src/dataplane/explain.rs`); `types::lb_explain` is its record.
    pub mod explain_skel = "explain.skel.rs"
);
