//! xdplb's gRPC API: the code generated from `proto/*.proto` ([`pb`], client and server) and the
//! one module of conversions between the model and protobuf ([`convert`]).

pub mod convert;

/// Code generated from `proto/*.proto` (package `xdplb.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("xdplb.v1");
}
