//! Build script: compiles the backend-side IPIP decapsulator `bpf/decap.bpf.c` into a libbpf
//! skeleton, the way every BPF program of the workspace is built (testkit/build/skeletons.rs);
//! it includes the data plane's shared headers (`xdplb.h`, `parse.h`) from `../bpf`.

include!("../testkit/build/skeletons.rs");

fn main() {
    build_skeletons("bpf", &["-I../bpf"]);
    println!("cargo:rerun-if-changed=../bpf");
}
