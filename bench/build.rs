//! Build script: compiles every BPF program of the bench (`bpf/<name>.bpf.c`: the floor program,
//! swap MACs and XDP_TX, and the end-to-end generator, sink and forwarder) into a libbpf skeleton
//! `$OUT_DIR/<name>.skel.rs`, the way the root `build.rs` builds the load balancer.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var("CLANG").unwrap_or_else(|_| find_clang());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("bpf")
        .expect("reading bench/bpf/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in &sources {
        let file = src.file_name().expect("a file").to_string_lossy();
        let name = file.trim_end_matches(".bpf.c");
        SkeletonBuilder::new()
            .source(src)
            .clang(&clang)
            .clang_args([
                "-I/usr/include/x86_64-linux-gnu",
                "-Ibpf",
                "-I../bpf",
                "-Wall",
                "-Werror",
                "-O2",
                "-g",
            ])
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building BPF program {}: {e:#}", src.display()));
    }
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
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
