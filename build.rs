//! Build script: compiles the XDP programs in `bpf/` into libbpf skeletons (the gRPC API is built by
//! the xdplb-proto crate in `proto/`).

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const PROGRAMS: &[&str] = &["lb"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var("CLANG").unwrap_or_else(|_| find_clang());
    let mut clang_args: Vec<String> = [
        multiarch_include().as_str(),
        "-Ibpf",
        "-Wall",
        "-Werror",
        "-O2",
        "-g",
    ]
    .map(String::from)
    .to_vec();
    // XDPLB_BPF_VARIANT=N (a number) builds a variant of the XDP program that differs from the
    // default one by a no-op instruction (`LB_BUILD_VARIANT` in bpf/lb.bpf.c): another program
    // tag, the same behaviour and maps. The upgrade test (integration/tests/upgrade.rs) builds an
    // lbd with it into a target directory of its own. Never set for a release.
    println!("cargo:rerun-if-env-changed=XDPLB_BPF_VARIANT");
    if let Some(v) = env::var("XDPLB_BPF_VARIANT").ok().filter(|v| !v.is_empty()) {
        let n: u32 = v
            .parse()
            .unwrap_or_else(|_| panic!("XDPLB_BPF_VARIANT={v:?} is not a number"));
        println!("cargo:warning=building BPF program variant {n} (XDPLB_BPF_VARIANT)");
        clang_args.push(format!("-DLB_BUILD_VARIANT={n}"));
    }
    for name in PROGRAMS {
        let src = format!("bpf/{name}.bpf.c");
        SkeletonBuilder::new()
            .source(&src)
            .clang(&clang)
            .clang_args(&clang_args)
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building BPF program {src}: {e:#}"));
    }
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
}

/// `-I/usr/include/<multiarch triple>` for the target being built (Debian keeps `asm/types.h`
/// there), derived from cargo's target description instead of assuming x86_64.
fn multiarch_include() -> String {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| std::env::consts::ARCH.into());
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_else(|_| "linux".into());
    let env_ = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_else(|_| "gnu".into());
    let abi = match (arch.as_str(), env_.as_str()) {
        ("arm", _) => "gnueabihf".to_string(),
        (_, "") => "gnu".to_string(),
        (_, e) => e.to_string(),
    };
    format!("-I/usr/include/{arch}-{os}-{abi}")
}

/// clang-19 is what `make deps` installs; fall back to whatever `clang` is on the PATH.
fn find_clang() -> String {
    for candidate in ["/usr/bin/clang-19", "/usr/lib/llvm-19/bin/clang"] {
        if Path::new(candidate).exists() {
            return candidate.to_string();
        }
    }
    "clang".to_string()
}
