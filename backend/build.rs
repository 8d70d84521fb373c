//! Build script: compiles the backend-side IPIP decapsulator `bpf/decap.bpf.c` into a libbpf
//! skeleton. It includes the data plane's shared headers (`xdplb.h`, `parse.h`) from `../bpf`.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "bpf/decap.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var("CLANG").unwrap_or_else(|_| find_clang());
    let clang_args = [
        multiarch_include().as_str(),
        "-I../bpf",
        "-Wall",
        "-Werror",
        "-O2",
        "-g",
    ]
    .map(String::from);
    SkeletonBuilder::new()
        .source(SRC)
        .clang(&clang)
        .clang_args(clang_args)
        .build_and_generate(out.join("decap.skel.rs"))
        .unwrap_or_else(|e| panic!("building BPF program {SRC}: {e:#}"));
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=../bpf");
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
