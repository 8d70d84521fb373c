//! Build script: the XDP_PASS program (`bpf/xdp_pass.bpf.c`) into a libbpf skeleton, with the
//! workspace's BPF build (`xdplb-buildkit`).

fn main() {
    xdplb_buildkit::build_skeletons("bpf", &[]);
}
