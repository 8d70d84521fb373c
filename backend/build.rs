//! Build script: compiles the backend-side IPIP decapsulator `bpf/decap.bpf.c` into a libbpf
//! skeleton, the way every BPF program of the workspace is built (`xdplb-buildkit`); it includes
//! the data plane's shared headers (`xdplb.h`, `parse.h`) from `../bpf`.

fn main() {
    xdplb_buildkit::build_skeletons("bpf", &["-I../bpf".into()]);
    println!("cargo:rerun-if-changed=../bpf");
}
