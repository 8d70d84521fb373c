//! The `Checks` gRPC service: `CheckBackend` runs [`crate::check`]'s probes for one backend of
//! a VIP, from lbd's namespace, through the path of the VIP's mode. The request is validated
//! whole (InvalidArgument naming the field); a VIP or backend lbd does not hold is NotFound.

use std::net::SocketAddrV4;

use tonic::{Request, Response, Status};

use super::ApiError;
use crate::check::{self, Target};
use crate::controller::Controller;
use xdplb_model::state::{StateError, VipKey};
use xdplb_proto::convert::{parse_ipv4, parse_port, parse_vip_key};
use xdplb_proto::pb::{self, checks_server};

/// What lbd's configuration adds to a check: the IPIP outer source.
#[derive(Debug, Clone, Copy)]
pub struct CheckSettings {
    pub ipip_source: ipnet::Ipv4Net,
}

pub(crate) struct ChecksService {
    ctl: Controller,
    settings: CheckSettings,
}

impl ChecksService {
    pub(crate) fn new(ctl: Controller, settings: CheckSettings) -> Self {
        Self { ctl, settings }
    }
}

/// A checked request: the VIP and the backend.
pub(crate) fn validate(req: &pb::CheckBackendRequest) -> Result<(VipKey, SocketAddrV4), ApiError> {
    let vip = parse_vip_key("vip", req.vip.as_ref())?;
    let ip = parse_ipv4("backend_address", &req.backend_address)?;
    let port = parse_port("backend_port", req.backend_port)?;
    Ok((vip, SocketAddrV4::new(ip, port)))
}

#[tonic::async_trait]
impl checks_server::Checks for ChecksService {
    async fn check_backend(
        &self,
        request: Request<pb::CheckBackendRequest>,
    ) -> Result<Response<pb::CheckBackendReply>, Status> {
        let (vip, backend) = validate(request.get_ref())?;
        let mode = self
            .ctl
            .read(move |state, _| -> Result<_, ApiError> {
                let v = state.vip(&vip)?;
                if !v.backends.contains_key(&backend) {
                    return Err(ApiError::State(StateError::NotFound(format!(
                        "backend {backend} of vip {vip}"
                    ))));
                }
                Ok(v.mode)
            })
            .await?;
        let report = check::check_backend(Target {
            vip,
            mode,
            backend,
            ipip_source: self.settings.ipip_source,
        })
        .await;
        Ok(Response::new(pb::CheckBackendReply {
            vip: vip.to_string(),
            mode: mode.to_string(),
            backend: backend.to_string(),
            egress: report.egress,
            source: report.source.map(|s| s.to_string()).unwrap_or_default(),
            checks: report
                .lines
                .into_iter()
                .map(|l| pb::CheckResult {
                    name: l.name.to_string(),
                    status: l.status.name().to_string(),
                    detail: l.detail,
                    fix: l.fix,
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::CheckBackendRequest {
        pb::CheckBackendRequest {
            vip: Some(pb::VipKey {
                address: "10.0.0.10".into(),
                port: 80,
                protocol: pb::Protocol::Tcp as i32,
            }),
            backend_address: "10.0.2.1".into(),
            backend_port: 80,
        }
    }

    fn field_of(req: pb::CheckBackendRequest) -> String {
        match validate(&req) {
            Err(ApiError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn requests_are_validated_field_by_field() {
        assert!(validate(&good()).is_ok());
        assert_eq!(
            field_of(pb::CheckBackendRequest {
                vip: None,
                ..good()
            }),
            "vip"
        );
        let mut r = good();
        r.vip.as_mut().unwrap().address = "nope".into();
        assert_eq!(field_of(r), "vip.address");
        let mut r = good();
        r.vip.as_mut().unwrap().protocol = 0;
        assert_eq!(field_of(r), "vip.protocol");
        assert_eq!(
            field_of(pb::CheckBackendRequest {
                backend_address: "10.0.2".into(),
                ..good()
            }),
            "backend_address"
        );
        assert_eq!(
            field_of(pb::CheckBackendRequest {
                backend_port: 70000,
                ..good()
            }),
            "backend_port"
        );
    }
}
