//! Build script: generates the xdplb.v1 gRPC client from ../proto/*.proto, plus a
//! server-side stub (sharing the client's message types) that only unit tests compile.

use std::{env, error::Error, fs, path::PathBuf};

const INCLUDES: &str = "../proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={INCLUDES}");
    println!("cargo:rerun-if-changed=build.rs");
    // Every .proto of the API (package xdplb.v1), one file per concern.
    let mut protos: Vec<PathBuf> = fs::read_dir(INCLUDES)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();

    // The real thing: messages + client, written to $OUT_DIR/xdplb.v1.rs.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_protos(&protos, &[PathBuf::from(INCLUDES)])?;

    // Test-only: server traits for an in-process fake lbd. Messages are taken from
    // `crate::pb`, so this file holds nothing but `*_server` modules; it is only
    // `include!`d under #[cfg(test)].
    let test_out = PathBuf::from(env::var("OUT_DIR")?).join("test_server");
    fs::create_dir_all(&test_out)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".xdplb.v1", "crate::pb")
        .out_dir(&test_out)
        .compile_protos(&protos, &[PathBuf::from(INCLUDES)])?;
    Ok(())
}
