//! Build script: compiles the gRPC API in `proto/*.proto` (package xdplb.v1, one file per
//! concern) into tonic server and client code, and writes their file descriptor set
//! (`xdplb_descriptor.bin` in OUT_DIR) for lbd's server reflection.

use std::path::PathBuf;

fn main() {
    let mut protos: Vec<PathBuf> = std::fs::read_dir(".")
        .expect("reading proto/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("xdplb_descriptor.bin"))
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[PathBuf::from(".")])
        .expect("compiling proto/*.proto");
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-changed=.");
}
