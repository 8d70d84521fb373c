//! Build script: compiles the gRPC API in `proto/*.proto` (package xdplb.v1, one file per
//! concern) into tonic server and client code.

use std::path::PathBuf;

fn main() {
    let mut protos: Vec<PathBuf> = std::fs::read_dir(".")
        .expect("reading proto/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[PathBuf::from(".")])
        .expect("compiling proto/*.proto");
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-changed=.");
}
