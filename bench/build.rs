//! Build script: compiles every BPF program of the bench (`bpf/<name>.bpf.c`: the floor program,
//! swap MACs and XDP_TX, and the end-to-end generator, sink and forwarder) into a libbpf skeleton
//! `$OUT_DIR/<name>.skel.rs`, with the testkit's BPF build (the way the root `build.rs` builds
//! the load balancer).

include!("../testkit/build/skeletons.rs");

fn main() {
    build_skeletons("bpf", &["-I../bpf"]);
}
