//! Build script: compiles the XDP program in `bpf/` (`lb.bpf.c`) into a libbpf skeleton with the
//! workspace's BPF build (`xdplb-buildkit`); the gRPC API is built by the xdplb-proto crate in
//! `proto/`.

fn main() {
    let mut extra = Vec::new();
    // XDPLB_BPF_VARIANT=N (a number) builds a variant of the XDP program that differs from the
    // default one by a no-op instruction (`LB_BUILD_VARIANT` in bpf/lb.bpf.c): another program
    // tag, the same behaviour and maps. The upgrade test (integration/tests/upgrade.rs) builds an
    // lbd with it into a target directory of its own. Never set for a release.
    println!("cargo:rerun-if-env-changed=XDPLB_BPF_VARIANT");
    if let Some(v) = std::env::var("XDPLB_BPF_VARIANT")
        .ok()
        .filter(|v| !v.is_empty())
    {
        let n: u32 = v
            .parse()
            .unwrap_or_else(|_| panic!("XDPLB_BPF_VARIANT={v:?} is not a number"));
        println!("cargo:warning=building BPF program variant {n} (XDPLB_BPF_VARIANT)");
        extra.push(format!("-DLB_BUILD_VARIANT={n}"));
    }
    xdplb_buildkit::build_skeletons("bpf", &extra);
}
