//! The `Backends` gRPC service: add, remove, re-weight and list the backends of a VIP.

use std::net::SocketAddrV4;

use tonic::{Request, Response, Status};

use super::pb::{self, backends_server::Backends};
use super::{invalid, parse_ipv4, parse_port, parse_vip_key, ApiError, Controller};
use crate::state::{VipKey, DEFAULT_WEIGHT, MAX_WEIGHT};

pub struct BackendsService {
    ctl: Controller,
}

impl BackendsService {
    pub fn new(ctl: Controller) -> Self {
        Self { ctl }
    }

    async fn describe(&self, vip: VipKey, addr: SocketAddrV4) -> pb::Backend {
        self.ctl
            .read(|s, r| pb::Backend {
                address: addr.ip().to_string(),
                port: u32::from(addr.port()),
                weight: s
                    .vips
                    .get(&vip)
                    .and_then(|v| v.backends.get(&addr))
                    .copied(),
                id: r.backend_id(&vip, &addr).unwrap_or_default(),
            })
            .await
    }
}

fn parse_backend(field: &str, address: &str, port: u32) -> Result<SocketAddrV4, ApiError> {
    Ok(SocketAddrV4::new(
        parse_ipv4(&format!("{field}address"), address)?,
        parse_port(&format!("{field}port"), port)?,
    ))
}

fn validate_weight(field: &str, w: u32) -> Result<u32, ApiError> {
    if w > MAX_WEIGHT {
        return Err(invalid(
            field,
            format!("{w} is above the maximum {MAX_WEIGHT}"),
        ));
    }
    Ok(w)
}

fn validate_add(req: &pb::AddBackendRequest) -> Result<(VipKey, SocketAddrV4, u32), ApiError> {
    let vip = parse_vip_key("vip", req.vip.as_ref())?;
    let be = req
        .backend
        .as_ref()
        .ok_or_else(|| invalid("backend", "missing"))?;
    let addr = parse_backend("backend.", &be.address, be.port)?;
    let weight = validate_weight("backend.weight", be.weight.unwrap_or(DEFAULT_WEIGHT))?;
    Ok((vip, addr, weight))
}

#[tonic::async_trait]
impl Backends for BackendsService {
    async fn add_backend(
        &self,
        request: Request<pb::AddBackendRequest>,
    ) -> Result<Response<pb::AddBackendResponse>, Status> {
        let (vip, addr, weight) = validate_add(request.get_ref())?;
        let mode = self.ctl.read(|s, _| s.vip(&vip).map(|v| v.mode)).await.map_err(ApiError::from)?;
        if mode == crate::state::Mode::L2dsr {
            super::vips::check_l2dsr_backends("backend.address", &[addr]).await?;
        }
        self.ctl
            .change(|s| s.add_backend(&vip, addr, weight))
            .await?;
        tracing::info!(%vip, backend = %addr, weight, "backend added");
        Ok(Response::new(pb::AddBackendResponse {
            backend: Some(self.describe(vip, addr).await),
        }))
    }

    async fn remove_backend(
        &self,
        request: Request<pb::RemoveBackendRequest>,
    ) -> Result<Response<pb::RemoveBackendResponse>, Status> {
        let req = request.get_ref();
        let vip = parse_vip_key("vip", req.vip.as_ref())?;
        let addr = parse_backend("", &req.address, req.port)?;
        self.ctl.change(|s| s.remove_backend(&vip, addr)).await?;
        tracing::info!(%vip, backend = %addr, "backend removed");
        Ok(Response::new(pb::RemoveBackendResponse {}))
    }

    async fn set_backend_weight(
        &self,
        request: Request<pb::SetBackendWeightRequest>,
    ) -> Result<Response<pb::SetBackendWeightResponse>, Status> {
        let req = request.get_ref();
        let vip = parse_vip_key("vip", req.vip.as_ref())?;
        let addr = parse_backend("", &req.address, req.port)?;
        let weight = validate_weight("weight", req.weight)?;
        self.ctl
            .change(|s| s.set_weight(&vip, addr, weight))
            .await?;
        tracing::info!(%vip, backend = %addr, weight, "backend weight set");
        Ok(Response::new(pb::SetBackendWeightResponse {
            backend: Some(self.describe(vip, addr).await),
        }))
    }

    async fn list_backends(
        &self,
        request: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let vip = parse_vip_key("vip", request.get_ref().vip.as_ref())?;
        let backends = self
            .ctl
            .read(|s, r| -> Result<Vec<pb::Backend>, ApiError> {
                Ok(s.vip(&vip)?
                    .backends
                    .iter()
                    .map(|(addr, w)| pb::Backend {
                        address: addr.ip().to_string(),
                        port: u32::from(addr.port()),
                        weight: Some(*w),
                        id: r.backend_id(&vip, addr).unwrap_or_default(),
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }
}
