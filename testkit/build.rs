//! Build script: the XDP_PASS program (`bpf/xdp_pass.bpf.c`) into a libbpf skeleton.

include!("build/skeletons.rs");

fn main() {
    build_skeletons("bpf", &[]);
}
