//! The `Vips` gRPC service: add, remove and list virtual IPs.

use tonic::{Request, Response, Status};

use super::{invalid, ApiError};
use crate::controller::{Controller, Reader};
use xdplb_model::health::HealthCheck;
use xdplb_model::state::{Mode, VipKey, VipState};
use xdplb_proto::convert::{parse_mode, parse_vip_key};
use xdplb_proto::pb::{self, vips_server::Vips};

pub(crate) struct VipsService {
    ctl: Controller,
}

impl VipsService {
    pub(crate) fn new(ctl: Controller) -> Self {
        Self { ctl }
    }

    /// The VIP `key` as it is now (None: there is none).
    async fn describe(&self, key: &VipKey) -> Option<pb::Vip> {
        self.ctl
            .read(|s, r| s.vips.get(key).map(|v| pb_vip(key, v, r)))
            .await
    }
}

/// A VIP as the API shows it.
fn pb_vip(key: &VipKey, v: &VipState, r: &Reader<'_>) -> pb::Vip {
    pb::Vip {
        key: Some(pb::VipKey::from(key)),
        mode: pb::ForwardingMode::from(v.mode) as i32,
        id: r.vip_id(key).unwrap_or_default(),
        backends: v.backends.len() as u32,
        health: Some(pb::HealthCheck::from(&v.health)),
    }
}

fn validate_add(req: &pb::AddVipRequest) -> Result<(VipKey, Mode, HealthCheck), ApiError> {
    Ok((
        parse_vip_key("vip", req.vip.as_ref())?,
        parse_mode(req.mode)?,
        match &req.health {
            Some(h) => HealthCheck::try_from(h)?,
            None => HealthCheck::default(),
        },
    ))
}

#[tonic::async_trait]
impl Vips for VipsService {
    async fn add_vip(
        &self,
        request: Request<pb::AddVipRequest>,
    ) -> Result<Response<pb::AddVipResponse>, Status> {
        let (key, mode, health) = validate_add(request.get_ref())?;
        // Logged once, by the reconciler, with the id it handed out ("vip added to the data
        // plane"): the same line covers VIPs from the config and the state file.
        let checked = health.to_string();
        let pb_health = pb::HealthCheck::from(&health);
        self.ctl
            .change(move |s| {
                s.add_vip(key, mode)?;
                s.set_health(&key, health)
            })
            .await?;
        if pb_health.kind != pb::HealthCheckKind::None as i32 {
            tracing::info!(vip = %key, health = %checked, "vip health check set");
        }
        let id = self
            .ctl
            .read(|_, r| r.vip_id(&key).unwrap_or_default())
            .await;
        Ok(Response::new(pb::AddVipResponse {
            vip: Some(pb::Vip {
                key: Some(pb::VipKey::from(&key)),
                mode: pb::ForwardingMode::from(mode) as i32,
                id,
                backends: 0,
                health: Some(pb_health),
            }),
        }))
    }

    async fn remove_vip(
        &self,
        request: Request<pb::RemoveVipRequest>,
    ) -> Result<Response<pb::RemoveVipResponse>, Status> {
        let key = parse_vip_key("vip", request.get_ref().vip.as_ref())?;
        // Logged once, by the reconciler ("vip removed from the data plane", with its id).
        self.ctl.change(move |s| s.remove_vip(&key)).await?;
        Ok(Response::new(pb::RemoveVipResponse {}))
    }

    async fn set_vip_mode(
        &self,
        request: Request<pb::SetVipModeRequest>,
    ) -> Result<Response<pb::SetVipModeResponse>, Status> {
        let req = request.get_ref();
        let key = parse_vip_key("vip", req.vip.as_ref())?;
        if req.mode == pb::ForwardingMode::Unspecified as i32 {
            return Err(invalid("mode", "missing (nat, l2dsr or ipip)").into());
        }
        let mode = parse_mode(req.mode)?;
        if mode == Mode::L2dsr {
            let backends: Vec<_> = self
                .ctl
                .read(|s, _| s.vip(&key).map(|v| v.backends.keys().copied().collect()))
                .await
                .map_err(ApiError::from)?;
            check_l2dsr_backends(|_| "mode".to_string(), &backends).await?;
        }
        let from = self.ctl.read(|s, _| s.vips.get(&key).map(|v| v.mode)).await;
        self.ctl.change(move |s| s.set_mode(&key, mode)).await?;
        let vip = self.describe(&key).await;
        tracing::info!(
            vip = %key,
            id = vip.as_ref().map(|v| v.id).unwrap_or_default(),
            from = %from.map(|m| m.to_string()).unwrap_or_default(),
            %mode,
            "vip mode set: new flows use it, tracked flows keep theirs"
        );
        Ok(Response::new(pb::SetVipModeResponse { vip }))
    }

    async fn set_vip_health(
        &self,
        request: Request<pb::SetVipHealthRequest>,
    ) -> Result<Response<pb::SetVipHealthResponse>, Status> {
        let req = request.get_ref();
        let key = parse_vip_key("vip", req.vip.as_ref())?;
        let health = req
            .health
            .as_ref()
            .ok_or_else(|| invalid("health", "missing"))?;
        let health = HealthCheck::try_from(health).map_err(ApiError::from)?;
        let shown = health.to_string();
        self.ctl.change(move |s| s.set_health(&key, health)).await?;
        tracing::info!(vip = %key, health = %shown, "vip health check set: backends keep their status, counting starts over");
        let vip = self.describe(&key).await;
        Ok(Response::new(pb::SetVipHealthResponse { vip }))
    }

    async fn list_vips(
        &self,
        _request: Request<pb::ListVipsRequest>,
    ) -> Result<Response<pb::ListVipsResponse>, Status> {
        let vips = self
            .ctl
            .read(|state, r| {
                state
                    .vips
                    .iter()
                    .map(|(key, v)| pb_vip(key, v, r))
                    .collect()
            })
            .await;
        Ok(Response::new(pb::ListVipsResponse { vips }))
    }
}

/// Refuses L2 DSR backends that are not on a directly connected subnet (they would loop),
/// naming `field(i)` for the first refused `backends[i]`. One netlink socket for all of them.
pub(crate) async fn check_l2dsr_backends(
    field: impl Fn(usize) -> String,
    backends: &[std::net::SocketAddrV4],
) -> Result<(), ApiError> {
    let ips: Vec<std::net::Ipv4Addr> = backends.iter().map(|b| *b.ip()).collect();
    crate::neighbor::check_all_on_link(&ips)
        .await
        .map_err(|(i, m)| match backends.get(i) {
            Some(be) => invalid(field(i), format!("backend {be}: {m}")),
            None => invalid(field(i), m),
        })
}
