//! `xdplb-buildkit`: the BPF half of every build script of the workspace (the root `build.rs`,
//! `backend/`, `testkit/`, `bench/`). Every `<dir>/<name>.bpf.c` becomes a libbpf skeleton
//! `$OUT_DIR/<name>.skel.rs`, compiled the same way everywhere: `CLANG` or clang-19, the target's
//! multiarch include directory (from cargo's target description, not a hard-coded x86_64),
//! `-I<dir>`, `-Wall -Werror -O2 -g`, and the crate's own extra arguments.

use std::path::{Path, PathBuf};

/// Builds a skeleton of every `*.bpf.c` in `dir` (sorted by name) with `extra_args` added to
/// clang's, and tells cargo to rerun when `dir` or `CLANG` change. Panics (the build fails) when
/// a program does not compile.
pub fn build_skeletons(dir: &str, extra_args: &[String]) {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = std::env::var("CLANG").unwrap_or_else(|_| find_clang());
    let mut clang_args = vec![
        multiarch_include(),
        format!("-I{dir}"),
        "-Wall".into(),
        "-Werror".into(),
        "-O2".into(),
        "-g".into(),
    ];
    clang_args.extend(extra_args.iter().cloned());
    let mut sources: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {dir}/: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in &sources {
        let file = src.file_name().expect("a file").to_string_lossy();
        let name = file.trim_end_matches(".bpf.c");
        libbpf_cargo::SkeletonBuilder::new()
            .source(src)
            .clang(&clang)
            .clang_args(&clang_args)
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| panic!("building BPF program {}: {e:#}", src.display()));
    }
    println!("cargo:rerun-if-changed={dir}");
    println!("cargo:rerun-if-env-changed=CLANG");
}

/// `-I/usr/include/<multiarch triple>` for the target being built (Debian keeps `asm/types.h`
/// there), derived from cargo's target description instead of assuming x86_64.
fn multiarch_include() -> String {
    let var = |k: &str, default: &str| std::env::var(k).unwrap_or_else(|_| default.to_string());
    let arch = var("CARGO_CFG_TARGET_ARCH", std::env::consts::ARCH);
    let os = var("CARGO_CFG_TARGET_OS", "linux");
    let abi = match (arch.as_str(), var("CARGO_CFG_TARGET_ENV", "gnu").as_str()) {
        ("arm", _) => "gnueabihf".to_string(),
        (_, "") => "gnu".to_string(),
        (_, e) => e.to_string(),
    };
    format!("-I/usr/include/{arch}-{os}-{abi}")
}

/// clang-19 is what `make deps` installs; fall back to whatever `clang` is on the PATH.
fn find_clang() -> String {
    ["/usr/bin/clang-19", "/usr/lib/llvm-19/bin/clang"]
        .into_iter()
        .find(|c| Path::new(c).exists())
        .unwrap_or("clang")
        .to_string()
}
