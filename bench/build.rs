//! Build script: compiles every BPF program of the bench (`bpf/<name>.bpf.c`: the floor program,
//! swap MACs and XDP_TX, and the end-to-end generator, sink and forwarder) into a libbpf skeleton
//! `$OUT_DIR/<name>.skel.rs`, with the workspace's BPF build (`xdplb-buildkit`, the way the root
//! `build.rs` builds the load balancer).

fn main() {
    xdplb_buildkit::build_skeletons("bpf", &["-I../bpf".into()]);
}
