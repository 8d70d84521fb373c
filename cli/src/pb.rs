//! Generated protobuf/gRPC types for the lbd API (package `xdplb.v1`), client side only.
//! Tests additionally get `test_server`, the generated server traits, to run a fake lbd.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("xdplb.v1");

/// Server traits generated from the same proto; only for in-process fakes in tests.
#[cfg(test)]
pub mod test_server {
    include!(concat!(env!("OUT_DIR"), "/test_server/xdplb.v1.rs"));
}
