//! xdplb's gRPC API: the code generated from `proto/*.proto` ([`pb`], client and server) and the
//! one module of conversions between the model and protobuf ([`convert`]).

pub mod convert;

/// Code generated from `proto/*.proto` (package `xdplb.v1`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("xdplb.v1");
}

/// The encoded `FileDescriptorSet` of `proto/*.proto` (every service and message of package
/// `xdplb.v1`): what lbd's server reflection answers with.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("xdplb_descriptor");

/// The fully qualified names of the services of `proto/*.proto` (`xdplb.v1.Vips`, ...), read
/// from [`FILE_DESCRIPTOR_SET`]: a service added to a .proto file is in the list (and in lbd's
/// health service) without more code.
pub fn service_names() -> Vec<String> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the build script wrote a valid FileDescriptorSet");
    let mut names: Vec<String> = set
        .file
        .iter()
        .flat_map(|f| {
            let package = f.package().to_string();
            f.service
                .iter()
                .map(move |s| format!("{package}.{}", s.name()))
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_names_come_from_the_descriptor_set() {
        let names = super::service_names();
        for (name, generated) in [
            ("xdplb.v1.Vips", super::pb::vips_server::SERVICE_NAME),
            (
                "xdplb.v1.Backends",
                super::pb::backends_server::SERVICE_NAME,
            ),
            ("xdplb.v1.Stats", super::pb::stats_server::SERVICE_NAME),
            (
                "xdplb.v1.Firewall",
                super::pb::firewall_server::SERVICE_NAME,
            ),
            (
                "xdplb.v1.RateLimits",
                super::pb::rate_limits_server::SERVICE_NAME,
            ),
            ("xdplb.v1.Checks", super::pb::checks_server::SERVICE_NAME),
            ("xdplb.v1.Apply", super::pb::apply_server::SERVICE_NAME),
        ] {
            assert_eq!(name, generated);
            assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
        }
    }
}
